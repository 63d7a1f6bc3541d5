"""The five E2E NLG Challenge metrics, equal to the official scorer (tuetschek/e2e-metrics, default mode).

Papers report BLEU, NIST, METEOR, ROUGE-L and CIDEr from measure_scores.py (Li & Liang 2021, Table 1
on E2E); ours are only comparable if they are its numbers. BLEU and NIST follow its Perl mteval-v13a,
ROUGE-L and CIDEr its coco-caption scorers; the PTB tokenizer and METEOR 1.5 run pycocoevalcap's jars.
    python -m eval ../shared/data/e2e/testset_w_refs.csv out/test.txt [--json]
    from eval import read_refs, read_outputs, score
"""
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .bleu_nist import bleu_nist
from .files import EvalError, read_outputs, read_refs
from .java import Meteor, ptb_tokenize
from .rouge_cider import cider_d, rouge_l

METRICS = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")
__all__ = ["EvalError", "METRICS", "read_outputs", "read_refs", "score", "score_files"]


def score(refs: list[list[str]], outputs: list[str]) -> dict[str, float]:
    """BLEU, NIST, METEOR, ROUGE_L, CIDEr of outputs[i] against refs[i] (BLEU, METEOR, ROUGE_L on 0-1).

    BLEU and NIST come rounded to 4 decimals, as the official script parses them from mteval's output.
    """
    if len(refs) != len(outputs):
        raise EvalError(f"{len(outputs)} outputs for {len(refs)} MRs. Give exactly one output per MR.")
    if not outputs or not all(refs):
        raise EvalError("nothing to score, or an MR without references. Every MR needs a reference.")
    meteor = Meteor()  # its JVM loads the paraphrase table while the rest runs
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            tokenized = pool.submit(ptb_tokenize, [[r for group in refs for r in group], outputs])
            bleu, nist = bleu_nist(refs, outputs)
            flat_refs, tok_outputs = tokenized.result()
        tok_refs, start = [], 0
        for group in refs:
            tok_refs.append(flat_refs[start:start + len(group)])
            start += len(group)
        with ThreadPoolExecutor(max_workers=1) as pool:
            meteor_score = pool.submit(meteor.score, tok_refs, tok_outputs)
            rouge, cider = rouge_l(tok_refs, tok_outputs), cider_d(tok_refs, tok_outputs)
            return {"BLEU": bleu, "NIST": nist, "METEOR": meteor_score.result(), "ROUGE_L": rouge, "CIDEr": cider}
    finally:
        meteor.close()


def score_files(refs_path: str | Path, outputs_path: str | Path) -> dict[str, float]:
    """score() on a references file (CSV or text) and an outputs file, checking that they line up."""
    refs, outputs = read_refs(refs_path), read_outputs(outputs_path)
    if len(refs) != len(outputs):
        raise EvalError(f"{outputs_path} has {len(outputs)} lines but {refs_path} has references for {len(refs)} "
                        f"MRs. Write exactly one output line per MR, in the references' order.")
    return score(refs, outputs)

"""The metrics of each task's official scorer, equal to it (Li & Liang 2021, Tables 1 and 2).

Papers report E2E's BLEU, NIST, METEOR, ROUGE-L and CIDEr from measure_scores.py (tuetschek/e2e-metrics,
default mode), and WebNLG's and DART's BLEU, METEOR and TER from their official scripts; ours are only
comparable if they are those numbers. E2E: BLEU and NIST follow its Perl mteval-v13a, ROUGE-L and CIDEr
its coco-caption scorers; the PTB tokenizer and METEOR 1.5 run pycocoevalcap's jars. WebNLG and DART:
eval/data2text.py. A task of your own ("text"): E2E's BLEU and rouge-score's ROUGE.
    python -m eval ../shared/data/e2e/testset_w_refs.csv out/test.txt [--json] [--task e2e|webnlg|dart|text]
    from eval import read_refs, read_outputs, score, score_files, score_files_many
"""
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .bleu_nist import bleu_nist
from .data2text import Memo, score_data2text
from .files import EvalError, check_pairs, read_outputs, read_refs
from .java import Meteor, ptb_tokenize
from .rouge import rouge
from .rouge_cider import cider_d, rouge_l

METRICS = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")
TASK_METRICS = {"e2e": METRICS, "webnlg": ("BLEU", "METEOR", "TER"), "dart": ("BLEU", "METEOR", "TER"),
                "text": ("BLEU", "ROUGE_1", "ROUGE_2", "ROUGE_L")}


def score(refs: list[list[str]], outputs: list[str], meteor: Meteor | None = None,
          memo: Memo | None = None) -> dict[str, float]:
    """BLEU, NIST, METEOR, ROUGE_L, CIDEr of outputs[i] against refs[i] (BLEU, METEOR, ROUGE_L on 0-1; BLEU and
    NIST to 4 decimals, as bleu_nist gives them). `meteor` and `memo` may be shared (see score_files_many)."""
    check_pairs(refs, outputs)
    running = meteor or Meteor()  # its JVM loads the paraphrase table while the rest runs
    try:
        with ThreadPoolExecutor() as pool:  # the JVMs work while Python computes BLEU/NIST, ROUGE-L, CIDEr
            tokenizing = [pool.submit(ptb_tokenize, groups) for groups in (refs, [[o] for o in outputs])]
            bleu, nist = bleu_nist(refs, outputs)
            tok_refs, tok_outputs = tokenizing[0].result(), [group[0] for group in tokenizing[1].result()]
            meteor_score = pool.submit(running.score, tok_refs, tok_outputs, memo.meteor if memo else None)
            rouge, cider = rouge_l(tok_refs, tok_outputs), cider_d(tok_refs, tok_outputs)
            return {"BLEU": bleu, "NIST": nist, "METEOR": meteor_score.result(), "ROUGE_L": rouge, "CIDEr": cider}
    finally:
        if meteor is None:
            running.close()


def score_files(refs_path: str | Path, outputs_path: str | Path, task: str = "e2e") -> dict[str, float]:
    """The task's metrics (TASK_METRICS) on a references file (CSV or text) and an outputs file, lined up."""
    return score_files_many([(refs_path, outputs_path)], task)[0]


def score_files_many(pairs: list[tuple[str | Path, str | Path]], task: str = "e2e") -> list[dict[str, float]]:
    """score_files of each (references, outputs) pair, in one call. Loading METEOR's paraphrase table is the
    slowest step of all, so the pairs share one JVM; and WebNLG's all repeats seen and unseen, so each distinct
    entry's METEOR statistics and TER are computed once (a Memo that lives for this call only)."""
    if task not in TASK_METRICS:
        raise EvalError(f"task {task!r}: expected one of {', '.join(TASK_METRICS)}.")
    loaded, unit = [], "MR" if task == "e2e" else "source"  # every file is read and checked before the slow part
    for refs_path, outputs_path in pairs:
        try:
            refs, outputs = read_refs(refs_path, unit), read_outputs(outputs_path, unit)
            if len(refs) != len(outputs):
                raise EvalError(f"{outputs_path} has {len(outputs)} lines but {refs_path} has references for "
                                f"{len(refs)} {unit}s. Write one output line per {unit}, in the references' order.")
        except EvalError as e:
            raise EvalError(f"{e}{swap_hint(refs_path, outputs_path)}") from None
        loaded.append((refs, outputs))
    if task == "text":  # a task of your own: BLEU as the E2E scorer's (0-1) and rouge-score's ROUGE-1/2/L
        return [{"BLEU": bleu_nist(refs, outputs)[0], **rouge(refs, outputs)} for refs, outputs in loaded]
    meteor, memo = Meteor(), Memo()
    try:
        return [score(refs, outputs, meteor, memo) if task == "e2e" else
                score_data2text(refs, outputs, task, meteor, memo) for refs, outputs in loaded]
    finally:
        meteor.close()


def swap_hint(refs_path: str | Path, outputs_path: str | Path) -> str:
    """A hint for an error, when the two files would fit the other way round."""
    try:
        fits = len(read_refs(outputs_path)) == len(read_outputs(refs_path))
    except EvalError:
        fits = False
    return " Did you swap REFS and OUTPUTS? REFS comes first." if fits else ""

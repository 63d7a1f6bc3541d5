"""ROUGE-1, ROUGE-2 and ROUGE-L F-measures as Google's rouge-score package computes them (Lin 2004).

For a task of your own (python -m eval REFS OUTPUTS --task text), where no official scorer exists,
rouge-score is the common reference. Its default tokenizer: lower-case, every run of characters other than
a-z and 0-9 separates words. No stemming (RougeScorer's default use_stemmer=False): its Porter stemmer
knows English only, and unstemmed scores mean the same in every language.
"""
import re

from .bleu_nist import ngram_counts
from .rouge_cider import lcs_length


def f_measure(hits: int, n_output: int, n_ref: int) -> float:
    """rouge-score's F1 of precision hits/n_output and recall hits/n_ref (an empty side counts as 1 word)."""
    precision, recall = hits / max(n_output, 1), hits / max(n_ref, 1)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def rouge_f(ref: list[str], output: list[str]) -> tuple[float, float, float]:
    """ROUGE-1, ROUGE-2, ROUGE-L F-measures of one tokenized output against one tokenized reference."""
    common = ngram_counts(ref, 2) & ngram_counts(output, 2)
    rouge_1, rouge_2 = (f_measure(sum(c for gram, c in common.items() if len(gram) == n),
                                  max(len(output) - n + 1, 0), max(len(ref) - n + 1, 0)) for n in (1, 2))
    return rouge_1, rouge_2, f_measure(lcs_length(ref, output), len(output), len(ref))


def rouge(refs: list[list[str]], outputs: list[str]) -> dict[str, float]:
    """Mean (0-1) over outputs of each metric's best F-measure over the output's references (score_multi)."""
    totals = [0.0, 0.0, 0.0]
    for group, output in zip(refs, outputs):
        words = re.findall(r"[a-z0-9]+", output.lower())
        per_ref = [rouge_f(re.findall(r"[a-z0-9]+", ref.lower()), words) for ref in group]
        totals = [total + max(scores) for total, scores in zip(totals, zip(*per_ref))]
    return {name: total / len(outputs) for name, total in zip(("ROUGE_1", "ROUGE_2", "ROUGE_L"), totals)}

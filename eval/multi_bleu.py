"""BLEU exactly as Moses' multi-bleu.perl prints it, the BLEU of the WebNLG 2017 and DART official scorers.

Corpus BLEU-4 on text that is already tokenized (words split on spaces): n-gram counts clipped to the most any one
reference has, a brevity penalty on the summed closest reference lengths (ties go to the shorter reference; an empty
reference is one of length 0), no smoothing (an order without a single match makes BLEU about 0: the script takes log
0 as -9999999999). Used by eval.data2text.
"""
import math
from collections import Counter
from functools import reduce

from .bleu_nist import ngram_counts


def multi_bleu(refs: list[list[str]], hyps: list[str]) -> float:
    """Corpus BLEU of hyps[i] against refs[i], on the 0-100 scale, rounded to 2 decimals as printed."""
    correct, total = [0] * 4, [0] * 4
    hyp_length = ref_length = 0
    for group, hyp in zip(refs, hyps):
        words = hyp.split()
        max_ref = reduce(Counter.__ior__, (ngram_counts(ref.split(), 4) for ref in group), Counter())
        for gram, count in ngram_counts(words, 4).items():
            total[len(gram) - 1] += count
            correct[len(gram) - 1] += min(count, max_ref[gram])
        hyp_length += len(words)
        ref_length += min((abs(len(words) - len(r.split())), len(r.split())) for r in group)[1]
    if hyp_length == 0 or ref_length == 0:  # the script stops without a score (or dies dividing by 0)
        return 0.0
    log_precision = sum(math.log(c / t) if c else -9999999999 for c, t in zip(correct, total))
    brevity = math.exp(1 - ref_length / hyp_length) if hyp_length < ref_length else 1.0
    return float(f"{100 * (brevity * math.exp(log_precision / 4)):.2f}")

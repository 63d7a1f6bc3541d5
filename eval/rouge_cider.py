"""ROUGE-L and CIDEr-D as the coco-caption scorers inside the official E2E script compute them.

Both take PTB-tokenized, lowercased, punctuation-free text (eval.java.ptb_tokenize). ROUGE-L is the mean over MRs of
an LCS F-measure (beta 1.2) against the best reference precision and recall (Lin 2004), with a bit-parallel LCS
(--task text's ROUGE-L shares it). CIDEr-D (Vedantam et al. 2015: a clipped tf-idf cosine over 1-4-grams, document
frequencies from the references being scored, a Gaussian length penalty, times 10) is coco-caption's own code, as
pycocoevalcap (pinned in requirements-eval.txt) ships it. Used by eval.score().
"""
import numpy as np
from pycocoevalcap.cider.cider import Cider

ROUGE_BETA = 1.2


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Hyyro 2004): one big-int step per token of b."""
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def rouge_l(refs: list[list[str]], outputs: list[str]) -> float:
    """coco-caption's Rouge: tokens are split on single spaces, so an empty sentence is one empty token."""
    scores = []
    for group, output in zip(refs, outputs):
        hyp = output.split(" ")
        lcs = [lcs_length(ref.split(" "), hyp) for ref in group]
        prec = max(n / len(hyp) for n in lcs)
        rec = max(n / len(ref.split(" ")) for n, ref in zip(lcs, group))
        scores.append((1 + ROUGE_BETA**2) * prec * rec / (rec + ROUGE_BETA**2 * prec) if prec and rec else 0.0)
    return float(np.mean(np.array(scores)))


def cider_d(refs: list[list[str]], outputs: list[str]) -> float:
    """coco-caption's Cider as the E2E script runs it: mean over MRs of 10 x mean_n(mean over refs of sim)."""
    return float(Cider().compute_score(dict(enumerate(refs)), {i: [o] for i, o in enumerate(outputs)})[0])

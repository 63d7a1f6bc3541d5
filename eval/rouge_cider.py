"""ROUGE-L and CIDEr-D as the coco-caption scorers inside the official E2E script compute them.

Both take PTB-tokenized, lowercased, punctuation-free text (eval.java.ptb_tokenize). ROUGE-L is the
mean over MRs of an LCS F-measure (beta 1.2) against the best reference precision and recall (Lin 2004).
CIDEr-D (Vedantam et al. 2015) is a tf-idf cosine over 1-4-grams with document frequencies taken from the
references being scored, clipped, with a Gaussian length penalty, times 10. Used by eval.score().
"""
from collections import Counter, defaultdict

import numpy as np

from .bleu_nist import ngram_counts  # coco-caption's precook: the same counts, split on whitespace

ROUGE_BETA = 1.2
CIDER_N, CIDER_SIGMA = 4, 6.0


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
        if prec != 0 and rec != 0:
            scores.append((1 + ROUGE_BETA**2) * prec * rec / (rec + ROUGE_BETA**2 * prec))
        else:
            scores.append(0.0)
    return float(np.mean(np.array(scores)))


def cider_vector(counts: Counter, doc_freq: dict[tuple, float], log_n_docs: float) -> tuple[list, list, int]:
    """tf-idf vector per n, its norms, and the sentence 'length' coco-caption uses: its number of bigrams."""
    vec = [defaultdict(float) for _ in range(CIDER_N)]
    norm = [0.0] * CIDER_N
    for gram, tf in counts.items():
        n = len(gram) - 1
        vec[n][gram] = float(tf) * (log_n_docs - np.log(max(1.0, doc_freq.get(gram, 0.0))))
        norm[n] += vec[n][gram] ** 2
    bigrams = sum(tf for gram, tf in counts.items() if len(gram) == 2)
    return vec, [np.sqrt(x) for x in norm], bigrams


def cider_sim(hyp: tuple, ref: tuple) -> list[float]:
    """Clipped cosine similarity per n, times the Gaussian penalty on the length difference."""
    (vec_h, norm_h, len_h), (vec_r, norm_r, len_r) = hyp, ref
    delta = float(len_h - len_r)
    val = [0.0] * CIDER_N  # Python floats: the same IEEE arithmetic as coco-caption's numpy scalars, faster
    for n in range(CIDER_N):
        for gram, weight in vec_h[n].items():
            val[n] += min(weight, vec_r[n].get(gram, 0.0)) * vec_r[n].get(gram, 0.0)
        if norm_h[n] != 0 and norm_r[n] != 0:
            val[n] /= norm_h[n] * norm_r[n]
        val[n] *= np.e ** (-(delta**2) / (2 * CIDER_SIGMA**2))
    return val


def cider_d(refs: list[list[str]], outputs: list[str]) -> float:
    """coco-caption's Cider as the E2E script runs it: mean over MRs of 10 x mean_n(mean over refs of sim)."""
    ref_counts = [[ngram_counts(r.split(), CIDER_N) for r in group] for group in refs]
    doc_freq: dict[tuple, float] = defaultdict(float)
    for group in ref_counts:
        for gram in set(g for counts in group for g in counts):
            doc_freq[gram] += 1
    log_n_docs = np.log(float(len(refs)))
    scores = []
    for group, output in zip(ref_counts, outputs):
        hyp = cider_vector(ngram_counts(output.split(), CIDER_N), doc_freq, log_n_docs)
        total = np.array([0.0] * CIDER_N)
        for counts in group:
            total += np.array(cider_sim(hyp, cider_vector(counts, doc_freq, log_n_docs)))
        scores.append(np.mean(total) / len(group) * 10.0)
    return float(np.mean(np.array(scores)))

"""BLEU and NIST exactly as the official E2E scorer gets them from NIST's Perl mteval-v13a.

e2e-metrics' measure_scores.py writes the references (one SGML "system" per reference slot, empty slots
padded with '') and the outputs to .sgm files and runs mteval-v13a-sig.pl with its defaults: 11b-style
tokenization, lowercasing, closest-reference brevity penalty, smoothed BLEU, 5-gram NIST. The whole test
set is one document, so the system score is computed from corpus-wide sums. Used by eval.score().
"""
import math
import re
from collections import Counter
from functools import reduce

# Perl's \s on decoded (UTF-8 flagged) strings; Python's \s also takes \x1c-\x1f, which Perl keeps in words.
PERL_SPACE = r"[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")  # Perl's tr/[A-Z]/[a-z]/


def mteval_tokenize(text: str) -> list[str]:
    """mteval-v13a's `tokenization` (the default, not --international-tokenization), split into words."""
    text = re.sub(PERL_SPACE + "+", " ", text)  # the SGML reader joins each document's whitespace runs
    text = text.replace("<skipped>", "")
    for entity, char in (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")):
        text = text.replace(entity, char)
    text = f" {text} ".translate(ASCII_LOWER)
    text = re.sub(r"([{-~\[-` -&(-+:-@/])", r" \1 ", text)  # every ASCII symbol but ' - . , is a word
    text = re.sub(r"([^0-9])([.,])", r"\1 \2 ", text)  # . and , split off unless inside a number
    text = re.sub(r"([.,])([^0-9])", r" \1 \2", text)
    text = re.sub(r"([0-9])(-)", r"\1 \2 ", text)
    text = re.sub(PERL_SPACE + "+", " ", text).strip(" ")
    return text.split(" ") if text else []


def ngram_counts(words: list[str], max_n: int) -> Counter:
    """Counts of every n-gram, n = 1..max_n, keyed by word tuples."""
    return Counter(tuple(words[i:i + n]) for n in range(1, max_n + 1) for i in range(len(words) - n + 1))


def ngram_info(ref_counts: list[Counter]) -> dict[tuple, float]:
    """NIST information weight of an n-gram: -log2 P(last word | first n-1 words), estimated on all references."""
    totals = Counter()
    for counts in ref_counts:
        totals.update(counts)
    total_words = sum(count for gram, count in totals.items() if len(gram) == 1)
    info = {}
    for gram, count in totals.items():
        # Perl tests the (n-1)-gram string for truth, so a context that is the single word "0" counts as none.
        context = gram[:-1]
        denominator = totals[context] if context and context != ("0",) else total_words
        info[gram] = -math.log(count / denominator) / math.log(2)
    return info


def closest_ref_length(ref_lengths: list[int], hyp_length: int) -> int:
    """mteval's brevity_penalty_closest folded over the reference slots: the closest length, ties to the shorter.
    The first slot always takes part; later empty slots (padding, or references with no words) are skipped."""
    candidates = ref_lengths[:1] + [n for n in ref_lengths[1:] if n > 0]
    return min(candidates, key=lambda n: (abs(hyp_length - n), n))


def bleu_smoothed(ref_length: int, matches: list[int], totals: list[int]) -> float:
    """mteval-v13a's bleu_score: 4-gram BLEU where the k-th zero match count becomes 1/2^k."""
    bp = math.exp(min(0.0, 1 - ref_length / totals[0])) if totals[0] > 0 else 0.0
    log_sum, smooth = 0.0, 1
    for n in range(4):
        if totals[n] == 0:
            continue
        if matches[n] == 0:
            smooth *= 2
            log_sum += math.log(1 / (smooth * totals[n]))
        else:
            log_sum += math.log(matches[n] / totals[n])
    return math.exp(log_sum / 4) * bp


def nist_length_penalty(ratio: float) -> float:
    """1 at or above the average reference length, falling to 0.5 at 2/3 of it (mteval's beta)."""
    if ratio >= 1:
        return 1.0
    if ratio <= 0:
        return 0.0
    beta = -math.log(0.5) / math.log(1.5) / math.log(1.5)
    return math.exp(-beta * math.log(ratio) ** 2)


def bleu_nist(refs: list[list[str]], outputs: list[str]) -> tuple[float, float]:
    """Corpus BLEU (0-1) and NIST, rounded to 4 decimals as measure_scores.py parses them from Perl's output."""
    ref_words = [[mteval_tokenize(r) for r in group] for group in refs]
    ref_counts = [[ngram_counts(words, 5) for words in group] for group in ref_words]
    info = ngram_info([counts for group in ref_counts for counts in group])
    matches, totals, info_sums = [0] * 5, [0] * 5, [0.0] * 5
    ref_length = n_refs = ref_unigrams = 0
    for words, counts, output in zip(ref_words, ref_counts, outputs):
        hyp = mteval_tokenize(output)
        max_ref = reduce(Counter.__ior__, counts, Counter())  # per n-gram, the most any one reference has
        for gram, clipped in (ngram_counts(hyp, 5) & max_ref).items():
            matches[len(gram) - 1] += clipped
            info_sums[len(gram) - 1] += info[gram] * clipped
        for n in range(5):
            totals[n] += max(0, len(hyp) - n)
        ref_length += closest_ref_length([len(w) for w in words], len(hyp))
        n_refs += sum(1 for w in words if w)
        ref_unigrams += sum(len(w) for w in words)
    bleu = bleu_smoothed(ref_length, matches, totals)
    nist = sum(s / max(t, 1) for s, t in zip(info_sums, totals))
    nist *= nist_length_penalty(totals[0] / (ref_unigrams / (n_refs / len(refs))))
    return float(f"{bleu:.4f}"), float(f"{nist:.4f}")

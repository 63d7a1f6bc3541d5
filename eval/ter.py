"""TER exactly as tercom 0.7.25 computes it, the TER of the WebNLG 2017 and DART official scorers.

TER (Snover et al. 2006) counts the edits that turn a hypothesis into its closest reference: insertions, deletions,
substitutions and shifts of a word sequence, each costing 1. The corpus score is the summed edits over the summed
*average* reference length, so it can exceed 1. tercom's defaults apply: case-insensitive, words split on spaces, a
greedy search for the best shift, an edit distance pruned to a beam of 20, shifts of at most 10 words over at most
50. Its prunings and tie-breaks change the score, so this follows its algorithm step by step (sacrebleu's TER is not
equal: 0.40379 vs 0.40260 on WebNLG MELBOURNE seen). The pairs' searches advance in lockstep, so that the edit
distances of one round are computed in a few large numpy batches. Used by eval.data2text.
"""
from collections import defaultdict

import numpy as np

BEAM_WIDTH, MAX_SHIFT_SIZE, MAX_SHIFT_DIST = 20, 10, 50
INF = 999999  # tercom's cost of an unreached cell
TABLE_CELLS = 1 << 18  # N x H x R of one batch of edit tables (larger ones fall out of the CPU cache)
Moves = list[tuple[np.ndarray, np.ndarray]]  # per table column: where an insertion, where a deletion won


def edit_table(hyps: np.ndarray, refs: np.ndarray, paths: bool) -> tuple[np.ndarray, Moves]:
    """tercom's MinEditDist for N pairs at once: word ids hyps (N, H), refs (N, R), -1 padding refs.
    A Levenshtein table filled column by column (column j: hyp[:j]); a cell takes the diagonal move, an
    insertion only if strictly cheaper, then a deletion only if strictly cheaper. A cell of column j < H
    is expanded only within BEAM_WIDTH of the cheapest diagonal move into column j; tercom's bookkeeping
    of first and last good rows never drops a reached cell, so the beam is its only pruning. Returns the
    last column (R+1, N) and, if asked, per column where an insertion and where a deletion won (for trace)."""
    rows = np.arange(refs.shape[1] + 1, dtype=np.int32)[:, None]            # (R+1, 1): pairs run along axis 1
    # A padding row lies below its pair's last row, so it never feeds a real cell; moving into it
    # diagonally costs INF, so it never sets the beam either.
    step_cost = np.where(refs.T[None] < 0, np.int32(INF), hyps.T[:, None] != refs.T[None])  # (H, R, N)
    cost = np.broadcast_to(rows, (len(rows), len(hyps)))                     # column 0: deletions only
    pushed, moves = cost, []
    diag = np.full(cost.shape, INF, dtype=np.int32)
    for j in range(len(step_cost)):
        np.add(pushed[:-1], step_cost[j], out=diag[1:])
        ins = pushed + 1
        base = np.minimum(diag, ins)
        # Deletions run down the column: cost_i = min over k <= i of base_k + (i - k). One out of a pruned
        # cell only reaches cells that are pruned too, so it changes no expanded cell.
        cost = np.minimum.accumulate(base - rows, axis=0) + rows
        if paths:
            moves.append((ins < diag, cost < base))
        pushed = np.where(cost <= diag.min(axis=0) + BEAM_WIDTH, cost, INF)  # unused after the last column
    return cost, moves


def trace(moves: Moves, k: int, hyp: tuple, ref: tuple) -> str:
    """Pair k's path in tercom's symbols (' ' match, S, I, D), from the table's last cell back to its first."""
    path, h, r = [], len(hyp), len(ref)
    while h > 0 or r > 0:
        if h == 0 or moves[h - 1][1][r, k]:
            step = "D"
        elif moves[h - 1][0][r, k]:
            step = "I"
        else:
            step = " " if hyp[h - 1] == ref[r - 1] else "S"
        path.append(step)
        r -= step != "I"
        h -= step != "D"
    return "".join(reversed(path))


def edit_distances(hyps: list[tuple], refs: list[tuple], paths: bool = False) -> list:
    """Cost (or, if asked, (cost, path)) of each pair of non-empty word-id tuples. Pairs are batched by hypothesis
    length (a table's columns), with references padded to the longest of the batch; batches stay under TABLE_CELLS
    cells."""
    by_length = defaultdict(list)
    for k, hyp in enumerate(hyps):
        by_length[len(hyp)].append(k)
    out: list = [None] * len(hyps)
    for length, ks in by_length.items():
        ks.sort(key=lambda k: len(refs[k]))
        size = max(1, TABLE_CELLS // (length * len(refs[ks[-1]])))
        for batch in (ks[i:i + size] for i in range(0, len(ks), size)):
            ref_ids = np.full((len(batch), len(refs[batch[-1]])), -1)
            for n, k in enumerate(batch):
                ref_ids[n, :len(refs[k])] = refs[k]
            last, moves = edit_table(np.array([hyps[k] for k in batch]), ref_ids, paths)
            for n, k in enumerate(batch):
                cost = int(last[len(refs[k]), n])
                out[k] = (cost, trace(moves, n, hyps[k], refs[k])) if paths else cost
    return out


def ref_ngram_starts(hyp: tuple, ref: tuple) -> dict[tuple, list[int]]:
    """tercom's BuildWordMatches: where each ref n-gram (n <= 11) made only of hyp words starts, ascending."""
    hyp_words, starts = set(hyp), {}
    for start in range(len(ref)):
        for end in range(start, min(len(ref), start + MAX_SHIFT_SIZE + 1)):
            if ref[end] not in hyp_words:
                break
            starts.setdefault(ref[start:end + 1], []).append(start)
    return starts


def alignment_errors(path: str, n_hyp: int, n_ref: int) -> tuple[list[bool], list[bool], list[int]]:
    """Which hyp and ref words the path leaves unmatched, and the hyp position each ref word lines up after."""
    hyp_err, ref_err, ref_align = [False] * n_hyp, [False] * n_ref, [0] * n_ref
    h = r = -1
    for step in path:
        if step != "D":
            h += 1
            hyp_err[h] = step != " "
        if step != "I":
            r += 1
            ref_err[r], ref_align[r] = step != " ", h
    return hyp_err, ref_err, ref_align


def candidate_shifts(cur: tuple, starts: dict, path: str, n_ref: int) -> list[tuple[int, int, int]]:
    """tercom's GatherAllPossShifts: (start, end, new position) of each shift worth trying, longest first.
    A shift moves hyp words cur[start..end] that are not all matched to where the same words stand
    unmatched in the reference, i.e. just after the hyp word that ref position is aligned after (-1: front)."""
    hyp_err, ref_err, ref_align = alignment_errors(path, len(cur), n_ref)
    shifts = [[] for _ in range(MAX_SHIFT_SIZE + 1)]
    for start in range(len(cur)):
        if not any(start != ref_align[m] and ref_align[m] - start <= MAX_SHIFT_DIST
                   and start - ref_align[m] - 1 <= MAX_SHIFT_DIST for m in starts.get(cur[start:start + 1], ())):
            continue
        for end in range(start, min(len(cur), start + MAX_SHIFT_SIZE)):
            if cur[start:end + 1] not in starts:
                break
            if not any(hyp_err[start:end + 1]):
                continue
            movable = False
            for m in starts[cur[start:end + 1]]:
                if start <= ref_align[m] <= end or abs(ref_align[m] - start) > MAX_SHIFT_DIST:
                    continue
                movable = True
                if not any(ref_err[m:m + end - start + 1]):
                    continue
                for off in range(-1, end - start + 1):
                    if off == -1 and m == 0:
                        shifts[end - start].append((start, end, -1))
                    elif start != ref_align[m + off] and (off == 0 or ref_align[m + off] != ref_align[m]):
                        shifts[end - start].append((start, end, ref_align[m + off]))
            if not movable:
                break
    return [shift for group in reversed(shifts) for shift in group]


def shifted(words: tuple, start: int, end: int, to: int) -> tuple:
    """tercom's PerformShift: words[start..end] moved to just after position `to` (-1: to the front)."""
    block = words[start:end + 1]
    if to < start:
        moved = words[:to + 1] + block + words[to + 1:start] + words[end + 1:]
    elif to > end:
        moved = words[:start] + words[end + 1:to + 1] + block + words[to + 1:]
    else:  # into itself: tercom moves it right by to - start and keeps the old words where that runs off the end
        moved = words[:start] + words[end + 1:end + 1 + to - start] + block + words[end + 1 + to - start:]
    return moved + words[len(moved):]


def pick_shift(shifts: list[tuple[int, int, int]], costs: list[int], edits: int) -> int | None:
    """tercom's CalcBestShift choice among shifts tried longest first: the index of the best, None if none gains.
    A shift costs 1, so the first one found that saves exactly 1 edit is taken too; tercom stops trying
    once no shift of the current length can beat the best so far."""
    best, best_cost, best_edits = None, 0, edits
    for k, ((start, end, _), new_edits) in enumerate(zip(shifts, costs)):
        fix, max_fix = edits - (best_cost + best_edits), 2 * (end - start + 1)
        if fix > max_fix or (best_cost != 0 and fix == max_fix):
            break
        gain = (best_edits + best_cost) - (new_edits + 1)
        if gain > 0 or (best_cost == 0 and gain == 0):
            best, best_cost, best_edits = k, 1, new_edits
    return best


def shift_edits(hyps: list[tuple], refs: list[tuple]) -> list[int]:
    """Edits from each hyp to its ref (non-empty word-id tuples): tercom's greedy search, all pairs in lockstep.
    Each round takes, for every pair still searching, the best shift of its current words (if one helps);
    the result is the last edit distance plus 1 per shift taken."""
    starts = [ref_ngram_starts(hyp, ref) for hyp, ref in zip(hyps, refs)]
    words, edits, paths, n_shifts = list(hyps), [0] * len(hyps), [""] * len(hyps), [0] * len(hyps)
    moved = dict(enumerate(hyps))  # the pairs whose words changed (at first: all), with their new words
    while moved:
        for k, (cost, path) in zip(moved, edit_distances(list(moved.values()), [refs[k] for k in moved], True)):
            words[k], edits[k], paths[k] = moved[k], cost, path
        shifts = {k: candidate_shifts(words[k], starts[k], paths[k], len(refs[k])) for k in moved}
        tried = [(k, shifted(words[k], *s)) for k in shifts for s in shifts[k]]
        costs = edit_distances([w for _, w in tried], [refs[k] for k, _ in tried])
        moved, at = {}, 0
        for k, candidates in shifts.items():
            best = pick_shift(candidates, costs[at:at + len(candidates)], edits[k])
            if best is not None:
                moved[k], n_shifts[k] = tried[at + best][1], n_shifts[k] + 1
            at += len(candidates)
    return [e + n for e, n in zip(edits, n_shifts)]


def ter(refs: list[list[str]], hyps: list[str], searched: dict[tuple, int] | None = None) -> float:
    """Corpus TER: summed edits to each closest reference over summed average reference lengths (tercom's
    score_all_refs and "Total TER"). An empty side is all insertions or all deletions (TERnullstr).
    `searched` ((hyp, ref) words -> edits) is read and filled: a call scoring several pairs searches each once."""
    searched = {} if searched is None else searched
    tokens = [[tuple(text.lower().split()) for text in [hyp, *group]] for hyp, group in zip(hyps, refs)]
    pairs = list(dict.fromkeys((hyp, ref) for hyp, *group in tokens for ref in group
                               if hyp and ref and (hyp, ref) not in searched))
    vocab: dict[str, int] = {}
    ids = [[tuple(vocab.setdefault(w, len(vocab)) for w in words) for words in pair] for pair in pairs]
    searched.update(zip(pairs, shift_edits([hyp for hyp, _ in ids], [ref for _, ref in ids])))
    edits = words = 0.0
    for hyp, *group in tokens:
        best = min(searched[hyp, ref] if hyp and ref else len(hyp) + len(ref) for ref in group)
        edits, words = edits + best, words + sum(len(ref) for ref in group) / len(group)
    return edits / words

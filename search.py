"""Beam search over a frozen GPT-2 with a past (Li & Liang 2021, "Experimental Setup": E2E is decoded by beam, K=5).

A test set is decoded as one stream (continuous batching): up to batch_size prompts × K beams run in one forward
per step, and when a prompt finishes, its K rows are handed to the next prompt waiting, so the batch stays full
to the end instead of idling until its slowest prompt is done. Each prompt is read once (one row, not K); its
KV cache then grows one token a step in a preallocated buffer and beams are reordered by copying rows
(`beam_idx`), never recomputed. A prefix is a past each row attends to, one per prompt if need be (many tasks,
one backbone). The rules are transformers' `generate(num_beams=K)` on each prompt alone: 2K candidates a step,
K finished hypotheses scored sum(log p) / generated_length ** length_penalty, and its stopping rule for
early_stopping False, True, "never". beam.py is the command around it.
    hyps = beam_search(model, [prompt_ids, ...], BeamConfig(beams=5), past_kv, batch_size=10)  # in input order
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from model import GPT, PastKV


class BeamError(Exception):
    """Input beam.py cannot decode; the message names the prompt or file and the fix."""


@dataclass
class BeamConfig:
    beams: int = 5                       # K; 1 is greedy
    max_new_tokens: int = 100
    min_new_tokens: int = 0              # EOS is banned until this many new tokens
    length_penalty: float = 1.0          # exponent on the generated length, EOS included
    early_stopping: bool | str = False   # False: transformers' heuristic; True: stop at K finished; "never"
    no_repeat_ngram_size: int = 0        # 0 = off; an n-gram of prompt + output may not occur twice
    banned: tuple[int, ...] = ()
    eos: int = 50256

    def __post_init__(self) -> None:
        if self.beams < 1 or self.max_new_tokens < 1 or self.min_new_tokens < 0 or self.no_repeat_ngram_size < 0:
            raise BeamError(f"beams={self.beams}, max_new_tokens={self.max_new_tokens}, min_new_tokens="
                            f"{self.min_new_tokens}, no_repeat_ngram_size={self.no_repeat_ngram_size}: need beams "
                            f"and max_new_tokens >= 1, the others >= 0.")
        if self.early_stopping not in (False, True, "never"):
            raise BeamError(f"early_stopping={self.early_stopping!r}; expected False, True or 'never'.")


class Hyp(NamedTuple):
    tokens: list[int]  # generated ids, without the final EOS
    score: float       # sum of log-probs / len(generated, EOS included) ** length_penalty


# --- one step of the search ---------------------------------------------------------------------------------

def left_pad(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged prompts -> idx (B, T) left-padded with -1 (it matches no n-gram) and attention_mask (B, T).
    Left padding puts every row's next token in the last column; model.py derives positions from the mask."""
    T = max(len(p) for p in prompts)
    idx = torch.tensor([[-1] * (T - len(p)) + p for p in prompts])  # (B, T)
    return idx, (idx >= 0).long()


def block(logp: torch.Tensor, hist: torch.Tensor, made: torch.Tensor, cfg: BeamConfig) -> torch.Tensor:
    """Set forbidden next tokens of logp (N, V) to -inf, after log_softmax as transformers' processors do.
    hist (N, L): each row's prompt + output so far, -1 before it; made (N,): tokens each row has generated."""
    logp[:, list(cfg.banned)] = float("-inf")
    logp[made < cfg.min_new_tokens, cfg.eos] = float("-inf")
    n = cfg.no_repeat_ngram_size
    if n and hist.size(1) >= n:
        windows = hist.unfold(1, n, 1)                                        # (N, L-n+1, n)
        seen = (windows[..., :-1] == hist[:, None, hist.size(1) - n + 1:]).all(-1)  # (N, L-n+1) starts as our tail
        V = logp.size(1)
        ban = torch.zeros(logp.size(0), V + 1, dtype=torch.bool, device=logp.device)  # column V: no ban
        ban.scatter_(1, torch.where(seen, windows[..., -1], V), True)
        logp = logp.masked_fill(ban[:, :V], float("-inf"))
    return logp


def beam_step(logp: torch.Tensor, beam_scores: torch.Tensor, K: int) -> tuple[torch.Tensor, ...]:
    """logp (B, K, V) of each beam's next token, beam_scores (B, K) -> the 2K best continuations per prompt:
    scores (B, 2K) best first, source beam (B, 2K), token (B, 2K). 2K, as transformers keeps: even if K of
    them end in EOS, K remain to continue."""
    B, k, V = logp.shape
    scores, flat = (beam_scores[:, :, None] + logp).view(B, k * V).topk(2 * K)
    return scores, flat // V, flat % V


def keep_best(pool: list[Hyp], new: list[Hyp], K: int) -> list[Hyp]:
    """The K best finished hypotheses of a prompt, best first (ties: the earlier one)."""
    return sorted(pool + new, key=lambda h: -h.score)[:K]


def is_done(pool: list[Hyp], bound: float, cfg: BeamConfig) -> bool:
    """transformers' stopping rule for one prompt: never before K hypotheses have finished; then at once
    (early_stopping=True), or once the best live beam, scored as if it ended now (False) or at
    max_new_tokens ("never", length_penalty > 0), cannot beat the worst finished one."""
    if len(pool) < cfg.beams:
        return False
    return cfg.early_stopping is True or bound <= pool[-1].score


def check_lengths(prompts: list[list[int]], P: int, cfg: BeamConfig, n_positions: int) -> None:
    if not prompts:
        raise BeamError("no prompts to decode (an empty file, or --limit 0?).")
    for i, p in enumerate(prompts, 1):
        if not p:
            raise BeamError(f"prompt {i} is empty. Give every prompt at least one token.")
        if P + len(p) + cfg.max_new_tokens - 1 > n_positions:
            raise BeamError(f"prompt {i}: {len(p)} tokens + prefix {P} + max_new_tokens {cfg.max_new_tokens} does "
                            f"not fit the context of {n_positions} positions. Shorten it or lower --max-new-tokens.")


# --- the stream ---------------------------------------------------------------------------------------------

SLACK = 16  # dead columns (of prompts gone) tolerated before `compact` shifts the live ones left

class Rows:
    """The batch's rows, allocated once: per layer keys and values (R, H, W, D), and the key mask (R, W) and
    tokens (R, W, -1 where none) of the same columns. Slot s, one prompt, owns rows s·K..s·K+K-1.

    Columns are time: every live row writes its next key and value at column `c`, model.forward(write_at=c).
    A prompt that joins mid-stream is read (prefill) beside nothing else and its keys are placed right-aligned
    before column c, whatever the other rows hold there: a decoding query attends to every real key, in any
    order, and model.py takes the new token's position from the count of real keys before it (the mask), so
    the row decodes as it would alone. In place, a step writes one column per row, where model.py's torch.cat
    copies the whole past of every row (transformers also reorders all of it, see `reorder`). Measured at the gpt2
    shape, 50 rows, 1 CPU thread, against the same forward joining the past by cat: 23% faster at 60 past
    columns, 36-42% at 100-150; bench_beam.py's 32-token row 18% faster end to end (best of 4).
    """

    def __init__(self, model: GPT, R: int, W: int, c: int):
        cf, w = model.config, model.lm_head.weight
        self.kv = [tuple(torch.zeros(R, cf.n_head, W, cf.head_dim, dtype=w.dtype, device=w.device) for _ in "kv")
                   for _ in range(cf.n_layer)]                                   # per layer (R, H, W, D)
        self.mask = torch.zeros(R, W, dtype=torch.long, device=w.device)         # (R, W) 1 = real key
        self.toks = torch.full((R, W), -1, device=w.device)                      # (R, W) for n-gram blocking
        self.c = c                                                               # the next column written

    def tensors(self) -> list[tuple[torch.Tensor, int]]:
        """Every buffer with its column axis."""
        return [(t, 2) for pair in self.kv for t in pair] + [(self.mask, 1), (self.toks, 1)]

    def place(self, rows: slice, kv: PastKV, mask: torch.Tensor, idx: torch.Tensor, K: int) -> None:
        """Prefilled prompts -> their K rows each: kv per layer (n, H, S, D), mask (n, S), idx (n, T) ending
        at column c - 1."""
        n, S = mask.shape
        for (bk, bv), (k, v) in zip(self.kv, kv):
            bk[rows].view(n, K, *bk.shape[1:])[:, :, :, self.c - S:self.c] = k[:, None]  # (n, K, H, S, D)
            bv[rows].view(n, K, *bv.shape[1:])[:, :, :, self.c - S:self.c] = v[:, None]
        self.mask[rows], self.toks[rows] = 0, -1  # the leaving prompt's columns are forgotten
        self.mask[rows, self.c - S:self.c] = mask.repeat_interleave(K, 0)
        self.toks[rows, self.c - idx.size(1):self.c] = idx.repeat_interleave(K, 0)

    def reorder(self, beam_idx: torch.Tensor, lo: int) -> None:
        """Row r takes the keys of row beam_idx[r] (n·K,). A prompt's K beams share its prefix and prompt keys
        and its mask, so only the rows that changed beam are copied, and only the generated columns lo..c."""
        moved = (beam_idx != torch.arange(beam_idx.numel(), device=beam_idx.device)).nonzero()[:, 0]  # (m,)
        for t, axis in [(t, 2) for pair in self.kv for t in pair] + [(self.toks, 1)]:
            gen = t.narrow(axis, lo, self.c - lo)                                # (R, H, c-lo, D) or (R, c-lo), a view
            gen.index_copy_(0, moved, gen.index_select(0, beam_idx[moved]))

    def move(self, src: slice, dst: slice) -> None:
        """A slot's rows to another slot (the last slot fills a finished one's gap, keeping live rows first)."""
        for t, axis in self.tensors():
            t.narrow(axis, 0, self.c + 1)[dst] = t.narrow(axis, 0, self.c + 1)[src]

    def compact(self, rows: int, keep: int) -> int:
        """Shift the first `rows` rows left past the columns none of them reads any more, once there are SLACK of
        them (or the buffer is full), leaving c >= keep (room for a joining prompt's keys). Every step attends over
        all c columns, so dead ones cost time; a shift copies the live ones, so it waits for SLACK.
        Returns the shift, by which the slots' start columns move."""
        used = self.mask[:rows, :self.c].any(0).nonzero()                        # (u, 1) columns still read
        d = min(int(used[0]) if used.numel() else self.c, self.c - keep)
        if d < SLACK and self.c < self.mask.size(1):
            return 0
        for t, axis in self.tensors():
            t[:rows].narrow(axis, 0, self.c - d).copy_(t[:rows].narrow(axis, d, self.c - d).clone())
        self.c -= d
        return d


def prefill(model: GPT, prompts: list[list[int]], past_kv: PastKV | None, past_mask: torch.Tensor | None,
            at: list[int]) -> tuple[PastKV, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read prompts joining the stream, each after its prefix (row at[i] of past_kv (U, H, P, D), past_mask (U, P))
    -> their keys/values per layer (n, H, S, D), key mask (n, S), idx (n, T) left-padded, logits (n, V)."""
    dev = model.lm_head.weight.device
    idx, mask = (t.to(dev) for t in left_pad(prompts))                      # (n, T)
    past = None
    if past_kv is not None:  # the prefix is real keys before the prompt
        rows = torch.tensor(at, device=dev)
        past = [(k[rows], v[rows]) for k, v in past_kv]                      # (n, H, P, D)
        mask = torch.cat([past_mask[rows], mask], 1)                         # (n, S), S = P + T
    out = model(idx.clamp(min=0), past_kv=past, attention_mask=mask, use_cache=True, last_only=True)
    return out.present_kv, mask, idx, out.logits[:, -1]


@torch.no_grad()
def stream(model: GPT, prompts: list[list[int]], cfg: BeamConfig, past_kv: PastKV | None = None,
           past_mask: torch.Tensor | None = None, past_rows: list[int] | None = None,
           batch_size: int | None = None) -> Iterator[tuple[int, Hyp]]:
    """Yield (i, best hypothesis of prompt i) as prompts finish. past_kv: per layer (U, H, P, D), the prefixes;
    past_mask (U, P): their real slots (prefix.stack left-pads), all real if None; past_rows: each prompt's row
    of them (default: row 0 when U is 1, else row i); batch_size: prompts decoded at once (default: all)."""
    dev, N, K = model.lm_head.weight.device, len(prompts), cfg.beams
    P = 0 if past_kv is None else past_kv[0][0].size(2)
    check_lengths(prompts, P, cfg, model.config.n_positions)
    U = 1 if past_kv is None else past_kv[0][0].size(0)
    past_rows = past_rows or [0 if U == 1 else i for i in range(N)]
    if past_kv is not None:
        past_mask = (torch.ones(1, P) if past_mask is None else past_mask).long().to(dev).expand(U, P)  # (U, P)
    width, nb = P + max(map(len, prompts)), min(batch_size or N, N)  # width: the most columns a prompt reads
    # A live row spans at most width + max_new_tokens columns, and `compact` leaves fewer than SLACK dead ones.
    rows = Rows(model, nb * K, width + cfg.max_new_tokens + SLACK, c=width)
    waiting, slots, start = deque(range(N)), [], []  # prompts not begun; per slot its prompt, first output column
    pools: list[list[Hyp]] = [[] for _ in range(N)]
    beam_scores = torch.zeros(0, K, device=dev)                              # (n, K)
    logits = torch.zeros(0, model.config.vocab_size, device=dev)             # (n·K, V) each row's next token
    while waiting or slots:
        joined = bool(waiting) and len(slots) < nb
        if joined:  # prompts join the free slots, read in one forward of their own
            new = [waiting.popleft() for _ in range(min(nb - len(slots), len(waiting)))]
            kv, mask, idx, first_logits = prefill(model, [prompts[i] for i in new], past_kv, past_mask,
                                                  [past_rows[i] for i in new])
            rows.place(slice(len(slots) * K, (len(slots) + len(new)) * K), kv, mask, idx, K)
            # A prompt enters as K beams with the same keys; beams 1..K-1 start at -1e9, as transformers starts
            # them, so the first step's 2K candidates all come from beam 0: the prompt alone, fanned out.
            first = torch.tensor([0.0] + [-1e9] * (K - 1), device=dev).expand(len(new), K)  # (n', K)
            beam_scores, slots, start = torch.cat([beam_scores, first]), slots + new, start + [rows.c] * len(new)
            logits = torch.cat([logits, first_logits.repeat_interleave(K, 0)])  # (n·K, V)
        n, c = len(slots), rows.c
        made = torch.tensor([c - s for s in start], device=dev)                # (n,) tokens each prompt has made
        logp = block(F.log_softmax(logits.float(), -1), rows.toks[:n * K, :c], made.repeat_interleave(K), cfg)
        scores, src, tok = beam_step(logp.view(n, K, -1), beam_scores, K)    # (n, 2K) each
        last = (made + 1 == cfg.max_new_tokens)[:, None]                     # (n, 1)
        ends = (tok == cfg.eos) | last                                       # (n, 2K)
        # Only the top K candidates may finish (the other K are spares to go on with); a finished
        # hypothesis is scored on its generated length, EOS included.
        final = (scores / (made[:, None] + 1) ** cfg.length_penalty).tolist()
        for i, j in ends[:, :K].nonzero().tolist():
            e, row = tok[i, j].item(), i * K + src[i, j].item()
            gen = rows.toks[row, start[i]:c].tolist() + ([] if e == cfg.eos else [e])
            pools[slots[i]] = keep_best(pools[slots[i]], [Hyp(gen, final[i][j])], K)
        keep = (scores - 1e9 * ends.float()).topk(K).indices                 # (n, K) the best K going on
        beam_scores, src, tok = scores.gather(1, keep), src.gather(1, keep), tok.gather(1, keep)
        never, lp = cfg.early_stopping == "never" and cfg.length_penalty > 0, cfg.length_penalty
        bound = (beam_scores[:, 0] / (cfg.max_new_tokens if never else made + 1) ** lp).tolist()
        done = [stop or is_done(pools[p], b, cfg) for p, b, stop in zip(slots, bound, last.flatten().tolist())]
        rows.reorder((torch.arange(n, device=dev)[:, None] * K + src).flatten(), lo=min(start))
        rows.toks[:n * K, c], rows.mask[:n * K, c] = tok.flatten(), 1
        # A finished prompt leaves (transformers freezes its pool too); the last slot moves into its rows, so
        # the live rows stay first and the forward takes them as a view.
        for i in reversed([i for i, d in enumerate(done) if d]):
            yield slots[i], pools[slots[i]][0]
            if i != len(slots) - 1:
                rows.move(slice((len(slots) - 1) * K, len(slots) * K), slice(i * K, (i + 1) * K))
                slots[i], start[i], beam_scores[i] = slots[-1], start[-1], beam_scores[-1]
            slots, start, beam_scores = slots[:-1], start[:-1], beam_scores[:-1]
        R = len(slots) * K
        logits = logits[:0]
        if R:
            kv = [(k[:R], v[:R]) for k, v in rows.kv]                         # (R, H, W, D) views
            logits = model(rows.toks[:R, c:c + 1], past_kv=kv, attention_mask=rows.mask[:R, :c + 1],
                           last_only=True, write_at=c).logits[:, -1]          # (R, V)
        rows.c += 1
        # compact shifts by min(first column any row reads, c - width) once that reaches SLACK. The first moves
        # only when a prompt joins or leaves (a reorder stays within a prompt's beams, which share its columns) and
        # c - width grows by one a step, so the per-step scan of the key mask is needed only at those steps.
        if joined or any(done) or rows.c in (width + SLACK, rows.mask.size(1)):
            d = rows.compact(R, keep=width)
            start = [s - d for s in start]


def beam_search(model: GPT, prompts: list[list[int]], cfg: BeamConfig, past_kv: PastKV | None = None,
                past_mask: torch.Tensor | None = None, past_rows: list[int] | None = None,
                batch_size: int | None = None) -> list[Hyp]:
    """The best hypothesis per prompt, in input order (`stream`'s arguments)."""
    best = dict(stream(model, prompts, cfg, past_kv, past_mask, past_rows, batch_size))
    return [best[i] for i in range(len(prompts))]

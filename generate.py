"""Generating from a frozen GPT-2 with a past: what every decoder shares, and sampling (= generate(do_sample=True)).

A past is what the model attends to before a prompt: a prefix (one for all rows, or one per row: many tasks on one
backbone), or nothing. Every decoder first reads its prompts after it (`prefill`, one forward of left-padded
prompts) and then extends each row token by token; beam.py's beam search is the paper's decoding ("Experimental
Setup"), sampling is the CPU poster's (reviews from a label's prefix: beam.py --sample --label). The sampling rules
are transformers' generate(do_sample=True): per step the processors (banned tokens, EOS before min_new_tokens), then
the warpers in `_get_logits_processor`'s order, temperature -> top-k -> top-p, then one torch.multinomial over the
whole batch. Finished rows keep drawing (their token is padding), so the same seed, prompts and batch give
generate's draws. A score is the sum of log p of the sampled tokens, EOS included, under the filtered distribution.
    hyps = sample(model, [prompt_ids, ...], SampleConfig(top_p=0.9, seed=1, num_return=3), past_kv)  # N per prompt
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from data import read_entries
from files.datasets import Entry
from files.decoding import read_prompts
from model import GPT, PastKV, past_len


class DecodeError(Exception):
    """Input that cannot be decoded (beam.py's flags, prompts, requests); the message names it and the fix."""


class Hyp(NamedTuple):
    tokens: list[int]  # generated ids, without the final EOS
    score: float       # sum of log-probs / len(generated, EOS included) ** length_penalty


def left_pad(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged prompts -> idx (B, T) left-padded with -1 (it matches no n-gram) and attention_mask (B, T).
    Left padding puts every row's next token in the last column; model.py derives positions from the mask."""
    T = max(len(p) for p in prompts)
    idx = torch.tensor([[-1] * (T - len(p)) + p for p in prompts])  # (B, T)
    return idx, (idx >= 0).long()


def check_lengths(prompts: list[list[int]], P: int, max_new_tokens: int, n_positions: int) -> None:
    """Refuse, before any decoding, a prompt that is empty or would outgrow the model's context."""
    if not prompts:
        raise DecodeError("no prompts to decode (an empty file, or --limit 0?).")
    for i, p in enumerate(prompts, 1):
        if not p:
            raise DecodeError(f"prompt {i} is empty. Give every prompt at least one token.")
        if P + len(p) + max_new_tokens - 1 > n_positions:
            raise DecodeError(f"prompt {i}: {len(p)} tokens + prefix {P} + max_new_tokens {max_new_tokens} does "
                            f"not fit the context of {n_positions} positions. Shorten it or lower --max-new-tokens.")


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


def decode_sources(data_dir: str, split: str, prompts: str, limit: int, run: dict | None, raw: bool,
                   label: str = "") -> tuple[list[str], list[Entry] | None, bool]:
    """What to decode: the distinct sources of a dataset split (with its entries, for scoring), a file's lines, or
    one empty source (a label's prefix generates from nothing: the prompt is EOS alone); and whether to put them in
    the training template. A run folder records its template, so its --prompts lines are *sources* in it, as a
    dataset's are (a fine-tuned model ignores a bare line); a bare base model, or `raw`, continues plain text.
    With a `label`, a label run's dataset is that label's entry alone: its output is scored against its texts."""
    if data_dir:
        entries = [e for e in read_entries(data_dir, split) if not label or e.group == label][:limit or None]
        return list(dict.fromkeys(e.source for e in entries)), entries, True  # each distinct source decoded once
    if not prompts:
        return [""], None, True
    templated = run is not None and bool(run.get("template", True)) and not raw
    return read_prompts(prompts)[:limit or None], None, templated


def decode_bytes(model: GPT, rows: int, cols: int) -> int:
    """Memory a decode of `rows` rows over `cols` columns needs: each row's keys and values, and 3 float32 logits."""
    c, size = model.config, model.lm_head.weight.element_size()
    return rows * (2 * c.n_layer * c.n_embd * cols * size + 12 * c.vocab_size)


def rows_of_past(past_kv: PastKV | None, past_mask: torch.Tensor | None, past_rows: list[int] | None, N: int,
                 device: torch.device) -> tuple[torch.Tensor | None, list[int]]:
    """The key mask (U, P) of the U pasts (all real when None; prefix.stack left-pads) and each of the N prompts'
    row of them (default: row 0 when U is 1, else row i)."""
    if past_kv is None:
        return None, [0] * N
    U, P = past_kv[0][0].size(0), past_len(past_kv)
    mask = (torch.ones(1, P) if past_mask is None else past_mask).long().to(device).expand(U, P)  # (U, P)
    return mask, past_rows or [0 if U == 1 else i for i in range(N)]


class StaticStep:
    """One decoding step at fixed shapes: every row (R) and column (W) of a preallocated cache, the column written a
    tensor. Shapes and addresses never change, so on CUDA the step is captured once as a CUDA graph and replayed:
    one launch where the eager forward launches a dozen kernels per layer, which is what a decoding step waits on.
    Elsewhere it runs eagerly, or under torch.compile. The caller keeps the buffers' addresses and has set column c
    of each live row (its token in toks, 1 in mask); a row with nothing there computes junk that nobody reads.
        step = StaticStep(model, kv, mask, toks)     # kv per layer (R, H, W, D); mask, toks (R, W)
        logits = step(c)                             # (R, V), for every row's token at column c
    """

    def __init__(self, model: GPT, kv: PastKV, mask: torch.Tensor, toks: torch.Tensor, compile: bool = False):
        self.model, self.kv, self.mask, self.toks = model, kv, mask, toks
        self.c = torch.zeros(1, dtype=torch.long, device=mask.device)          # (1,) the column, the graph's input
        self.cols = torch.arange(mask.size(1), device=mask.device)              # (W,)
        self.graph, self.logits = None, None
        self.run = torch.compile(self.forward, dynamic=False) if compile else self.forward

    def forward(self) -> torch.Tensor:
        """Logits (R, V) of every row's token at column c, its keys and values written there."""
        # Keys a row sees: its real ones up to c (columns past c hold what `compact` left behind), and c itself, so a
        # row with none (no prompt in it) still attends somewhere and stays finite.
        sees = (self.mask.bool() & (self.cols <= self.c)) | (self.cols == self.c)  # (R, W)
        idx = self.toks[:, self.c].clamp(min=0)                                # (R, 1); -1 (no token) reads id 0
        return self.model(idx, past_kv=self.kv, attention_mask=sees, last_only=True, write_at=self.c).logits[:, -1]

    def __call__(self, c: int) -> torch.Tensor:
        self.c.fill_(c)
        if self.c.device.type != "cuda":
            return self.run()
        if self.graph is None:
            # Warm up on a side stream, as torch.cuda.graphs asks, then record. The warm-up is this very step (it
            # writes column c's keys, the replay writes the same), so nothing is computed twice that matters.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.run()
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits = self.run()                                        # (R, V), rewritten by each replay
        self.graph.replay()
        return self.logits


# --- sampling ----------------------------------------------------------------------------------------------------

@dataclass
class SampleConfig:
    temperature: float = 1.0       # logits / temperature
    top_k: int = 50                # keep the K most likely tokens (transformers' default); 0 = off
    top_p: float = 1.0             # keep the fewest most likely tokens holding mass > 1 - top_p; 1 = off
    seed: int = 0
    num_return: int = 1            # N samples per prompt, rows i·N..i·N+N-1 (generate's num_return_sequences)
    max_new_tokens: int = 100
    min_new_tokens: int = 0        # EOS is banned until this many new tokens
    banned: tuple[int, ...] = ()
    eos: int = 50256

    def __post_init__(self) -> None:
        if not (self.temperature > 0 and self.top_k >= 0 and 0 <= self.top_p <= 1 and self.num_return >= 1):
            raise DecodeError(f"temperature={self.temperature}, top_k={self.top_k}, top_p={self.top_p}, num_return="
                            f"{self.num_return}: need temperature > 0, top_k >= 0, 0 <= top_p <= 1, num_return >= 1.")


def process(logits: torch.Tensor, made: int, cfg: SampleConfig) -> torch.Tensor:
    """transformers' logits processors on logits (R, V), `made` tokens in: banned tokens and early EOS get -inf."""
    ban = torch.zeros(logits.size(-1), dtype=torch.bool, device=logits.device)      # (V,)
    ban[list(cfg.banned) + ([cfg.eos] if made < cfg.min_new_tokens else [])] = True
    return logits.masked_fill(ban, float("-inf"))


def warp(logits: torch.Tensor, cfg: SampleConfig) -> torch.Tensor:
    """transformers' warpers, in its order, on logits (R, V) -> (R, V), filtered tokens at -inf."""
    logits = logits / cfg.temperature
    if cfg.top_k:  # everything below the K-th value goes; ties with it all stay
        kth = logits.topk(min(cfg.top_k, logits.size(-1))).values[:, -1:]          # (R, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1:  # ascending, as TopPLogitsWarper sorts: the tail holding mass <= 1 - top_p goes
        ascending, order = logits.sort(descending=False)                           # (R, V)
        drop = ascending.softmax(-1).cumsum(-1) <= 1 - cfg.top_p                    # (R, V)
        drop[:, -1] = False  # min_tokens_to_keep = 1: the most likely token always stays
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


@torch.no_grad()
def sample_batch(model: GPT, kv: PastKV, mask: torch.Tensor, logits: torch.Tensor, cfg: SampleConfig,
                 generator: torch.Generator) -> list[Hyp]:
    """Sample every row to EOS or max_new_tokens from its cache kv (R, H, S, D), mask (R, S), logits (R, V)."""
    R, dev = mask.size(0), mask.device
    alive, scores = torch.ones(R, dtype=torch.bool, device=dev), torch.zeros(R, device=dev)   # (R,)
    tokens = []
    for made in range(cfg.max_new_tokens):
        if not torch.isfinite(logits).all():
            raise DecodeError("NaN/Inf logits (the prefix or the weights overflow the model's arithmetic); nothing "
                            "was written. Check the prefix (or --prefix weights).")
        probs = warp(process(logits.float(), made, cfg), cfg).softmax(-1)               # (R, V)
        tok = torch.multinomial(probs, 1, generator=generator)[:, 0]                    # (R,) every row draws
        scores += torch.where(alive, probs.gather(1, tok[:, None])[:, 0].log(), 0.0)     # (R,)
        tok = torch.where(alive, tok, cfg.eos)  # a finished row's draw is discarded: it pads with EOS
        tokens.append(tok)
        alive &= tok != cfg.eos
        if not alive.any():
            break
        mask = torch.cat([mask, torch.ones(R, 1, dtype=mask.dtype, device=dev)], 1)   # (R, S + 1)
        out = model(tok[:, None], past_kv=kv, attention_mask=mask, use_cache=True, last_only=True)
        kv, logits = out.present_kv, out.logits[:, -1]                                # (R, H, S + 1, D), (R, V)
    rows = torch.stack(tokens, 1).tolist()                                            # (R, made)
    return [Hyp(row[:row.index(cfg.eos)] if cfg.eos in row else row, s) for row, s in zip(rows, scores.tolist())]


def sample(model: GPT, prompts: list[list[int]], cfg: SampleConfig, past_kv: PastKV | None = None,
           past_mask: torch.Tensor | None = None, past_rows: list[int] | None = None,
           batch_size: int | None = None) -> list[Hyp]:
    """N = cfg.num_return samples per prompt, prompt i's at i·N..i·N+N-1. past_kv, past_mask, past_rows as
    beam.stream's. Prompts go batch_size at a time (default: all, as one generate call) in one RNG stream."""
    dev = model.lm_head.weight.device
    check_lengths(prompts, past_len(past_kv), cfg.max_new_tokens, model.config.n_positions)
    past_mask, past_rows = rows_of_past(past_kv, past_mask, past_rows, len(prompts), dev)
    generator, N, nb = torch.Generator(device=dev).manual_seed(cfg.seed), cfg.num_return, batch_size or len(prompts)
    hyps = []
    for lo in range(0, len(prompts), nb):
        kv, mask, _, logits = prefill(model, prompts[lo:lo + nb], past_kv, past_mask, past_rows[lo:lo + nb])
        kv = [(k.repeat_interleave(N, 0), v.repeat_interleave(N, 0)) for k, v in kv]   # (B·N, H, S, D)
        hyps += sample_batch(model, kv, mask.repeat_interleave(N, 0), logits.repeat_interleave(N, 0), cfg, generator)
    return hyps

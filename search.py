"""Beam search over a frozen GPT-2 with a past (Li & Liang 2021, "Experimental Setup": E2E is decoded by beam, K=5).

Many prompts × K beams run in one forward per step. Each prompt is read once; its KV cache is fanned out to
K beams at the first step, grows one token a step and is reordered by indexing rows (`beam_idx`), never
recomputed. A prefix is a past that every row and beam attends to. The rules are transformers'
`generate(num_beams=K)`: 2K candidates a step, K finished hypotheses scored
sum(log p) / generated_length ** length_penalty, and its stopping rule for early_stopping False, True, "never".
beam.py is the command around it.
    hyps = beam_search(model, [prompt_ids, ...], BeamConfig(beams=5), past_kv)   # best hypothesis per prompt
"""
from __future__ import annotations

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


# --- the search -----------------------------------------------------------------------------------------

def left_pad(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged prompts -> idx (B, T) left-padded with -1 (it matches no n-gram) and attention_mask (B, T).
    Left padding puts every row's next token in the last column; model.py derives positions from the mask."""
    T = max(len(p) for p in prompts)
    idx = torch.tensor([[-1] * (T - len(p)) + p for p in prompts])  # (B, T)
    return idx, (idx >= 0).long()


def block(logp: torch.Tensor, hist: torch.Tensor, t: int, cfg: BeamConfig) -> torch.Tensor:
    """Set forbidden next tokens of logp (N, V) to -inf, after log_softmax as transformers' processors do.
    hist (N, L): prompt + the t tokens generated so far, -1 on padding."""
    logp[:, list(cfg.banned)] = float("-inf")
    if t < cfg.min_new_tokens:
        logp[:, cfg.eos] = float("-inf")
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
    """logp (B, k, V) of each live beam's next token, beam_scores (B, k) -> the 2K best continuations per row:
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


@torch.no_grad()
def beam_search(model: GPT, prompts: list[list[int]], cfg: BeamConfig, past_kv: PastKV | None = None,
                past_mask: torch.Tensor | None = None) -> list[Hyp]:
    """The best hypothesis per prompt. past_kv: per layer (1 or B, H, P, D), the prefix; past_mask (1 or B, P):
    its real slots (prefix.stack left-pads per-row prefixes), all real if None."""
    dev, B, K = model.lm_head.weight.device, len(prompts), cfg.beams
    P = 0 if past_kv is None else past_kv[0][0].size(2)
    check_lengths(prompts, P, cfg, model.config.n_positions)
    hist, mask = (t.to(dev) for t in left_pad(prompts))                      # (B, T)
    T = hist.size(1)
    if past_kv is not None:  # the prefix is real keys before every prompt: extend the mask by P
        past_mask = torch.ones(1, P, dtype=torch.long) if past_mask is None else past_mask.long()
        mask = torch.cat([past_mask.to(dev).expand(B, P), mask], 1)          # (B, P+T)
    out = model(hist.clamp(min=0), past_kv=past_kv, attention_mask=mask, use_cache=True, last_only=True)
    cache, logits = out.present_kv, out.logits[:, -1]                        # (B, H, S, D), (B, V)
    beam_scores = torch.zeros(B, 1, device=dev)   # (B, k): one beam per prompt until the first step fans out
    rows = list(range(B))                         # the prompt of each live row
    pools: list[list[Hyp]] = [[] for _ in range(B)]
    for t in range(cfg.max_new_tokens):
        b, k = beam_scores.shape
        logp = block(F.log_softmax(logits.float(), -1), hist, t, cfg)         # (b·k, V)
        scores, src, tok = beam_step(logp.view(b, k, -1), beam_scores, K)    # (b, 2K) each
        last = t + 1 == cfg.max_new_tokens
        ends = (tok == cfg.eos) | last                                       # (b, 2K)
        # Only the top K candidates may finish (the other K are spares to go on with); a finished
        # hypothesis is scored on its generated length, EOS included.
        final = (scores / (t + 1) ** cfg.length_penalty).tolist()
        for i, j in ends[:, :K].nonzero().tolist():
            s, e = src[i, j].item(), tok[i, j].item()
            gen = hist[i * k + s, T:].tolist() + ([] if e == cfg.eos else [e])
            pools[rows[i]] = keep_best(pools[rows[i]], [Hyp(gen, final[i][j])], K)
        keep = (scores - 1e9 * ends.float()).topk(K).indices                 # (b, K) the best K going on
        beam_scores, src, tok = scores.gather(1, keep), src.gather(1, keep), tok.gather(1, keep)
        es, lp = cfg.early_stopping, cfg.length_penalty
        length = cfg.max_new_tokens if es == "never" and lp > 0 else t + 1
        bound = (beam_scores[:, 0] / length ** lp).tolist()
        live = [not last and not is_done(pools[r], bound[i], cfg) for i, r in enumerate(rows)]
        if not any(live):
            break
        # Finished prompts leave the batch; their pools can no longer change (transformers freezes them).
        alive = torch.tensor(live, device=dev)
        beam_idx = (torch.arange(b, device=dev)[:, None] * k + src)[alive].flatten()  # (b'·K,) cache rows
        rows = [r for r, keep_row in zip(rows, live) if keep_row]
        beam_scores, tok = beam_scores[alive], tok[alive].view(-1, 1)         # (b', K), (b'·K, 1)
        hist = torch.cat([hist[beam_idx], tok], 1)                            # (b'·K, T+t+1)
        mask = torch.cat([mask[beam_idx], torch.ones_like(tok)], 1)           # (b'·K, S+1)
        if k == K and all(live):
            # The K beams of a prompt hold the same prefix + prompt keys, so only the generated slots of the
            # beams that changed need moving, in place (transformers copies every slot of every beam).
            moved = (beam_idx != torch.arange(b * K, device=dev)).nonzero()[:, 0]  # (m,)
            for c in (c for pair in cache for c in pair):                     # (b·K, H, S, D)
                gen = c[:, :, P + T:]                                         # (b·K, H, t+1, D) a view
                gen.index_copy_(0, moved, gen.index_select(0, beam_idx[moved]))
        else:  # the first step fans each prompt out to K beams; finished prompts leave
            cache = [(pk[beam_idx], pv[beam_idx]) for pk, pv in cache]        # (b'·K, H, S, D)
        out = model(tok, past_kv=cache, attention_mask=mask, use_cache=True, last_only=True)
        cache, logits = out.present_kv, out.logits[:, -1]
    return [pool[0] for pool in pools]

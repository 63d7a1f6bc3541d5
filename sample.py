"""Sampling from a frozen GPT-2 with a past: the CPU poster's decoding, where search.py is the paper's.

The paper decodes every table-to-text set by beam search ("Experimental Setup"); the CPU poster generates
reviews by sampling from a label's prefix (beam.py --label, or a mix of labels). The rules are transformers'
generate(do_sample=True): per step the processors (banned tokens, EOS before min_new_tokens), then the warpers in
`_get_logits_processor`'s order, temperature -> top-k -> top-p, then one torch.multinomial over the whole batch.
Finished rows keep drawing (their token is padding), so the same seed, prompts and batch give generate's draws.
A score is the sum of log p of the sampled tokens, EOS included, under the filtered distribution they came from.
    hyps = sample(model, [prompt_ids, ...], SampleConfig(top_p=0.9, seed=1, num_return=3), past_kv)  # N per prompt
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from model import GPT, PastKV
from search import BeamConfig, BeamError, Hyp, check_lengths, prefill


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
            raise BeamError(f"temperature={self.temperature}, top_k={self.top_k}, top_p={self.top_p}, num_return="
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
            raise BeamError("NaN/Inf logits (the prefix or the weights overflow the model's arithmetic); nothing "
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
    search.stream's. Prompts go batch_size at a time (default: all, as one generate call) in one RNG stream."""
    dev = model.lm_head.weight.device
    P = 0 if past_kv is None else past_kv[0][0].size(2)
    check_lengths(prompts, P, BeamConfig(max_new_tokens=cfg.max_new_tokens), model.config.n_positions)
    if past_kv is not None:
        U = past_kv[0][0].size(0)
        past_mask = (torch.ones(1, P) if past_mask is None else past_mask).long().to(dev).expand(U, P)  # (U, P)
        past_rows = past_rows or [0 if U == 1 else i for i in range(len(prompts))]
    generator, N, nb = torch.Generator(device=dev).manual_seed(cfg.seed), cfg.num_return, batch_size or len(prompts)
    hyps = []
    for lo in range(0, len(prompts), nb):
        kv, mask, _, logits = prefill(model, prompts[lo:lo + nb], past_kv, past_mask, (past_rows or [])[lo:lo + nb])
        kv = [(k.repeat_interleave(N, 0), v.repeat_interleave(N, 0)) for k, v in kv]   # (B·N, H, S, D)
        hyps += sample_batch(model, kv, mask.repeat_interleave(N, 0), logits.repeat_interleave(N, 0), cfg, generator)
    return hyps

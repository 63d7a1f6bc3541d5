"""A trained prefix as data (Li & Liang 2021, §4.2): per layer P keys and values, the past model.py prepends.

Once trained, a prefix is only a past (model.PastKV), each key and value (1, H, P, D); nothing here knows how it
was trained. This file holds what every prefix file and caller does with one: its flat layout (the authors' and
PEFT's), the checks that it is well formed and fits a model, and many tasks on one frozen backbone: §8
"Discussion" batches rows of different tasks in one forward (`stack`); blending two tasks (`mix`) is ours.
    per_row, key_mask = stack([past_a, past_b])      # rows of two tasks, one forward
    blended = mix([(past_a, 0.7), (past_b, 0.3)])    # one prefix between two tasks
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from model import GPT, PastKV


class PrefixError(Exception):
    """A prefix could not be built, loaded, saved or combined; the message says what, expected vs actual, the fix."""


# --- the flat layout ------------------------------------------------------------------------------------------

def unflatten(flat: torch.Tensor, n_layer: int, n_head: int) -> PastKV:
    """(P, 2·L·C) -> per layer (k, v), each (1, H, P, D). The last axis reads L0-key, L0-value, L1-key, ...: the
    authors' view (P, 2L, H, D) + permute (train_control.py), and PEFT's get_prompt."""
    kv = flat.view(flat.size(0), 2 * n_layer, n_head, -1).permute(1, 2, 0, 3).unsqueeze(1)  # (2L, 1, H, P, D)
    return [(kv[2 * i], kv[2 * i + 1]) for i in range(n_layer)]


def flatten(past_kv: PastKV) -> torch.Tensor:
    """The inverse of `unflatten`: per layer (1, H, P, D) -> (P, 2·L·C)."""
    kv = torch.stack([t[0] for pair in past_kv for t in pair])  # (2L, H, P, D)
    return kv.permute(2, 0, 1, 3).reshape(kv.size(2), -1)        # (P, 2L·H·D)


# --- checks: well formed, finite, fits the model --------------------------------------------------------------

def shape_of(past_kv: PastKV, source: str = "past_kv", model: GPT | None = None) -> tuple[int, int, int, int]:
    """(L, H, P, D) of a batch-1 past, after checking that every key and value agrees (and fits `model`)."""
    shape = tuple(past_kv[0][0].shape) if past_kv else ()
    bad = [(i, tuple(t.shape)) for i, pair in enumerate(past_kv) for t in pair if tuple(t.shape) != shape]
    if len(shape) != 4 or shape[0] != 1 or bad:
        raise PrefixError(f"{source}: every key and value must be (1, H, P, D) and alike; layer 0 has {shape}, "
                          f"mismatches (layer, shape): {bad[:3]}. Pass one task's exported prefix (Prefix.export).")
    L, (_, H, P, D), c = len(past_kv), shape, model.config if model is not None else None
    if c is not None and (L, H, D) != (c.n_layer, c.n_head, c.head_dim):
        raise PrefixError(f"{source}: a prefix for n_layer={L}, n_head={H}, head_dim={D}, but the model has "
                          f"n_layer={c.n_layer}, n_head={c.n_head}, head_dim={c.head_dim}. A prefix only fits the "
                          f"base model it was trained on; load that one.")
    return L, H, P, D


def check_finite(past_kv: PastKV, source: Path) -> None:
    bad = [i for i, pair in enumerate(past_kv) if not all(torch.isfinite(t).all() for t in pair)]
    if bad:
        raise PrefixError(f"{source}: NaN or Inf in the keys/values of layers {bad}. Training diverged; use an "
                          f"earlier prefix or train again with a lower learning rate.")


def to_model(past_kv: PastKV, model: GPT | None) -> PastKV:
    """Cast to the model's dtype and device (a prefix is stored in float32); as is without a model."""
    w = model.lm_head.weight if model is not None else None
    return past_kv if w is None else [(k.to(w.device, w.dtype), v.to(w.device, w.dtype)) for k, v in past_kv]


# --- many tasks on one backbone -------------------------------------------------------------------------------

def stack(past_kvs: list[PastKV]) -> tuple[PastKV, torch.Tensor]:
    """One prefix per row -> per layer (B, H, Pmax, D), shorter ones left-padded, and their key mask (B, Pmax).

    Put the mask in front of the tokens' mask, `torch.cat([mask, token_mask], 1)`: padding slots are never
    attended and a row's tokens sit at positions P_row.., exactly as when that row runs alone with its prefix.
    """
    shapes = [shape_of(p, f"past_kvs[{b}]") for b, p in enumerate(past_kvs)]
    if len({(L, H, D) for L, H, _, D in shapes}) != 1:
        raise PrefixError(f"stack: prefixes for different models, (L, H, P, D) = {shapes}; rows share one model.")
    P_max = max(P for _, _, P, _ in shapes)
    mask = torch.tensor([[0] * (P_max - P) + [1] * P for _, _, P, _ in shapes])  # (B, Pmax)
    pads = [(0, 0, P_max - P, 0) for _, _, P, _ in shapes]  # F.pad, last axes first: D as is, P on the left
    stacked = [tuple(torch.cat([F.pad(p[i][j], pad) for p, pad in zip(past_kvs, pads)])  # (B, H, Pmax, D)
                     for j in range(2)) for i in range(shapes[0][0])]
    return stacked, mask.to(past_kvs[0][0][0].device)


def mix(weighted: list[tuple[PastKV, float]]) -> PastKV:
    """Σ wᵢ·prefixᵢ, layer by layer (for two: α·A + (1−α)·B); the prefixes must share one shape.

    Weights must sum to 1 (±1e-4), else PrefixError: another sum rescales every key and value, which sharpens or
    flattens attention instead of blending tasks. Weights outside [0, 1] (extrapolation) are allowed.
    """
    shapes = [shape_of(p, f"mix[{i}]") for i, (p, _) in enumerate(weighted)]
    if len(set(shapes)) != 1:
        raise PrefixError(f"mix: got prefixes of shapes (L, H, P, D) = {shapes}; give at least one, all of one base "
                          f"model and one length P.")
    total = sum(w for _, w in weighted)
    if not math.isfinite(total) or abs(total - 1.0) > 1e-4:
        raise PrefixError(f"mix: weights {[w for _, w in weighted]} sum to {total}, expected 1. Divide each by the "
                          f"sum to blend.")
    return [tuple(sum(w * p[i][j] for p, w in weighted) for j in range(2)) for i in range(shapes[0][0])]

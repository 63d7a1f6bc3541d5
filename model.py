"""GPT-2, written out, taking a past of keys/values in every layer (the place prefix-tuning works in).

Prefix-tuning (Li & Liang 2021, §4) keeps this model frozen and learns only "virtual tokens": keys and
values prepended to every attention layer. To the model such a prefix is simply a *past*, the same
thing a KV cache is when decoding one token at a time, so this file never says "prefix": `forward`
takes `past_kv`, places the new tokens after it, and lets SDPA attend over both. The bytes of Hugging
Face checkpoints (files, shards, the hub) are files/checkpoint.py's job; this file is the model.

    model = GPT.from_pretrained("gpt2-medium")       # or a folder with config.json + model.safetensors
    logits, loss, present_kv = model(idx, past_kv=past_kv, targets=targets)
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from files.checkpoint import check_state_dict, read_config, read_state_dict, resolve, weight_files

PastKV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (k, v), each (B or 1, H, P, D)
IGNORE = -100  # F.cross_entropy's ignore_index: targets with it (source, padding) are not predicted


def past_len(past_kv: PastKV | None) -> int:
    """P, the number of past slots every row attends to before its tokens (0 without a past)."""
    return 0 if past_kv is None else past_kv[0][0].size(2)


@dataclass
class GPTConfig:
    """The fields keep config.json's names, so a Hugging Face config maps onto it one to one."""
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_positions: int = 1024
    vocab_size: int = 50257
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"
    tie_word_embeddings: bool = True
    # GPT-2's dropout, active in train mode only. The paper's fine-tuning baseline trains with 0.1
    # (RECIPE.md §3); prefix-tuning keeps the base in eval mode, so its frozen model never drops.
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    resid_pdrop: float = 0.1

    def __post_init__(self) -> None:
        """Refuse, by name, a value that would only fail later (or hang: n_layer 10**6) or compute junk."""
        for f in fields(self):
            value, kind = getattr(self, f.name), type(f.default)
            if type(value) is not kind and not (kind is float and type(value) is int):
                raise ValueError(f"{f.name}={value!r}: expected a {kind.__name__}")
        sizes = (self.n_layer, self.n_head, self.n_embd, self.n_positions, self.vocab_size)
        if min(sizes) < 1 or self.n_embd % self.n_head:
            raise ValueError(f"n_layer, n_head, n_embd, n_positions, vocab_size = {sizes}: each must be at least 1, "
                             f"and n_embd divisible by n_head")
        if not 0 < self.layer_norm_epsilon < 1 or not all(0 <= p < 1 for p in (self.embd_pdrop, self.attn_pdrop,
                                                                                self.resid_pdrop)):
            raise ValueError(f"layer_norm_epsilon={self.layer_norm_epsilon} must be in (0, 1), dropout in [0, 1)")
        if self.activation_function not in GELU_APPROX:
            raise ValueError(f"activation_function={self.activation_function!r} is not implemented "
                             f"(supported: {sorted(GELU_APPROX)})")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


# Named shapes, for random-weight models (offline smoke runs, tests, benchmarks); the hub has the real ones.
SHAPES = {"tiny": dict(n_layer=2, n_head=4, n_embd=32), "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
          "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024)}


def named_shape(name: str) -> dict | None:
    """"tiny", "gpt2", "gpt2-medium", or "LxD" for any small shape (e.g. "4x256": 4 layers, 256 wide, heads of 64)."""
    if name in SHAPES:
        return SHAPES[name]
    L, _, D = name.partition("x")
    if L.isdigit() and D.isdigit() and int(D) % 64 == 0 and int(L) > 0 and int(D) > 0:
        return dict(n_layer=int(L), n_head=int(D) // 64, n_embd=int(D))
    return None
# GPT-2's "gelu_new" is the tanh approximation; an exact GELU here would drift from the checkpoints.
GELU_APPROX = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_embd, self.p_drop = config.n_head, config.n_embd, config.attn_pdrop
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # fused q, k, v
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None, attn_mask: torch.Tensor | None,
                write_at: int | torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if past is not None and isinstance(write_at, torch.Tensor):
            # The same cache at fixed shapes (generate.StaticStep): the column is a tensor (1,), not a number, so one
            # captured step serves every column; attention reads all W columns, attn_mask hides the unused ones.
            past[0].index_copy_(2, write_at, k)
            past[1].index_copy_(2, write_at, v)
            k, v = past                                                              # (B, H, W, D)
        elif past is not None and write_at is not None:
            # A preallocated cache (beam.py): the new keys/values are written into it, in place, and attention
            # reads its filled columns as a view, so a decoding step does not copy the whole past as cat does.
            past[0][:, :, write_at:write_at + T], past[1][:, :, write_at:write_at + T] = k, v
            k, v = past[0][:, :, :write_at + T], past[1][:, :, :write_at + T]     # (B, H, S, D), S = write_at + T
        elif past is not None:
            # The prefix (§4.2) enters here, after c_attn: the frozen projections never see it, so the
            # learned keys/values alone carry the task. A past of batch 1 is broadcast by expand (a view).
            past_k, past_v = past
            k = torch.cat([past_k.expand(B, -1, -1, -1), k], dim=2)  # (B, H, S, D), S = P + T
            v = torch.cat([past_v.expand(B, -1, -1, -1), v], dim=2)
        S, p = k.size(2), self.p_drop if self.training else 0.0
        if attn_mask is None and S == T:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        elif attn_mask is None:
            # With a past, the causal mask is aligned bottom-right: new token t sees all P past slots and
            # new tokens 0..t. is_causal=True would align it top-left and hide most of the past.
            if T == 1:
                mask = None
            elif torch.compiler.is_compiling():  # building CausalBias, a tensor subclass, breaks the graph
                mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)     # (T, S)
            else:
                mask = causal_lower_right(T, S)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y)), (k, v)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.approximate = GELU_APPROX[config.activation_function]
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate)))


class Block(nn.Module):
    """Pre-LayerNorm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None, attn_mask: torch.Tensor | None,
                write_at: int | torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        a, present = self.attn(self.ln_1(x), past, attn_mask, write_at)
        x = x + a
        return x + self.mlp(self.ln_2(x)), present


class GPTOutput(NamedTuple):
    logits: torch.Tensor                # (B, T, V); (B, 1, V) with last_only; (N, V) at the N targets (eager)
    loss: torch.Tensor | None           # mean cross-entropy over targets != IGNORE
    present_kv: PastKV | None           # with use_cache: per layer (k, v), each (B, H, S, D)


def padding_attn_mask(attention_mask: torch.Tensor, T: int) -> torch.Tensor:
    """(B, S) 0/1 key mask -> (B, 1, T, S) bool for SDPA: causal (bottom-right) and no padding keys.

    A padding query (left padding) would then see no key at all, and SDPA turns an all-False row into
    NaN, which would poison gradients even though the loss ignores it. So each query may always see
    its own slot: real queries lose nothing (their own slot is real), padding rows stay finite.
    """
    B, S = attention_mask.shape
    q_pos = torch.arange(S - T, S, device=attention_mask.device)[:, None]    # (T, 1) absolute slot
    k_pos = torch.arange(S, device=attention_mask.device)[None, :]           # (1, S)
    causal = k_pos <= q_pos                                                  # (T, S)
    keep = attention_mask.bool()[:, None, None, :] | (k_pos == q_pos)        # (B, 1, T, S)
    return causal & keep


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.n_positions, config.n_embd),
            drop=nn.Dropout(config.embd_pdrop),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.tie_weights()
        if not self.lm_head.weight.is_meta:  # on the meta device (loading) there is nothing to initialise
            self.init_weights()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:  # GPT-2 reads its output logits off the input embedding
            self.lm_head.weight = self.transformer.wte.weight

    def init_weights(self) -> None:
        """GPT-2's own init, for random models (tests, smoke runs); checkpoints overwrite it. The projections
        into the residual stream get std / sqrt(2L), so its variance does not grow with depth."""
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                scale = math.sqrt(2 * self.config.n_layer) if name.endswith("c_proj") else 1.0
                nn.init.normal_(module.weight, mean=0.0, std=0.02 / scale)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, past_kv: PastKV | None = None, attention_mask: torch.Tensor | None = None,
                targets: torch.Tensor | None = None, use_cache: bool = False, last_only: bool = False,
                embeds: torch.Tensor | None = None, write_at: int | torch.Tensor | None = None) -> GPTOutput:
        """idx (B, T); past_kv per layer (B or 1, H, P, D); attention_mask (B, P+T) with 1 = real key.
        embeds (B, T, C), if given, replaces wte(idx) (input-level tuning feeds its own vectors).
        write_at: past_kv are preallocated (B, H, W, D), filled up to this column (P = write_at); T more are written.
        A tensor (1,) instead: T = 1, attention_mask (B, W), 1 = a key the new token sees (its own column too)."""
        B, T = idx.shape
        P = write_at if write_at is not None else past_len(past_kv)
        if isinstance(write_at, torch.Tensor):
            pos = attention_mask.sum(-1, keepdim=True) - 1                      # (B, 1) real keys before it
            attn_mask = attention_mask.bool()[:, None, None, :]                 # (B, 1, 1, W)
        elif attention_mask is None:
            # Positions continue after the past (P..P+T-1), as in a KV cache and in the paper's code.
            pos = torch.arange(P, P + T, device=idx.device).expand(B, T)      # (B, T)
            attn_mask = None
        else:
            # Left padding: a token's position is the number of real keys before it.
            pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, P:]   # (B, T)
            attn_mask = padding_attn_mask(attention_mask, T)                    # (B, 1, T, S)
        tok = self.transformer.wte(idx) if embeds is None else embeds
        x = self.transformer.drop(tok + self.transformer.wpe(pos))              # (B, T, C)
        present_kv: PastKV = []
        for i, block in enumerate(self.transformer.h):
            x, present = block(x, None if past_kv is None else past_kv[i], attn_mask, write_at)
            present_kv.append(present)
        x = self.transformer.ln_f(x)
        if targets is None:
            return GPTOutput(self.lm_head(x[:, -1:] if last_only else x), None,  # (B, T, V)
                             present_kv if use_cache else None)
        # Only positions with a target need logits. The head (C × V) is the widest matmul, and an E2E
        # example's source half has no target (the loss covers the table's text only), so this skips
        # about half of the head's work and memory in training.
        if torch.compiler.is_compiling():
            # A compiled step keeps its shapes static (train.py --compile replays one graph per batch shape), and
            # x[keep] has a new row count every batch: there the head runs at every position, padding ignored.
            logits = self.lm_head(x)                                            # (B, T, V)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE)
        else:
            keep = targets != IGNORE                                            # (B, T)
            logits = self.lm_head(x[keep])                                      # (N, V)
            loss = F.cross_entropy(logits.float(), targets[keep])
        return GPTOutput(logits, loss, present_kv if use_cache else None)

    @classmethod
    def from_pretrained(cls, src: str | Path, dtype: torch.dtype | None = None) -> GPT:
        """A folder, a .safetensors file or a hub name, loaded without building a random model first. dtype None
        means float32, the paper's precision: a checkpoint stored in another float type is cast, with a warning
        that says so, never silently kept."""
        folder = resolve(src)
        config = read_config(folder, GPTConfig)
        sd, stored = read_state_dict(weight_files(folder), config.n_layer, dtype or torch.float32)
        if dtype is None and stored != {torch.float32}:
            warnings.warn(f"{folder}: weights stored as {sorted(map(str, stored))}, loaded as float32 (ask for "
                          f"dtype=torch.bfloat16 to keep bfloat16).", stacklevel=2)
        with torch.device("meta"):  # shapes only: the checkpoint's tensors become the parameters
            model = cls(config)
        expected = {k: v.shape for k, v in model.state_dict().items()}
        if config.tie_word_embeddings:
            expected.pop("lm_head.weight")
            sd.pop("lm_head.weight", None)  # a saved copy of the tied embedding
        check_state_dict(sd, expected, folder)
        model.load_state_dict(sd, strict=False, assign=True)  # strict=False: only the tied lm_head is absent
        model.tie_weights()  # assign=True replaced wte.weight, so tie the head to the new tensor
        return model.eval()


def flops_per_token(c: GPTConfig, T: int, weights_learn: bool) -> float:
    """Matmul FLOPs per trained token, for MFU (as nanoGPT keeps it beside the model): forward 2N +
    attention 4·L·C·T; backward twice the forward when the weights learn, once when only activations need
    gradients (prefix-tuning: GPT-2 is frozen). The head counts at every token, as MFU is usually reported;
    forward runs it at target tokens only, so on E2E the MFU shown is high by ~15% at the gpt2 shape."""
    N = c.n_layer * 12 * c.n_embd ** 2 + c.vocab_size * c.n_embd  # blocks + the tied output head
    return (3 if weights_learn else 2) * 2 * N + 3 * 4 * c.n_layer * c.n_embd * T


def param_counts(n_model: int, trained: int, stored: int) -> dict[str, float]:
    """The parameter counts a run records (args.json "params") and train.py prints, each also as a fraction of the
    base model's: what learns (a prefix's MLP included) and what a run stores (§4.3: the prefix alone)."""
    return {"model": n_model, "trained": trained, "trained_frac": trained / n_model,
            "stored": stored, "stored_frac": stored / n_model}

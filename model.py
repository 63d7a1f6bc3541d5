"""GPT-2, written out, that loads Hugging Face checkpoints and takes a past of keys/values in every layer.

Prefix-tuning (Li & Liang 2021, §4) keeps this model frozen and learns only "virtual tokens": keys and
values prepended to every attention layer. To the model such a prefix is simply a *past*, the same
thing a KV cache is when decoding one token at a time, so this file never says "prefix": `forward`
takes `past_kv`, places the new tokens after it, and lets SDPA attend over both.

    model = GPT.from_pretrained("gpt2-medium")       # or a folder with config.json + model.safetensors
    logits, loss, present_kv = model(idx, past_kv=past_kv, targets=targets)
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, NamedTuple

import tiktoken
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.nn.attention.bias import causal_lower_right

IGNORE = -100  # targets with this value (source tokens, padding) are left out of the loss
PastKV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (k, v), each (B or 1, H, P, D)


@dataclass
class GPTConfig:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_positions: int = 1024
    vocab_size: int = 50257
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    tie_word_embeddings: bool = True

    @classmethod
    def from_json(cls, raw: dict, source: str = "config.json") -> GPTConfig:
        """Read Hugging Face's config.json; refuse, by name, any value this model does not implement."""
        raw = dict(raw)
        if "n_positions" not in raw and "n_ctx" in raw:  # the oldest configs only have n_ctx
            raw["n_positions"] = raw["n_ctx"]
        if raw.get("activation_function", "gelu_new") not in GELU_APPROX:
            raise CheckpointError(f"{source}: activation_function={raw['activation_function']!r} is not "
                                  f"implemented (supported: {sorted(GELU_APPROX)}).")
        if raw.get("reorder_and_upcast_attn", False):
            raise CheckpointError(f"{source}: reorder_and_upcast_attn=true is not implemented (it only changes "
                                  f"fp16 rounding); set it to false in config.json to load this model.")
        if raw.get("model_type", "gpt2") != "gpt2":
            raise CheckpointError(f"{source}: model_type={raw['model_type']!r}, this loader reads GPT-2 only.")
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


# Named shapes, for random-weight models (offline smoke runs, tests, benchmarks); the hub has the real ones.
SHAPES = {"tiny": dict(n_layer=2, n_head=4, n_embd=32), "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
          "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024)}
# GPT-2's "gelu_new" is the tanh approximation; an exact GELU here would drift from the checkpoints.
GELU_APPROX = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.n_head, self.n_embd = config.n_head, config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # fused q, k, v
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        scale = 1.0 / math.sqrt(config.head_dim) if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            scale /= layer_idx + 1
        self.scale = scale

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None,
                attn_mask: torch.Tensor | None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if past is not None:
            # The prefix (§4.2) enters here, after c_attn: the frozen projections never see it, so the
            # learned keys/values alone carry the task. A past of batch 1 is broadcast by expand (a view).
            past_k, past_v = past
            k = torch.cat([past_k.expand(B, -1, -1, -1), k], dim=2)  # (B, H, S, D), S = P + T
            v = torch.cat([past_v.expand(B, -1, -1, -1), v], dim=2)
        S = k.size(2)
        if attn_mask is None and S == T:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        elif attn_mask is None:
            # With a past, the causal mask is aligned bottom-right: new token t sees all P past slots and
            # new tokens 0..t. is_causal=True would align it top-left and hide most of the past.
            mask = causal_lower_right(T, S) if T > 1 else None
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.c_proj(y), (k, v)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.approximate = GELU_APPROX[config.activation_function]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate))


class Block(nn.Module):
    """Pre-LayerNorm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None,
                attn_mask: torch.Tensor | None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        a, present = self.attn(self.ln_1(x), past, attn_mask)
        x = x + a
        return x + self.mlp(self.ln_2(x)), present


class GPTOutput(NamedTuple):
    logits: torch.Tensor                # (B, T, V); (B, 1, V) with last_only; (N, V) at the N targets
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
            h=nn.ModuleList(Block(config, i) for i in range(config.n_layer)),
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
                targets: torch.Tensor | None = None, use_cache: bool = False, last_only: bool = False) -> GPTOutput:
        """idx (B, T); past_kv per layer (B or 1, H, P, D); attention_mask (B, P+T) with 1 = real key."""
        B, T = idx.shape
        P = 0 if past_kv is None else past_kv[0][0].size(2)
        if attention_mask is None:
            # Positions continue after the past (P..P+T-1), as in a KV cache and in the paper's code.
            pos = torch.arange(P, P + T, device=idx.device).expand(B, T)      # (B, T)
            attn_mask = None
        else:
            # Left padding: a token's position is the number of real keys before it.
            pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, P:]   # (B, T)
            attn_mask = padding_attn_mask(attention_mask, T)                    # (B, 1, T, S)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)              # (B, T, C)
        present_kv: PastKV = []
        for i, block in enumerate(self.transformer.h):
            x, present = block(x, None if past_kv is None else past_kv[i], attn_mask)
            present_kv.append(present)
        x = self.transformer.ln_f(x)
        if targets is None:
            return GPTOutput(self.lm_head(x[:, -1:] if last_only else x), None,  # (B, T, V)
                             present_kv if use_cache else None)
        # Only positions with a target need logits. The head (C × V) is the widest matmul, and an E2E
        # example's source half has no target (the loss covers the table's text only), so this skips
        # about half of the head's work and memory in training.
        keep = targets != IGNORE                                                # (B, T)
        logits = self.lm_head(x[keep])                                          # (N, V)
        loss = F.cross_entropy(logits.float(), targets[keep])
        return GPTOutput(logits, loss, present_kv if use_cache else None)

    @classmethod
    def from_pretrained(cls, src: str | Path, dtype: torch.dtype | None = None) -> GPT:
        return from_pretrained(src, dtype)


# --- loading Hugging Face checkpoints -----------------------------------------------------------------

class CheckpointError(Exception):
    """A checkpoint could not be loaded; the message names the file, what is wrong and the fix."""


# Hugging Face's GPT-2 uses Conv1D, which stores each weight as (in, out): the transpose of nn.Linear's
# (out, in). We transpose these four at load time, as zero-copy views, so the model is plain nn.Linear.
CONV1D = re.compile(r"h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")
BUFFERS = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)$")  # causal-mask buffers of old checkpoints
HUB_FILES = ["config.json", "model.safetensors", "model.safetensors.index.json", "vocab.json", "merges.txt"]
HUB_NAME = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def resolve(src: str | Path) -> Path:
    """A folder, a .safetensors file, or a hub name -> the local folder holding config.json."""
    path = Path(src)
    if path.is_dir():
        return path
    if path.is_file():
        return path.parent
    if not HUB_NAME.match(str(src)):
        raise CheckpointError(f"{src}: neither a folder, a file nor a hub name (like 'gpt2-medium').")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"{src}: not a local folder or file, and huggingface_hub is not installed to fetch "
                              f"it from the hub. `pip install huggingface_hub`, or pass a local folder.") from None
    try:
        return Path(snapshot_download(str(src), allow_patterns=HUB_FILES))
    except Exception as e:  # offline, unknown repo, gated: all end the same way for the user
        raise CheckpointError(f"{src}: not a local folder or file, and the hub could not give it ({type(e).__name__}: "
                              f"{e}). Check the name and your connection, or download it and pass the folder.") from None


def read_config(folder: Path) -> GPTConfig:
    path = folder / "config.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing. A checkpoint folder needs config.json + model.safetensors.") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({e}).") from None
    return GPTConfig.from_json(raw, str(path))


def weight_files(folder: Path) -> list[Path]:
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{index}: unreadable shard index ({e}).") from None
        return [folder / s for s in shards]
    if (folder / "pytorch_model.bin").is_file():
        raise CheckpointError(f"{folder}: only pytorch_model.bin (a pickle) is here, and this project never unpickles. "
                              f"Convert it once where you trust the file: GPT2LMHeadModel.from_pretrained(folder)"
                              f".save_pretrained(folder) writes model.safetensors.")
    raise CheckpointError(f"{folder}: no model.safetensors or model.safetensors.index.json.")


def read_state_dict(folder: Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint under our names, Conv1D weights transposed, old buffers dropped."""
    sd: dict[str, torch.Tensor] = {}
    for file in weight_files(folder):
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    name = key if key.startswith(("transformer.", "lm_head.")) else "transformer." + key
                    if BUFFERS.search(name):
                        continue
                    t = f.get_tensor(key)  # memory-mapped: pages are read when first used
                    t = t.t() if CONV1D.search(name) else t  # a view: nn.Linear's matmul takes it as is
                    sd[name] = t.to(dtype) if dtype is not None else t
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{file}: not a readable safetensors file ({e}). Truncated download?") from None
    return sd


def check_state_dict(sd: dict[str, torch.Tensor], model: GPT, folder: Path) -> None:
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        expected.pop("lm_head.weight")
        sd.pop("lm_head.weight", None)  # a saved copy of the tied embedding
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing:
        raise CheckpointError(f"{folder}: {len(missing)} weights missing, e.g. {missing[:3]}. "
                              f"Is this a GPT-2 checkpoint, and are all shards present?")
    if unexpected:
        raise CheckpointError(f"{folder}: {len(unexpected)} unexpected weights, e.g. {unexpected[:3]}. "
                              f"Is this a GPT-2 (GPT2LMHeadModel) checkpoint?")
    for k, shape in expected.items():
        if sd[k].shape != shape:
            raise CheckpointError(f"{folder}: '{k}' has shape {tuple(sd[k].shape)}, config.json implies "
                                  f"{tuple(shape)}. Are config.json and the weights from the same model?")


def from_pretrained(src: str | Path, dtype: torch.dtype | None = None) -> GPT:
    """Load a GPT-2 from a folder, a shard index or the hub, without building a random model first."""
    folder = resolve(src)
    config = read_config(folder)
    with torch.device("meta"):  # shapes only: the checkpoint's tensors become the parameters
        model = GPT(config)
    sd = read_state_dict(folder, dtype)
    check_state_dict(sd, model, folder)
    model.load_state_dict(sd, strict=False, assign=True)  # strict=False: only the tied lm_head is absent
    model.tie_weights()  # assign=True replaced wte.weight, so tie the head to the new tensor
    return model.eval()


def save_pretrained(model: GPT, folder: str | Path) -> None:
    """Write config.json + model.safetensors in Hugging Face's layout (Conv1D weights transposed back),
    so transformers' GPT2LMHeadModel.from_pretrained(folder) reads what we trained."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    c = model.config
    config = {**{f.name: getattr(c, f.name) for f in fields(c)}, "n_ctx": c.n_positions,
              "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "bos_token_id": 50256, "eos_token_id": 50256}
    sd = {k: (v.t() if CONV1D.search(k) else v).contiguous() for k, v in model.state_dict().items()}
    if c.tie_word_embeddings:
        sd.pop("lm_head.weight")  # safetensors refuses shared tensors; the head is the embedding
    atomic_write(folder / "config.json", lambda tmp: tmp.write_text(json.dumps(config, indent=2)))
    atomic_write(folder / "model.safetensors", lambda tmp: save_file(sd, str(tmp), metadata={"format": "pt"}))


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temp file and rename, so a crash never leaves a half-written file under `path`."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def load_tokenizer(folder: str | Path | None = None) -> tiktoken.Encoding:
    """GPT-2's BPE as a tiktoken Encoding: from the checkpoint's vocab.json + merges.txt, else tiktoken's gpt2."""
    vocab, merges = (Path(folder) / "vocab.json", Path(folder) / "merges.txt") if folder else (None, None)
    if vocab is None or not (vocab.is_file() and merges.is_file()):
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception as e:  # offline with an empty tiktoken cache: requests' errors, or a bad cache
            raise CheckpointError(f"{folder or 'no folder'}: no vocab.json + merges.txt, and tiktoken could not get "
                                  f"'gpt2' ({type(e).__name__}). Put GPT-2's vocab.json and merges.txt in the "
                                  f"checkpoint folder, or set TIKTOKEN_CACHE_DIR to a cache that has them.") from None
    byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
    ranks = {bytes(byte_of[ch] for ch in tok): i for tok, i in json.loads(vocab.read_text()).items()
             if tok != "<|endoftext|>"}
    # tiktoken merges by rank alone; GPT-2's ids are its merge order, which merges.txt must confirm.
    merge_lines = [m for m in merges.read_text().splitlines()[1:] if m]
    by_token = {bytes(byte_of[ch] for ch in m.replace(" ", "")): i for i, m in enumerate(merge_lines)}
    if any(ranks.get(tok) != 256 + i for tok, i in by_token.items()):
        raise CheckpointError(f"{merges}: merge order disagrees with {vocab}; not GPT-2's byte-level BPE files.")
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": len(ranks)})


GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map, in which vocab.json spells its tokens."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(extra)}}

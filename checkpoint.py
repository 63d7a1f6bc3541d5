"""Checkpoints on disk: Hugging Face GPT-2 folders (config.json, model.safetensors, shards, the hub).

model.py is the model alone; this file reads config.json + model.safetensors (single or sharded, local or from
the hub, which hub.py fetches) into it and writes them back in Hugging Face's layout, through runfolder.py's safe
writes. Everything read is checked before anything is allocated, and nothing is ever unpickled.
    model = from_pretrained("gpt2-medium")          # or a folder, a .safetensors file, hf:owner/name
    save_pretrained(model, "out/")                  # transformers' GPT2LMHeadModel.from_pretrained reads it
"""
from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import fields
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from model import GPT, GPTConfig
from runfolder import atomic_write, write_json

CONFIG_CAP = 1 << 20    # bytes of config.json read at most: a link to /dev/zero must not fill memory
# Hugging Face's GPT-2 uses Conv1D, which stores each weight as (in, out): the transpose of nn.Linear's
# (out, in). We transpose these four at load time, as zero-copy views, so the model is plain nn.Linear.
CONV1D = re.compile(r"h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")
BUFFERS = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)$")  # causal-mask buffers of old checkpoints
LAYER = re.compile(r"h\.(\d+)\.")
# config.json fields this model implements only at one value; any other is refused by name.
FIXED = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
         "model_type": "gpt2"}


class CheckpointError(Exception):
    """A checkpoint could not be read or written; the message names the file, what is wrong and the fix."""


# --- reading Hugging Face checkpoints -------------------------------------------------------------------------

def resolve(src: str | Path) -> Path:
    """A folder, a .safetensors file, or a hub name -> the local folder holding config.json. What is not on disk
    goes to hub.download, which sends only a bare name or hf:owner/name over the network."""
    path = Path(src)
    if path.is_dir():
        return path
    if path.is_file():
        return path.parent
    from hub import download  # imported only now: a name not on disk is the one case that needs the network
    return download(src)


def read_config(folder: Path) -> GPTConfig:
    """config.json -> GPTConfig, read with a size cap; types and ranges checked, unsupported values refused."""
    path = folder / "config.json"
    try:
        with open(path, "rb") as f:
            text = f.read(CONFIG_CAP + 1)
        raw = json.loads(text) if len(text) <= CONFIG_CAP else None
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing. A checkpoint folder needs config.json + model.safetensors.") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({e}).") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: unreadable (expected one JSON object of at most {CONFIG_CAP} bytes).")
    if "n_positions" not in raw and "n_ctx" in raw:  # the oldest configs only have n_ctx
        raw["n_positions"] = raw["n_ctx"]
    for key, want in FIXED.items():
        if raw.get(key, want) != want:
            raise CheckpointError(f"{path}: {key}={raw[key]!r} is not implemented (GPT-2 has {want!r}); this "
                                  f"loader reads GPT-2 checkpoints only.")
    try:  # GPTConfig checks types and ranges itself
        return GPTConfig(**{f.name: raw[f.name] for f in fields(GPTConfig) if f.name in raw})
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}.") from None


def weight_files(folder: Path) -> list[Path]:
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index}: unreadable shard index ({e}).") from None
        return [folder / Path(s).name for s in shards]
    if (folder / "pytorch_model.bin").is_file():
        raise CheckpointError(f"{folder}: only pytorch_model.bin (a pickle) is here, and this project never unpickles. "
                              f"Convert it once where you trust the file: GPT2LMHeadModel.from_pretrained(folder)"
                              f".save_pretrained(folder) writes model.safetensors.")
    raise CheckpointError(f"{folder}: no model.safetensors or model.safetensors.index.json.")


def read_state_dict(files: list[Path], n_layer: int, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], set]:
    """All tensors under our names, Conv1D weights transposed, old buffers dropped, cast to `dtype`. The layers the
    headers name (all files together) must be n_layer's, checked before any tensor is read or any model built: a
    config.json saying n_layer=10**6 fails here, at once. Every tensor must be finite floating point."""
    handles = []
    for file in files:
        try:
            handles.append((file, safe_open(str(file), framework="pt")))  # the header only; tensors memory-mapped
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{file}: not a readable safetensors file ({e}). Truncated download?") from None
    names = [{key: key if key.startswith(("transformer.", "lm_head.")) else "transformer." + key
              for key in f.keys() if not BUFFERS.search(key)} for _, f in handles]
    layers = {int(m[1]) for ours in names for m in map(LAYER.search, ours.values()) if m}
    if layers != set(range(n_layer)):
        raise CheckpointError(f"{files[0].parent}: the weights hold {len(layers)} layers (numbered "
                              f"{min(layers, default=0)}..{max(layers, default=-1)}), config.json says n_layer="
                              f"{n_layer}. Are config.json and the weights from the same model, and are all shards "
                              f"present?")
    sd: dict[str, torch.Tensor] = {}
    stored: set[torch.dtype] = set()  # the dtypes found, so a cast can be reported
    for (file, f), ours in zip(handles, names):
        for key, name in ours.items():
            try:
                t = f.get_tensor(key)  # memory-mapped: pages are read when first used
            except (SafetensorError, OSError) as e:
                raise CheckpointError(f"{file}: tensor '{key}' is unreadable ({e}). Truncated download?") from None
            if not t.is_floating_point():
                raise CheckpointError(f"{file}: tensor '{key}' is {t.dtype}, not floating point (a quantized "
                                      f"checkpoint?); this loader reads float weights. Re-export it in float32.")
            # One NaN or Inf makes the sum non-finite, and a sum streams the mapped bytes without a copy (isfinite(t)
            # would allocate a bool tensor as large); only a non-finite sum (or an overflow) looks element by element.
            if not torch.isfinite(t.sum()) and not torch.isfinite(t).all():
                raise CheckpointError(f"{file}: tensor '{key}' holds NaN or Inf; refusing to load it. Re-download "
                                      f"or re-export the checkpoint.")
            stored.add(t.dtype)
            t = t.t() if CONV1D.search(name) else t  # a view: nn.Linear's matmul takes it as is
            sd[name] = t.to(dtype)
    return sd, stored


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
    """Load a GPT-2 without building a random model first. dtype None means float32, the paper's precision: a
    checkpoint stored in another float type is cast, with a warning that says so, never silently kept."""
    folder = resolve(src)
    config = read_config(folder)
    sd, stored = read_state_dict(weight_files(folder), config.n_layer, dtype or torch.float32)
    if dtype is None and stored != {torch.float32}:
        warnings.warn(f"{folder}: weights stored as {sorted(map(str, stored))}, loaded as float32 (ask for "
                      f"dtype=torch.bfloat16 to keep bfloat16).", stacklevel=2)
    with torch.device("meta"):  # shapes only: the checkpoint's tensors become the parameters
        model = GPT(config)
    check_state_dict(sd, model, folder)
    model.load_state_dict(sd, strict=False, assign=True)  # strict=False: only the tied lm_head is absent
    model.tie_weights()  # assign=True replaced wte.weight, so tie the head to the new tensor
    return model.eval()


# --- writing checkpoints, and a base model's identity ------------------------------------------------------

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
    write_json(folder / "config.json", config)
    atomic_write(folder / "model.safetensors", lambda tmp: save_file(sd, str(tmp), metadata={"format": "pt"}))


def fingerprint(model: GPT) -> str:
    """A cheap identity of a base model: its shape and strided samples of four weights. The samples are rounded to
    bfloat16, so a checkpoint loaded in float32 or in bfloat16 has one fingerprint. A trained prefix or a resumed
    run records it, so neither is ever applied to other weights by mistake."""
    c, sd = model.config, model.state_dict()
    h = hashlib.sha256(repr((c.n_layer, c.n_head, c.n_embd, c.n_positions, c.vocab_size)).encode())
    for name in ("transformer.wte.weight", "transformer.h.0.attn.c_attn.weight",
                 f"transformer.h.{c.n_layer - 1}.mlp.c_proj.weight", "transformer.ln_f.weight"):
        t = sd[name].detach().flatten()
        h.update(t[:: max(1, t.numel() // 4096)].to(torch.bfloat16).float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]

"""Checkpoints on disk: Hugging Face GPT-2 folders (config.json, model.safetensors, shards, the hub).

model.py is the model alone: GPT.from_pretrained reads config.json and the weights through this file (single or
sharded, local or fetched from the hub by name) and save_pretrained writes them back in Hugging Face's layout,
through run.py's safe writes. This file never imports model.py: it deals in config dicts and tensors. Everything
read is checked before anything is allocated, and nothing is ever unpickled.
    folder = resolve("gpt2-medium")                 # or a folder, a .safetensors file, hf:owner/name
    sd, stored = read_state_dict(weight_files(folder), n_layer, torch.float32)
    save_pretrained(model, "out/")                  # transformers' GPT2LMHeadModel.from_pretrained reads it
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import fields
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from files.run import atomic_write, read_json, write_json

C = TypeVar("C")

CONFIG_CAP = 1 << 20    # bytes of config.json read at most: a link to /dev/zero must not fill memory
# Hugging Face's GPT-2 uses Conv1D, which stores each weight as (in, out): the transpose of nn.Linear's
# (out, in). We transpose these four at load time, as zero-copy views, so the model is plain nn.Linear.
CONV1D = re.compile(r"h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")
BUFFERS = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)$")  # causal-mask buffers of old checkpoints
LAYER = re.compile(r"h\.(\d+)\.")
# config.json fields this model implements only at one value; any other is refused by name.
FIXED = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
         "model_type": "gpt2"}
HUB_FILES = ["config.json", "model.safetensors", "model.safetensors.index.json", "vocab.json", "merges.txt"]


class CheckpointError(Exception):
    """A checkpoint could not be read or written; the message names the file, what is wrong and the fix."""


# --- reading Hugging Face checkpoints -------------------------------------------------------------------------

def resolve(src: str | Path) -> Path:
    """A folder, a .safetensors file, or a hub name -> the local folder holding config.json."""
    path = Path(src)
    if path.is_dir():
        return path
    if path.is_file():
        return path.parent
    return download(src)


def download(src: str | Path) -> Path:
    """A hub name -> the hub cache's folder holding its config.json. Only a bare name (`gpt2-medium`) or
    `hf:owner/name` goes to the hub: a path with a separator, or a file name (.safetensors, .json), is local, so a
    typo there is "no such folder" and never sends a local path name over the network. huggingface_hub is imported
    only here, so it stays optional and a local run never touches the network; only the files this project reads
    are downloaded, never a pickle."""
    path, name = Path(src), str(src)
    if name.startswith("hf:"):
        name = name[3:]
    elif "/" in name or os.sep in name or not re.fullmatch(r"[\w.-]+", name) or path.suffix in (".safetensors",
                                                                                                 ".json"):
        raise CheckpointError(f"{src}: no such folder (neither a folder, a file nor a hub name). A path with a "
                              f"separator is read as local; for a hub repository write hf:owner/name.")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"{src}: not a local folder or file, and huggingface_hub is not installed to fetch "
                              f"it from the hub. `pip install huggingface_hub`, or pass a local folder.") from None
    try:
        return Path(snapshot_download(name, allow_patterns=HUB_FILES))
    except Exception as e:  # offline, unknown repo, gated: all end the same way for the user
        if "NotFound" in type(e).__name__:  # huggingface_hub's RepositoryNotFoundError: a typo, most likely
            raise CheckpointError(f"{src}: not found on the hub, and no such local folder. Check the spelling "
                                  f"(gpt2, gpt2-medium, hf:owner/name) or pass a local folder.") from None
        raise CheckpointError(f"{src}: not a local folder or file, and the hub could not give it ({type(e).__name__}: "
                              f"{e}). Check the name and your connection, or download it and pass the folder.") from None


def read_config(folder: Path, config_class: type[C]) -> C:
    """config.json -> `config_class` (model.GPTConfig, a dataclass named after config.json's fields), read with a
    size cap; unsupported values refused by name, types and ranges checked by the dataclass itself."""
    path = folder / "config.json"
    try:
        raw = read_json(path, CONFIG_CAP)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing. Give a checkpoint folder (config.json + model.safetensors) or a "
                              f"train.py run folder (args.json).") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({e}).") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: unreadable (expected one JSON object).")
    if "n_positions" not in raw and "n_ctx" in raw:  # the oldest configs only have n_ctx
        raw["n_positions"] = raw["n_ctx"]
    for key, want in FIXED.items():
        if raw.get(key, want) != want:
            raise CheckpointError(f"{path}: {key}={raw[key]!r} is not implemented (GPT-2 has {want!r}); this "
                                  f"loader reads GPT-2 checkpoints only.")
    try:
        config = config_class(**{f.name: raw[f.name] for f in fields(config_class) if f.name in raw})
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}.") from None
    # The weights hold every parameter, each in a byte at least: a size typed too long (n_embd 10**12) is refused
    # here, before a model of that size is built or a tensor allocated.
    need, have = n_params(config), sum(f.stat().st_size for f in weight_files(folder) if f.is_file())
    if need > have:
        sizes = ", ".join(f"{k}={getattr(config, k)}" for k in ("n_layer", "n_embd", "vocab_size", "n_positions"))
        raise CheckpointError(f"{path}: {sizes} make {need:.3g} parameters ({4 * need / 2**30:.3g} GiB in float32), "
                              f"but the weight files hold {have / 2**20:.3g} MiB. Truncated download, missing shards, "
                              f"or a config.json from another model?")
    return config


def n_params(c: object) -> int:
    """Parameters of a GPT-2 of config `c` (model.GPTConfig) without biases and LayerNorms: 12·C² a layer, wte, wpe."""
    return c.n_layer * 12 * c.n_embd ** 2 + (c.vocab_size + c.n_positions) * c.n_embd


def weight_files(folder: Path) -> list[Path]:
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(read_json(index)["weight_map"].values()))
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
    if len(layers) != n_layer or min(layers, default=0) != 0 or max(layers, default=-1) != n_layer - 1:
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


def check_state_dict(sd: dict[str, torch.Tensor], expected: dict[str, torch.Size], folder: Path) -> None:
    """The checkpoint's names and shapes must be the model's (`expected`, without a tied head) exactly."""
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


# --- writing checkpoints, and a base model's identity ------------------------------------------------------

def save_pretrained(model: torch.nn.Module, folder: str | Path) -> None:
    """Write config.json + model.safetensors in Hugging Face's layout (Conv1D weights transposed back: see
    CONV1D). `model` is a model.GPT (its config a dataclass of config.json's fields)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    c = model.config
    config = {**{f.name: getattr(c, f.name) for f in fields(c)}, "n_ctx": c.n_positions,
              "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "bos_token_id": 50256, "eos_token_id": 50256}
    sd = {k: (v.t() if CONV1D.search(k) else v).contiguous() for k, v in model.state_dict().items()}
    if c.tie_word_embeddings:
        sd.pop("lm_head.weight")  # safetensors refuses shared tensors; the head is the embedding
    write_json(folder / "config.json", config)
    write_safetensors(folder / "model.safetensors", sd, {"format": "pt"})


def write_safetensors(file: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """save_file through run.atomic_write. safetensors reports a full disk as its own SafetensorError, not an
    OSError: either is one CheckpointError naming the file (the previous file, if any, stays whole)."""
    try:
        atomic_write(file, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{file}: could not write it ({getattr(e, 'strerror', None) or e}). Free space (or "
                              f"make the folder writable).") from None


def fingerprint(model: torch.nn.Module) -> str:
    """A cheap identity of a base model: its shape and strided samples of four weights. The samples are rounded to
    bfloat16, so a checkpoint loaded in float32 or in bfloat16 has one fingerprint. A trained prefix or a resumed
    run records it (files/tuned.py)."""
    c, sd = model.config, model.state_dict()
    h = hashlib.sha256(repr((c.n_layer, c.n_head, c.n_embd, c.n_positions, c.vocab_size)).encode())
    for name in ("transformer.wte.weight", "transformer.h.0.attn.c_attn.weight",
                 f"transformer.h.{c.n_layer - 1}.mlp.c_proj.weight", "transformer.ln_f.weight"):
        t = sd[name].detach().flatten()
        h.update(t[:: max(1, t.numel() // 4096)].to(torch.bfloat16).float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]

"""Tuned weights on disk (Li & Liang 2021, §1: one small set of weights per task, one frozen LM), and PEFT's folders.

Every light tuner stores only what it trained, in one safetensors file whose metadata names its shape and the base
model's fingerprint: weights tied to a base are never applied to other weights by mistake. The prefix
(prefix.safetensors: its (L, 2, H, P, D) keys/values), the adapter, the embedding-only prefix and the infix all use
this one format and its one error, CheckpointError. PEFT's adapter folders (adapter_config.json +
adapter_model.safetensors) are read and written here too, for its PREFIX_TUNING and PROMPT_TUNING types.
    write(out / "adapter.safetensors", tensors, model, {"adapter_size": 6})
    meta, tensors = read(out / "adapter.safetensors", model, lambda meta: {"h.0.ln.weight": (C,), ...})
    cfg, flat = read_peft(folder, "PREFIX_TUNING", width=lambda cfg: 2 * L * C)
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open

from files.checkpoint import CheckpointError, fingerprint, write_safetensors
from files.run import read_json, write_json

PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
Shapes = Callable[[dict[str, str]], dict[str, tuple[int, ...]]]  # the file's metadata -> each tensor's shape


def write(file: Path, tensors: dict[str, torch.Tensor], model: torch.nn.Module, meta: dict[str, object]) -> Path:
    """Write `tensors` (float32, on the CPU) with `meta` and the base's fingerprint; returns the file."""
    flat = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    meta = {**meta, "format": "pt", "base_fingerprint": fingerprint(model)}
    file.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(file, flat, {k: str(v) for k, v in meta.items()})
    return file


def read(file: Path, model: torch.nn.Module | None, shapes: Shapes, allow_other_base: bool = False
         ) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a file `write` made, the tensors in the model's dtype and device (float32 without a
    model). The names and shapes must be `shapes(metadata)`, every tensor finite, and the file must come from this
    base (by fingerprint) unless allow_other_base."""
    try:
        with safe_open(str(file), framework="pt") as f:
            meta, tensors = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({e}). Is the run finished? train.py "
                              f"writes it at the end.") from None
    if not meta.get("base_fingerprint"):
        raise CheckpointError(f"{file}: metadata has no 'base_fingerprint'. Was it written by train.py?")
    want, got = shapes(meta), {k: tuple(v.shape) for k, v in tensors.items()}
    bad = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
    if bad:
        raise CheckpointError(f"{file}: tensor {bad[0]!r} has shape {got.get(bad[0])}, the metadata implies "
                              f"{want.get(bad[0])} ({len(bad)} such). The file is damaged; save it again.")
    bad = [k for k, v in tensors.items() if not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{file}: NaN or Inf in {bad[:3]}. Training diverged; train again with a lower --lr.")
    if model is None:
        return meta, tensors
    check_base(meta, model, file, allow_other_base)
    w = model.lm_head.weight
    return meta, {k: v.to(w.device, w.dtype) for k, v in tensors.items()}


def check_base(meta: dict[str, str], model: torch.nn.Module, file: Path, allow_other_base: bool = False) -> None:
    """Tuned weights are tied to the base they were trained on: refuse other weights (by fingerprint)."""
    trained_on, this = meta["base_fingerprint"], fingerprint(model)
    if trained_on != this and not allow_other_base:
        raise CheckpointError(f"{file}: trained on base model {trained_on}, this model is {this} (other weights). "
                              f"Tuned weights are tied to their base; if you mean it, pass allow_other_base=True "
                              f"(--allow-other-base).")


def whole(fields: dict, key: str, source: Path) -> int:
    """A positive whole number from our metadata (strings) or a PEFT config (numbers)."""
    value = fields.get(key)
    if isinstance(value, bool) or not str(value).isdigit() or int(value) < 1:
        raise CheckpointError(f"{source}: field {key!r} is {value!r}, expected a positive whole number. The file is "
                              f"damaged or was not written by train.py (or PEFT's save_pretrained).")
    return int(value)


# --- PEFT's adapter folders --------------------------------------------------------------------------------------

def write_peft(folder: str | Path, config: dict, embeddings: torch.Tensor) -> None:
    """A folder PeftModel.from_pretrained(GPT2LMHeadModel..., folder) loads: `config` and `prompt_embeddings`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"prompt_embeddings": embeddings.detach().float().cpu().contiguous()}
    write_safetensors(folder / PEFT_WEIGHTS, tensors, {"format": "pt"})
    cfg = {"task_type": "CAUSAL_LM", "num_transformer_submodules": 1, "inference_mode": True, **config}
    write_json(folder / PEFT_CONFIG, cfg)


def read_peft(folder: str | Path, peft_type: str, width: Callable[[dict], int]) -> tuple[dict, torch.Tensor]:
    """A decoder-only PEFT adapter folder of `peft_type` -> (its config, `prompt_embeddings` (P, width(config))
    in float32, finite). PEFT names its base only by hub name, so the caller checks that the shapes fit."""
    folder = Path(folder)
    file = folder / PEFT_CONFIG
    try:
        cfg = read_json(file)
        assert isinstance(cfg, dict)
    except (OSError, ValueError, AssertionError) as e:
        raise CheckpointError(f"{file}: unreadable ({e or 'not a JSON object'}).") from None
    for key, want in {"peft_type": peft_type, "num_transformer_submodules": 1}.items():
        if cfg.get(key, want if key != "peft_type" else None) != want:
            raise CheckpointError(f"{file}: {key}={cfg.get(key)!r}, expected {want!r}; only decoder-only "
                                  f"{peft_type} adapters load here.")
    shape = (whole(cfg, "num_virtual_tokens", file), width(cfg))
    try:
        with safe_open(str(folder / PEFT_WEIGHTS), framework="pt") as f:
            flat = f.get_tensor("prompt_embeddings") if "prompt_embeddings" in f.keys() else None
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{folder / PEFT_WEIGHTS}: not a readable safetensors file ({e}).") from None
    if flat is None or tuple(flat.shape) != shape:
        raise CheckpointError(f"{folder / PEFT_WEIGHTS}: 'prompt_embeddings' has shape "
                              f"{None if flat is None else tuple(flat.shape)}, {PEFT_CONFIG} implies {shape}.")
    if not torch.isfinite(flat).all():
        raise CheckpointError(f"{folder / PEFT_WEIGHTS}: NaN or Inf in 'prompt_embeddings'. Training diverged.")
    return cfg, flat.float()

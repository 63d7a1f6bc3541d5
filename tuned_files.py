"""A light tuner's trained weights on disk (Li & Liang 2021, §1: one small set of weights per task, one frozen LM).

The adapter (adapter.py), the embedding-only prefix (embedding.py) and the infix (infix.py) each store only what
they trained, in one safetensors file whose metadata names the base model's fingerprint: weights tied to a base
are never applied to other weights by mistake. Stored in float32; read back in the base's dtype and device.
    write(out / "adapter.safetensors", tensors, model, {"adapter_size": 6})
    meta, tensors = read(out / "adapter.safetensors", model, lambda meta: {"h.0.ln.weight": (C,), ...})
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from checkpoint import CheckpointError, fingerprint
from model import GPT
from runfolder import atomic_write


def write(file: Path, tensors: dict[str, torch.Tensor], model: GPT, meta: dict[str, object]) -> Path:
    """Write `tensors` (float32, on the CPU) with `meta` and the base's fingerprint; returns the file."""
    flat = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    meta = {**meta, "format": "pt", "base_fingerprint": fingerprint(model)}
    file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(file, lambda tmp: save_file(flat, str(tmp), metadata={k: str(v) for k, v in meta.items()}))
    return file


Shapes = Callable[[dict[str, str]], dict[str, tuple[int, ...]]]  # the file's metadata -> each tensor's shape


def read(file: Path, model: GPT, shapes: Shapes, allow_other_base: bool = False
         ) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors in the model's dtype and device) of a file `write` made. The names and shapes must be
    `shapes(metadata)`, every tensor finite, and the file must come from this base unless allow_other_base."""
    try:
        with safe_open(str(file), framework="pt") as f:
            meta, tensors = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({e}). Is the run finished? train.py "
                              f"writes it at the end.") from None
    want, got = shapes(meta), {k: tuple(v.shape) for k, v in tensors.items()}
    if got != want:
        bad = sorted(set(got.items()) ^ set(want.items()))[:3]
        raise CheckpointError(f"{file}: the tensors do not fit this model, e.g. (name, shape) {bad}, for n_layer="
                              f"{model.config.n_layer}, n_embd={model.config.n_embd}. They were trained on a base "
                              f"of another shape; load that one.")
    bad = [k for k, v in tensors.items() if not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{file}: NaN or Inf in {bad[:3]}. Training diverged; train again with a lower --lr.")
    trained_on, this = meta.get("base_fingerprint"), fingerprint(model)
    if trained_on != this and not allow_other_base:
        raise CheckpointError(f"{file}: trained on base model {trained_on}, this model is {this} (other weights). "
                              f"Tuned weights are tied to their base; if you mean it, pass allow_other_base=True "
                              f"(--allow-other-base).")
    w = model.lm_head.weight
    return meta, {k: v.to(w.device, w.dtype) for k, v in tensors.items()}


def whole(meta: dict[str, str], key: str, file: Path) -> int:
    """A positive whole number from the metadata."""
    value = meta.get(key, "")
    if not value.isdigit() or int(value) < 1:
        raise CheckpointError(f"{file}: metadata {key!r} is {value!r}, expected a positive whole number. The file "
                              f"is damaged or was not written by train.py; train again.")
    return int(value)


def tally(n_model: int, trained: int, stored: int) -> dict[str, float]:
    """The parameter counts a run records (args.json "params"), each also as a fraction of the base's."""
    return {"model": n_model, "trained": trained, "trained_frac": trained / n_model,
            "stored": stored, "stored_frac": stored / n_model}

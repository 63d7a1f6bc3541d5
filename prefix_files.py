"""A trained prefix on disk (Li & Liang 2021, §4.3: after training only Pθ is kept): ours, and PEFT's adapter folder.

Ours is prefix.safetensors: one (L, 2, H, P, D) float32 tensor, with metadata naming the shape, how the prefix was
trained and the base model's fingerprint, so it is never applied to other weights by mistake. PEFT's
PREFIX_TUNING folder is read and written too, with equal logits both ways (tests/test_prefix.py). Everything read
is checked (shape, finiteness, fit to the model) before it is returned.
    save("out/", past_kv, model, "mlp")              # out/prefix.safetensors
    past_kv = load("out/", model)                    # or a PEFT adapter folder; per layer (1, H, P, D)
    save_peft(past_kv, "adapter/", "gpt2-medium")    # PeftModel.from_pretrained(GPT2LMHeadModel..., "adapter/")
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from checkpoint import fingerprint
from runfolder import atomic_write
from model import GPT, PastKV
from past import PrefixError, check_finite, flatten, shape_of, to_model, unflatten

PARAMETERIZATIONS = ("mlp", "direct")  # how a prefix is trained (prefix.Prefix); a file of ours records which
PREFIX_FILE = "prefix.safetensors"
PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def check_parameterization(parameterization: str, source: str = "prefix") -> None:
    if parameterization not in PARAMETERIZATIONS:
        raise PrefixError(f"{source}: parameterization={parameterization!r}, expected one of {PARAMETERIZATIONS}.")


# --- reading either format ----------------------------------------------------------------------------------------

def read_safetensors(file: Path, key: str) -> tuple[dict, torch.Tensor | None]:
    """(metadata, the tensor `key` or None)."""
    try:
        with safe_open(str(file), framework="pt") as f:
            return f.metadata() or {}, f.get_tensor(key) if key in f.keys() else None
    except (SafetensorError, OSError) as e:
        raise PrefixError(f"{file}: not a readable safetensors file ({e}). Expected prefix.safetensors from "
                          f"prefix.save, or a PEFT folder ({PEFT_CONFIG} + {PEFT_WEIGHTS}).") from None


def whole(fields: dict, key: str, source: Path) -> int:
    """A positive whole-number field of our metadata (strings) or of a PEFT config (numbers)."""
    value = fields.get(key)
    if isinstance(value, bool) or not str(value).isdigit() or int(value) < 1:
        raise PrefixError(f"{source}: field {key!r} is {value!r}, expected a positive whole number. Was it written "
                          f"by prefix.save or by PEFT's save_pretrained?")
    return int(value)


# --- ours: prefix.safetensors ---------------------------------------------------------------------------------

def save(path: str | Path, past_kv: PastKV, model: GPT, parameterization: str) -> Path:
    """Write the compiled prefix, one (L, 2, H, P, D) float32 tensor, to `path` (a folder gets prefix.safetensors),
    with the metadata `load` checks; returns the file."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path.mkdir(parents=True, exist_ok=True)
        path = path / PREFIX_FILE
    L, H, P, D = shape_of(past_kv, str(path), model)
    check_parameterization(parameterization, str(path))
    kv = torch.stack([torch.stack(pair) for pair in past_kv]).squeeze(2)  # (L, 2, H, P, D)
    meta = dict(format="pt", n_layer=L, n_head=H, head_dim=D, prefix_len=P, parameterization=parameterization,
                base_fingerprint=fingerprint(model))
    tensors = {"past_kv": kv.detach().float().cpu().contiguous()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={k: str(v) for k, v in meta.items()}))
    return path


def load(path: str | Path, model: GPT | None = None, allow_other_base: bool = False) -> PastKV:
    """prefix.safetensors (or its folder), or a PEFT prefix-tuning folder -> per layer (1, H, P, D).

    Given a model, the prefix must fit its shape and be cast to its dtype and device; a file of ours must also come
    from the same base (by fingerprint) unless allow_other_base=True (CLI: --allow-other-base). A PEFT folder
    names its base only by hub name, so there only the shape is checked.
    """
    path = Path(path)
    if path.is_dir() and (path / PEFT_CONFIG).is_file():
        return load_peft(path, model)
    file = path / PREFIX_FILE if path.is_dir() else path
    meta, kv = read_safetensors(file, "past_kv")
    L, H, D, P = (whole(meta, key, file) for key in ("n_layer", "n_head", "head_dim", "prefix_len"))
    check_parameterization(meta.get("parameterization"), str(file))
    if not meta.get("base_fingerprint"):
        raise PrefixError(f"{file}: metadata has no 'base_fingerprint'. Was it written by prefix.save?")
    if kv is None or tuple(kv.shape) != (L, 2, H, P, D):
        raise PrefixError(f"{file}: tensor 'past_kv' has shape {None if kv is None else tuple(kv.shape)}, the "
                          f"metadata implies {(L, 2, H, P, D)}. The file is damaged; save it again.")
    past_kv = [(kv[i, 0:1], kv[i, 1:2]) for i in range(L)]  # each (1, H, P, D)
    check_finite(past_kv, file)
    if model is not None:
        shape_of(past_kv, str(file), model)
        trained_on, this = meta.get("base_fingerprint"), fingerprint(model)
        if trained_on != this and not allow_other_base:
            raise PrefixError(f"{file}: trained on base model {trained_on}, this model is {this} (same shape, other "
                              f"weights). A prefix is tied to its base; if you mean it, pass allow_other_base=True "
                              f"(--allow-other-base).")
    return to_model(past_kv, model)


# --- PEFT's PREFIX_TUNING adapter folder ---------------------------------------------------------------------

def load_peft(folder: str | Path, model: GPT | None = None) -> PastKV:
    """A PEFT prefix-tuning adapter for GPT-2. PEFT's save_pretrained stores the compiled prefix as
    `prompt_embeddings` (P, 2·L·C), also with prefix_projection=true: get_prompt_embedding_to_save runs the MLP.
    Given a model, the prefix must fit its shape and is cast to its dtype and device; PEFT names its base only by
    hub name, so nothing more is checked."""
    folder = Path(folder)
    file = folder / PEFT_CONFIG
    try:
        cfg = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise PrefixError(f"{file}: unreadable ({e}).") from None
    for key, want in {"peft_type": "PREFIX_TUNING", "num_transformer_submodules": 1}.items():
        if cfg.get(key) != want:
            raise PrefixError(f"{file}: {key}={cfg.get(key)!r}, expected {want!r}; only decoder-only prefix-tuning "
                              f"adapters load here.")
    L, H, C, P = (whole(cfg, k, file) for k in ("num_layers", "num_attention_heads", "token_dim", "num_virtual_tokens"))
    _, flat = read_safetensors(folder / PEFT_WEIGHTS, "prompt_embeddings")
    if flat is None or tuple(flat.shape) != (P, 2 * L * C):
        raise PrefixError(f"{folder / PEFT_WEIGHTS}: 'prompt_embeddings' has shape "
                          f"{None if flat is None else tuple(flat.shape)}, {PEFT_CONFIG} implies {(P, 2 * L * C)}.")
    past_kv = [(k.contiguous(), v.contiguous()) for k, v in unflatten(flat.float(), L, H)]
    check_finite(past_kv, folder / PEFT_WEIGHTS)
    shape_of(past_kv, str(folder), model)
    return to_model(past_kv, model)


def save_peft(past_kv: PastKV, folder: str | Path, base_model_name_or_path: str = "gpt2") -> None:
    """Write a PEFT adapter folder that `PeftModel.from_pretrained(GPT2LMHeadModel..., folder)` loads: with
    prefix_projection=false, PEFT's embedding is the flat keys/values (P, 2·L·C)."""
    L, H, P, D = shape_of(past_kv, str(folder))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = dict(peft_type="PREFIX_TUNING", task_type="CAUSAL_LM", base_model_name_or_path=base_model_name_or_path,
               num_virtual_tokens=P, token_dim=H * D, num_attention_heads=H, num_layers=L, encoder_hidden_size=H * D,
               num_transformer_submodules=1, prefix_projection=False, inference_mode=True)
    tensors = {"prompt_embeddings": flatten(past_kv).detach().float().cpu().contiguous()}  # (P, 2·L·C)
    atomic_write(folder / PEFT_WEIGHTS, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    atomic_write(folder / PEFT_CONFIG, lambda tmp: tmp.write_text(json.dumps(cfg, indent=2)))

"""The prefix of prefix-tuning (Li & Liang 2021, §4 "Prefix-Tuning"): P trained keys/values per layer, GPT-2 frozen.

To the model a prefix is a past (model.py's `past_kv`). While training it comes out of a small MLP, the paper's
reparameterization (§4.3 "Parametrization of Pθ"), since training the keys/values directly is unstable. After
training the MLP is run once and thrown away: only the P·2·L·C numbers it produced are stored.

    prefix = Prefix(model.config)                    # P=5, M=512, "mlp": the E2E recipe (RECIPE.md §2)
    freeze(model, prefix)                            # only the prefix learns
    loss = model(idx, past_kv=prefix(), targets=targets).loss
    save("out/", prefix.export(), model, "mlp")     # out/prefix.safetensors, ~1 MB for gpt2-medium
    past_kv = load("out/", model)                    # or a PEFT adapter folder; per layer (1, H, P, D)
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import tiktoken
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from checkpoint import atomic_write, fingerprint
from model import GPT, GPTConfig, PastKV

PARAMETERIZATIONS = ("mlp", "direct")
PREFIX_FILE = "prefix.safetensors"
PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


class PrefixError(Exception):
    """A prefix could not be built, loaded, saved or combined; the message says what, expected vs actual, the fix."""


def check_parameterization(parameterization: str, source: str = "prefix") -> None:
    if parameterization not in PARAMETERIZATIONS:
        raise PrefixError(f"{source}: parameterization={parameterization!r}, expected one of {PARAMETERIZATIONS}.")


class Prefix(nn.Module):
    """The trained part, with PEFT's PrefixEncoder module names (`embedding`, `transform`) so weights map 1:1.

    "mlp" (§4.3): P′θ (P, C) -> Linear(C, M) -> Tanh -> Linear(M, 2·L·C). "direct": Pθ (P, 2·L·C) itself, the
    unstable baseline. Init is PyTorch's default, as in the authors' code: Embedding N(0, 1), Linear Kaiming-uniform.
    """

    def __init__(self, config: GPTConfig, prefix_len: int = 5, parameterization: str = "mlp", prefix_mid: int = 512,
                 dropout: float = 0.0, seed: int = 0):
        super().__init__()
        check_parameterization(parameterization)
        if prefix_len < 1 or prefix_mid < 1:
            raise PrefixError(f"prefix_len={prefix_len}, prefix_mid={prefix_mid}: both must be at least 1.")
        self.n_layer, self.n_head, self.parameterization = config.n_layer, config.n_head, parameterization
        self.width = 2 * config.n_layer * config.n_embd
        with torch.random.fork_rng(devices=[]):  # seeded, and the caller's RNG stream is left as it was
            torch.manual_seed(seed)
            if parameterization == "mlp":
                self.embedding = nn.Embedding(prefix_len, config.n_embd)                     # P′θ (P, C)
                self.transform = nn.Sequential(nn.Linear(config.n_embd, prefix_mid), nn.Tanh(),
                                               nn.Linear(prefix_mid, self.width))
            else:
                self.embedding = nn.Embedding(prefix_len, self.width)                        # Pθ (P, 2·L·C)
        self.dropout = nn.Dropout(dropout)  # the authors drop on the reshaped KV; elementwise, so flat is the same

    def flat(self) -> torch.Tensor:
        """(P, 2·L·C): every layer's keys and values for the P virtual tokens."""
        x = self.embedding.weight
        return self.transform(x) if self.parameterization == "mlp" else x

    def forward(self) -> PastKV:
        return unflatten(self.dropout(self.flat()), self.n_layer, self.n_head)

    @torch.no_grad()
    def export(self) -> PastKV:
        """Pθ, once, detached (§4.3: after training the MLP is dropped): what is saved and decoded with."""
        return [(k.clone(), v.clone()) for k, v in unflatten(self.flat(), self.n_layer, self.n_head)]


def unflatten(flat: torch.Tensor, n_layer: int, n_head: int) -> PastKV:
    """(P, 2·L·C) -> per layer (k, v), each (1, H, P, D). The last axis reads L0-key, L0-value, L1-key, ...: the
    authors' view (P, 2L, H, D) + permute (train_control.py), and PEFT's get_prompt."""
    kv = flat.view(flat.size(0), 2 * n_layer, n_head, -1).permute(1, 2, 0, 3).unsqueeze(1)  # (2L, 1, H, P, D)
    return [(kv[2 * i], kv[2 * i + 1]) for i in range(n_layer)]


def flatten(past_kv: PastKV) -> torch.Tensor:
    """The inverse of `unflatten`: per layer (1, H, P, D) -> (P, 2·L·C)."""
    kv = torch.stack([t[0] for pair in past_kv for t in pair])  # (2L, H, P, D)
    return kv.permute(2, 0, 1, 3).reshape(kv.size(2), -1)        # (P, 2L·H·D)


def freeze(model: nn.Module, prefix: nn.Module | None = None) -> None:
    """Freeze the base model, in eval mode (the authors run it without dropout), and check that the prefix, and
    only the prefix, will learn. train.py calls it where training starts."""
    model.requires_grad_(False).eval()
    named = list(prefix.named_parameters()) if prefix is not None else []
    shared = {id(p) for p in model.parameters()} & {id(p) for _, p in named}
    frozen = [n for n, p in named if not p.requires_grad]
    if shared or frozen:
        raise PrefixError(f"the prefix must own and train its parameters: {len(shared)} are shared with the model, "
                          f"frozen: {frozen}. Build the prefix from copies (tensor.clone()).")


def init_from_text(model: GPT, enc: tiktoken.Encoding, text: str, parameterization: str = "mlp",
                   prefix_mid: int = 512, steps: int = 500, lr: float = 1e-4, seed: int = 0) -> Prefix:
    """§7.4 "Initialization": start from the model's own keys/values for a real word; P = its token count.

    The text gets one leading space, as in the authors' code (" table-to-text:" is 6 tokens). "direct" copies the
    keys/values; "mlp" is pre-fit to them by `steps` Adam steps on the MSE (lowdata_init_train3).
    """
    ids = enc.encode(" " + text.lstrip(" "))
    if not ids:
        raise PrefixError(f"init text {text!r} has no tokens; pass a word such as 'table-to-text:'.")
    with torch.no_grad():
        idx = torch.tensor([ids], device=model.lm_head.weight.device)                   # (1, P)
        target = flatten(model(idx, use_cache=True).present_kv).float()                  # (P, 2·L·C)
    prefix = Prefix(model.config, len(ids), parameterization, prefix_mid, seed=seed).to(target.device)
    if parameterization == "direct":
        prefix.embedding.weight.detach().copy_(target)  # Pθ is the keys/values themselves
        return prefix
    opt = torch.optim.Adam(prefix.parameters(), lr=lr)
    with torch.enable_grad():  # callers may hold no_grad; the pre-fit needs gradients all the same
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            F.mse_loss(prefix.flat(), target).backward()
            opt.step()
    return prefix


# --- many tasks on one backbone ---------------------------------------------------------------------------

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


def param_counts(prefix: Prefix, model: nn.Module) -> dict[str, float]:
    """Trained parameters (MLP included) and stored ones (compiled: P·2·L·C), each also as a fraction of the
    model's. train.py prints both when training starts."""
    n_model = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in prefix.parameters() if p.requires_grad)
    stored = prefix.embedding.num_embeddings * prefix.width
    return {"model": n_model, "trained": trained, "trained_frac": trained / n_model,
            "stored": stored, "stored_frac": stored / n_model}


# --- prefix-tuning as train.py and beam.py see it (tuner.py says what a tuner is) -------------------------------

class PrefixTuner(nn.Module):
    """GPT-2 frozen and in eval mode (no dropout, as the authors ran it); only the prefix learns (§4)."""
    name, weights_learn = "prefix", False
    per_sequence_loss = True  # RECIPE.md §3: the authors sum each sequence's NLL (objective_mode 1)

    def __init__(self, model: GPT, prefix: Prefix):
        super().__init__()
        self.model, self.prefix = model, prefix
        freeze(model, prefix)

    @classmethod
    def build(cls, model: GPT, tok: tiktoken.Encoding, prefix_len: int, prefix_mid: int, prefix_param: str,
              prefix_init: str, seed: int, **_: object) -> PrefixTuner:
        if prefix_init:  # §7.4: P becomes the init text's token count; the run records that P
            return cls(model, init_from_text(model, tok, prefix_init, prefix_param, prefix_mid, seed=seed))
        return cls(model, Prefix(model.config, prefix_len, prefix_param, prefix_mid, seed=seed))

    def train(self, mode: bool = True) -> PrefixTuner:
        super().train(mode)
        self.model.eval()  # the frozen base never drops, whatever mode the trained part is in
        return self

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        return self.model(idx, past_kv=self.prefix(), targets=targets)

    def settings(self) -> dict:
        """What this run really trained, for args.json (an init text sets its own P)."""
        return {"prefix_len": self.prefix.embedding.num_embeddings}

    def counts(self) -> dict[str, float]:
        return param_counts(self.prefix, self.model)

    def save(self, out: Path) -> Path:
        return save(out / PREFIX_FILE, self.prefix.export(), self.model, self.prefix.parameterization)

    @staticmethod
    def open(folder: Path, base: GPT, allow_other_base: bool = False) -> tuple[GPT, PastKV]:
        """For decoding: the base model with this run's prefix as its past."""
        return base, load(folder / PREFIX_FILE, base, allow_other_base)


# --- files: our prefix.safetensors, and PEFT adapter folders ------------------------------------------------

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
        return to_model(load_peft(path, model), model)
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


def to_model(past_kv: PastKV, model: GPT | None) -> PastKV:
    w = model.lm_head.weight if model is not None else None
    return past_kv if w is None else [(k.to(w.device, w.dtype), v.to(w.device, w.dtype)) for k, v in past_kv]


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


def check_finite(past_kv: PastKV, source: Path) -> None:
    bad = [i for i, pair in enumerate(past_kv) if not all(torch.isfinite(t).all() for t in pair)]
    if bad:
        raise PrefixError(f"{source}: NaN or Inf in the keys/values of layers {bad}. Training diverged; use an "
                          f"earlier prefix or train again with a lower learning rate.")


def load_peft(folder: Path, model: GPT | None) -> PastKV:
    """A PEFT prefix-tuning adapter for GPT-2. PEFT's save_pretrained stores the compiled prefix as
    `prompt_embeddings` (P, 2·L·C), also with prefix_projection=true: get_prompt_embedding_to_save runs the MLP."""
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
    return past_kv


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

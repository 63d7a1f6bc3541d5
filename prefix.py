"""The prefix of prefix-tuning (Li & Liang 2021, §4 "Prefix-Tuning"): P trained keys/values per layer, GPT-2 frozen.

To the model a prefix is a past (model.py's `past_kv`). While training it comes out of a small MLP, the paper's
reparameterization (§4.3 "Parametrization of Pθ"), since training the keys/values directly is unstable. After
training the MLP is run once and thrown away: only the P·2·L·C numbers it produced are stored. This file reads top
to bottom as the method: the trained module, freezing the base, init from real words (§7.4), prefix-tuning as
train.py sees it (one prefix per label, §4), then a stored prefix as plain data (its layout, many tasks on one
backbone, §8) and its file, ours and PEFT's.

    prefix = Prefix(model.config)                    # P=5, M=512, "mlp": the E2E recipe (RECIPE.md §2)
    freeze(model, prefix)                            # only the prefix learns
    loss = model(idx, past_kv=prefix(), targets=targets).loss
    save("out/", prefix.export(), model, "mlp")     # out/prefix.safetensors, ~1 MB for gpt2-medium
    past_kv = load("out/", model)                    # or a PEFT adapter folder; per layer (1, H, P, D)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import tiktoken
import torch
import torch.nn as nn
import torch.nn.functional as F

from cli import check_memory
from files import tuned
from files.run import read_run
from model import GPT, GPTConfig, GPTOutput, PastKV, param_counts

PARAMETERIZATIONS = ("mlp", "direct")  # how a prefix is trained; a file of ours records which
PREFIX_FILE = "prefix.safetensors"


class PrefixError(Exception):
    """A prefix could not be built, combined or fitted to a model; the message says what, expected vs actual, the
    fix. (A prefix *file* that is unreadable or damaged is files/tuned.py's CheckpointError.)"""


def check_parameterization(parameterization: str, source: str = "prefix") -> None:
    if parameterization not in PARAMETERIZATIONS:
        raise PrefixError(f"{source}: parameterization={parameterization!r}, expected one of {PARAMETERIZATIONS}.")


@dataclass
class PrefixConfig:
    """What shapes a prefix: train.py's flags of the same names (the E2E recipe's values by default)."""
    prefix_len: int = 5          # P, virtual tokens per layer
    prefix_mid: int = 512        # M, hidden width of the MLP (§4.3)
    prefix_param: str = "mlp"    # "mlp" (the paper's reparameterization) or "direct"
    prefix_init: str = ""        # init from this text's activations (§7.4); P becomes its token count
    seed: int = 0


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
        self.width = W = 2 * config.n_layer * config.n_embd
        C, P, M = config.n_embd, prefix_len, prefix_mid  # in float32, with its gradient and AdamW's 2 moments:
        n = P * C + (C + 1) * M + (M + 1) * W if parameterization == "mlp" else P * W  # 16 bytes a parameter
        check_memory(f"--prefix-len {P}, --prefix-mid {M}", 16 * n, PrefixError)
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


def freeze(model: nn.Module, prefix: nn.Module | None = None) -> None:
    """Freeze the base model, in eval mode (the authors run it without dropout), and check that the prefix, and
    only the prefix, will learn. Every tuner with a frozen base calls it where training starts."""
    model.requires_grad_(False).eval()
    named = list(prefix.named_parameters()) if prefix is not None else []
    shared = {id(p) for p in model.parameters()} & {id(p) for _, p in named}
    frozen = [n for n, p in named if not p.requires_grad]
    if shared or frozen:
        raise PrefixError(f"the prefix must own and train its parameters: {len(shared)} are shared with the model, "
                          f"frozen: {frozen}. Build the prefix from copies (tensor.clone()).")


class FrozenBase(nn.Module):
    """A tuner whose base GPT-2 (self.model) stays frozen and in eval mode, whatever mode the trained part is in:
    the authors train the prefix (and the embedding-only and infix ablations) without dropout in GPT-2."""
    model: GPT

    def train(self, mode: bool = True) -> FrozenBase:
        super().train(mode)
        self.model.eval()
        return self


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


def prefix_counts(prefix: Prefix, model: nn.Module) -> dict[str, float]:
    """Trained parameters (MLP included) and stored ones (compiled: P·2·L·C), as train.py prints and records them."""
    trained = sum(p.numel() for p in prefix.parameters() if p.requires_grad)
    return param_counts(sum(p.numel() for p in model.parameters()), trained,
                        prefix.embedding.num_embeddings * prefix.width)


# --- prefix-tuning as train.py and beam.py see it (tuners/__init__.py says what a tuner is) -----------------------

class PrefixTuner(FrozenBase):
    """GPT-2 frozen and in eval mode (no dropout, as the authors ran it); only the prefix learns (§4). With labels
    (a JSONL of {"prefix": label, "text": ...}), one prefix per label, trained together: each row of a batch gets
    its label's past (§4: the base is shared, a prefix per task), saved as LABEL.safetensors each."""
    name, weights_learn = "prefix", False
    per_sequence_loss = True  # RECIPE.md §3: the authors sum each sequence's NLL (objective_mode 1)
    Config = PrefixConfig

    def __init__(self, model: GPT, prefixes: list[Prefix], labels: list[str] = ()):
        super().__init__()
        self.model, self.prefixes, self.labels = model, nn.ModuleList(prefixes), list(labels)
        freeze(model, self.prefixes)

    @property
    def prefix(self) -> Prefix:
        return self.prefixes[0]

    @property
    def past_len(self) -> int:
        return self.prefix.embedding.num_embeddings  # an init text sets its own P (§7.4)

    @classmethod
    def build(cls, model: GPT, tok: tiktoken.Encoding, cfg: PrefixConfig, labels: list[str] = ()) -> PrefixTuner:
        def one(i: int) -> Prefix:  # §7.4: an init text sets P to its token count; the run records that P
            if cfg.prefix_init:
                return init_from_text(model, tok, cfg.prefix_init, cfg.prefix_param, cfg.prefix_mid, seed=cfg.seed + i)
            return Prefix(model.config, cfg.prefix_len, cfg.prefix_param, cfg.prefix_mid, seed=cfg.seed + i)
        return cls(model, [one(i) for i in range(max(1, len(labels)))], labels)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                task: torch.Tensor | None = None) -> GPTOutput:
        """task (B,): each row's label index, when the run has labels; its past is that label's prefix."""
        if task is None:
            return self.model(idx, past_kv=self.prefix(), targets=targets)
        pasts = [p() for p in self.prefixes]                                       # per label, per layer (1, H, P, D)
        rows = [tuple(torch.cat([past[i][j] for past in pasts])[task] for j in range(2))  # (B, H, P, D)
                for i in range(len(pasts[0]))]
        return self.model(idx, past_kv=rows, targets=targets)

    def counts(self) -> dict[str, float]:
        one, n = prefix_counts(self.prefix, self.model), len(self.prefixes)
        return one | {k: one[k] * n for k in ("trained", "trained_frac", "stored", "stored_frac")}

    def save(self, out: Path) -> list[Path]:
        names = [f"{label}.safetensors" for label in self.labels] or [PREFIX_FILE]
        return [save(out / name, p.export(), self.model, p.parameterization) for name, p in zip(names, self.prefixes)]

    @staticmethod
    def open(folder: Path, base: GPT, allow_other_base: bool = False) -> tuple[GPT, PastKV | None]:
        """For decoding: the base model with this run's prefix as its past (a run with labels has none by default:
        beam.py --label picks one)."""
        if not (folder / PREFIX_FILE).is_file() and (read_run(folder) or {}).get("labels"):
            return base, None
        return base, load(folder / PREFIX_FILE, base, allow_other_base)


# --- a stored prefix as data: its layout, checks, many tasks on one backbone ---------------------------------

def unflatten(flat: torch.Tensor, n_layer: int, n_head: int) -> PastKV:
    """(P, 2·L·C) -> per layer (k, v), each (1, H, P, D). The last axis reads L0-key, L0-value, L1-key, ...: the
    authors' view (P, 2L, H, D) + permute (train_control.py), and PEFT's get_prompt."""
    kv = flat.view(flat.size(0), 2 * n_layer, n_head, -1).permute(1, 2, 0, 3).unsqueeze(1)  # (2L, 1, H, P, D)
    return [(kv[2 * i], kv[2 * i + 1]) for i in range(n_layer)]


def flatten(past_kv: PastKV) -> torch.Tensor:
    """The inverse of `unflatten`: per layer (1, H, P, D) -> (P, 2·L·C)."""
    kv = torch.stack([t[0] for pair in past_kv for t in pair])  # (2L, H, P, D)
    return kv.permute(2, 0, 1, 3).reshape(kv.size(2), -1)        # (P, 2L·H·D)


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
    """One prefix per row (§8 "Discussion": rows of many tasks in one forward) -> per layer (B, H, Pmax, D), shorter
    ones left-padded, and their key mask (B, Pmax).

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
    """Σ wᵢ·prefixᵢ, layer by layer (for two: α·A + (1−α)·B); the prefixes must share one shape. Blending tasks
    is ours, not the paper's.

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


# --- a prefix on disk: prefix.safetensors (files/tuned.py's format), and PEFT's PREFIX_TUNING folder -------------

def save(path: str | Path, past_kv: PastKV, model: GPT, parameterization: str) -> Path:
    """Write the compiled prefix, one (L, 2, H, P, D) float32 tensor `past_kv`, to `path` (a folder gets
    prefix.safetensors), with its shape, parameterization and the base's fingerprint; returns the file."""
    path = Path(path)
    path = path if path.suffix == ".safetensors" else path / PREFIX_FILE
    L, H, P, D = shape_of(past_kv, str(path), model)
    check_parameterization(parameterization, str(path))
    kv = torch.stack([torch.stack(pair) for pair in past_kv]).squeeze(2)  # (L, 2, H, P, D)
    meta = dict(n_layer=L, n_head=H, head_dim=D, prefix_len=P, parameterization=parameterization)
    return tuned.write(path, {"past_kv": kv}, model, meta)


def load(path: str | Path, model: GPT | None = None, allow_other_base: bool = False) -> PastKV:
    """prefix.safetensors (or its folder), or a PEFT prefix-tuning folder -> per layer (1, H, P, D).

    Given a model, the prefix must fit its shape and is cast to its dtype and device; a file of ours must also come
    from the same base (by fingerprint) unless allow_other_base=True (CLI: --allow-other-base). A PEFT folder
    names its base only by hub name, so there only the shape is checked.
    """
    path = Path(path)
    if path.is_dir() and (path / tuned.PEFT_CONFIG).is_file():
        return load_peft(path, model)
    file = path / PREFIX_FILE if path.is_dir() else path

    def shapes(meta: dict[str, str]) -> dict[str, tuple[int, ...]]:
        L, H, D, P = (tuned.whole(meta, key, file) for key in ("n_layer", "n_head", "head_dim", "prefix_len"))
        check_parameterization(meta.get("parameterization"), str(file))
        return {"past_kv": (L, 2, H, P, D)}

    meta, tensors = tuned.read(file, None, shapes)
    kv = tensors["past_kv"]                                                   # (L, 2, H, P, D)
    past_kv = [(kv[i, 0:1], kv[i, 1:2]) for i in range(kv.size(0))]          # each (1, H, P, D)
    shape_of(past_kv, str(file), model)  # a shape that does not fit says more than "other weights"
    if model is None:
        return past_kv
    tuned.check_base(meta, model, file, allow_other_base)
    w = model.lm_head.weight
    return [(k.to(w.device, w.dtype), v.to(w.device, w.dtype)) for k, v in past_kv]


def load_peft(folder: str | Path, model: GPT | None = None) -> PastKV:
    """A PEFT prefix-tuning adapter for GPT-2. PEFT's save_pretrained stores the compiled prefix as
    `prompt_embeddings` (P, 2·L·C), also with prefix_projection=true: get_prompt_embedding_to_save runs the MLP."""
    file = Path(folder) / tuned.PEFT_CONFIG
    cfg, flat = tuned.read_peft(folder, "PREFIX_TUNING",
                                lambda c: 2 * tuned.whole(c, "num_layers", file) * tuned.whole(c, "token_dim", file))
    past_kv = unflatten(flat, cfg["num_layers"], tuned.whole(cfg, "num_attention_heads", file))
    shape_of(past_kv, str(folder), model)
    w = model.lm_head.weight if model is not None else flat
    return [(k.to(w.device, w.dtype).contiguous(), v.to(w.device, w.dtype).contiguous()) for k, v in past_kv]


def save_peft(past_kv: PastKV, folder: str | Path, base_model_name_or_path: str = "gpt2") -> None:
    """Write a PEFT adapter folder that `PeftModel.from_pretrained(GPT2LMHeadModel..., folder)` loads: with
    prefix_projection=false, PEFT's embedding is the flat keys/values (P, 2·L·C)."""
    L, H, P, D = shape_of(past_kv, str(folder))
    cfg = dict(peft_type="PREFIX_TUNING", base_model_name_or_path=base_model_name_or_path, num_virtual_tokens=P,
               token_dim=H * D, num_attention_heads=H, num_layers=L, encoder_hidden_size=H * D,
               prefix_projection=False)
    tuned.write_peft(folder, cfg, flatten(past_kv))

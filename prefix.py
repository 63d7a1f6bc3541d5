"""The prefix of prefix-tuning (Li & Liang 2021, §4 "Prefix-Tuning"): P trained keys/values per layer, GPT-2 frozen.

To the model a prefix is a past (model.py's `past_kv`). While training it comes out of a small MLP, the paper's
reparameterization (§4.3 "Parametrization of Pθ"), since training the keys/values directly is unstable. After
training the MLP is run once and thrown away: only the P·2·L·C numbers it produced are stored. A stored prefix is
plain data: its layout, stacking and mixing tasks are in past.py; its files, ours and PEFT's, in prefix_files.py.

    prefix = Prefix(model.config)                    # P=5, M=512, "mlp": the E2E recipe (RECIPE.md §2)
    freeze(model, prefix)                            # only the prefix learns
    loss = model(idx, past_kv=prefix(), targets=targets).loss
    save("out/", prefix.export(), model, "mlp")     # out/prefix.safetensors, ~1 MB for gpt2-medium
    past_kv = load("out/", model)                    # or a PEFT adapter folder; per layer (1, H, P, D)
"""
from __future__ import annotations

from pathlib import Path

import tiktoken
import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoint import fingerprint
from runfolder import read_run
from model import GPT, GPTConfig, GPTOutput, PastKV
from past import PrefixError, flatten, mix, stack, unflatten
from prefix_files import PARAMETERIZATIONS, PREFIX_FILE, check_parameterization, load, load_peft, save, save_peft

# The whole prefix API, as callers, the README and outside checks name it (prefix.<name>); some of it lives in
# past.py and prefix_files.py and is re-exported here.
__all__ = ["PARAMETERIZATIONS", "PREFIX_FILE", "Prefix", "PrefixError", "PrefixTuner", "fingerprint", "flatten",
           "freeze", "init_from_text", "load", "load_peft", "mix", "param_counts", "save", "save_peft", "stack",
           "unflatten"]


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
    """GPT-2 frozen and in eval mode (no dropout, as the authors ran it); only the prefix learns (§4). With labels
    (a JSONL of {"prefix": label, "text": ...}), one prefix per label, trained together: each row of a batch gets
    its label's past (§4: the base is shared, a prefix per task), saved as LABEL.safetensors each."""
    name, weights_learn = "prefix", False
    per_sequence_loss = True  # RECIPE.md §3: the authors sum each sequence's NLL (objective_mode 1)

    def __init__(self, model: GPT, prefixes: list[Prefix], labels: list[str] = ()):
        super().__init__()
        self.model, self.prefixes, self.labels = model, nn.ModuleList(prefixes), list(labels)
        freeze(model, self.prefixes)

    @property
    def prefix(self) -> Prefix:
        return self.prefixes[0]

    @classmethod
    def build(cls, model: GPT, tok: tiktoken.Encoding, prefix_len: int, prefix_mid: int, prefix_param: str,
              prefix_init: str, seed: int, labels: list[str] = (), **_: object) -> PrefixTuner:
        def one(i: int) -> Prefix:  # §7.4: an init text sets P to its token count; the run records that P
            if prefix_init:
                return init_from_text(model, tok, prefix_init, prefix_param, prefix_mid, seed=seed + i)
            return Prefix(model.config, prefix_len, prefix_param, prefix_mid, seed=seed + i)
        return cls(model, [one(i) for i in range(max(1, len(labels)))], labels)

    def train(self, mode: bool = True) -> PrefixTuner:
        super().train(mode)
        self.model.eval()  # the frozen base never drops, whatever mode the trained part is in
        return self

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                task: torch.Tensor | None = None) -> GPTOutput:
        """task (B,): each row's label index, when the run has labels; its past is that label's prefix."""
        if task is None:
            return self.model(idx, past_kv=self.prefix(), targets=targets)
        pasts = [p() for p in self.prefixes]                                       # per label, per layer (1, H, P, D)
        rows = [tuple(torch.cat([past[i][j] for past in pasts])[task] for j in range(2))  # (B, H, P, D)
                for i in range(len(pasts[0]))]
        return self.model(idx, past_kv=rows, targets=targets)

    def settings(self) -> dict:
        """What this run really trained, for args.json (an init text sets its own P)."""
        return {"prefix_len": self.prefix.embedding.num_embeddings}

    def counts(self) -> dict[str, float]:
        one, n = param_counts(self.prefix, self.model), len(self.prefixes)
        return one | {k: one[k] * n for k in ("trained", "trained_frac", "stored", "stored_frac")}

    def save(self, out: Path) -> Path:
        names = [f"{label}.safetensors" for label in self.labels] or [PREFIX_FILE]
        paths = [save(out / name, p.export(), self.model, p.parameterization) for name, p in zip(names, self.prefixes)]
        return paths[0]

    @staticmethod
    def open(folder: Path, base: GPT, allow_other_base: bool = False) -> tuple[GPT, PastKV]:
        """For decoding: the base model with this run's prefix as its past (a run with labels has none by default:
        beam.py --label picks one)."""
        if not (folder / PREFIX_FILE).is_file() and (read_run(folder) or {}).get("labels"):
            return base, None
        return base, load(folder / PREFIX_FILE, base, allow_other_base)

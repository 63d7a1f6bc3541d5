"""Adapter-tuning, the paper's ADAPTER baseline (Li & Liang 2021, §6 "Main Results"; the design of Lin et al. 2020).

GPT-2 stays frozen; after every block a small bottleneck learns, x + up(ReLU(down(LayerNorm(x)))), its width set
by --adapter-size. Placement and parts are the authors' `--adapter_design 1` (their transformers fork,
modeling_gpt2_adapter.py): one adapter per block, on the block's output after the MLP's residual add, with its own
LayerNorm. That is 2·C·b + b + 3·C parameters a layer: the paper's 3% and 0.1% of GPT-2 Medium (354.8M) are
--adapter-size 215 (3.00%) and 6 (0.10%). model.py knows nothing of adapters (see attach).
    python train.py --tuner adapter --adapter-size 6 --out-dir out/adapter     # out/adapter.safetensors
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tiktoken
import torch
import torch.nn as nn
import torch.nn.functional as F

from files.tuned import read, whole, write
from model import GPT, GPTConfig, GPTOutput, PastKV, param_counts

ADAPTER_FILE = "adapter.safetensors"


@dataclass
class AdapterConfig:
    """train.py's flags of the same names."""
    adapter_size: int = 215   # b, the bottleneck width (215: 3%, 6: 0.1% of gpt2-medium)
    seed: int = 0


class Adapter(nn.Module):
    """One bottleneck, (B, T, C) -> (B, T, C). Init: the authors' adapters get transformers' init (Linear N(0, 0.02),
    zero bias), so their step 0 is already off the base. We keep that for `down` but zero `up`, as Houlsby et al.
    2019 start near the identity: step 0 is exactly the frozen GPT-2, and `up` gets a gradient at once (`down`'s
    follows after one step)."""

    def __init__(self, config: GPTConfig, size: int):
        super().__init__()
        self.ln = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.down = nn.Linear(config.n_embd, size)
        self.up = nn.Linear(size, config.n_embd)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.relu(self.down(self.ln(x))))  # (B, T, C); the adapter's own residual


def after_block(block: nn.Module, args: tuple, out: tuple[torch.Tensor, tuple]) -> tuple[torch.Tensor, tuple]:
    """Forward hook: the block's output x (B, T, C) goes through its adapter; its keys/values pass unchanged."""
    x, present = out
    return block.adapter(x), present


def attach(model: GPT, adapters: nn.ModuleList) -> None:
    """Hang adapter i on block i (a submodule, so it moves with model.to(); a hook, so model.py is untouched)."""
    for block, adapter in zip(model.transformer.h, adapters):
        assert not hasattr(block, "adapter"), "adapters are attached once, to a fresh base model"
        block.adapter = adapter
        block.register_forward_hook(after_block)


def shapes(config: GPTConfig, size: int) -> dict[str, tuple[int, ...]]:
    """The stored tensors, named h.{i}.{ln,down,up}.{weight,bias}."""
    C = config.n_embd
    one = {"ln.weight": (C,), "ln.bias": (C,), "down.weight": (size, C), "down.bias": (size,),
           "up.weight": (C, size), "up.bias": (C,)}
    return {f"h.{i}.{k}": s for i in range(config.n_layer) for k, s in one.items()}


# --- adapter-tuning as train.py and beam.py see it (tuners/__init__.py says what a tuner is) ------------------------

class AdapterTuner(nn.Module):
    """GPT-2 frozen, one adapter per block learns. The authors train adapters with transformers' Trainer, as
    fine-tuning: GPT-2's dropout stays on (train mode) and the loss is the mean over target tokens."""
    name, weights_learn = "adapter", False  # the backward runs through every block, but only adapters' weights
    per_sequence_loss = False
    Config, past_len = AdapterConfig, 0

    def __init__(self, model: GPT, size: int, seed: int = 0):
        super().__init__()
        self.model, self.size = model.requires_grad_(False).train(), size  # dropout on, as the authors ran it
        with torch.random.fork_rng(devices=[]):  # seeded; the caller's RNG stream is left as it was
            torch.manual_seed(seed)
            adapters = nn.ModuleList(Adapter(model.config, size) for _ in model.transformer.h)
        attach(model, adapters.to(model.lm_head.weight))  # the base's device and dtype

    @classmethod
    def build(cls, model: GPT, tok: tiktoken.Encoding, cfg: AdapterConfig, labels: list[str] = ()) -> AdapterTuner:
        return cls(model, cfg.adapter_size, cfg.seed)

    def adapters(self) -> dict[str, torch.Tensor]:
        """The trained weights, under the names `shapes` gives."""
        return {f"h.{i}.{k}": v for i, block in enumerate(self.model.transformer.h)
                for k, v in block.adapter.state_dict().items()}

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> GPTOutput:
        return self.model(idx, targets=targets)

    def counts(self) -> dict[str, float]:
        n_all = sum(p.numel() for p in self.model.parameters())
        n = sum(v.numel() for v in self.adapters().values())
        return param_counts(n_all - n, n, n)

    def save(self, out: Path) -> list[Path]:
        return [write(out / ADAPTER_FILE, self.adapters(), self.model, {"adapter_size": self.size})]

    @staticmethod
    def open(folder: Path, base: GPT, allow_other_base: bool = False) -> tuple[GPT, PastKV | None]:
        """For decoding: the base with this run's adapters attached, in eval mode."""
        file = folder / ADAPTER_FILE
        meta, tensors = read(file, base, lambda m: shapes(base.config, whole(m, "adapter_size", file)),
                             allow_other_base)
        tuner = AdapterTuner(base, whole(meta, "adapter_size", file))
        for i, block in enumerate(base.transformer.h):
            block.adapter.load_state_dict({k.split(".", 2)[2]: v for k, v in tensors.items()
                                           if k.startswith(f"h.{i}.")})
        return tuner.model.eval(), None

"""Fine-tuning, the paper's FT baseline, and FT-top2 (Li & Liang 2021, §6 "Main Results"): the weights of GPT-2 learn.

Either run folder is itself a Hugging Face checkpoint (config.json + model.safetensors), loaded by beam.py as the base.
    python train.py --tuner fine --out-dir out/fine          # out/fine/model.safetensors
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tiktoken
import torch
import torch.nn as nn

from files.checkpoint import save_pretrained
from model import GPT, GPTOutput, PastKV, param_counts


@dataclass
class FineConfig:
    """Fine-tuning has no settings of its own: the base, the data and the optimizer are train.py's."""


class FineTuner(nn.Module):
    """Fine-tuning (the paper's FT baseline): every weight learns, dropout on (RECIPE.md §3)."""
    name, weights_learn = "fine", True
    per_sequence_loss = False  # the authors' fine-tuning averages over target tokens
    Config, past_len = FineConfig, 0

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model.requires_grad_(True).train()  # dropout on; train.py evaluates in eval mode

    @classmethod
    def build(cls, model: GPT, tok: tiktoken.Encoding, cfg: FineConfig, labels: list[str] = ()) -> FineTuner:
        return cls(model)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> GPTOutput:
        return self.model(idx, targets=targets)

    def counts(self) -> dict[str, float]:
        n = sum(p.numel() for p in self.model.parameters())
        return param_counts(n, sum(p.numel() for p in self.model.parameters() if p.requires_grad), n)

    def save(self, out: Path) -> list[Path]:
        save_pretrained(self.model, out)
        return [out / "config.json", out / "model.safetensors"]

    @staticmethod
    def open(folder: Path, base: GPT, allow_other_base: bool = False) -> tuple[GPT, PastKV | None]:
        return base, None  # the run folder is itself the model: open_run loads it as the base


class FineTopTuner(FineTuner):
    """FT-TOP2 (§6): fine-tune only the top 2 blocks. What learns is what the authors' `--tuning_mode finetune-top
    --top_layers 2` trains (run_language_modeling.py): blocks L-2 and L-1, the final LayerNorm and the token
    embedding wte, which GPT-2 ties to the output head (so the head learns too; wpe stays). Every other weight
    stays bit for bit. Trained as their fine-tuning: transformers' Trainer, so dropout is on in every block,
    frozen ones too, and the loss is a token mean."""
    name, top = "fine-top2", 2
    weights_learn = False  # gradients still flow down to wte through every block, weight gradients only on top

    def __init__(self, model: GPT):
        super().__init__(model)
        L, learn = model.config.n_layer, ("transformer.ln_f.", "transformer.wte.")
        learn += tuple(f"transformer.h.{i}." for i in range(max(0, L - self.top), L))
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith(learn))

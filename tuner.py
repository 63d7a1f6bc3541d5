"""What a tuner is: which weights learn, how they enter GPT-2's forward, and what a run stores (Li & Liang 2021,
§6 "Main Results" compares these methods with everything else equal).

train.py knows no tuner by name: it builds one from the registry and trains whatever parameters it leaves
trainable. A tuner is an nn.Module holding the base model, with
    build(model, tok, **train_settings) -> tuner     classmethod: wrap (and freeze) the base
    forward(idx, targets) -> GPTOutput               the tuned model's loss
    per_sequence_loss, weights_learn                 the recipe's objective; FLOPs of the backward pass (MFU)
    settings() -> dict, counts() -> dict             the real settings and parameter counts the run records
    save(out) -> Path                                what beam.py needs besides the base
    open(folder, base, allow_other_base) -> (model, past_kv)    staticmethod: the run, ready to decode
Prefix-tuning lives in prefix.py, where its idea is taught; fine-tuning, the baseline, is here.
    model, past_kv, tok, run = open_run("out/prefix")
"""
from __future__ import annotations

from pathlib import Path

import tiktoken
import torch
import torch.nn as nn

from checkpoint import CheckpointError, from_pretrained, resolve, save_pretrained
from model import IGNORE_INDEX, GPT, GPTOutput, PastKV
from prefix import PrefixTuner
from runfolder import read_run
from tokenizer import load_tokenizer


class FineTuner(nn.Module):
    """Fine-tuning (the paper's FT baseline): every weight learns, dropout on (RECIPE.md §3)."""
    name, weights_learn = "fine", True
    per_sequence_loss = False  # the authors' fine-tuning averages over target tokens

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model.requires_grad_(True)

    @classmethod
    def build(cls, model: GPT, tok: tiktoken.Encoding, **_: object) -> FineTuner:
        return cls(model)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> GPTOutput:
        return self.model(idx, targets=targets)

    def settings(self) -> dict:
        return {}

    def counts(self) -> dict[str, float]:
        n = sum(p.numel() for p in self.model.parameters())
        return {"model": n, "trained": n, "trained_frac": 1.0, "stored": n, "stored_frac": 1.0}

    def save(self, out: Path) -> Path:
        save_pretrained(self.model, out)
        return out / "model.safetensors"

    @staticmethod
    def open(folder: Path, base: GPT | None, allow_other_base: bool = False) -> tuple[GPT, PastKV | None]:
        return base, None  # the run folder is itself the model: open_run loads it as the base


TUNERS: dict[str, type[nn.Module]] = {"prefix": PrefixTuner, "fine": FineTuner}
STANDALONE = ("fine",)  # tuners whose run folder holds the whole model (config.json + model.safetensors)


def nll_sum(loss: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed NLL over the targets from the model's mean (its loss, computed in fp32 inside forward)."""
    return loss * (targets != IGNORE_INDEX).sum()


def objective(nll_sum: torch.Tensor, n_tok: torch.Tensor, n_seq: int | torch.Tensor,
              per_sequence: bool) -> torch.Tensor:
    """RECIPE.md §3 (§6.4): prefix-tuning sums each sequence's NLL and averages over the batch (objective_mode 1,
    the paper's eq. 2 as a sum); fine-tuning averages over target tokens. Under clip 1.0 they differ."""
    return nll_sum / n_seq if per_sequence else nll_sum / n_tok


def adamw(tuner: nn.Module, lr: float, weight_decay: float, device: torch.device):
    """AdamW over the tuner's trainable parameters only, named in the optimizer's order (for resume.save_state)."""
    trained = {n: p for n, p in tuner.named_parameters() if p.requires_grad}
    decay = {n: p for n, p in trained.items() if p.dim() >= 2}  # no decay on biases and LayerNorm (RECIPE.md §3)
    rest = {n: p for n, p in trained.items() if n not in decay}
    groups = [{"params": list(decay.values()), "weight_decay": weight_decay},
              {"params": list(rest.values()), "weight_decay": 0.0}]
    fused = device.type in ("cpu", "cuda")
    return decay | rest, torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=fused)


def open_run(ckpt: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
             allow_other_base: bool = False) -> tuple[GPT, PastKV | None, tiktoken.Encoding, dict | None]:
    """A train.py run folder, or a plain Hugging Face GPT-2 (folder or hub name) -> model, past_kv, tokenizer, and the
    run's recorded settings (None for a plain checkpoint). Nothing else parses a run folder."""
    run = read_run(ckpt) if Path(ckpt).is_dir() else None
    if run is None:
        folder = resolve(ckpt)
        return from_pretrained(folder, dtype).to(device), None, load_tokenizer(folder), None
    if run["tuner"] not in TUNERS:
        raise CheckpointError(f"{ckpt}: args.json names tuner {run['tuner']!r}; this version knows {sorted(TUNERS)}.")
    tuner = TUNERS[run["tuner"]]
    base = from_pretrained(ckpt if run["tuner"] in STANDALONE else run["init_from"], dtype).to(device)
    model, past = tuner.open(Path(ckpt), base, allow_other_base)
    return model, past, load_tokenizer(ckpt), run

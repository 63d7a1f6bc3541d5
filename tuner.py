"""What a tuner is: which weights learn, how they enter GPT-2's forward, and what a run stores (Li & Liang 2021,
§6 "Main Results" compares these methods with everything else equal; §7 ablates the prefix).

train.py knows no tuner by name: it builds one from the registry and trains whatever parameters it leaves
trainable. A tuner is an nn.Module holding the base model, with
    build(model, tok, **train_settings) -> tuner     classmethod: wrap (and freeze) the base
    forward(idx, targets) -> GPTOutput               the tuned model's loss
    per_sequence_loss, weights_learn                 the recipe's objective; FLOPs of the backward pass (MFU)
    settings() -> dict, counts() -> dict             the real settings and parameter counts the run records
    save(out) -> Path                                what beam.py needs besides the base
    open(folder, base, allow_other_base) -> (model, past_kv)    staticmethod: the run, ready to decode
Each lives where its idea is taught: prefix-tuning in prefix.py (with --infix, infix.py), adapter-tuning in
adapter.py, the embedding-only prefix in embedding.py; fine-tuning, the baseline, and FT-top2 are here.
    model, past_kv, tok, run = open_run("out/prefix")
"""
from __future__ import annotations

from pathlib import Path

import tiktoken
import torch
import torch.distributed as dist
import torch.nn as nn

from adapter import AdapterTuner
from checkpoint import CheckpointError, from_pretrained, resolve, save_pretrained
from data import batch_of
from embedding import EmbeddingTuner
from infix import INFIX_FILE, InfixTuner
from model import IGNORE_INDEX, GPT, GPTOutput, PastKV
from prefix import PrefixError, PrefixTuner
from runfolder import read_run
from tokenizer import load_tokenizer
from tuned_files import tally


class FineTuner(nn.Module):
    """Fine-tuning (the paper's FT baseline): every weight learns, dropout on (RECIPE.md §3)."""
    name, weights_learn = "fine", True
    per_sequence_loss = False  # the authors' fine-tuning averages over target tokens

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model.requires_grad_(True).train()  # dropout on; train.py evaluates in eval mode

    @classmethod
    def build(cls, model: GPT, tok: tiktoken.Encoding, **_: object) -> FineTuner:
        return cls(model)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> GPTOutput:
        return self.model(idx, targets=targets)

    def settings(self) -> dict:
        return {}

    def counts(self) -> dict[str, float]:
        n = sum(p.numel() for p in self.model.parameters())
        return tally(n, sum(p.numel() for p in self.model.parameters() if p.requires_grad), n)

    def save(self, out: Path) -> Path:
        save_pretrained(self.model, out)
        return out / "model.safetensors"

    @staticmethod
    def open(folder: Path, base: GPT | None, allow_other_base: bool = False) -> tuple[GPT, PastKV | None]:
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


class PrefixOrInfix:
    """--tuner prefix: the prefix before the source (prefix.py), or with --infix between source and target
    (infix.py, §7.3 "Prefix-tuning vs Infix-tuning"). A run folder says which by its file."""

    @staticmethod
    def build(model: GPT, tok: tiktoken.Encoding, infix: bool = False, prefix_init: str = "",
              **settings: object) -> nn.Module:
        if infix and (prefix_init or settings.get("labels")):
            raise PrefixError("--infix trains one infix from random: not with --prefix-init or label rows.")
        return (InfixTuner if infix else PrefixTuner).build(model, tok, prefix_init=prefix_init, **settings)

    @staticmethod
    def open(folder: Path, base: GPT, allow_other_base: bool = False) -> tuple[nn.Module, PastKV | None]:
        tuner = InfixTuner if (folder / INFIX_FILE).is_file() else PrefixTuner
        return tuner.open(folder, base, allow_other_base)


TUNERS: dict[str, type] = {"prefix": PrefixOrInfix, "fine": FineTuner, "fine-top2": FineTopTuner,
                           "adapter": AdapterTuner, "embedding": EmbeddingTuner}
STANDALONE = ("fine", "fine-top2")  # tuners whose run folder holds the whole model (config.json + model.safetensors)


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


@torch.no_grad()
def evaluate(step_fn: nn.Module, examples: list, batch_size: int, pad_id: int, device: torch.device, world: int,
             labelled: bool) -> float:
    """Mean NLL per target token over this process's share of the validation pairs, summed over processes."""
    total = torch.zeros(2, device=device)
    step_fn.eval()  # no dropout while measuring (fine-tuning trains with it)
    for i in range(0, len(examples), batch_size):
        idx, targets, task = (t.to(device) for t in batch_of(examples[i:i + batch_size], pad_id))
        loss = step_fn(idx, targets, **({"task": task} if labelled else {})).loss
        total += torch.stack([nll_sum(loss, targets), (targets != IGNORE_INDEX).sum().float()])
    step_fn.train()
    if world > 1:
        dist.all_reduce(total)
    return (total[0] / total[1]).item()

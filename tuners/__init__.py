"""The paper's other methods, each a small unit beside prefix-tuning (Li & Liang 2021, §6 "Main Results" compares
them with everything else equal; §7 ablates the prefix), and what a tuner is.

train.py knows no tuner by name: it builds one from TUNERS and trains whatever parameters it leaves trainable.
A tuner is an nn.Module holding the base model (`Tuner` below). Prefix-tuning itself is prefix.PrefixTuner, beside
the method; here are fine-tuning and FT-top2 (fine.py), adapter-tuning (adapter.py), the embedding-only prefix
(prompt.py) and the infix (infix.py, --tuner prefix --infix).
    tuner = TUNERS["adapter"].build(model, tok, AdapterConfig(adapter_size=6), labels=[])
    model, past_kv, tok, run = open_run("out/prefix")              # a run folder, ready to decode
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar, Protocol

import tiktoken
import torch

from files.checkpoint import CheckpointError, resolve
from files.run import check_done, read_run
from files.tokenizer import load_tokenizer
from generate import DecodeError
from model import GPT, GPTOutput, PastKV
from prefix import PrefixTuner, load, mix, stack
from tuners.adapter import AdapterTuner
from tuners.fine import FineTopTuner, FineTuner
from tuners.infix import InfixTuner
from tuners.prompt import EmbeddingTuner


class Tuner(Protocol):
    """What train.py and beam.py use of a tuner; every class in TUNERS (and InfixTuner) has exactly this."""
    name: ClassVar[str]                 # its name: the --tuner value ("infix" is --tuner prefix --infix)
    weights_learn: ClassVar[bool]       # the base's weights get gradients (FLOPs of the backward pass, for MFU)
    per_sequence_loss: ClassVar[bool]   # the recipe's objective: NLL summed per sequence, or a token mean
    Config: ClassVar[type]              # its settings, a dataclass of train.py flags with the same names
    past_len: int                       # P slots it puts before every row (0: none)

    @classmethod
    def build(cls, model: GPT, tok: tiktoken.Encoding, cfg: object, labels: list[str] = ()) -> Tuner: ...
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> GPTOutput: ...
    def counts(self) -> dict[str, float]: ...   # parameters trained and stored (model.param_counts)
    def save(self, out: Path) -> list[Path]: ...  # what beam.py needs besides the base

    @staticmethod
    def open(folder: Path, base: GPT, allow_other_base: bool = False) -> tuple[GPT, PastKV | None]: ...


TUNERS: dict[str, type] = {"prefix": PrefixTuner, "fine": FineTuner, "fine-top2": FineTopTuner,
                           "adapter": AdapterTuner, "embedding": EmbeddingTuner}
STANDALONE = ("fine", "fine-top2")  # tuners whose run folder holds the whole model (config.json + model.safetensors)


def tuner_class(name: str, infix: bool = False) -> type:
    """--tuner NAME (and --infix, §7.3: prefix-tuning with the prefix between source and target)."""
    return InfixTuner if name == "prefix" and infix else TUNERS[name]


# --- a run, opened to decode ------------------------------------------------------------------------------------

def open_run(ckpt: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
             allow_other_base: bool = False, prefixes: list[str] | None = None, label: str = "",
             per_request: bool = False) -> tuple[GPT, PastKV | None, tiktoken.Encoding, dict | None]:
    """A train.py run folder, or a plain Hugging Face GPT-2 (folder or hub name) -> model, past_kv, tokenizer, and the
    run's recorded settings (None for a plain checkpoint). A run must have finished (files/run.py's done mark).
    The past is the run's own, or its `label`'s prefix, or `prefixes` ("FILE[:WEIGHT]") mixed; a run with labels
    needs one of those unless each request names its own (`per_request`, see requests_past)."""
    path = Path(ckpt)
    if path.suffix == ".safetensors" and path.is_file() and not (path.parent / "config.json").is_file():
        raise DecodeError(f"--ckpt {path} is a trained file, not a model: pass its run folder (--ckpt {path.parent}), "
                          f"or the base model with it as a prefix (--ckpt BASE --prefix {path}).")
    run = read_run(ckpt) if path.is_dir() else None
    if run is None:
        folder = resolve(ckpt)
        model, past, tok = GPT.from_pretrained(folder, dtype).to(device), None, load_tokenizer(folder)
    else:
        if run["tuner"] not in TUNERS:
            raise CheckpointError(f"{ckpt}: args.json names tuner {run['tuner']!r}; this version knows "
                                  f"{sorted(TUNERS)}.")
        check_done(path, run)
        src = path if run["tuner"] in STANDALONE else path / run["init_from"]  # an absolute init_from stays as is
        if not src.exists() and (path / "base").is_dir():  # a random base recorded by a run folder since moved
            src = path / "base"
        base = GPT.from_pretrained(src, dtype).to(device)
        model, past = tuner_class(run["tuner"], bool(run.get("infix"))).open(path, base, allow_other_base)
        tok = load_tokenizer(ckpt)
    labels = (run or {}).get("labels") or []
    if label and label not in labels:
        raise DecodeError(f"--label {label}: {ckpt} has the labels {labels or 'none'}.")
    specs = prefixes or ([str(path / f"{label}.safetensors")] if label else [])
    if specs:
        weighted = [(load(file, model, allow_other_base), w) for file, w in map(parse_prefix, specs)]
        past = mix(weighted)  # one prefix of weight 1 mixes to itself
    elif labels and not per_request:
        raise DecodeError(f"{ckpt} trained one prefix per label: pass --label (one of {labels}), or mix them with "
                          f"--prefix {path / labels[0]}.safetensors:0.5 --prefix ...:0.5.")
    return model, past, tok, run


def parse_prefix(spec: str) -> tuple[str, float]:
    """"FILE[:WEIGHT]" -> (FILE, WEIGHT); weight 1 when absent."""
    m = re.fullmatch(r"(.+):([-+]?[\d.]+(?:[eE][-+]?\d+)?)", spec)
    return (m[1], float(m[2])) if m else (spec, 1.0)


def requests_past(ckpt: str | Path, model: GPT, run: dict | None, names: list[str], allow_other_base: bool = False
                  ) -> tuple[PastKV, torch.Tensor, list[int]]:
    """--requests: each request names a prefix (a file, or a label of the run), so many tasks share one base and
    one stream: the distinct prefixes stacked as one past (prefix.stack), its key mask, each request's row of it."""
    labels, distinct = (run or {}).get("labels") or [], list(dict.fromkeys(names))
    paths = [str(Path(ckpt) / f"{n}.safetensors") if n in labels else n for n in distinct]
    past, past_mask = stack([load(p, model, allow_other_base) for p in paths])
    return past, past_mask, [distinct.index(n) for n in names]

"""What every command shares: flags from a dataclass, the device, torchrun's processes, and what a person sees
(the training log line with throughput, MFU and ETA; progress bars; plots). Library code never prints; the
commands (train.py, beam.py, scripts/) print what these return.

One command-line pattern for every entry point: a typed dataclass whose fields are the flags. Each field carries
its help text and, for numbers, the range that makes sense, so a bad value is refused before any work starts
with a message naming the flag (a negative --grad-clip would silently train uphill).
    @dataclass
    class Config:
        lr: float = arg(8e-5, "peak learning rate", min=0, strict=True)
    cfg = parse(Config, argv, __doc__, ValueError)
    device, rank, world = start_ddp(pick_device(cfg.device, ValueError))   # "auto", "cpu", "cuda:1"; torchrun
    print(meter.line(meter.row(step, loss, tok_loss, lr, device)))
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import MISSING, Field, field, fields
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

import torch
import torch.distributed as dist

C = TypeVar("C")
T = TypeVar("T")


def arg(default: Any, help: str, *, min: float | None = None, strict: bool = False, max: float | None = None,
        **kw: Any) -> Any:
    """A flag: its default, help text, the smallest allowed value (strict: the value must exceed it), the largest."""
    return field(default=default, metadata=dict(help=help, min=min, strict=strict, max=max, argparse=kw))


def add_flags(p: argparse.ArgumentParser, cls: type) -> None:
    for f in fields(cls):
        # argparse %-formats help text (for %(default)s): a literal "3%" must be written "3%%"
        kw = {"help": f.metadata.get("help", "").replace("%", "%%"), **f.metadata.get("argparse", {})}
        name = "--" + f.name.replace("_", "-")
        if f.default is MISSING:
            p.add_argument(name, required=True, **kw)
        elif isinstance(f.default, bool):
            p.add_argument(name, default=f.default, action=argparse.BooleanOptionalAction, **kw)
        else:
            if f.default is not None:
                kw.setdefault("type", type(f.default))
            p.add_argument(name, default=f.default, **kw)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The header's examples as written, and each flag's default, except where there is nothing to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, "", [], argparse.SUPPRESS) or action.required:
            return action.help
        return super()._get_help_string(action)


def out_of_range(f: Field, value: Any) -> str | None:
    """Why `value` is refused for field `f`, or None."""
    low, strict, high = f.metadata.get("min"), f.metadata.get("strict"), f.metadata.get("max")
    if (low, high) == (None, None) or not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if low is not None and (value < low or (strict and value == low)):
        return f"must be {'greater than' if strict else 'at least'} {low:g}"
    return f"must be at most {high:g}" if high is not None and value > high else None


def parse(cls: type[C], argv: list[str] | None, description: str | None, error: type[Exception]) -> C:
    """Flags -> a `cls` instance, every number range-checked; a bad one raises `error` naming the flag."""
    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    add_flags(p, cls)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    for f in fields(cls):
        why = out_of_range(f, getattr(args, f.name))
        if why:
            raise error(f"--{f.name.replace('_', '-')}={getattr(args, f.name)}: {why}.")
    return cls(**vars(args))


def pick_device(name: str, error: type[Exception]) -> torch.device:
    """--device: "auto" is CUDA when there is one; a CUDA device this machine lacks is refused here, by `error`,
    not by a traceback from the first tensor moved there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise error(f"--device {name}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise error(f"--device {name}: this torch has no CUDA device ({torch.__version__}). Use --device cpu.")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise error(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 ...).")
    return device


def check_memory(what: str, need: float, error: type[Exception], device: torch.device | None = None) -> None:
    """Refuse `need` bytes before allocating them: a number a few digits too long would end in a MemoryError
    traceback, or the OOM killer's silent kill. The bound is all of the device's memory (a GPU's, else this
    machine's), not what is free now, so nothing that could fit is refused."""
    cuda = device is not None and device.type == "cuda"
    have = torch.cuda.get_device_properties(device).total_memory if cuda else \
        os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > have:
        raise error(f"{what}: needs about {need / 2**30:.3g} GiB of memory, {'the GPU' if cuda else 'this machine'} "
                    f"has {have / 2**30:.3g} GiB. Use a smaller value.")


# --- torchrun: data parallel training, sharded decoding ------------------------------------------------------

def start_ddp(device: torch.device) -> tuple[torch.device, int, int]:
    """Join torchrun's process group, if there is one -> this process's device, rank and world size. torchrun starts
    a process per GPU (or per CPU slot, on gloo) and says which in WORLD_SIZE, RANK, LOCAL_RANK; each takes the GPU
    of its LOCAL_RANK and makes it current, as NCCL's collectives expect. A plain `python` run is a world of one,
    and every function below is then a no-op: each process does every world-th piece, rank 0 gathers."""
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, rank, world


def end_ddp() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether any process raised `flag`: a decision every process must take alike (stop now, say), or the ones
    that go on wait forever in their next collective."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor(float(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def share(n: int) -> list[int]:
    """This process's part of n items: every world-th, from its rank on (rank 0 of 2 takes 0, 2, 4, ...)."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    return list(range(rank, n, world))


def gather(found: dict[int, T], n: int) -> list[T] | None:
    """Every process's {item: result} for its share -> all n results in item order on rank 0; None on the others."""
    if dist.is_initialized():
        parts: list[dict[int, T]] | None = [{} for _ in range(dist.get_world_size())] if dist.get_rank() == 0 else None
        dist.gather_object(found, parts, dst=0)
        if parts is None:
            return None
        found = {i: result for part in parts for i, result in part.items()}
    return [found[i] for i in range(n)]


# --- what a person sees: the log line, progress bars, plots ----------------------------------------------------

class Meter:
    """Throughput, MFU and ETA for the log line; `tokens` counts what the processes read since the last row."""

    def __init__(self, max_steps: int, start: int, world: int, flops_per_token: float, peak_tflops: float):
        self.max_steps, self.start, self.world = max_steps, start, world
        self.flops, self.peak = flops_per_token, peak_tflops
        self.t0 = self.t_log = time.time()
        self.tokens = 0

    def row(self, step: int, loss: float, tok_loss: float, lr: float, device: torch.device) -> dict:
        """One log.jsonl row; its keys are a contract (scripts and users read them)."""
        now = time.time()
        row = dict(step=step, loss=loss, tok_loss=tok_loss, lr=lr,
                   tok_per_s=self.tokens * self.world / (now - self.t_log), elapsed_s=now - self.t0)
        if device.type == "cuda":  # the paper's table reports memory; this is the GPU's high-water mark
            row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        self.tokens, self.t_log = 0, now
        return row

    def line(self, row: dict) -> str:
        """The objective as trained (prefix: NLL summed per sequence, fine: per token) and the per-token NLL."""
        eta = row["elapsed_s"] / (row["step"] - self.start) * (self.max_steps - row["step"])
        mfu = f"{row['tok_per_s'] * self.flops / (self.peak * 1e12):.2%}" if self.peak else "n/a (--peak-tflops)"
        return (f"step {row['step']}/{self.max_steps} | objective {row['loss']:.4f} | NLL/token {row['tok_loss']:.4f} "
                f"| lr {row['lr']:.2e} | {row['tok_per_s']:,.0f} tok/s | ETA {eta / 60:.1f} min | MFU {mfu}")


# bf16 dense peak TFLOP/s of common training GPUs (vendor data sheets); MFU elsewhere needs --peak-tflops.
PEAK_TFLOPS = {"A100": 312.0, "H100": 989.0, "H200": 989.0, "L4": 121.0, "A10": 125.0}


def peak_tflops(device: torch.device, given: float) -> float:
    """The peak MFU is measured against: the user's, else the GPU's if known, else 0 (unknown: no MFU shown)."""
    if given or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), 0.0)


def progress(items: Iterable[T], total: int, unit: str, show: bool = True) -> Iterator[T]:
    """A tqdm bar with ETA on stderr when it is a terminal (and tqdm is installed); the items, unchanged, else."""
    try:
        from tqdm import tqdm
    except ImportError:
        return iter(items)
    return iter(tqdm(items, total=total, unit=unit, disable=not (show and sys.stderr.isatty()), file=sys.stderr))


def line_plot(path: Path, series: dict[str, tuple[list, list]], xlabel: str, ylabel: str, title: str) -> bool:
    """A PNG of one or more lines (label -> (xs, ys)); False when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, "o-" if len(xs) < 30 else "-", label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend()
    fig.tight_layout()  # keeps the axis labels inside the picture
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True

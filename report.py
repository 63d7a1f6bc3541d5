"""What a run shows a person: the training log line (loss, throughput, MFU, ETA), progress bars, and line plots.

Library code never prints; the entry points (train.py, beam.py, scripts/reproduce.py) print what these return.
    meter = Meter(max_steps, start, world, flops_per_token, peak_tflops)
    print(meter.line(meter.row(step, loss, tok_loss, lr, device)))
    line_plot(Path("loss.png"), {"val_loss": (steps, losses)}, "step", "NLL per target token", "prefix-tuning")
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, TypeVar

if TYPE_CHECKING:  # torch only where a device is asked about: eval/ shows progress() and never loads torch
    import torch

T = TypeVar("T")


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
            import torch
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
    import torch
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

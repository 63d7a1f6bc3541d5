"""Data parallel over torchrun's processes: train.py's DDP steps and beam.py's sharded decoding.

torchrun starts one process per GPU (or per CPU slot, on gloo) and tells each which it is in WORLD_SIZE, RANK and
LOCAL_RANK. A process joins the group on its own GPU, does every world-th piece of the work, and rank 0 gathers
what the others found; a plain `python` run is a world of one, and every function here is then a no-op.
    device, rank, world = start(pick_device("cuda", Error))     # then train, or decode share(n)
    torchrun --nproc-per-node 4 beam.py --ckpt out/ --data-dir ../shared/data/e2e --out out/test.jsonl --device cuda
"""
from __future__ import annotations

import os
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def start(device: torch.device) -> tuple[torch.device, int, int]:
    """Join torchrun's process group, if there is one -> this process's device, rank and world size. Each process
    takes the GPU of its LOCAL_RANK and makes it current, as NCCL's collectives expect; on CPU the group is gloo."""
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, rank, world


def end() -> None:
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

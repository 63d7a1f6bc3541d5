"""Exact resume for train.py: the state of a run in safetensors + JSON, never a pickle.

What a run needs to continue to the same losses as if it had never stopped: the trainable weights, AdamW's
moments, the RNG state and the step. The data order needs nothing: train.py derives it from the seed and
the epoch. `state.json` is written last and names the tensors file, so a crash mid-save leaves the
previous checkpoint valid.
    save_state(out / "resume", step, params, opt, config)      # every --save-every steps, and on SIGTERM
    state = read_state(out / "resume")                         # {"step", "file", "config"} or None
    step = load_state(out / "resume", state, params, opt)
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from model import atomic_write

Params = dict[str, torch.nn.Parameter]  # trained parameters by name, in the optimizer's order


def save_state(folder: Path, step: int, params: Params, opt: torch.optim.Optimizer, config: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names, tensors = list(params), {f"param/{n}": p.detach() for n, p in params.items()}
    tensors |= {f"opt/{names[i]}/{k}": v for i, s in opt.state_dict()["state"].items() for k, v in s.items()}
    tensors["rng/cpu"] = torch.get_rng_state()
    file = f"step{step}.safetensors"
    atomic_write(folder / file, lambda tmp: save_file({k: v.cpu().contiguous() for k, v in tensors.items()}, str(tmp)))
    state = dict(step=step, file=file, config=config)
    atomic_write(folder / "state.json", lambda tmp: tmp.write_text(json.dumps(state, indent=2)))
    for old in folder.glob("step*.safetensors"):
        if old.name != file:
            old.unlink()


def read_state(folder: Path) -> dict | None:
    """The checkpoint's step, tensors file and the config it was written with; None if there is none."""
    path = folder / "state.json"
    return json.loads(path.read_text()) if path.is_file() else None


def load_state(folder: Path, state: dict, params: Params, opt: torch.optim.Optimizer) -> int:
    """Put the saved weights, AdamW moments and RNG state back; returns the step to continue from."""
    tensors = load_file(str(folder / state["file"]))
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[f"param/{n}"])
    sd = opt.state_dict()
    sd["state"] = {i: {k.split("/")[-1]: v for k, v in tensors.items() if k.startswith(f"opt/{n}/")}
                   for i, n in enumerate(params) if f"opt/{n}/step" in tensors}
    opt.load_state_dict(sd)
    torch.set_rng_state(tensors["rng/cpu"])
    return state["step"]

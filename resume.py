"""Exact resume for train.py: the state of a run in safetensors + JSON, never a pickle.

What a run needs to continue to the same losses as if it had never stopped: the trainable weights, AdamW's
moments, the RNG state and the step. The data order needs nothing: train.py derives it from the seed and
the epoch. The tensors are written first and `state.json`, which names them, last: a crash or a full disk
mid-save leaves the previous checkpoint whole.
    save_state(out / "resume", step, params, opt, config)      # every --save-every steps, and on SIGTERM
    state = read_state(out / "resume")                         # {"step", "file", "config"} or None
    step = load_state(out / "resume", state, params, opt)
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from runfolder import atomic_write, write_json

Params = dict[str, torch.nn.Parameter]  # trained parameters by name, in the optimizer's order


class ResumeError(Exception):
    """The resume checkpoint is missing, damaged or from another run; the message says what and the fix."""


def save_state(folder: Path, step: int, params: Params, opt: torch.optim.Optimizer, config: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = list(params)
    tensors = {f"param/{n}": p.detach() for n, p in params.items()}
    for i, moments in opt.state_dict()["state"].items():
        tensors |= {f"opt/{names[i]}/{k}": v for k, v in moments.items()}
    tensors["rng/cpu"] = torch.get_rng_state()
    file = folder / f"step{step}.safetensors"
    try:
        atomic_write(file, lambda tmp: save_file({k: v.cpu().contiguous() for k, v in tensors.items()}, str(tmp)))
        write_json(folder / "state.json", dict(step=step, file=file.name, config=config))
    except OSError:
        if file.name != (read_state(folder) or {}).get("file"):
            file.unlink(missing_ok=True)  # a step file no state.json names is never used: keep the disk clean
        raise
    for old in folder.glob("step*.safetensors"):
        if old != file:
            old.unlink()


def read_state(folder: Path) -> dict | None:
    """The checkpoint's step, tensors file and the config it was written with; None if there is none."""
    path = folder / "state.json"
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
        ok = isinstance(state, dict) and isinstance(state.get("step"), int) and state["step"] >= 0 \
            and isinstance(state.get("file"), str) and isinstance(state.get("config"), dict)
    except (OSError, ValueError) as e:
        raise ResumeError(f"{path}: unreadable ({e}). The checkpoint is damaged; start again without --resume "
                          f"(and with --overwrite).") from None
    if not ok:
        raise ResumeError(f"{path}: expected {{'step': N >= 0, 'file': ..., 'config': {{...}}}}. The checkpoint is "
                          f"damaged; start again without --resume (and with --overwrite).")
    return state


def load_state(folder: Path, state: dict, params: Params, opt: torch.optim.Optimizer) -> int:
    """Put the saved weights, AdamW moments and RNG state back; returns the step to continue from."""
    path = folder / Path(state["file"]).name
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise ResumeError(f"{path}: missing or damaged ({e}). Start again without --resume.") from None
    want = {f"param/{n}": p.shape for n, p in params.items()}
    bad = [k for k, shape in want.items() if k not in tensors or tensors[k].shape != shape] + \
          [k for k in ("rng/cpu",) if k not in tensors]
    if bad:
        raise ResumeError(f"{path}: tensors missing or of the wrong shape: {bad[:3]}. Is it from this run?")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[f"param/{n}"])
    sd = opt.state_dict()
    # Each moment takes its parameter's memory layout (empty_like keeps strides): the fused AdamW kernel walks a
    # parameter and its moments element by element, so a transposed weight view with contiguous moments
    # would pair the wrong numbers and the resumed run would drift from the uninterrupted one.
    sd["state"] = {i: {k.split("/")[-1]: (v if v.dim() == 0 else torch.empty_like(p).copy_(v))
                       for k, v in tensors.items() if k.startswith(f"opt/{n}/")}
                   for i, (n, p) in enumerate(params.items()) if f"opt/{n}/step" in tensors}
    opt.load_state_dict(sd)
    torch.set_rng_state(tensors["rng/cpu"])
    return state["step"]

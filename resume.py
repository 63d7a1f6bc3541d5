"""Exact resume for train.py: the state of a run in safetensors + JSON, never a pickle.

What a run needs to continue to the same losses as if it had never stopped: the trainable weights, AdamW's
moments, the RNG state and the step. The data order needs nothing: train.py derives it from the seed and
the epoch. The tensors are written first and `state.json`, which names them, last: a crash or a full disk
mid-save leaves the previous checkpoint whole.
    save_state(out / "resume", step, params, opt, config)      # every --save-every steps, and on SIGTERM
    state = read_state(out / "resume")                         # {"step", "file", "config"} or None
    step = load_state(out / "resume", state, params, opt)
    step = resume_from(out / "resume", params, opt, run)       # the same, after checking it is this run's
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from runfolder import LOG_FILE, atomic_write, write_json

Params = dict[str, torch.nn.Parameter]  # trained parameters by name, in the optimizer's order
MOMENTS = ("step", "exp_avg", "exp_avg_sq")  # AdamW's state of a parameter (tuner.adamw: no amsgrad)
# Settings that may change on --resume; any other difference means another run and is refused.
SAME_RUN = ("resume", "log_every", "save_every", "eval_every", "compile", "device", "peak_tflops", "overwrite",
            "out_dir", "init_from")  # a run folder may move (the base's identity is its fingerprint)


class ResumeError(Exception):
    """The resume checkpoint is missing, damaged or from another run; the message says what and the fix."""


def save_state(folder: Path, step: int, params: Params, opt: torch.optim.Optimizer, config: dict) -> None:
    bad = [n for n, p in params.items() if not torch.isfinite(p).all()]
    if bad:  # a diverged run must not replace its last good checkpoint
        raise ResumeError(f"step {step}: the weights hold NaN/Inf ({bad[:3]}); not saved, the previous checkpoint in "
                          f"{folder} is kept. Lower --lr, then continue from it with --resume.")
    folder.mkdir(parents=True, exist_ok=True)
    names = list(params)
    tensors = {f"param/{n}": p.detach() for n, p in params.items()}
    for i, moments in opt.state_dict()["state"].items():
        tensors |= {f"opt/{names[i]}/{k}": v for k, v in moments.items()}
    tensors["rng/cpu"] = torch.get_rng_state()  # dropout's masks (fine-tuning) come from here, or from the GPU's:
    device = next(iter(params.values())).device
    if device.type == "cuda":
        tensors["rng/cuda"] = torch.cuda.get_rng_state(device)
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
        ok = isinstance(state, dict) and type(state.get("step")) is int and state["step"] >= 0 \
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
    shapes = {f"param/{n}": p.shape for n, p in params.items()}
    shapes |= {k: params[k.split("/")[1]].shape for k, v in tensors.items()  # AdamW's moments: a parameter's shape
               if k.startswith("opt/") and v.dim() > 0 and k.split("/")[1] in params}
    bad = [k for k, shape in shapes.items() if k not in tensors or tensors[k].shape != shape]
    for n in params:  # a parameter has all of AdamW's state, or none (it never had a gradient)
        have = {k.split("/")[-1] for k in tensors if k.startswith(f"opt/{n}/")}
        bad += [f"opt/{n}/{kind}" for kind in MOMENTS if kind not in have] if have else []
    if bad or "rng/cpu" not in tensors:
        raise ResumeError(f"{path}: tensors missing or of the wrong shape: {(bad or ['rng/cpu'])[:3]}. Is it from "
                          f"this run?")
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
    device = next(iter(params.values())).device
    if "rng/cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng/cuda"], device)
    return state["step"]


def resume_from(folder: Path, params: Params, opt: torch.optim.Optimizer, run: dict) -> int:
    """--resume: the step to continue from, after refusing a checkpoint written with other arguments or base."""
    state = read_state(folder)
    if state is None:
        raise ResumeError(f"--resume: {folder / 'state.json'} not found; no checkpoint to continue from. "
                          f"Drop --resume to start anew.")
    recorded = state["config"].get("base_fingerprint")
    if recorded != run["base_fingerprint"]:
        raise ResumeError(f"--resume: the run was trained on base {recorded}, but --init-from {run['init_from_arg']} "
                          f"is now {run['base_fingerprint']} (its weights changed). Resume with the original base.")
    changed = [k for k, v in state["config"].items() if k not in SAME_RUN and run.get(k) != v]
    if changed:
        raise ResumeError(f"--resume: {folder} was written with other arguments: " + ", ".join(
            f"--{k.replace('_', '-')} {state['config'][k]!r} (now {run.get(k)!r})" for k in changed))
    return load_state(folder, state, params, opt)


def save_step(out: Path, done: int, row: dict | None, params: Params, opt: torch.optim.Optimizer, run: dict,
              due: bool) -> None:
    """The log row (one whole line per write: a crash loses at most that row) and, when due, the resume state."""
    try:
        if row:
            with (out / LOG_FILE).open("a") as f:
                f.write(json.dumps(row) + "\n")
        if due:
            save_state(out / "resume", done, params, opt, run)
    except OSError as e:
        raise ResumeError(f"step {done}: could not write {e.filename or out} ({e.strerror or e}); the previous "
                          f"checkpoint is kept. Free space, then continue with --resume.") from None

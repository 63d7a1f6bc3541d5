"""A run folder on disk: its record, log, lock, resume checkpoint and done mark; and the safe write every file of
the project goes through.

A run folder is what train.py writes and beam.py opens (Li & Liang 2021 store only the prefix per task, §4). One
run owns one folder (its files are named below, resume/ holds the checkpoint), never reused without --resume or
--overwrite. The lock is the kernel's (flock on .lock): it dies with its process however the process dies (kill -9,
OOM, a preempted node), so a killed run never blocks the same command run again.

Exact resume, in safetensors + JSON, never a pickle: a run continues to the same losses as if it had never
stopped from its trainable weights, AdamW's moments, the RNG state and the step. The data order needs nothing:
train.py derives it from the seed and the epoch. The tensors are written first and state.json, which names
them, last: a crash or a full disk mid-save leaves the previous checkpoint whole.
    lock = claim(out, resume=False, overwrite=False)        # refuses a used or locked folder
    write_json(out / RUN_FILE, settings); run = read_run(out)
    save_step(out, step, row, params, opt, run, due)        # a log row and, when due, resume/
    start = resume_from(out / "resume", params, opt, run)   # None: no checkpoint yet, start from step 0
    mark_done(out, [out / "prefix.safetensors"])            # last; check_done(out) before decoding
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import IO, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

RUN_FILE = "args.json"   # a run's record, once: its real settings, the base model, its fingerprint, parameter counts
LOG_FILE = "log.jsonl"   # a row per logged step
LOCK_FILE = ".lock"      # flock'ed by the process writing the folder; it holds that pid, for the message
DONE_FILE = "done.json"  # written last by a finished run: its trained files and their sha256
JSON_CAP = 1 << 26       # bytes of a JSON file read at most: a link to /dev/zero must not fill memory
# What train.py writes into a run folder, and --overwrite removes (with every *.safetensors) before a new run.
RUN_NAMES = (RUN_FILE, LOG_FILE, DONE_FILE, "resume", "best", "base", "loss.png", "config.json", "vocab.json",
             "merges.txt")
Params = dict[str, torch.nn.Parameter]  # trained parameters by name, in the optimizer's order
MOMENTS = ("step", "exp_avg", "exp_avg_sq")  # AdamW's state of a parameter (train.adamw: no amsgrad)
# Settings that may change on --resume; any other difference means another run and is refused.
SAME_RUN = ("resume", "log_every", "save_every", "eval_every", "compile", "pad_to", "device", "peak_tflops",
            "overwrite", "out_dir", "init_from")  # a run folder may move (the base's identity is its fingerprint)


class RunFolderError(Exception):
    """A run folder or its resume checkpoint cannot be used as asked; the message says why and what to do."""


# --- safe reads and writes --------------------------------------------------------------------------------------

def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """Write through a fresh temp file beside `path`, fsync, rename: a crash or a full disk never leaves a
    half-written file under `path`, and the previous one stays whole. mkstemp creates the temp file
    exclusively under a random name, so a link planted beside the target is never followed. A device or
    pipe (/dev/null, /dev/stdout) is written into directly: renaming over it would replace the device."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(21, "is a folder; name a file to write", str(path))
    if path.exists() and not path.is_file():
        write(path)
        return
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a written file follows the umask like any other
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: object) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def read_capped(path: str | Path, cap: int) -> bytes:
    """A regular file's bytes, at most `cap` of them: a FIFO would hang and /dev/zero fill memory, so anything else
    is a ValueError; a missing file is an OSError."""
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:  # O_NONBLOCK: a FIFO opens at once
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ValueError("not a regular file")
        data = f.read(cap + 1)
    if len(data) > cap:
        raise ValueError(f"larger than {cap:,} bytes")
    return data


def read_json(path: str | Path, cap: int = JSON_CAP) -> object:
    """A JSON file (read_capped); bad UTF-8 or nesting deep enough to overflow the parser is a ValueError too."""
    try:
        return json.loads(read_capped(path, cap).decode("utf-8"))
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


# --- the run folder: lock, record, log, done mark ------------------------------------------------------------

def claim(out: Path, resume: bool, overwrite: bool) -> IO:
    """Create --out-dir and take its lock; refuse a folder another live process writes, or that would lose work.
    The returned file holds the lock until it is closed or the process ends. --overwrite removes the old run's
    files (after the lock is ours), so nothing of it can be mistaken for the new run's."""
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out-dir {out}: is a file; name a folder.")
    used = [n for n in (RUN_FILE, LOG_FILE, "resume") if (out / n).exists()]
    if used and not resume and not overwrite:
        raise RunFolderError(f"--out-dir {out} already holds a run ({', '.join(used)}). Add --resume to continue "
                             f"it, --overwrite to replace it, or choose another folder.")
    out.mkdir(parents=True, exist_ok=True)
    lock = open(os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644), "r+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = lock.read(32).strip()
        lock.close()
        raise RunFolderError(f"--out-dir {out}: another train.py (pid {pid or '?'}) is writing to it. Wait for it, "
                             f"stop it, or choose another folder.") from None
    lock.truncate(0)
    lock.write(str(os.getpid()))
    lock.flush()
    for tmp in out.rglob(".*.tmp"):  # a writer killed mid-write (kill -9) leaves its temp file; the lock is ours
        tmp.unlink(missing_ok=True)
    if overwrite and not resume:
        for name in [*RUN_NAMES, *(p.name for p in out.glob("*.safetensors"))]:
            path = out / name
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
    return lock


def read_run(folder: str | Path) -> dict | None:
    """The settings train.py recorded in a run folder; None when `folder` is not a run (a plain checkpoint)."""
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        return None
    try:
        run = read_json(path)
        if not isinstance(run, dict) or not all(isinstance(run.get(k), str) for k in ("tuner", "init_from")):
            raise ValueError("no 'tuner' or 'init_from'")
        if not isinstance(run.get("labels", []), list) or not all(isinstance(x, str) for x in run.get("labels", [])):
            raise ValueError("'labels' is not a list of names")
    except (OSError, ValueError) as e:
        raise RunFolderError(f"{path}: unreadable ({e}). Was it written by train.py?") from None
    return run


def mark_done(folder: Path, files: list[Path]) -> None:
    """The last write of a finished run (or of best/): each trained file's sha256, checked before decoding."""
    write_json(folder / DONE_FILE, {"files": {str(f.relative_to(folder)): sha256(f) for f in files}})


def check_done(folder: Path, run: dict) -> None:
    """Refuse a run folder that did not finish, or whose trained files changed since (a bit flip, a partial copy).
    Runs from before the done mark (no "done_file" in args.json) open as they did."""
    if not run.get("done_file"):
        return
    try:
        files = read_json(folder / DONE_FILE)["files"]
        assert isinstance(files, dict)
    except FileNotFoundError:
        raise RunFolderError(f"{folder}: this run is not finished (no {DONE_FILE}); continue it with train.py "
                             f"... --out-dir {folder} --resume, then decode.") from None
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise RunFolderError(f"{folder / DONE_FILE}: unreadable; train the run again.") from None
    for name, digest in files.items():
        path = folder / name
        if not path.is_file() or sha256(path) != digest:
            why = "changed since training (its sha256 differs)" if path.is_file() else "missing"
            raise RunFolderError(f"{path}: {why}; the trained weights are damaged. Copy the run folder again, or "
                                 f"train again.")


def read_log(path: Path, upto: int) -> tuple[str, int]:
    """A resumed run's log up to the checkpoint, and how many torn (killed mid-write) or non-JSON lines it dropped."""
    kept, torn = [], 0
    text = path.read_bytes().decode("utf-8", errors="replace") if path.is_file() else ""
    for line in text.split("\n"):
        try:
            row = json.loads(line)
            kept += [line] if row["step"] <= upto else []
        except (ValueError, KeyError, TypeError, RecursionError):
            torn += bool(line.strip())
    return "".join(r + "\n" for r in kept), torn


def log_rows(log: Path) -> list[dict]:
    """A run's log.jsonl as rows, in order; [] while the run has no log yet."""
    return [json.loads(line) for line in log.read_text().split("\n") if line] if log.is_file() else []


def val_losses(log: Path) -> list[float]:
    """The validation losses a run's log holds so far, in order (what --early-stop and OUT/best go by)."""
    return [r["val_loss"] for r in log_rows(log) if "val_loss" in r]


# --- the resume checkpoint -----------------------------------------------------------------------------------

def save_state(folder: Path, step: int, params: Params, opt: torch.optim.Optimizer, config: dict) -> None:
    bad = [n for n, p in params.items() if not torch.isfinite(p).all()]
    if bad:  # a diverged run must not replace its last good checkpoint
        raise RunFolderError(f"step {step}: the weights hold NaN/Inf ({bad[:3]}); not saved, the previous checkpoint "
                             f"in {folder} is kept. Lower --lr, then continue from it with --resume.")
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
    except (OSError, SafetensorError):
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
        state = read_json(path)
        ok = isinstance(state, dict) and type(state.get("step")) is int and state["step"] >= 0 \
            and isinstance(state.get("file"), str) and isinstance(state.get("config"), dict)
    except (OSError, ValueError) as e:
        raise RunFolderError(f"{path}: unreadable ({e}). The checkpoint is damaged; start again without --resume "
                             f"(and with --overwrite).") from None
    if not ok:
        raise RunFolderError(f"{path}: expected {{'step': N >= 0, 'file': ..., 'config': {{...}}}}. The checkpoint "
                             f"is damaged; start again without --resume (and with --overwrite).")
    return state


def load_state(folder: Path, state: dict, params: Params, opt: torch.optim.Optimizer) -> int:
    """Put the saved weights, AdamW moments and RNG state back; returns the step to continue from."""
    path = folder / Path(state["file"]).name
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise RunFolderError(f"{path}: missing or damaged ({e}). Start again without --resume.") from None
    shapes = {f"param/{n}": p.shape for n, p in params.items()}
    shapes |= {k: params[k.split("/")[1]].shape for k, v in tensors.items()  # AdamW's moments: a parameter's shape
               if k.startswith("opt/") and v.dim() > 0 and k.split("/")[1] in params}
    bad = [k for k, shape in shapes.items() if k not in tensors or tensors[k].shape != shape]
    for n in params:  # a parameter has all of AdamW's state, or none (it never had a gradient)
        have = {k.split("/")[-1] for k in tensors if k.startswith(f"opt/{n}/")}
        bad += [f"opt/{n}/{kind}" for kind in MOMENTS if kind not in have] if have else []
    if bad or "rng/cpu" not in tensors:
        raise RunFolderError(f"{path}: tensors missing or of the wrong shape: {(bad or ['rng/cpu'])[:3]}. Is it from "
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


def resume_from(folder: Path, params: Params, opt: torch.optim.Optimizer, run: dict) -> int | None:
    """--resume: the step to continue from, after refusing a checkpoint written with other arguments or base; None
    when the run has no checkpoint yet (killed before its first one: there is nothing to lose, it starts anew)."""
    state = read_state(folder)
    if state is None:
        return None
    recorded = state["config"].get("base_fingerprint")
    if recorded != run["base_fingerprint"]:
        raise RunFolderError(f"--resume: the run was trained on base {recorded}, but --init-from {run['init_from_arg']} "
                          f"is now {run['base_fingerprint']} (its weights changed). Resume with the original base.")
    changed = [k for k, v in state["config"].items() if k not in SAME_RUN and run.get(k) != v]
    if changed:
        raise RunFolderError(f"--resume: {folder} was written with other arguments: " + ", ".join(
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
    except (OSError, SafetensorError) as e:  # safetensors reports a full disk as its own error, not OSError
        where, why = getattr(e, "filename", None) or out, getattr(e, "strerror", None) or e
        raise RunFolderError(f"step {done}: could not write {where} ({why}); the previous checkpoint is kept. "
                             f"Free space, then continue with --resume.") from None

"""A run folder on disk, and the safe write every file of the project goes through.

A run folder is what train.py writes and beam.py opens (Li & Liang 2021 store only the prefix per task, §4).
One run owns one folder: args.json records its real settings once (the tuner, the base model and its
fingerprint, the parameter counts), log.jsonl has a row per logged step, resume/ holds the checkpoint
(resume.py), and a lock file names the process writing it. A folder that holds a run is never reused without
--resume or --overwrite, so no run silently destroys another's work.
    lock = claim(out, resume=False, overwrite=False)      # refuses a used or locked folder
    write_run(out, settings); settings = read_run(out)    # args.json
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable


RUN_FILE = "args.json"  # a run folder's record: its real settings, the base model and its fingerprint
LOG_FILE = "log.jsonl"
LOCK_FILE = ".lock"     # an out-dir's owner: one run writes a folder at a time


class RunFolderError(Exception):
    """A run folder cannot be used as asked; the message says why and what to do."""


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


# --- the run folder ---------------------------------------------------------------------------------------------

def claim(out: Path, resume: bool, overwrite: bool) -> Path:
    """Create --out-dir and lock it (an exclusive file holding our pid); refuse a folder that would lose work."""
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out-dir {out}: is a file; name a folder.")
    used = [n for n in (RUN_FILE, LOG_FILE, "resume") if (out / n).exists()]
    if used and not resume and not overwrite:
        raise RunFolderError(f"--out-dir {out} already holds a run ({', '.join(used)}). Add --resume to continue "
                             f"it, --overwrite to replace it, or choose another folder.")
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_FILE
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        pid = lock.read_text().strip()
        alive = pid.isdigit() and Path(f"/proc/{pid}").exists()
        raise RunFolderError(f"--out-dir {out}: another train.py (pid {pid}) is writing to it." if alive else
                             f"--out-dir {out}: a stale lock from pid {pid}, which is not running (a killed run). "
                             f"If no run uses this folder, delete {lock} and start again.") from None
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return lock


def write_run(out: Path, settings: dict) -> None:
    """Record a run once, with its real settings (after --prefix-init has set P, say): args.json."""
    write_json(out / RUN_FILE, settings)


def read_run(folder: str | Path) -> dict | None:
    """The settings train.py recorded in a run folder; None when `folder` is not a run (a plain checkpoint)."""
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        return None
    try:
        run = json.loads(path.read_text())
        if not all(isinstance(run.get(k), str) for k in ("tuner", "init_from")):
            raise ValueError("no 'tuner' or 'init_from'")
    except (OSError, ValueError, AttributeError) as e:
        raise RunFolderError(f"{path}: unreadable ({e}). Was it written by train.py?") from None
    return run


def read_log(path: Path, upto: int) -> tuple[str, int]:
    """A resumed run keeps its log up to the checkpoint; a line torn by a kill mid-write is dropped (and counted)."""
    kept, torn = [], 0
    for line in (path.read_text().split("\n") if path.is_file() else []):
        try:
            row = json.loads(line)
            kept += [line] if row["step"] <= upto else []
        except (ValueError, KeyError, TypeError):
            torn += bool(line.strip())
    return "".join(r + "\n" for r in kept), torn


def log_rows(log: Path) -> list[dict]:
    """A run's log.jsonl as rows, in order; [] while the run has no log yet."""
    return [json.loads(line) for line in log.read_text().split("\n") if line] if log.is_file() else []


def val_losses(log: Path) -> list[float]:
    """The validation losses a run's log holds so far, in order (what --early-stop and OUT/best go by)."""
    return [r["val_loss"] for r in log_rows(log) if "val_loss" in r]

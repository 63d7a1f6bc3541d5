"""The pipeline every experiment runs: the three public commands a user would type (`train.py`, `beam.py --split
test`, `python -m eval`), chained, cached per run folder, and their tables and plots. reproduce.py (the paper's
experiments) and mini.py (small bases pretrained here) both run through it.
    row = one_run("prefix-seed1", "prefix", train_flags, decode_flags, args)    # {"BLEU": ..., "train_s": ...}
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cli import line_plot  # noqa: E402
from data import read_pairs, subset  # noqa: E402
from tasks import TASKS, ReproError, Task  # noqa: E402

METRICS = TASKS["e2e"].metrics
GROUP_TAG = {"seen": "S", "unseen": "U", "": "A"}


def columns(task: Task) -> list[tuple[str, str, str]]:
    """(metric, beam.py output group, column name): E2E's five metrics; WebNLG's BLEU-S, BLEU-U, BLEU-A, ..."""
    if task.groups == ("",):
        return [(m, "", m) for m in task.metrics]
    return [(m, g, f"{m}-{GROUP_TAG[g]}") for m in task.metrics for g in task.groups]


def run(cmd: list[str], log: Path) -> tuple[float, float]:
    """Run one command, its output teed to `log`; returns (seconds, the process's peak RSS in MiB)."""
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            sys.stdout.write(line)
            f.write(line)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise ReproError(f"'{' '.join(cmd[:3])} …' failed; its output is in {log}")
    return time.time() - t0, usage.ru_maxrss / 1024


def epochs_done(args: dict) -> float:
    """Passes over the training set that the run made (a --max-steps run may stop inside an epoch)."""
    n = len(subset(read_pairs(args["data_dir"], args["train_split"]), args["train_limit"], args["subset_seed"]))
    return args["max_steps"] * args["batch_size"] * args["grad_accum"] * args["world_size"] / n


def one_run(name: str, tuner: str, train_flags: list[str], decode_flags: list[str], a: argparse.Namespace) -> dict:
    """train -> decode the test split -> score; each step's results are kept in the run's folder and reused."""
    out, py, task = Path(a.work) / name, sys.executable, TASKS[a.task]
    if a.force and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    facts_path = out / "facts.json"
    if facts_path.is_file():
        print(f"reusing the finished training run {out} (--force redoes it)")
    else:
        seconds, rss = run([py, "train.py", "--tuner", tuner, "--init-from", a.model, "--data-dir", str(a.data_dir),
                            "--out-dir", str(out), "--overwrite", "--train-split", a.train_split,
                            *task.flags.get(tuner, []), *train_flags,
                            *(["--max-steps", str(a.max_steps), "--valid-limit", "50"] if a.max_steps else [])],
                           out / "train.log")
        last = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
        facts = dict(train_s=seconds, s_per_epoch=seconds / epochs_done(json.loads((out / "args.json").read_text())),
                     peak_rss_mib=rss, peak_gpu_gib=last.get("peak_mem_gib"))
        facts_path.write_text(json.dumps(facts))
    facts = json.loads(facts_path.read_text())
    if (out / "test.txt").is_file():
        print(f"reusing the decoded {out / 'test.txt'}")
    else:
        run([py, "beam.py", "--ckpt", str(out), "--data-dir", str(a.data_dir), "--split", a.test_split,
             "--out", str(out / "test.jsonl"), *(["--limit", str(a.limit)] if a.limit else []), *decode_flags],
            out / "beam.log")
    scores = {}
    for metric, group, column in columns(task):
        scores[column] = score(out, group, task.name)[metric]
    counts = json.loads((out / "args.json").read_text())["params"]  # what the run recorded it trained and stored
    return dict(run=name, tuner=tuner, **scores, **facts, trained_frac=counts["trained_frac"],
                stored_frac=counts["stored_frac"], model_params=counts["model"])


def score(out: Path, group: str, task: str) -> dict:
    """python -m eval on one output subset (test.txt, test.seen.txt, ...), cached as its .scores.json."""
    stem = f"test.{group}" if group else "test"
    cache = out / f"{stem}.scores.json"
    if not cache.is_file():
        proc = subprocess.run([sys.executable, "-m", "eval", str(out / f"{stem}.refs.txt"), str(out / f"{stem}.txt"),
                               "--task", task, "--json"], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ReproError(f"scoring {out / stem}.txt failed: {proc.stderr.strip()}")
        cache.write_text(proc.stdout)
    return json.loads(cache.read_text())


def table(rows: list[dict], title: str, extra: tuple[str, ...] = (), task: str = "e2e") -> str:
    metrics = [column for _, _, column in columns(TASKS[task])]
    head = ["run", *extra, *metrics, "trained %", "stored %", "s/epoch", "peak RSS MiB", "peak GPU GiB"]
    lines = [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["run"], *(str(r[e]) for e in extra), *(f"{r[m]:.4f}" for m in metrics),
                 f"{100 * r['trained_frac']:.2f}", f"{100 * r['stored_frac']:.3f}", f"{r['s_per_epoch']:.0f}",
                 f"{r['peak_rss_mib']:.0f}", "-" if r.get("peak_gpu_gib") is None else f"{r['peak_gpu_gib']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(name: str, rows: list[dict], text: str, a: argparse.Namespace) -> None:
    results = a.results
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(rows, indent=2))
    (results / f"{name}.md").write_text(text)
    print(text + f"\nwrote {results / name}.md and .json")


def plot(path: Path, xs: list, series: dict[str, list[float]], xlabel: str, title: str) -> None:
    if not line_plot(path, {label: (xs, ys) for label, ys in series.items()}, xlabel, "BLEU", title):
        print(f"note: matplotlib is not installed, so no {path.name} (pip install matplotlib)")


# --- the experiments ---------------------------------------------------------------------------------------


"""Reproduce the paper's E2E experiments end to end: train, decode with beam search, score (Li & Liang 2021, §6).

Each run is the three public commands a user would type: `train.py`, `beam.py --split test`, `python -m eval`;
this script only chains them and writes the table. A finished step is skipped when the script runs again,
so an interrupted reproduction continues where it stopped.
    python scripts/reproduce.py paper                       # Table 1 (E2E): prefix vs fine, gpt2-medium (GPU)
    python scripts/reproduce.py lowdata                     # §6.3: 50..500 examples, prefix vs fine, several seeds
    python scripts/reproduce.py prefix-length               # §7.1 / Fig. 4: P in {1, 5, 10, 20, 40}
    python scripts/reproduce.py smoke                       # offline CPU check of the whole pipeline, minutes
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data import read_pairs, subset  # noqa: E402
from report import line_plot  # noqa: E402

E2E_ZIP = "https://github.com/tuetschek/e2e-dataset/releases/download/v1.0.0/e2e-dataset.zip"
E2E_FILES = ("trainset.csv", "devset.csv", "testset_w_refs.csv")
METRICS = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")
# The paper's numbers for the rows we reproduce (RECIPE.md §5; BLEU, METEOR, ROUGE-L in %).
PAPER = {"prefix": {"ACL": (70.3, 8.82, 46.3, 72.1, 2.46), "arXiv v1": (69.7, 8.81, 46.1, 71.4, 2.49)},
         "fine": {"ACL": (68.8, 8.71, 46.1, 71.1, 2.43), "arXiv v1": (68.2, 8.62, 46.2, 71.0, 2.47)}}
# Low-data (ACL Table 8): max steps chosen per size; lr 5e-5, warmup 100, P=6 from "table-to-text:".
LOWDATA_STEPS = {"prefix": {50: 200, 100: 200, 200: 200, 500: 400}, "fine": {50: 100, 100: 100, 200: 200, 500: 400}}


class ReproError(Exception):
    """A step of the reproduction failed; the message says which command and where its log is."""


def ensure_e2e(data_dir: Path) -> None:
    """The official E2E files, downloaded once from the dataset's public release when missing."""
    if all((data_dir / f).is_file() for f in E2E_FILES) or (data_dir / "src1_train.txt").is_file():
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    print(f"downloading the E2E dataset to {data_dir} from {E2E_ZIP}")
    try:
        archive, _ = urllib.request.urlretrieve(E2E_ZIP)
    except OSError as e:
        raise ReproError(f"could not download {E2E_ZIP} ({e}). Offline? Download it elsewhere and unzip "
                         f"{', '.join(E2E_FILES)} into {data_dir}.") from None
    with zipfile.ZipFile(archive) as z:
        for name in z.namelist():
            if Path(name).name in E2E_FILES:
                (data_dir / Path(name).name).write_bytes(z.read(name))


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
    """train -> decode the test split -> score; the results of each step are kept in the run's folder."""
    out = Path(a.work) / name
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    facts_path = out / "facts.json"
    if not facts_path.is_file():
        seconds, rss = run([py, "train.py", "--tuner", tuner, "--init-from", a.model, "--data-dir", str(a.data_dir),
                            "--out-dir", str(out), "--overwrite", "--train-split", a.train_split, *train_flags], out / "train.log")
        last = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
        facts = dict(train_s=seconds, s_per_epoch=seconds / epochs_done(json.loads((out / "args.json").read_text())),
                     peak_rss_mib=rss, peak_gpu_gib=last.get("peak_mem_gib"))
        facts_path.write_text(json.dumps(facts))
    facts = json.loads(facts_path.read_text())
    if not (out / "test.txt").is_file():
        run([py, "beam.py", "--ckpt", str(out), "--data-dir", str(a.data_dir), "--split", "test",
             "--out", str(out / "test.jsonl"), *(["--limit", str(a.limit)] if a.limit else []), *decode_flags],
            out / "beam.log")
    if not (out / "scores.json").is_file():
        scores = subprocess.run([py, "-m", "eval", str(out / "test.refs.txt"), str(out / "test.txt"),
                                 "--json"], cwd=ROOT, capture_output=True, text=True)
        if scores.returncode != 0:
            raise ReproError(f"scoring {out} failed: {scores.stderr.strip()}")
        (out / "scores.json").write_text(scores.stdout)
    counts = json.loads((out / "args.json").read_text())["params"]  # what the run recorded it trained and stored
    return dict(run=name, tuner=tuner, **json.loads((out / "scores.json").read_text()), **facts,
                trained_frac=counts["trained_frac"], stored_frac=counts["stored_frac"], model_params=counts["model"])


def table(rows: list[dict], title: str, extra: tuple[str, ...] = ()) -> str:
    head = ["run", *extra, *METRICS, "trained %", "stored %", "s/epoch", "peak RSS MiB", "peak GPU GiB"]
    lines = [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["run"], *(str(r[e]) for e in extra), *(f"{r[m]:.4f}" for m in METRICS),
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

def paper(a: argparse.Namespace) -> None:
    ensure_e2e(Path(a.data_dir))
    rows = [one_run(f"{t}-seed{s}", t, ["--seed", str(s)], [], a) for s in a.seeds for t in ("prefix", "fine")]
    text = table(rows, f"E2E test, {a.model} (ours)") + "\n## The paper (BLEU, NIST, METEOR, ROUGE-L, CIDEr)\n\n"
    text += "".join(f"- {t} {v}: {PAPER[t][v]}\n" for t in PAPER for v in PAPER[t])
    write_results("e2e", rows, text, a)


def lowdata(a: argparse.Namespace) -> None:
    ensure_e2e(Path(a.data_dir))
    rows, means = [], {t: [] for t in ("prefix", "fine")}
    for n in a.sizes:
        for t in means:
            init = ["--prefix-init", "table-to-text:"] if t == "prefix" else []
            flags = ["--lr", "5e-5", "--warmup-steps", "100", "--max-steps", str(LOWDATA_STEPS[t].get(n, 400)),
                     "--train-limit", str(n), *init]
            runs = [one_run(f"low{n}-{t}-sub{s}-seed{seed}", t,
                            [*flags, "--subset-seed", str(s), "--seed", str(seed)], [], a)
                    for s in range(a.subsets) for seed in a.seeds]
            rows += [dict(r, size=n) for r in runs]
            means[t].append(statistics.mean(r["BLEU"] for r in runs))
    text = table(rows, "E2E low-data (§6.3)", extra=("size",))
    text += "\n| size | " + " | ".join(f"{t} mean BLEU" for t in means) + " |\n|---|---|---|\n"
    text += "".join(f"| {n} | " + " | ".join(f"{means[t][i]:.4f}" for t in means) + " |\n" for i, n in enumerate(a.sizes))
    write_results("lowdata", rows, text, a)
    plot(a.results / "lowdata.png", a.sizes, means, "training examples", "E2E low-data")


def prefix_length(a: argparse.Namespace) -> None:
    ensure_e2e(Path(a.data_dir))
    rows = [dict(one_run(f"len{p}-seed{a.seeds[0]}", "prefix", ["--prefix-len", str(p), "--seed", str(a.seeds[0])],
                         [], a), P=p) for p in a.lengths]
    write_results("prefix_length", rows, table(rows, "E2E prefix length (§7.1)", extra=("P",)), a)
    plot(a.results / "prefix_length.png", a.lengths, {"prefix": [r["BLEU"] for r in rows]}, "prefix length P",
         "E2E prefix length")


def smoke(a: argparse.Namespace) -> None:
    """Every step of `paper` on a random tiny GPT-2, dev as train (no train set offline): a pipeline check."""
    train = ["--valid-split", "test", "--valid-limit", "50", "--max-steps", str(a.steps), "--lr", str(a.lr),
             "--log-every", "50", "--eval-every", "0"]
    rows = [one_run(f"smoke-{t}", t, train, ["--max-new-tokens", "40"], a) for t in ("prefix", "fine")]
    write_results("smoke", rows, table(rows, f"SMOKE RUN ONLY: random-weight {a.model}, {a.steps} steps at lr {a.lr:g}, "
                                             f"{a.limit} test MRs. Checks the pipeline; says nothing of quality"), a)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="experiment", required=True)
    for name, model, work in (("paper", "gpt2-medium", "runs/paper"), ("lowdata", "gpt2-medium", "runs/lowdata"),
                              ("prefix-length", "gpt2-medium", "runs/prefix-length"),
                              ("smoke", "random:tiny", "runs/smoke")):
        s = sub.add_parser(name, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        s.add_argument("--model", default=model, help="base: hub name, folder or random:tiny|gpt2|gpt2-medium")
        s.add_argument("--data-dir", default="data/e2e" if name != "smoke" else "../shared/data/e2e")
        s.add_argument("--work", default=work, help="one folder per run: weights, logs, outputs, scores")
        s.add_argument("--seeds", type=int, nargs="+", default=[101], help="training seeds")
        s.add_argument("--results", default=str(ROOT / "results"), help="where the tables and plots go")
        s.add_argument("--train-split", default="dev" if name == "smoke" else "train", help="split to train on")
        s.add_argument("--limit", type=int, default=20 if name == "smoke" else 0,
                       help="decode and score only the first N test MRs (0: all 630)")
    sub.choices["lowdata"].add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200, 500])
    sub.choices["lowdata"].add_argument("--subsets", type=int, default=5, help="random subsets per size")
    sub.choices["prefix-length"].add_argument("--lengths", type=int, nargs="+", default=[1, 5, 10, 20, 40])
    sub.choices["smoke"].add_argument("--steps", type=int, default=300)
    sub.choices["smoke"].add_argument("--lr", type=float, default=3e-3, help="a random tiny model needs far more than "
                                      "the paper's 8e-5 / 5e-5 to learn anything in minutes")
    a = p.parse_args(argv)
    a.data_dir, a.work, a.results = (Path(x).resolve() for x in (a.data_dir, a.work, a.results))  # the steps run from the repo root
    try:
        {"paper": paper, "lowdata": lowdata, "prefix-length": prefix_length, "smoke": smoke}[a.experiment](a)
    except ReproError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()

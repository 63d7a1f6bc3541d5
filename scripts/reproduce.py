"""Reproduce the paper's experiments end to end: train, decode with beam search, score (Li & Liang 2021, §6).

Each run is the three public commands a user would type: `train.py`, `beam.py --split test`, `python -m eval`;
this script only chains them and writes the table. A finished step is reused (and says so) when the script runs
again, so an interrupted reproduction continues where it stopped; --force redoes every step.

examples:
    python scripts/reproduce.py paper                       # Table 1 (E2E): prefix vs fine, gpt2-medium (GPU)
    python scripts/reproduce.py paper --task webnlg         # Table 1 (WebNLG, S/U/A) and --task dart
    python scripts/reproduce.py table1 --task e2e           # Table 1: fine, FT-top2, adapter 3% / 0.1%, prefix
    python scripts/reproduce.py lowdata                     # §6.3: 50..500 examples, prefix vs fine, several seeds
    python scripts/reproduce.py ablations                   # §7.2-7.3: embedding-only and infix vs prefix
    python scripts/reproduce.py init                        # §7.4: random vs real-word init, low-data sizes
    python scripts/reproduce.py prefix-length               # §7.1 / Fig. 4: P in {1, 5, 10, 20, 40}
    python scripts/reproduce.py smoke                       # offline CPU check of the whole pipeline, minutes
    python scripts/reproduce.py smoke --task webnlg         # the same on WebNLG (trains on its train set)
    python scripts/reproduce.py mini                        # small bases pretrained here, every tuner on E2E, CPU
"""
from __future__ import annotations

import argparse
import statistics
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from pipeline import ROOT, columns, one_run, plot, table, write_results  # it puts ROOT on sys.path
from tasks import (ABLATION_BLEU, E2E_TABLE1, INIT_WORDS, METHODS, PAPER_NOTE, TASKS, WEBNLG_TABLE1,  # noqa: E402
                   ReproError, Task, ensure_data)
# Low-data (ACL Table 8): max steps chosen per size; lr 5e-5, warmup 100, P=6 from "table-to-text:".
LOWDATA_STEPS = {"prefix": {50: 200, 100: 200, 200: 200, 500: 400}, "fine": {50: 100, 100: 100, 200: 200, 500: 400}}


def paper(a: argparse.Namespace) -> None:
    """Table 1 for one dataset: prefix-tuning vs fine-tuning with the dataset's recipe, next to the paper's rows."""
    ensure_data(TASKS[a.task], a.data_dir, [a.train_split, a.test_split])
    rows = [one_run(f"{t}-seed{s}", t, ["--seed", str(s)], [], a) for s in a.seeds for t in ("prefix", "fine")]
    text = table(rows, f"{a.task} {a.test_split}, {a.model} (ours)", task=a.task)
    write_results(a.task, rows, text + paper_rows(TASKS[a.task], TASKS[a.task].paper), a)


def lowdata(a: argparse.Namespace) -> None:
    """§6.3 low-data: 50 to 500 E2E examples, prefix (from "table-to-text:") vs fine, subsets x seeds."""
    ensure_data(TASKS[a.task], a.data_dir, [a.train_split, a.test_split])
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
    """§7.1 / Fig. 4: prefix-tuning at each prefix length P."""
    ensure_data(TASKS[a.task], a.data_dir, [a.train_split, a.test_split])
    rows = [dict(one_run(f"len{p}-seed{a.seeds[0]}", "prefix", ["--prefix-len", str(p), "--seed", str(a.seeds[0])],
                         [], a), P=p) for p in a.lengths]
    write_results("prefix_length", rows, table(rows, "E2E prefix length (§7.1)", extra=("P",)), a)
    plot(a.results / "prefix_length.png", a.lengths, {"prefix": [r["BLEU"] for r in rows]}, "prefix length P",
         "E2E prefix length")


def smoke(a: argparse.Namespace) -> None:
    """Every step of `paper` on a tiny GPT-2 (E2E: dev as train, no train set offline): a pipeline check. On E2E
    the base is the smallest one `mini` pretrained, when cached, else random:tiny. WebNLG decodes a slice of both
    the seen and the unseen test entries, so S, U and A are all scored."""
    if a.model is None:
        from mini import cached_base  # imported here: mini.py imports this file
        a.model = (cached_base(a.work.parent / "mini") if a.task == "e2e" else None) or "random:tiny"
        print(f"smoke: base {a.model} (--model picks another)")
    if a.task == "webnlg":
        a.test_split = str(webnlg_slice(a.data_dir, a.work / "test-slice.xml", a.limit))
        a.limit = 0
    train = ["--valid-split", a.valid_split, "--valid-limit", "50", "--max-steps", str(a.steps), "--lr", str(a.lr),
             "--log-every", "50", "--eval-every", "0"]
    rows = [one_run(f"smoke-{t}", t, train, ["--max-new-tokens", "40"], a) for t in ("prefix", "fine")]
    title = (f"SMOKE RUN ONLY: {'random-weight ' * a.model.startswith('random:')}{a.model}, {a.steps} steps at lr "
             f"{a.lr:g} on {a.task}. Checks the pipeline; says nothing of quality")
    write_results("smoke" if a.task == "e2e" else f"smoke-{a.task}", rows, table(rows, title, task=a.task), a)


def table1(a: argparse.Namespace) -> None:
    """Table 1 with every method: fine, FT-top2, adapter at ≈3% and ≈0.1%, prefix; the dataset's recipe for each."""
    task = TASKS[a.task]
    ensure_data(task, a.data_dir, [a.train_split, a.test_split])
    rows = [dict(one_run(f"{m}-seed{s}", tuner, [*flags, "--seed", str(s)], [], a), method=m)
            for s in a.seeds for m, (tuner, flags) in METHODS.items()]
    paper = {**task.paper, **(E2E_TABLE1 if a.task == "e2e" else WEBNLG_TABLE1 if a.task == "webnlg" else {})}
    write_results(f"table1-{a.task}", rows, table(rows, f"Table 1, {a.task}, {a.model} (ours)", ("method",), a.task)
                  + paper_rows(task, paper), a)


def ablations(a: argparse.Namespace) -> None:
    """§7.2 and §7.3 on E2E: embedding-only and infix against the full prefix, at each prefix length."""
    ensure_data(TASKS["e2e"], a.data_dir, [a.train_split, a.test_split])
    runs = {"prefix": ("prefix", []), "embedding": ("embedding", []), "infix": ("prefix", ["--infix"])}
    rows = [dict(one_run(f"{kind}{p}-seed{a.seeds[0]}", tuner, [*flags, "--prefix-len", str(p), "--seed",
                                                                   str(a.seeds[0])], [], a), kind=kind, P=p)
            for p in a.lengths for kind, (tuner, flags) in runs.items()]
    text = table(rows, f"E2E ablations (§7.2 embedding-only, §7.3 infix), {a.model} (ours)", ("kind", "P"))
    text += "\n## The paper's BLEU (RECIPE.md §5)\n\n" + "".join(
        f"- {kind}: " + ", ".join(f"P={p} {bleu}" for p, bleu in by_p.items()) + "\n" for kind, by_p in ABLATION_BLEU.items())
    write_results("ablations", rows, text, a)
    plot(a.results / "ablations.png", a.lengths, {kind: [r["BLEU"] for r in rows if r["kind"] == kind] for kind in runs},
         "prefix length P", "E2E: prefix vs embedding-only vs infix")


def init(a: argparse.Namespace) -> None:
    """§7.4: random initialization vs the activations of real words, at the low-data sizes (prefix, E2E)."""
    ensure_data(TASKS["e2e"], a.data_dir, [a.train_split, a.test_split])
    inits = {"random": [], **{word: ["--prefix-init", word] for word in a.words}}
    rows, means = [], {name: [] for name in inits}
    for n in a.sizes:
        for name, flags in inits.items():
            steps = ["--lr", "5e-5", "--warmup-steps", "100", "--max-steps", str(LOWDATA_STEPS["prefix"].get(n, 400)),
                     "--train-limit", str(n), *flags]
            runs = [one_run(f"init-{name.strip(':')}-{n}-seed{seed}", "prefix", [*steps, "--seed", str(seed)], [], a)
                    for seed in a.seeds]
            rows += [dict(r, init=name, size=n) for r in runs]
            means[name].append(statistics.mean(r["BLEU"] for r in runs))
    write_results("init", rows, table(rows, "E2E prefix initialization (§7.4)", ("init", "size")), a)
    plot(a.results / "init.png", a.sizes, means, "training examples", "E2E: prefix initialization")


def paper_rows(task: Task, paper: dict) -> str:
    names = [column for _, _, column in columns(task)]
    text = f"\n## The paper ({PAPER_NOTE[task.name]})\n\n| method | " + " | ".join(names) + " |\n"
    text += "|---" * (len(names) + 1) + "|\n"
    return text + "".join(f"| {m} | " + " | ".join(f"{v:g}" for v in vals) + " |\n" for m, vals in paper.items())


def webnlg_slice(data_dir: Path, dst: Path, n: int) -> Path:
    """The first n seen and the first n unseen entries of WebNLG's test XML (the file lists all seen ones first)."""
    from files.datasets import WEBNLG_TEST, WEBNLG_UNSEEN
    tree = ET.parse(data_dir / WEBNLG_TEST)
    entries = tree.getroot().find("entries")
    seen = [e for e in entries if e.get("category") not in WEBNLG_UNSEEN][:n]
    unseen = [e for e in entries if e.get("category") in WEBNLG_UNSEEN][:n]
    for e in list(entries):
        if e not in seen and e not in unseen:
            entries.remove(e)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tree.write(dst, encoding="utf-8", xml_declaration=True)
    return dst


def mini(a: argparse.Namespace) -> None:
    """Small bases pretrained here on text without E2E, then every tuner on E2E, on 2 CPU cores (scripts/mini.py)."""
    from mini import mini as run_mini  # imported here: mini.py imports this file
    run_mini(a)


# --- command line ------------------------------------------------------------------------------------------

EXPERIMENTS = {"paper": (paper, "gpt2-medium"), "table1": (table1, "gpt2-medium"), "lowdata": (lowdata, "gpt2-medium"),
               "prefix-length": (prefix_length, "gpt2-medium"), "ablations": (ablations, "gpt2-medium"),
               "init": (init, "gpt2-medium"), "smoke": (smoke, None), "mini": (mini, "random:tiny")}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="experiment", required=True)
    for name, (_, model) in EXPERIMENTS.items():
        doc = (EXPERIMENTS[name][0].__doc__ or "").split("\n")[0]
        s = sub.add_parser(name, help=doc.replace("%", "%%"), description=doc,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        s.add_argument("--task", default="e2e", choices=list(TASKS) if name in ("paper", "table1", "smoke") else ["e2e"],
                       help="the dataset (its recipe's settings, metrics and the paper's figures)")
        s.add_argument("--model", default=model, help="base: hub name, folder or random:tiny|gpt2|gpt2-medium"
                       + ("; default: the base `mini` cached, else random:tiny" if model is None else ""))
        s.add_argument("--data-dir", help="the dataset's folder (default: data/TASK, downloaded when missing; "
                                          "smoke: ../shared/data/TASK)")
        s.add_argument("--work", default=f"runs/{name}", help="one folder per run: weights, logs, outputs, scores")
        s.add_argument("--seeds", type=int, nargs="+", default=[101], help="training seeds")
        s.add_argument("--results", default=str(ROOT / "results"), help="where the tables and plots go")
        s.add_argument("--train-split", help="split to train on (default: train; smoke on E2E: dev)")
        s.add_argument("--limit", type=int, default=20 if name == "smoke" else 0,
                       help="decode and score only the first N test entries (0: all); smoke on WebNLG: N seen + N unseen")
        s.add_argument("--force", action="store_true", help="redo every step, even finished ones")
        if name != "smoke":
            s.add_argument("--max-steps", type=int, default=0, help="cap every run at N steps: a CPU smoke of the "
                                                                     "experiment (with --model random:tiny --limit N)")
    for name in ("lowdata", "init"):
        sub.choices[name].add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200, 500],
                                       help="training set sizes (ACL Table 8)")
    sub.choices["init"].add_argument("--words", nargs="+", default=INIT_WORDS, help="real words to start from (§7.4)")
    sub.choices["ablations"].add_argument("--lengths", type=int, nargs="+", default=[1, 10, 20],
                                          help="prefix lengths P (the paper's EMB-P and INFIX-P)")
    sub.choices["lowdata"].add_argument("--subsets", type=int, default=5, help="random subsets per size")
    sub.choices["prefix-length"].add_argument("--lengths", type=int, nargs="+", default=[1, 5, 10, 20, 40],
                                              help="prefix lengths P to train (Fig. 4)")
    sub.choices["smoke"].add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    sub.choices["smoke"].add_argument("--lr", type=float, default=3e-3, help="a random tiny model needs far more than "
                                      "the paper's 8e-5 / 5e-5 to learn anything in minutes")
    from mini import add_arguments  # imported here: mini.py imports this file
    add_arguments(sub.choices["mini"])
    a = p.parse_args(argv)
    a.max_steps = getattr(a, "max_steps", 0)  # smoke has --steps of its own
    smoke_run = a.experiment == "smoke"
    a.data_dir = a.data_dir or (f"../shared/data/{a.task}" if smoke_run else TASKS[a.task].data_dir)
    a.train_split = a.train_split or ("dev" if smoke_run and a.task == "e2e" else "train")
    a.valid_split = "test" if a.train_split == "dev" else "dev"
    a.test_split = "test"
    a.data_dir, a.work, a.results = (Path(x).resolve() for x in (a.data_dir, a.work, a.results))  # steps run from the root
    try:
        EXPERIMENTS[a.experiment][0](a)
    except ReproError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()

"""The paper's comparison at a scale two CPU cores can run (Li & Liang 2021, §6.1 "Table-to-text Generation",
§6.3 "Low-data Setting", §7.2 "Full vs Embedding-only"): small GPT-2 bases pretrained here, then every tuner on E2E.

Prefix-tuning steers what a pretrained model knows, so a random base (the smoke run's) cannot test it, and no
pretrained weights reach this machine. So each base first learns English from text that holds no E2E: WebNLG's
train lexicalisations and DART's dev annotations, less those DART took from E2E, as {"text": ...} rows, with
`train.py --tuner fine --init-from random:LxD` until its validation loss levels off (--early-stop; OUT/best is the
base). Then on E2E (dev to train, the 630 test MRs to score) it runs prefix, embedding, adapter, fine-top2 and fine
on each base, prefix and fine on a random base of the same shape, and low-data prefix vs fine, each for several
seeds; every step is reproduce.py's one_run (train.py -> beam.py -> python -m eval), cached in its folder.
    python scripts/reproduce.py mini            # ~90 min on 2 idle cores: results/mini.md, mini.png, mini_lowdata.png
    python scripts/reproduce.py mini --quick    # ~10 min check: tiny bases, few steps, 20 test MRs, one seed
    python scripts/reproduce.py mini --with-e2e-text --work runs/mini-e2etext   # bases that also read E2E dev's
                                                # references as text: the English the task needs, but no MR
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

import pipeline  # first: it puts the repository on sys.path; every step goes through its run()
from pipeline import METRICS, ROOT, one_run, plot, table, write_results
from tasks import ReproError
from data import batch_of, example, read_rows
from files.datasets import DART_FILE
from files.tokenizer import load_tokenizer
from model import GPT, IGNORE, GPTConfig, flops_per_token, named_shape

DATA = ROOT.parent / "shared" / "data"
TUNERS = ("prefix", "embedding", "adapter", "fine-top2", "fine")
# The full run and --quick; a flag given on the command line wins over both. The full run's sizes are what fits
# 90 minutes on 2 cores: the 50,257-token head dominates every step of a small base.
FULL = dict(bases=["4x128", "4x256"], base_steps=360, base_eval=40, base_valid=200, steps=50, seeds=[1, 2],
            limit=0, sizes=[100, 500])
QUICK = dict(bases=["1x64", "2x128"], base_steps=40, base_eval=10, base_valid=100, steps=10, seeds=[1], limit=20,
             sizes=[100])
# Runs of ~50 steps need far more than the recipe's 8e-5 / 5e-5 (5 epochs of gpt2-medium). Not tuned: the
# prefix's usual multiple of fine-tuning's rate, at a level where a few dozen steps move a small model.
LR = {"prefix": 3e-3, "embedding": 3e-3, "adapter": 1e-3, "fine-top2": 1e-3, "fine": 1e-3}
BASE_FLAGS = ["--tuner", "fine", "--batch-size", "16", "--lr", "1e-3", "--early-stop", "3", "--seed", "0"]
VALID_TEXTS, BATCH, MAX_NEW = 400, 8, 60  # held-out base texts; E2E batch; new tokens (references: 27 on average)
E2E_NLL_ROWS = 500  # (MR, reference) test rows on which each base's untuned E2E NLL is measured
# For the ETA: mean tokens of a base text and of an E2E example (prompt + target); decoding an MR costs ~1.5
# examples' forward (outputs up to 60 tokens); each E2E run starts three processes and two JVMs (~25 s).
TEXT_TOKENS, E2E_TOKENS, DECODE_FACTOR, RUN_OVERHEAD_S = 31, 60, 1.5, 25.0
PAPER = {"prefix": 70.3, "fine": 68.8, "fine-top2": 68.1, "adapter": 68.9, "embedding": 62.2}  # RECIPE.md §5


def add_arguments(s: argparse.ArgumentParser) -> None:
    """mini's own flags on its reproduce.py subcommand; defaults (None) come from FULL or QUICK."""
    s.add_argument("--quick", action="store_true", help=f"a check in ~10 minutes, in WORK/quick: {QUICK}; the full "
                                                        f"run: seeds {FULL['seeds']}, all 630 test MRs")
    s.add_argument("--bases", nargs="+", help=f"base shapes LxD, pretrained here (full: {FULL['bases']})")
    s.add_argument("--base-steps", type=int, help="most steps per base, batch 16; it stops earlier when its "
                                                  f"validation loss levels off (full: {FULL['base_steps']})")
    s.add_argument("--base-eval", type=int, help=f"validate each base every N steps (full: {FULL['base_eval']})")
    s.add_argument("--base-valid", type=int, help=f"on this many held-out texts (full: {FULL['base_valid']}, at most "
                                                  f"{VALID_TEXTS})")
    s.add_argument("--steps", type=int, help=f"optimizer steps per E2E run, batch {BATCH} (full: {FULL['steps']})")
    s.add_argument("--sizes", type=int, nargs="*", help=f"low-data training set sizes (full: {FULL['sizes']})")
    s.add_argument("--tuners", nargs="+", choices=TUNERS, default=list(TUNERS), help="tuners on each base")
    s.add_argument("--beams", type=int, default=1, help="K of the decoding beam; the recipe's 5 costs ~2x the time")
    s.add_argument("--with-e2e-text", action="store_true",
                   help="add E2E dev's references, text alone (no MRs), to the bases' texts: bases that know E2E's "
                        "English but not the task. Give it its own --work")
    s.set_defaults(seeds=None, limit=None, data_dir=str(DATA / "e2e"), train_split="dev")


def settings(a: argparse.Namespace) -> argparse.Namespace:
    """The namespace with every None filled from the chosen preset; --quick works in its own folder."""
    a = copy.copy(a)
    for key, value in (QUICK if a.quick else FULL).items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    bad = [b for b in a.bases if named_shape(b) is None or b in ("tiny", "gpt2", "gpt2-medium")]
    if bad:
        raise ReproError(f"--bases {bad}: give shapes LxD (L layers, D a multiple of 64), e.g. 4x128.")
    a.work = a.work / "quick" if a.quick else a.work
    return a


# --- the bases: text without E2E, pretrained until the validation loss levels off -----------------------------

def base_texts(seed: int = 0, e2e_text: bool = False) -> tuple[list[str], list[str]]:
    """WebNLG train lexicalisations + DART dev annotations, each text once, shuffled; (train, held-out). DART
    gathers E2E too (4,290 of its dev annotations say "source": "e2e", E2E's own references): those are left out.
    With e2e_text, E2E dev's references join them as plain text: the MRs, and every test text, stay unseen."""
    path = DATA / "dart" / f"{DART_FILE.format(split='dev')}.json"
    try:
        dart = [note["text"] for entry in json.loads(path.read_text()) for note in entry["annotations"]
                if note.get("source") != "e2e" and (note["text"] or "").strip()]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ReproError(f"{path}: cannot read DART's dev annotations ({e}); ../shared/data/dart holds them.") from None
    webnlg = [row.target for row in read_rows(str(DATA / "webnlg"), "train")]
    e2e = [row.target for row in read_rows(str(DATA / "e2e"), "dev")] if e2e_text else []
    texts = sorted({t.strip() for t in webnlg + dart + e2e})
    random.Random(seed).shuffle(texts)
    return texts[VALID_TEXTS:], texts[:VALID_TEXTS]


def write_base_data(folder: Path, e2e_text: bool) -> int:
    """train.jsonl and valid.jsonl of {"text": ...} rows (train.py trains on every token); returns the train count."""
    train, valid = base_texts(e2e_text=e2e_text)
    folder.mkdir(parents=True, exist_ok=True)
    for name, texts in (("train", train), ("valid", valid)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return len(train)


def train_base(shape: str, a: argparse.Namespace) -> dict:
    """One base, trained (or reused) in WORK/base-LxD; its facts, with `path` the folder other runs start from."""
    out, data = a.work / f"base-{shape}", a.work / "base-data"
    if a.force and out.exists():
        shutil.rmtree(out)
    if (out / "facts.json").is_file():
        facts = json.loads((out / "facts.json").read_text())
        if facts.get("e2e_text", False) != a.with_e2e_text:
            raise ReproError(f"{out} was trained {'with' if facts.get('e2e_text') else 'without'} E2E dev's text; "
                             f"give this run another --work (or --force to retrain everything there).")
        if "e2e_nll" not in facts:  # a base cached before this measure existed
            facts["e2e_nll"] = e2e_nll(out / "best")
            (out / "facts.json").write_text(json.dumps(facts))
        print(f"reusing the trained base {out}: {facts['steps']} steps, best validation NLL {facts['best_val']:.3f} "
              f"(--force retrains it)")
        return dict(facts, path=str(out / "best"))
    if a.force or not (data / "train.jsonl").is_file():
        n = write_base_data(data, a.with_e2e_text)
        print(f"wrote {n:,} base texts (WebNLG train, DART dev but its E2E part"
              f"{', E2E dev references' if a.with_e2e_text else ''}) to {data}/train.jsonl, {VALID_TEXTS} more to "
              f"valid.jsonl")
    out.mkdir(parents=True, exist_ok=True)
    seconds, _ = pipeline.run([sys.executable, "train.py", *BASE_FLAGS, "--init-from", f"random:{shape}",
                                "--data-dir", str(data), "--train-split", "train", "--valid-split", "valid",
                                "--valid-limit", str(a.base_valid),
                                "--max-steps", str(a.base_steps), "--warmup-steps", str(a.base_steps // 10),
                                "--eval-every", str(a.base_eval), "--log-every", str(a.base_eval),
                                "--save-every", str(a.base_steps), "--out-dir", str(out), "--overwrite"],
                               out / "train.log")
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line]
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    model = GPT(GPTConfig(**named_shape(shape)))
    facts = dict(base=shape, steps=rows[-1]["step"], early=rows[-1]["step"] < a.base_steps,
                 vals=vals, best_val=min(vals), train_s=seconds, params=sum(p.numel() for p in model.parameters()),
                 blocks=sum(p.numel() for n, p in model.named_parameters() if ".h." in n),
                 e2e_text=a.with_e2e_text, e2e_nll=e2e_nll(out / "best"))
    (out / "facts.json").write_text(json.dumps(facts))
    return dict(facts, path=str(out / "best"))


def e2e_nll(path: Path) -> float:
    """A base's NLL per token of E2E test references after their MR, untuned: how much of E2E's English it already
    knows. A frozen base lends prefix-tuning only what it knows (§4: the prefix steers, it does not teach words);
    fine-tuning can learn the rest. The first E2E_NLL_ROWS (MR, reference) rows, in the E2E template."""
    model, tok = GPT.from_pretrained(path), load_tokenizer(path)
    examples = [example(tok, row, []) for row in read_rows(str(DATA / "e2e"), "test")[:E2E_NLL_ROWS]]
    nll, n = 0.0, 0
    with torch.no_grad():
        for lo in range(0, len(examples), 25):  # train.py's validation loss, on these rows
            idx, targets, _ = batch_of(examples[lo:lo + 25], tok.eot_token)
            count = int((targets != IGNORE).sum())
            nll, n = nll + model(idx, targets=targets).loss.item() * count, n + count
    return nll / n


def cached_base(work: Path) -> str | None:
    """The smallest base a full `mini` run finished in `work` (the smoke run's default base), or None."""
    done = sorted(work.glob("base-*/facts.json"), key=lambda f: json.loads(f.read_text())["params"])
    return str(done[0].parent / "best") if done else None


# --- the E2E runs -----------------------------------------------------------------------------------------------

def jobs(a: argparse.Namespace) -> list[dict]:
    """Every E2E run: (base, init, tuner, size, seed); size 0 is the whole dev set. Low-data uses the smallest base
    (the cheapest: the full run's budget)."""
    out = [dict(base=b, init="ours", tuner=t, size=0, seed=s) for b in a.bases for t in a.tuners for s in a.seeds]
    out += [dict(base=b, init="random", tuner=t, size=0, seed=s) for b in a.bases for t in ("prefix", "fine")
            for s in a.seeds]
    out += [dict(base=a.bases[0], init="ours", tuner=t, size=n, seed=s) for n in a.sizes for t in ("prefix", "fine")
            for s in a.seeds]
    for j in out:
        j["name"] = f"{j['base']}-{'random-' if j['init'] == 'random' else ''}{j['tuner']}" + \
                    (f"-low{j['size']}" if j["size"] else "") + f"-seed{j['seed']}"
    return out


def e2e_run(job: dict, bases: dict[str, dict], a: argparse.Namespace) -> dict:
    """one_run of a job: train.py on E2E dev (or a subset of it), greedy or beam decoding, the five metrics."""
    b = copy.copy(a)
    b.model = bases[job["base"]]["path"] if job["init"] == "ours" else f"random:{job['base']}"
    flags = ["--max-steps", str(a.steps), "--batch-size", str(BATCH), "--lr", str(LR[job["tuner"]]),
             "--seed", str(job["seed"]), "--valid-split", "", "--log-every", "20"]
    if job["size"]:  # §6.3: a subset drawn per seed; all else as the full runs (the paper also starts the prefix
        flags += ["--train-limit", str(job["size"]), "--subset-seed", str(job["seed"])]  # from real words, §7.4)
    decode = ["--beams", str(a.beams), "--max-new-tokens", str(MAX_NEW), "--batch-size", "50"]
    return dict(one_run(job["name"], job["tuner"], flags, decode, b), **job)


# --- plan and ETA -----------------------------------------------------------------------------------------------

def measured_flops(shape: str) -> float:
    """FLOP/s of this machine now: two training steps of a GPT-2 of this shape on (8, 32) tokens."""
    cfg = GPTConfig(**named_shape(shape))
    model, idx = GPT(cfg), torch.randint(0, cfg.vocab_size, (8, 32))
    model(idx, targets=idx).loss.backward()  # warm-up
    t0 = time.perf_counter()
    for _ in range(2):
        model(idx, targets=idx).loss.backward()
    return 2 * idx.numel() * flops_per_token(cfg, 32, True) / (time.perf_counter() - t0)


def eta_s(a: argparse.Namespace, todo_bases: list[str], todo: list[dict], flops: float) -> float:
    """Seconds the steps still to do take at `flops` FLOP/s: training and decoding by FLOPs, plus start-ups."""
    cfg = {b: GPTConfig(**named_shape(b)) for b in a.bases}
    total = 0.0
    for b in todo_bases:
        forward = flops_per_token(cfg[b], TEXT_TOKENS, False) / 2
        total += (a.base_steps * 16 * 3 + a.base_steps // a.base_eval * a.base_valid) * TEXT_TOKENS * forward
    for j in todo:
        learn = j["tuner"] == "fine"  # the others backpropagate to activations, and to few weights (tuners/)
        total += a.steps * BATCH * E2E_TOKENS * flops_per_token(cfg[j["base"]], E2E_TOKENS, learn)
        forward = flops_per_token(cfg[j["base"]], E2E_TOKENS, False) / 2
        total += (a.limit or 630) * a.beams * E2E_TOKENS * DECODE_FACTOR * forward
    return total / flops + RUN_OVERHEAD_S * len(todo)


def print_plan(a: argparse.Namespace, runs: list[dict]) -> None:
    todo_bases = [b for b in a.bases if a.force or not (a.work / f"base-{b}" / "facts.json").is_file()]
    todo = [j for j in runs if a.force or not (a.work / j["name"] / "test.txt").is_file()]
    flops = measured_flops(a.bases[0])
    print(f"mini{' --quick' if a.quick else ''}: bases {', '.join(a.bases)} pretrained on WebNLG train + DART dev "
          f"texts {'and E2E dev' if a.with_e2e_text else 'but E2E'}'s references (at most {a.base_steps} steps "
          f"of 16, early stop); on E2E dev, {a.steps} steps of {BATCH} "
          f"per run: {', '.join(a.tuners)} on each base, prefix and fine on random bases, low-data {a.sizes} on "
          f"{a.bases[0]}; seeds {a.seeds}; {a.limit or 630} test MRs, beam {a.beams}. {len(runs)} E2E runs.")
    print(f"to do: {len(todo_bases)} of {len(a.bases)} bases, {len(todo)} of {len(runs)} runs (the rest is cached; "
          f"--force redoes it). ETA ~{eta_s(a, todo_bases, todo, flops) / 60:.0f} min at the {flops / 1e9:.0f} "
          f"GFLOP/s this machine gives now (±50%: other load changes it)", flush=True)


# --- the experiment and its report ------------------------------------------------------------------------------

def mini(a: argparse.Namespace) -> None:
    a = settings(a)
    runs = jobs(a)
    print_plan(a, runs)
    t0 = time.time()
    bases = {shape: train_base(shape, a) for shape in a.bases}
    rows = [e2e_run(j, bases, a) for j in runs]
    text = report(a, bases, rows) + "\n" + table(rows, "Every run", extra=("base", "init", "size", "seed"))
    write_results("mini", rows, text, a)
    sizes = [bases[b]["blocks"] / 1e6 for b in a.bases]
    means = {m: [mean_of(rows, b, i, t, 0) for b in a.bases] for i, t, m in methods(a)}
    plot(a.results / "mini.png", sizes, means, "base's non-embedding parameters (M)",
         "E2E test BLEU on our small bases (mean over seeds)")
    if a.sizes:
        low = {t: [mean_of(rows, a.bases[0], "ours", t, n) for n in a.sizes] for t in ("prefix", "fine")}
        plot(a.results / "mini_lowdata.png", a.sizes, low, "training examples", f"E2E low-data on base {a.bases[0]}")
    print(f"mini took {(time.time() - t0) / 60:.1f} min")


def methods(a: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(init, tuner, label) of every line of the summary."""
    return [("ours", t, t) for t in a.tuners] + [("random", t, f"{t}, random base") for t in ("prefix", "fine")]


def scores(rows: list[dict], base: str, init: str, tuner: str, size: int, metric: str = "BLEU") -> list[float]:
    return [r[metric] for r in rows if (r["base"], r["init"], r["tuner"], r["size"]) == (base, init, tuner, size)]


def mean_of(rows: list[dict], base: str, init: str, tuner: str, size: int) -> float:
    return statistics.mean(scores(rows, base, init, tuner, size))


def spread(xs: list[float], digits: int = 4) -> str:
    """mean ± sample sd over seeds (just the mean for one seed)."""
    return f"{statistics.mean(xs):.{digits}f}" + (f" ± {statistics.stdev(xs):.{digits}f}" if len(xs) > 1 else "")


def report(a: argparse.Namespace, bases: dict[str, dict], rows: list[dict]) -> str:
    """The markdown: the bases, the summary per base and method, low-data, the verdict next to the paper's."""
    mrs, s = a.limit or 630, len(a.seeds)
    out = [f"# Prefix-tuning on small bases we pretrained (mini{' --quick' if a.quick else ''})", "",
           f"E2E test, first {mrs} MRs, decoded with beam {a.beams}. Each run: {a.steps} steps of {BATCH}, so "
           f"{a.steps * BATCH} examples drawn from E2E dev or its low-data subset. Mean ± sd over {s} seed(s) "
           f"{a.seeds}; BLEU etc. on the official scorer's scale (0-1).", "",
           "## The bases: GPT-2 shapes pretrained here on WebNLG train + DART dev texts, " +
           ("and E2E dev's references as plain text (no MRs)" if a.with_e2e_text else "E2E's left out"), "",
           "| base | parameters | in blocks | steps (texts) | stopped by | validation NLL, first → best | "
           f"E2E test NLL, untuned ({E2E_NLL_ROWS} refs) | minutes |", "|---|---|---|---|---|---|---|---|"]
    for b, f in bases.items():
        out.append(f"| {b} | {f['params'] / 1e6:.2f}M | {f['blocks'] / 1e6:.2f}M | {f['steps']} ({16 * f['steps']:,}) "
                   f"| {stopped_by(f)} | {f['vals'][0]:.3f} → {f['best_val']:.3f} | {f['e2e_nll']:.3f} "
                   f"| {f['train_s'] / 60:.1f} |")
    out += ["", "## E2E test per base and method", "",
            "| base | method | " + " | ".join(METRICS) + " | trained % | paper BLEU (345M) |",
            "|---|---|" + "---|" * (len(METRICS) + 2)]
    for b in a.bases:
        for init, t, label in methods(a):
            one = [r for r in rows if (r["base"], r["init"], r["tuner"], r["size"]) == (b, init, t, 0)]
            cells = [spread([r[m] for r in one]) for m in METRICS]
            paper = f"{PAPER[t] / 100:.3f}" if init == "ours" else "-"
            out.append(f"| {b} | {label} | " + " | ".join(cells) + f" | {100 * one[0]['trained_frac']:.2f} | {paper} |")
    if a.sizes:
        small = a.bases[0]
        out += ["", f"## Low-data (§6.3) on base {small}: subsets of E2E dev, one per seed", "",
                "| examples | prefix BLEU | fine BLEU | prefix − fine |", "|---|---|---|---|"]
        for n in a.sizes:
            p, f = scores(rows, small, "ours", "prefix", n), scores(rows, small, "ours", "fine", n)
            out.append(f"| {n} | {spread(p)} | {spread(f)} | {statistics.mean(p) - statistics.mean(f):+.4f} |")
    return "\n".join(out + ["", "## What it says", "", *verdict(a, rows), "", why(a, bases)]) + "\n"


def stopped_by(base: dict) -> str:
    """Why a base's training ended: its validation loss levelled off, or the step cap came first."""
    if base["early"]:
        return "early stop: levelled off"
    last = base["vals"][-2:]
    if len(last) < 2:
        return "the step cap"
    return f"the step cap, {'still falling' if last[1] < last[0] else 'flat'} ({last[0]:.3f} → {last[1]:.3f})"


def verdict(a: argparse.Namespace, rows: list[dict]) -> list[str]:
    """Plain sentences from the numbers: prefix − fine per base against the seeds' spread, and the trend."""
    lines, gaps = [], []
    for b in a.bases:
        if not {"prefix", "fine"} <= set(a.tuners):
            break
        p, f = scores(rows, b, "ours", "prefix", 0), scores(rows, b, "ours", "fine", 0)
        gap, noise = statistics.mean(p) - statistics.mean(f), max(max(p) - min(p), max(f) - min(f))
        gaps.append(gap)
        side = ("one seed: no spread to judge it by" if len(p) < 2 else f"seeds spread up to {noise:.4f}: " +
                ("a tie" if abs(gap) <= noise else "prefix ahead" if gap > 0 else "fine-tuning ahead"))
        rp = scores(rows, b, "random", "prefix", 0)
        lines.append(f"- base {b}: prefix − fine = {gap:+.4f} BLEU ({side}). "
                     f"Prefix on our base vs on a random one: {statistics.mean(p):.4f} vs {statistics.mean(rp):.4f}.")
    if len(gaps) > 1:
        trend = "grows (toward prefix)" if gaps[-1] > gaps[0] else "does not grow"
        lines.append(f"- From {a.bases[0]} to {a.bases[-1]} the prefix − fine gap {trend}: "
                     f"{gaps[0]:+.4f} → {gaps[-1]:+.4f}.")
    lines.append("- The paper (ACL Table 1, RECIPE.md §5): prefix ≥ fine at 345M (BLEU 70.3 vs 68.8; 774M: 70.3 vs "
                 "68.5), read as the gap growing with size; prefix also wins in low data (§6.3). A result here that "
                 "says otherwise is reported as measured, and is no evidence against the paper at its scale.")
    if a.quick:
        lines.append("- --quick: a check that every step runs, too short to mean anything.")
    return lines


def why(a: argparse.Namespace, bases: dict[str, dict]) -> str:
    big = max(bases.values(), key=lambda f: f["blocks"])
    texts = 16 * big["steps"]
    e2e = ", E2E dev's references among them" if a.with_e2e_text else ""
    return f"""## Why the scales differ

The paper's bases are GPT-2 medium and large (345M and 774M parameters, 300M+ in their blocks) pretrained on
WebText (~40 GB); prefix-tuning works there because a frozen model that already writes fluent English only needs
steering. Our largest base has {big['blocks'] / 1e6:.2f}M parameters in its blocks (most of the rest is the
50,257-token embedding), saw {texts:,} short sentences about entities' attributes{e2e}
(~{texts * TEXT_TOKENS / 1e3:.0f}K tokens) and ended at a validation NLL of {big['best_val']:.2f} nats per token, but
{big['e2e_nll']:.2f} on E2E's test references before tuning: a frozen base lends prefix-tuning only the English it
knows. Each E2E run trains {a.steps} steps of {BATCH} instead of 5 epochs of 42K examples, on the dev set, at
learning rates that were not searched, decoded with beam {a.beams} instead of 5. At this size a frozen base has
little to steer, which is why we expected fine-tuning ahead; the random-base rows show how much of each number the
pretraining gives. FT-top2 trains the top 2 blocks, ln_f and the tied token embedding (the authors' recipe): on a
base this small that embedding is most of the model, so its trained share is near fine-tuning's, unlike the
paper's."""

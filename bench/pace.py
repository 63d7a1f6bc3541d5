"""The real job at the hardware's pace (issue 25): every row of its table in one run, as a user runs the commands.

  train    prefix-tuning, gpt2-medium shape (random weights), E2E dev rows, batch 10, bf16: train.py eager and with
           --compile (bucketed to --pad-to 32, a CUDA graph per shape on CUDA). ms/step is the median over the
           log's intervals of --log-every steps, so the one-off compiles of a new shape do not count; wall is all.
  decode   bench/bench_beam.py's e2e row: K=5, gpt2 shape fine-tuned briefly, the first 200 E2E test MRs, in process,
           ours with --graph (the static step) against transformers' generate, at batch 10 and 50; ours eager last.
  process  beam.py --data-dir E2E --split test --batch-size 50 as a process (630 MRs), eager and --graph, its wall
           clock, the two outputs compared; then a cProfile of the --graph run (in its log) for where start-up goes.
    python bench/pace.py --device cuda                # bench/gpu.sh runs this; ~6 minutes on one H200 (a guess)
    python bench/pace.py --tiny                       # a smoke run of every row on the CPU, tiny shapes (~2 min)
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], log: Path) -> float:
    """Run a command from the repository root, its output to `log`; -> wall seconds. A failure stops the bench."""
    t0 = time.perf_counter()
    with log.open("w") as f:
        subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - t0


def ms_per_step(log_jsonl: Path) -> float:
    """Median ms/step over the intervals between log rows (the first interval, with start-up, left out)."""
    rows = [json.loads(line) for line in log_jsonl.read_text().splitlines()]
    steps = [(r["step"], r["elapsed_s"]) for r in rows if "elapsed_s" in r]
    return 1e3 * statistics.median((t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(steps[1:], steps[2:]))


def results(log: Path) -> list[dict]:
    return [json.loads(line.removeprefix("RESULT ")) for line in log.read_text().splitlines()
            if line.startswith("RESULT ")]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny shapes, few steps and prompts")
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "e2e")
    p.add_argument("--out", type=Path, default=ROOT / "out" / "pace", help="logs, run folders, outputs")
    p.add_argument("--train-steps", type=int, default=200, help="train rows: steps per run")
    p.add_argument("--only", nargs="+", choices=("train", "decode", "process"), default=("train", "decode", "process"))
    args = p.parse_args(argv)
    device = "cpu" if args.tiny else args.device
    train_shape, decode_shape = ("tiny", "tiny") if args.tiny else ("gpt2-medium", "gpt2")
    steps, prompts, limit = (30, 20, 40) if args.tiny else (args.train_steps, 200, 0)
    args.out.mkdir(parents=True, exist_ok=True)
    py, table = sys.executable, []

    def show(name: str, measured: str, target: str) -> None:  # each row as it comes, should a time limit cut the rest
        print(f"ROW {name}: {measured} (target {target})", flush=True)
        table.append((name, measured, target))

    if "train" in args.only:
        times = {}
        for name, extra in (("eager", []), ("compile", ["--compile"])):
            out = args.out / f"train-{name}"
            wall = run([py, "train.py", "--tuner", "prefix", "--init-from", f"random:{train_shape}", "--data-dir",
                        str(args.data_dir), "--train-split", "dev", "--valid-split", "", "--batch-size", "10",
                        "--dtype", "float32" if args.tiny else "bfloat16", "--max-steps", str(steps), "--log-every",
                        "10", "--save-every", "100000", "--device", device, "--out-dir", str(out), "--overwrite",
                        *extra], args.out / f"train-{name}.log")
            times[name] = ms_per_step(out / "log.jsonl")
            show(f"train {train_shape} B=10 {name}", f"{times[name]:.1f} ms/step (process {wall:.0f} s)",
                 "<= 11.4 ms/step (the better one)")
        show("train --compile vs eager", f"{times['eager'] / times['compile']:.2f}x", ">= 1x")

    cache = args.out / f"e2e-fine-{decode_shape}"

    def decode_row(batch: int, graph: bool) -> None:
        name = f"decode-b{batch}{'-graph' if graph else ''}"
        run([py, "bench/bench_beam.py", "--only", "e2e", "--device", device, "--prompts", str(prompts), "--batch-size",
             str(batch), "--cache", str(cache), "--shape", decode_shape, "--train-steps", "5" if args.tiny else "150",
             "--data-dir", str(args.data_dir), *["--graph"] * graph], args.out / f"{name}.log")
        (row,), text = results(args.out / f"{name}.log"), (args.out / f"{name}.log").read_text()
        same = re.search(r"identical outputs: (\d+/\d+)", text)[1]
        show(f"decode K=5 {prompts} MRs batch {batch}{' --graph' if graph else ''}",
             f"{row['ratio']:.2f}x generate ({row['ours']:.0f} tok/s), {same} identical", ">= 3x, all identical")

    if "decode" in args.only:
        for batch in (10, 50):
            decode_row(batch, graph=True)
    if "process" in args.only:
        texts = {}
        for graph in ([], ["--graph"]):
            name = f"process{'-graph' if graph else ''}"
            cmd = ["beam.py", "--ckpt", str(cache), "--data-dir", str(args.data_dir), "--split", "test", "--batch-size",
                   "50", "--device", device, "--limit", str(limit), "--out", str(args.out / f"{name}.jsonl"), *graph]
            wall = run([py, *cmd], args.out / f"{name}.log")
            texts[name] = (args.out / f"{name}.txt").read_text()
            show(f"beam.py --batch-size 50{' --graph' if graph else ''}, process",
                 f"{wall:.1f} s, {len(texts[name].splitlines())} MRs", "<= 8 s (630 MRs)")
        same = len(set(texts.values())) == 1
        show("beam.py eager vs --graph outputs", "identical" if same else "DIFFER", "identical")
        run([py, "-m", "cProfile", "-s", "cumtime", *cmd], args.out / "process-profile.log")
    if "decode" in args.only:  # today's eager step, for comparison, last: the rows above matter more
        for batch in (10, 50):
            decode_row(batch, graph=False)

    width = max(len(r[0]) for r in table)
    print(f"\n{'row':<{width}}  {'measured':<50}  target   ({device}{', tiny smoke run' if args.tiny else ''})")
    for name, measured, target in table:
        print(f"{name:<{width}}  {measured:<50}  {target}")


if __name__ == "__main__":
    main()

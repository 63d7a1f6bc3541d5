"""Run every benchmark, each side by side with its reference, and print one markdown table of the ratios.

Each benchmark is its own script (bench/load.py, train_step.py, bench_beam.py, bench_eval.py, bench_eval_data2text.py)
and prints its full output, then `RESULT {json}` lines that this script gathers. The README's performance table is
this script's output.
    python bench/run.py                                  # all but eval, eval_webnlg (they need the official scorers)
    python bench/run.py --official /path/to/e2e-metrics --official-python /path/to/python
    python bench/run.py --only eval_webnlg --official-webnlg /path/to/dart/evaluation --official-python /path/to/python
    python bench/run.py --only load beam
    python bench/run.py --only beam --beam-prompts 40    # a quicker beam check (the full one: 200 E2E MRs)
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHES = {"load": "load", "train_step": "train_step", "beam": "bench_beam", "eval": "bench_eval",
           "eval_webnlg": "bench_eval_data2text"}  # name: script


def run_bench(name: str, extra: list[str]) -> list[dict]:
    """Run the benchmark's script, echo its output, return its RESULT rows."""
    script = f"bench/{BENCHES[name]}.py"
    print(f"\n$ python {script} {' '.join(extra)}", flush=True)
    proc = subprocess.run([sys.executable, str(ROOT / script), *extra], cwd=ROOT,
                          capture_output=True, text=True)
    print(proc.stdout, end="")
    if proc.returncode != 0:
        print(f"{script} failed:\n{proc.stderr[-2000:]}")
        return []
    return [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]


def table(rows: list[dict]) -> str:
    lines = ["| benchmark | measure | ours | reference | ratio | target |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['bench']} | {r['what']} | {r['ours']:.3g} | {r['reference']:.3g} ({r['ref_name']}) | "
                     f"**{r['ratio']:.2f}x** | {r['target']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=list(BENCHES), default=None, help="run these benchmarks only")
    p.add_argument("--official", help="e2e-metrics checkout, for the eval benchmark (skipped without it)")
    p.add_argument("--official-webnlg", help="Yale-LILY/dart's evaluation/ folder, for eval_webnlg (else skipped)")
    p.add_argument("--official-python", default=sys.executable, help="python with the official scorers' deps")
    p.add_argument("--beam-prompts", type=int, default=200, help="E2E test MRs the beam benchmark decodes")
    args = p.parse_args(argv)
    needs = {"eval": args.official, "eval_webnlg": args.official_webnlg}  # skipped without their official scorer
    chosen = args.only or [b for b in BENCHES if needs.get(b, True)]
    extra = {"eval": ["--official", str(args.official), "--official-python", args.official_python],
             "eval_webnlg": ["--official", str(args.official_webnlg), "--official-python", args.official_python],
             "beam": ["--prompts", str(args.beam_prompts)]}
    rows = [r for name in chosen for r in run_bench(name, extra.get(name, []))]
    print(f"\n{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch "
          f"{torch.__version__}; ratio = reference time / ours (higher is better) unless the measure says otherwise\n")
    print(table(rows))
    if "eval" not in chosen:
        print("\n(eval skipped: pass --official /path/to/e2e-metrics; see bench/bench_eval.py's header)")
    if "eval_webnlg" not in chosen:
        print("(eval_webnlg skipped: pass --official-webnlg /path/to/dart/evaluation; see bench_eval_data2text.py)")


if __name__ == "__main__":
    main()

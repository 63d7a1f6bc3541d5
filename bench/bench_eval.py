"""Time `python -m eval` against the official E2E scorer on the same files, one after the other.

The official scorer is not part of this repository. To get it and its dependencies:
    git clone https://github.com/tuetschek/e2e-metrics
    python -m venv off && off/bin/pip install numpy future matplotlib scikit-image   # its imports
    apt-get install perl libxml-twig-perl                      # mteval-v13a-sig.pl loads XML::Twig
If the clone lacks its large files (meteor-1.5.jar, meteor/data/paraphrase-en.gz, stanford-corenlp-3.4.1.jar),
copy them from pycocoevalcap's folder (the same files) into e2e-metrics/pycocoevalcap/ at the same paths.
Then (by default the outputs are each test MR's first reference):
    python bench/bench_eval.py --official e2e-metrics --official-python off/bin/python
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval import METRICS, read_refs  # noqa: E402


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    """Wall-clock seconds of one run, and its stdout; stops with the command's stderr if it fails."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", default=os.environ.get("E2E_METRICS"), help="e2e-metrics checkout ($E2E_METRICS)")
    p.add_argument("--official-python", default=sys.executable, help="python with the official script's deps")
    p.add_argument("--refs", default=str(ROOT.parent / "shared" / "data" / "e2e" / "testset_w_refs.csv"))
    p.add_argument("--outputs", help="one line per MR (default: each MR's first reference)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each, alternating; the fastest of each counts")
    args = p.parse_args(argv)
    if not args.official or not (Path(args.official) / "measure_scores.py").exists():
        sys.exit("give --official (or $E2E_METRICS): a checkout of tuetschek/e2e-metrics, see this file's header")
    with tempfile.TemporaryDirectory() as tmp:
        outputs = args.outputs
        if outputs is None:
            outputs = str(Path(tmp) / "first-refs.txt")
            Path(outputs).write_text("\n".join(group[0] for group in read_refs(args.refs)) + "\n", encoding="utf-8")
        refs, outputs = str(Path(args.refs).resolve()), str(Path(outputs).resolve())
        ours_times, official_times = [], []
        for _ in range(args.repeat):  # alternating, so a busy spell on a shared machine hits both
            seconds, ours_out = timed([sys.executable, "-m", "eval", refs, outputs, "--json"], ROOT)
            ours_times.append(seconds)
            seconds, official_out = timed([args.official_python, "measure_scores.py", refs, outputs], Path(args.official))
            official_times.append(seconds)
    ours = json.loads(ours_out)
    official = {m: float(v) for m, v in re.findall(r"^(\w+): ([0-9.]+)$", official_out, re.M)}
    print(f"{'metric':<8} {'ours':>8} {'official':>8}")
    for name in METRICS:
        print(f"{name:<8} {ours[name]:8.4f} {official[name]:8.4f}")
    ours_s, official_s = min(ours_times), min(official_times)
    print(f"runs (s): ours {[round(t, 1) for t in ours_times]}, official {[round(t, 1) for t in official_times]}")
    print(f"fastest: ours {ours_s:.1f} s, official {official_s:.1f} s, official/ours = {official_s / ours_s:.2f}x")
    print("RESULT " + json.dumps(dict(bench="E2E metrics", what="seconds to score the test set (630 MRs)", ours=ours_s,
                                      reference=official_s, ref_name="official measure_scores.py",
                                      ratio=official_s / ours_s, target="> 1x")))


if __name__ == "__main__":
    main()

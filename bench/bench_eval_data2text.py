"""Time `python -m eval --task webnlg` against the official WebNLG 2017 pipeline on S, U and A, one after the other.

The official pipeline is the organisers' webnlg-automatic-evaluation as vendored in Yale-LILY/dart `evaluation/`
(the one the Prefix-Tuning authors' run_eval_on_webnlg.sh calls): evaluation.py rewrites the submission and the
references, then multi-bleu.perl, METEOR 1.5 and tercom 0.7.25 score each subset. It is not part of this
repository. To get it:
    git clone https://github.com/Yale-LILY/dart && cd dart/evaluation   # this folder is --official
    python -m venv off && off/bin/pip install unidecode natsort        # evaluation.py's imports
The clone's meteor-1.5.jar and meteor-1.5/data/paraphrase-en.gz are Git LFS files; if they are pointers or absent,
copy pycocoevalcap's (the same METEOR 1.5: `pip install -r requirements-eval.txt`):
    cp .venv/lib/python3*/site-packages/pycocoevalcap/meteor/meteor-1.5.jar dart/evaluation/meteor-1.5/
    cp .venv/lib/python3*/site-packages/pycocoevalcap/meteor/data/paraphrase-en.gz dart/evaluation/meteor-1.5/data/
It also needs perl and java. Then:
    python bench/bench_eval_data2text.py --official dart/evaluation --official-python off/bin/python

One run scores every system's subsets all-cat (A), old-cat (S) and new-cat (U) on each side. Ours: the files beam.py
writes (test.txt / test.refs.txt, .seen, .unseen; the outputs are the raw submission lines), scored as a user would
score them: one `python -m eval` call per system with its three pairs, S, U then A (one METEOR JVM; A's entries are
S's and U's, so its METEOR statistics and TER come from the call's memo). Official: in a scratch copy of
webnlg-automatic-evaluation/, `python evaluation.py SYS`, then per subset the commands of bleu_eval_3ref.sh,
meteor_eval.sh and ter_eval.sh (those scripts loop over 25 tracks; only the 3 subsets run here). The systems are
the two real submissions in ../shared/eval-cases/webnlg (expected-scores.json holds the scores the official pipeline
printed for them).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from files.datasets import read_triples  # noqa: E402

CASES = ROOT.parent / "shared" / "eval-cases" / "webnlg"
# subset: the official track, beam.py's file stem, the entries' group ("" = all)
SUBSETS = {"A": ("all-cat", "test", ""), "S": ("old-cat", "test.seen", "seen"),
           "U": ("new-cat", "test.unseen", "unseen")}
OFFICIAL_FILES = {  # path under --official: what provides it
    "webnlg-automatic-evaluation/evaluation.py": "the clone",
    "webnlg-automatic-evaluation/benchmark_reader.py": "the clone",
    "webnlg-automatic-evaluation/multi-bleu.perl": "the clone",
    "webnlg-automatic-evaluation/data-challenge/testdata_with_lex.xml": "the clone",
    "tercom-0.7.25/tercom.7.25.jar": "the clone",
    "meteor-1.5/meteor-1.5.jar": "pycocoevalcap's meteor/ (see this file's header)",
    "meteor-1.5/data/paraphrase-en.gz": "pycocoevalcap's meteor/data/ (see this file's header)",
}


def timed(cmd: list[str], cwd: Path, stdin: Path | None = None) -> tuple[float, str]:
    """Wall-clock seconds of one run, and its stdout; stops with the command's stderr if it fails."""
    start = time.perf_counter()
    with open(stdin or os.devnull, "rb") as fh:
        proc = subprocess.run(cmd, cwd=cwd, stdin=fh, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} (in {cwd}) failed:\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout


def check_official(official: Path) -> None:
    """Every file the pipeline runs, present and not a Git LFS pointer; else what is missing and where to get it."""
    bad = [f"  {name} ({source})" for name, source in OFFICIAL_FILES.items() if not (official / name).is_file()
           or (official / name).read_bytes()[:40].startswith(b"version https://git-lfs")]
    if bad:
        sys.exit(f"{official} lacks (or has only a Git LFS pointer for):\n" + "\n".join(bad))
    for tool in ("perl", "java"):
        if shutil.which(tool) is None:
            sys.exit(f"the official pipeline runs `{tool}`, which is not on PATH")


def write_ours(tmp: Path, system: str, lines: list[str], groups: list[str], refs: list[list[str]]) -> None:
    """What beam.py writes and python -m eval reads: per subset, one output a line and the references a group."""
    for _, stem, group in SUBSETS.values():
        keep = [i for i, g in enumerate(groups) if not group or g == group]
        (tmp / f"{system}.{stem}.txt").write_text("".join(lines[i] + "\n" for i in keep), encoding="utf-8")
        groups_text = "".join("".join(r + "\n" for r in refs[i]) + "\n" for i in keep)  # a blank line after each
        (tmp / f"{system}.{stem}.refs.txt").write_text(groups_text, encoding="utf-8")


def run_ours(tmp: Path, system: str) -> tuple[float, dict[str, dict[str, float]]]:
    """Seconds of `python -m eval S.refs S U.refs U A.refs A --task webnlg --json`, and the scores it printed."""
    order = ("S", "U", "A")
    files = [str(tmp / f"{system}.{SUBSETS[s][1]}{suffix}") for s in order for suffix in (".refs.txt", ".txt")]
    seconds, out = timed([sys.executable, "-m", "eval", *files, "--task", "webnlg", "--json"], ROOT)
    return seconds, dict(zip(order, map(json.loads, out.splitlines())))


def run_official(official: Path, work: Path, python: str, system: str) -> tuple[dict[str, float], dict[str, dict]]:
    """Seconds per step (preprocessing, BLEU, METEOR, TER; each summed over the subsets) and the printed scores."""
    evaluation = work / "webnlg-automatic-evaluation"
    seconds = {"preprocessing": timed([python, "evaluation.py", system], evaluation)[0], "BLEU": 0.0, "METEOR": 0.0,
               "TER": 0.0}
    teams, refs = evaluation / "teams", evaluation / "references"
    scores = {}
    for subset, (track, _, _) in SUBSETS.items():
        bleu_refs = [str(refs / f"gold-{track}-reference{j}.lex") for j in range(3)]
        s, bleu = timed(["perl", "multi-bleu.perl", "-lc", *bleu_refs], evaluation,
                        stdin=teams / f"{system}_{track}.txt")
        seconds["BLEU"] += s
        s, meteor = timed(["java", "-Xmx2G", "-jar", "meteor-1.5.jar", str(teams / f"{system}_{track}.txt"),
                           str(refs / f"gold-{track}-reference-3ref.meteor"), "-l", "en", "-norm", "-r", "3"],
                          official / "meteor-1.5")
        seconds["METEOR"] += s
        s, ter = timed(["java", "-jar", "tercom.7.25.jar", "-h", str(teams / f"{system}_{track}_ter.txt"),
                        "-r", str(refs / f"gold-{track}-reference-3ref.ter")], official / "tercom-0.7.25")
        seconds["TER"] += s
        scores[subset] = {"BLEU": float(re.search(r"^BLEU = ([0-9.]+),", bleu, re.M).group(1)),
                          "METEOR": float(re.search(r"^Final score:\s+(\S+)", meteor, re.M).group(1)),
                          "TER": float(re.search(r"^Total TER: (\S+) ", ter, re.M).group(1))}
    return seconds, scores


def scratch_copy(official: Path, work: Path, submissions: dict[str, Path]) -> None:
    """The files evaluation.py reads, with the empty folders it writes into, and each submission where it looks."""
    src, dst = official / "webnlg-automatic-evaluation", work / "webnlg-automatic-evaluation"
    for name in ("evaluation.py", "benchmark_reader.py", "multi-bleu.perl", "data-challenge/testdata_with_lex.xml"):
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / name, dst / name)
    for folder in ("references", "teams", "submissions", "eval"):
        (dst / folder).mkdir(exist_ok=True)
    for system, path in submissions.items():
        shutil.copy2(path, dst / "submissions" / f"{system}.txt")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", default=os.environ.get("WEBNLG_EVAL"),
                   help="Yale-LILY/dart's evaluation/ folder ($WEBNLG_EVAL), see this file's header")
    p.add_argument("--official-python", default=sys.executable, help="python with unidecode and natsort")
    p.add_argument("--systems", nargs="+", default=["ADAPT_Centre", "GKB_Unimelb"],
                   help=f"submissions in {CASES}/submissions (SYSTEM.txt, 1,862 lines in Id order)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each, alternating; the fastest of each counts")
    args = p.parse_args(argv)
    if not args.official:
        sys.exit("give --official (or $WEBNLG_EVAL): Yale-LILY/dart's evaluation/ folder, see this file's header")
    official = Path(args.official).resolve()
    check_official(official)
    xml = official / "webnlg-automatic-evaluation" / "data-challenge" / "testdata_with_lex.xml"
    entries = [entry for entry, _ in read_triples([xml], "webnlg")]  # file order = Id order (Id1..Id1862)
    refs = [[" ".join(r.split("\n")) for r in e.refs if r.strip()] for e in entries]  # as beam.py's refs_of
    groups = [e.group for e in entries]
    submissions = {s: CASES / "submissions" / f"{s}.txt" for s in args.systems}
    expected = {c["system"]: c["scores"] for c in json.loads((CASES / "expected-scores.json").read_text())}
    with tempfile.TemporaryDirectory(prefix="bench-webnlg-") as tmp:
        tmp = Path(tmp)
        for system, path in submissions.items():
            with open(path, encoding="utf-8") as fh:  # evaluation.py's reading: line.strip() per line
                lines = [line.strip() for line in fh]
            if len(lines) != len(entries):
                sys.exit(f"{path}: {len(lines)} lines, the test set has {len(entries)} entries")
            write_ours(tmp, system, lines, groups, refs)
        ours_runs, official_runs = [], []
        for _ in range(args.repeats):  # alternating, so a busy spell on a shared machine hits both
            ours_run, official_run = {}, {}
            for system in args.systems:
                ours_run[system] = run_ours(tmp, system)
            work = tmp / f"official-{len(official_runs)}"
            scratch_copy(official, work, submissions)
            for system in args.systems:
                official_run[system] = run_official(official, work, args.official_python, system)
            ours_runs.append(ours_run)
            official_runs.append(official_run)
    equal = True
    print(f"{'system':<13} {'subset':<6} {'metric':<7} {'ours':>20} {'official':>20} {'expected':>20}  equal")
    for system in args.systems:
        for subset in SUBSETS:
            for metric in ("BLEU", "METEOR", "TER"):
                o, f = ours_runs[-1][system][1][subset][metric], official_runs[-1][system][1][subset][metric]
                e = expected.get(system, {}).get(subset, {}).get(metric)
                same = o == f and (e is None or o == e) and all(  # every run, not only the last, printed the same
                    r[system][1][subset][metric] == o for r in ours_runs + official_runs)
                equal &= same
                print(f"{system:<13} {subset:<6} {metric:<7} {o!r:>20} {f!r:>20} {e!r:>20}  {'yes' if same else 'NO'}")
    ours_totals = [sum(r[s][0] for s in args.systems) for r in ours_runs]
    official_totals = [sum(sum(r[s][0].values()) for s in args.systems) for r in official_runs]
    best_ours, best_official = ours_runs[ours_totals.index(min(ours_totals))], official_runs[
        official_totals.index(min(official_totals))]
    print("\nfastest run, seconds per part (official: summed over the systems):")
    print("  ours:     " + ", ".join(f"{s} (S, U, A in one call) {best_ours[s][0]:.1f}" for s in args.systems))
    print("  official: " + ", ".join(f"{step} {sum(best_official[s][0][step] for s in args.systems):.1f}"
                                     for step in ("preprocessing", "BLEU", "METEOR", "TER")))
    ours_s, official_s = min(ours_totals), min(official_totals)
    print(f"runs (s): ours {[round(t, 1) for t in ours_totals]}, official {[round(t, 1) for t in official_totals]}")
    print(f"fastest: ours {ours_s:.1f} s, official {official_s:.1f} s, official/ours = {official_s / ours_s:.2f}x; "
          f"scores {'equal' if equal else 'DIFFER'}")
    print("RESULT " + json.dumps(dict(
        bench="WebNLG metrics", what=f"seconds to score S/U/A of {len(args.systems)} submission(s) "
                                     f"(BLEU, METEOR, TER; scores {'equal' if equal else 'DIFFER'})",
        ours=ours_s, reference=official_s, ref_name="official evaluation.py + multi-bleu, METEOR, tercom",
        ratio=official_s / ours_s, target=">= 2x", equal=equal)))


if __name__ == "__main__":
    main()

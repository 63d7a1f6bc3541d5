"""Score outputs with a task's official metrics (see eval/__init__.py).

    python -m eval ../shared/data/e2e/testset_w_refs.csv out/test.txt          # E2E: a table
    python -m eval ../shared/eval-cases/example-refs.txt outputs.txt --json    # one JSON object
    python -m eval out/test.seen.refs.txt out/test.seen.txt --task webnlg      # BLEU 0-100, METEOR, TER
    python -m eval out/test.seen.refs.txt out/test.seen.txt out/test.refs.txt out/test.txt --task webnlg  # 2 pairs
"""
import argparse
import json
import sys

from . import TASK_METRICS, EvalError, score_files_many


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("refs", help="references: the challenge CSV (mr,ref) or text, a blank line after each entry")
    p.add_argument("outputs", help="system outputs, one line per entry in the references' order (or beam.py's JSONL)")
    p.add_argument("more", nargs="*", default=[], metavar="REFS OUTPUTS", help="more pairs, scored in the same call")
    p.add_argument("--task", choices=TASK_METRICS, help="whose official scoring: e2e (the default), webnlg, dart, "
                   "or text (BLEU and ROUGE for your own task)")
    p.add_argument("--json", action="store_true", help="print one JSON object (a line per pair) instead of a table")
    args = p.parse_intermixed_args(argv)
    paths, task = [args.refs, args.outputs, *args.more], args.task or "e2e"
    try:
        if len(paths) % 2:
            raise EvalError(f"{len(paths)} paths, so {paths[-1]} has no partner. Give references and outputs in "
                            f"pairs: REFS OUTPUTS [REFS OUTPUTS ...].")
        pairs = list(zip(paths[::2], paths[1::2]))
        all_scores = score_files_many(pairs, task=task)
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for (_, outputs), scores in zip(pairs, all_scores):
        if args.json:
            print(json.dumps(scores))
            continue
        if len(pairs) > 1:  # one pair prints the bare table, as it always has
            print(f"==> {outputs} <==")
        for name in TASK_METRICS[task]:
            digits = 2 if name == "BLEU" and task in ("webnlg", "dart") else 4  # multi-bleu.perl prints 2
            print(f"{name:<8}{scores[name]:.{digits}f}")
    if args.task is None:  # E2E's scoring on another task's files runs, and its numbers mean nothing there
        print("note: scored as --task e2e (the default); for WebNLG, DART or your own task use --task webnlg, dart "
              "or text.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

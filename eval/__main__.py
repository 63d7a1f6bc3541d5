"""Score E2E outputs with the five official metrics (see eval/__init__.py).

    python -m eval ../shared/data/e2e/testset_w_refs.csv out/test.txt          # a table
    python -m eval ../shared/eval-cases/example-refs.txt outputs.txt --json    # one JSON object
"""
import argparse
import json
import sys

from . import METRICS, EvalError, score_files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("refs", help="references: the challenge CSV (mr,ref) or text, a blank line after each MR")
    p.add_argument("outputs", help="system outputs, one line per MR in the references' order")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    try:
        scores = score_files(args.refs, args.outputs)
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(scores))
    else:
        for name in METRICS:
            print(f"{name:<8}{scores[name]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

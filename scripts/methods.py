"""The parameter counts of every method on a base shape: the README's methods table (Li & Liang 2021, Table 1's
"% params" column). Builds the base with random weights (no download) and each tuner with train.py's defaults.
    python scripts/methods.py --shape gpt2-medium
"""
from __future__ import annotations

import argparse
from dataclasses import fields
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from model import GPT, GPTConfig, named_shape  # noqa: E402
from files.tokenizer import load_tokenizer  # noqa: E402
from tuners import tuner_class  # noqa: E402

# train.py's defaults (the E2E recipe), which each tuner's build reads what it needs from.
DEFAULTS = dict(prefix_len=5, prefix_mid=512, prefix_param="mlp", prefix_init="", seed=101, infix=False, adapter_size=215)
RUNS = [("prefix", {}), ("fine", {}), ("fine-top2", {}), ("adapter", {"adapter_size": 215}),
        ("adapter", {"adapter_size": 6}), ("embedding", {}), ("prefix", {"infix": True})]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="gpt2-medium", help="tiny, gpt2, gpt2-medium or LxD")
    a = p.parse_args(argv)
    tok = load_tokenizer()
    print("| tuner | flags | trained | stored |\n|---|---|---|---|")
    for name, extra in RUNS:
        torch.manual_seed(0)
        cls, flags = tuner_class(name, extra.get("infix", False)), {**DEFAULTS, **extra}
        settings = cls.Config(**{f.name: flags[f.name] for f in fields(cls.Config)})
        c = cls.build(GPT(GPTConfig(**named_shape(a.shape))), tok, settings).counts()
        print(f"| {name} | {extra or ''} | {c['trained']:,} ({c['trained_frac']:.3%}) | "
              f"{c['stored']:,} ({c['stored_frac']:.4%}) |")


if __name__ == "__main__":
    main()

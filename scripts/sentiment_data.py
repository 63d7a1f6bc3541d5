"""A small labelled set in the CPU poster's format, built offline from E2E's references (README, "Your own task").

The poster prefix-tunes GPT-2 on 123 reviews, each `{"prefix": "positive" | "negative", "text": ...}`. E2E's
references describe restaurants with a customer rating, so a rating of high / 5 out of 5 makes a positive review
and low / 1 out of 5 a negative one: the same shape of task, from data every checkout has.
    python scripts/sentiment_data.py --out data/sentiment      # train.jsonl (120) and dev.jsonl (20)
"""
from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

LABEL = {"high": "positive", "5 out of 5": "positive", "low": "negative", "1 out of 5": "negative"}


def reviews(devset: Path) -> list[dict]:
    """Every reference whose MR has a clearly good or bad customer rating, labelled."""
    rows = []
    with open(devset, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            rating = row["mr"].split("customer rating[")[1].split("]")[0] if "customer rating[" in row["mr"] else ""
            if rating in LABEL:
                rows.append({"prefix": LABEL[rating], "text": row["ref"].strip()})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devset", default="../shared/data/e2e/devset.csv", help="E2E's devset.csv")
    p.add_argument("--out", default="data/sentiment", help="folder for train.jsonl and dev.jsonl")
    p.add_argument("--train", type=int, default=120, help="training reviews (half of each label)")
    p.add_argument("--dev", type=int, default=20, help="validation reviews (half of each label)")
    p.add_argument("--seed", type=int, default=0, help="which reviews are drawn")
    a = p.parse_args(argv)
    by_label = {label: [r for r in reviews(Path(a.devset)) if r["prefix"] == label] for label in ("positive", "negative")}
    rng, out = random.Random(a.seed), Path(a.out)
    picked = {label: rng.sample(rows, (a.train + a.dev) // 2) for label, rows in by_label.items()}
    split = {"train": [r for rows in picked.values() for r in rows[:a.train // 2]],
             "dev": [r for rows in picked.values() for r in rows[a.train // 2:]]}
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in split.items():
        rng.shuffle(rows)
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        print(f"wrote {out / name}.jsonl: {len(rows)} reviews")


if __name__ == "__main__":
    main()

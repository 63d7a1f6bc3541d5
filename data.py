"""E2E table-to-text data as the paper trains on it (Li & Liang 2021, §5 "Experimental Setup", App. A.1).

Reads (source, target) pairs, writes them in the authors' template and batches them for train.py; beam.py
uses the same prompt and the same grouping of references by source.
    pairs = read_pairs("../shared/data/e2e", "dev")          # [(linearized MR, reference), ...]
    idx, targets = example_ids(tok, *pairs[0])                # one training example, targets shifted by one
"""
from __future__ import annotations

import csv
import io
import json
import random
import re
from pathlib import Path

import tiktoken
import torch

from model import IGNORE

EOS = "<|endoftext|>"  # GPT-2's only special token, 50256: both the source/target separator and the end
E2E_URL = "https://github.com/tuetschek/e2e-dataset"
# Per split, the paper code's file first, then the official CSV, then a user's JSONL. The src1 files win:
# they are what the recipe's numbers were trained and scored on (pre-tokenized MRs and references, e.g.
# "£ 20 - 25"); the CSVs are linearized here but not tokenized, so they give slightly different tokens.
SPLITS = {"train": ("src1_train.txt", "trainset.csv"), "dev": ("src1_valid.txt", "devset.csv"),
          "test": ("src1_test.txt", "testset_w_refs.csv")}
# CSV keys renamed as in the paper's linearization (RECIPE.md §1); the others are kept as they are.
KEY_RENAME = {"eatType": "Type", "priceRange": "price", "familyFriendly": "family friendly"}
MR_PAIR = re.compile(r"\s*([^\[\],]+?)\s*\[([^\[\]]+)\]\s*(?:,|$)")


class DataError(Exception):
    """A data file is missing or malformed; the message names the file, the line and the fix."""


def split_file(data_dir: str | Path, split: str) -> Path:
    """The file holding `split`: a file path itself, a file in data_dir, or the split's known names."""
    root = Path(data_dir)
    if root.is_file() and not Path(split).is_file():
        return root
    for name in (split, *SPLITS.get(split, ()), f"{split}.jsonl"):
        if (root / name).is_file():
            return root / name
    expected = " or ".join((*SPLITS.get(split, ()), f"{split}.jsonl"))
    raise DataError(f"{root}: no file for split {split!r} (expected {expected}). Get E2E from {E2E_URL} "
                    f"(trainset.csv, devset.csv, testset_w_refs.csv), or give a JSONL file of "
                    f'{{"source": ..., "target": ...}} lines.')


def read_pairs(data_dir: str | Path, split: str) -> list[tuple[str, str]]:
    """(source, target) pairs of a split, both stripped of surrounding whitespace (see example_ids)."""
    path = split_file(data_dir, split)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable ({e}).") from None
    reader = {".csv": csv_pairs, ".jsonl": jsonl_pairs}.get(path.suffix, src1_pairs)
    pairs = reader(text, str(path))
    if not pairs:
        raise DataError(f"{path}: no examples in this file.")
    return pairs


def checked(source: str, target: str, where: str) -> tuple[str, str]:
    source, target = source.strip(), target.strip()
    if not source or not target:
        raise DataError(f"{where}: empty {'source' if not source else 'target'}; every row needs both.")
    return source, target


def src1_pairs(text: str, path: str) -> list[tuple[str, str]]:
    """The paper code's format: `linearized MR||reference` a line; blank lines are skipped, as there."""
    pairs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("||")
        if len(parts) != 2:
            raise DataError(f"{path}:{n}: expected 'source||target', found {len(parts) - 1} '||' separators.")
        pairs.append(checked(*parts, f"{path}:{n}"))
    return pairs


def csv_pairs(text: str, path: str) -> list[tuple[str, str]]:
    """The official E2E CSV (columns mr, ref); each MR is linearized as in the paper."""
    rows = csv.reader(io.StringIO(text, newline=""))
    header = next(rows, [])
    if "mr" not in header or "ref" not in header:
        raise DataError(f"{path}:1: header {header} lacks the columns 'mr' and 'ref' of the E2E CSV files.")
    i_mr, i_ref = header.index("mr"), header.index("ref")
    pairs = []
    for row in rows:
        where = f"{path}:{rows.line_num}"
        if len(row) != len(header):
            raise DataError(f"{where}: {len(row)} columns, the header has {len(header)} ({header}).")
        try:
            source = linearize(row[i_mr])
        except DataError as e:
            raise DataError(f"{where}: {e}") from None
        pairs.append(checked(source, row[i_ref], where))
    return pairs


def jsonl_pairs(text: str, path: str) -> list[tuple[str, str]]:
    """A user's own task: one {"source": ..., "target": ...} object a line."""
    pairs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise DataError(f"{path}:{n}: not JSON ({e}).") from None
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("source", "target")):
            raise DataError(f'{path}:{n}: expected {{"source": "...", "target": "..."}} with string values.')
        pairs.append(checked(row["source"], row["target"], f"{path}:{n}"))
    return pairs


def linearize(mr: str) -> str:
    """`name[Alimentum], eatType[pub]` -> `name : Alimentum | Type : pub`, attributes in the CSV's order."""
    items, pos = [], 0
    while pos < len(mr):
        m = MR_PAIR.match(mr, pos)
        if m is None:
            raise DataError(f"MR {mr!r} does not parse at character {pos}: expected 'key[value]' pairs "
                            f"separated by commas.")
        items.append(f"{KEY_RENAME.get(m[1], m[1])} : {m[2].strip()}")
        pos = m.end()
    if not items:
        raise DataError("empty MR.")
    return " | ".join(items)


def group_refs(pairs: list[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """Unique sources in first-appearance order, each with all its references (as the E2E scorer groups)."""
    groups: dict[str, list[str]] = {}
    for source, target in pairs:
        groups.setdefault(source, []).append(target)
    return list(groups.items())


def prompt_ids(tok: tiktoken.Encoding, source: str) -> list[int]:
    """The recipe's prompt `" " + source + " " + EOS`: it ends (..., 220, 50256), a lone space then EOS."""
    return tok.encode(f" {source} {EOS}", allowed_special={EOS})


def example_ids(tok: tiktoken.Encoding, source: str, target: str) -> tuple[list[int], list[int]]:
    """(idx, targets) of one example, targets[t] = idx[t+1]; labels up to the separator EOS are IGNORE.

    The template is the authors' (RECIPE.md §1): `" " + source + " " + EOS + " " + target + " " + EOS`, so the
    space tokens beside each EOS are kept (§6.5: we train on what the paper's tokenizer produced, and beam.py
    prompts with the same ids). read_pairs strips the src1 files' trailing space, so every format ends
    (..., 220, 50256) with one 220, where the authors' files gave two. The loss covers the target, its space
    tokens and the final EOS, which teaches the model to stop.
    """
    prompt = prompt_ids(tok, source)
    ids = prompt + tok.encode(f" {target} {EOS}", allowed_special={EOS})
    targets = [IGNORE] * (len(prompt) - 1) + ids[len(prompt):]
    return ids[:-1], targets


def subset(pairs: list[tuple[str, str]], limit: int, seed: int) -> list[tuple[str, str]]:
    """A low-data training set (§6.3 "Low-data Setting"): `limit` pairs drawn without replacement."""
    if limit <= 0 or limit >= len(pairs):
        return pairs
    return [pairs[i] for i in sorted(random.Random(seed).sample(range(len(pairs)), limit))]


def epoch_batches(lengths: list[int], batch_size: int, seed: int, bucket: bool = False) -> list[list[int]]:
    """One epoch's batches of example indices, shuffled by `seed` (the caller mixes in the epoch).

    Bucketing sorts each window of 50 batches by length before cutting it, so a batch pads little, and then
    shuffles the batches; the order stays a function of the seed alone, which is what makes --resume exact.
    """
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(lengths), generator=g).tolist()
    if bucket:
        window = 50 * batch_size
        order = [i for w in range(0, len(order), window) for i in sorted(order[w:w + window], key=lengths.__getitem__)]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if bucket:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
    return batches


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest example: (idx, targets), each (B, T). Padding targets are IGNORE, and with
    the causal mask a real token never sees the padding after it, so no attention mask is needed."""
    T = max(len(idx) for idx, _ in examples)
    idx = torch.tensor([i + [pad_id] * (T - len(i)) for i, _ in examples])       # (B, T)
    targets = torch.tensor([t + [IGNORE] * (T - len(t)) for _, t in examples])  # (B, T)
    return idx, targets

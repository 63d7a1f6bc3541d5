"""Table-to-text data as the paper trains on it (Li & Liang 2021, §5 "Experimental Setup", App. A.1): E2E,
WebNLG 2017 and DART (files/datasets.py reads their files) in the authors' template, batched for train.py; beam.py
decodes the entries and eval/ scores them.
    pairs = read_pairs("../shared/data/e2e", "dev")          # [(linearized MR, reference), ...]
    idx, targets = example_ids(tok, *pairs[0])                # one training example, targets shifted by one
    entries = read_entries("../shared/data/webnlg", "test")  # [Entry(source, refs, "seen"), ...]
"""
from __future__ import annotations

import random
import re

import tiktoken
import torch

from files.datasets import (DataError, Entry, Row, csv_pairs, jsonl_rows, read_text, read_triples, split_files,
                            src1_pairs)
from model import IGNORE

EOS = "<|endoftext|>"  # GPT-2's only special token, 50256: both the source/target separator and the end
TEMPLATE = f" {{source}} {EOS} {{target}} {EOS}"  # the authors' (RECIPE.md §1); a run records it in args.json


def read_rows(data_dir: str, split: str) -> list[Row]:
    """Training rows of a split, in file order. E2E and JSONL strings are stripped (see example_ids); WebNLG and
    DART ones are the authors' verbatim (RECIPE-DATA2TEXT §2), one row per text the recipe trains on."""
    dataset, files = split_files(data_dir, split)
    if files[0].suffix == ".jsonl":
        rows = jsonl_rows(read_text(files[0]), str(files[0]))
    elif dataset in ("e2e", "jsonl"):
        reader = csv_pairs if files[0].suffix == ".csv" else src1_pairs
        rows = [Row(source, target) for source, target in reader(read_text(files[0]), str(files[0]))]
    else:
        rows = [Row(entry.source, text) for entry, texts in read_triples(files, dataset) for text in texts
                if text.strip()]
    if not rows:
        raise DataError(f"{data_dir}: no examples for split {split!r}.")
    return rows


def read_pairs(data_dir: str, split: str) -> list[tuple[str, str]]:
    """(source, target) training pairs of a split (read_rows without labels)."""
    return [(row.source, row.target) for row in read_rows(data_dir, split)]


def read_entries(data_dir: str, split: str) -> list[Entry]:
    """What beam.py decodes and eval/ scores, in file order. E2E/JSONL: one Entry per unique source
    (group_refs); a label run's rows, one per label (its group), whose texts score that label's prefix's output.
    WebNLG and DART: one per entry, with every text whatever its comment (the official refs)."""
    dataset, files = split_files(data_dir, split)
    if dataset in ("e2e", "jsonl"):
        rows = read_rows(data_dir, split)
        if any(row.label for row in rows):
            return [Entry("", texts, label) for label, texts in group_refs([(r.label, r.target) for r in rows])]
        return [Entry(source, refs, "") for source, refs in group_refs([(r.source, r.target) for r in rows])]
    return [entry for entry, _ in read_triples(files, dataset)]


def group_refs(pairs: list[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """Unique sources in first-appearance order, each with all its references (as the E2E scorer groups)."""
    groups: dict[str, list[str]] = {}
    for source, target in pairs:
        groups.setdefault(source, []).append(target)
    return list(groups.items())


# --- the authors' template: prompts and examples in, text out; low-data subsets

def prompt_ids(tok: tiktoken.Encoding, source: str) -> list[int]:
    """The recipe's prompt `" " + source + " " + EOS`: it ends (..., 220, 50256), a lone space then EOS. With no
    source (a label's text, language-model data) the prompt is EOS alone, GPT-2's start of a text."""
    return tok.encode(f" {source} {EOS}" if source else EOS, allowed_special={EOS})


def example_ids(tok: tiktoken.Encoding, source: str, target: str) -> tuple[list[int], list[int]]:
    """(idx, targets) of one example, targets[t] = idx[t+1]; labels up to the separator EOS are IGNORE.

    The authors' template (RECIPE.md §1) `" " + source + " " + EOS + " " + target + " " + EOS` keeps the spaces
    beside each EOS (§6.5). E2E ends (..., 220, 50256) with one 220 where their src1 files gave two (read_pairs
    strips); WebNLG and DART ids are theirs (a WebNLG source " | s : p : o" gives their two leading spaces). The
    loss covers the target and the final EOS, which teaches the model to stop.
    """
    prompt = prompt_ids(tok, source)
    ids = prompt + tok.encode(f" {target} {EOS}", allowed_special={EOS})
    targets = [IGNORE] * (len(prompt) - 1) + ids[len(prompt):]
    return ids[:-1], targets


E2E_BANNED = (198, 628)  # "\n" and "\n\n": never generated, so an E2E output is one line (RECIPE.md §4)
# transformers' clean_up_tokenization_spaces, applied in this order: the authors decode with it (RECIPE.md §4).
CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
           (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def e2e_text(tok: tiktoken.Encoding, tokens: list[int]) -> str:
    """RECIPE.md §4: decode, clean up tokenization spaces, cut at the first EOS, strip; empty -> "Error"."""
    text = tok.decode(tokens)
    for before, after in CLEANUP:
        text = text.replace(before, after)
    return text.split(EOS)[0].strip() or "Error"


def subset(pairs: list[tuple[str, str]], limit: int, seed: int) -> list[tuple[str, str]]:
    """A low-data training set (§6.3 "Low-data Setting"): `limit` pairs drawn without replacement."""
    if limit <= 0 or limit >= len(pairs):
        return pairs
    return [pairs[i] for i in sorted(random.Random(seed).sample(range(len(pairs)), limit))]


def epoch_batches(lengths: list[int], batch_size: int, seed: int, bucket: bool = False) -> list[list[int]]:
    """One epoch's batches of example indices, a function of `seed` alone (the caller mixes in the epoch),
    which makes --resume exact. `bucket` sorts each window of 50 batches by length, so a batch pads little."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(lengths), generator=g).tolist()
    if bucket:
        window = 50 * batch_size
        windows = [sorted(order[w:w + window], key=lambda i: lengths[i]) for w in range(0, len(order), window)]
        order = [i for sorted_window in windows for i in sorted_window]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if bucket:  # the batches of sorted windows, shuffled
        batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
    return batches


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int, pad_to: int = 0,
            max_len: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest example: (idx, targets), each (B, T). Padding targets are IGNORE, and with
    the causal mask a real token never sees the padding after it, so no attention mask is needed and the loss
    is the same however far a batch is padded. pad_to rounds T up to a multiple of it (never past max_len, the
    positions the model has left): a compiled step then meets a few shapes, not one per batch, and is reused."""
    T = max(len(idx) for idx, _ in examples)
    if pad_to:
        T = max(T, min(-(-T // pad_to) * pad_to, max_len))
    idx = torch.tensor([i + [pad_id] * (T - len(i)) for i, _ in examples])       # (B, T)
    targets = torch.tensor([t + [IGNORE] * (T - len(t)) for _, t in examples])  # (B, T)
    return idx, targets


# --- what train.py iterates: examples with their label, batches in a resumable order

def task_labels(rows: list[Row], tuner: str) -> list[str]:
    """The labels of a label-prefix run (the CPU poster's {"prefix": label, "text": ...}), sorted; [] for none."""
    labels = sorted({row.label for row in rows if row.label})
    if labels and (tuner != "prefix" or not all(row.label for row in rows)):
        raise DataError("label rows ({'prefix': label, 'text': ...}) train one prefix per label: use --tuner prefix, "
                         "and give every row (train and validation) a label.")
    bad = [label for label in labels if not re.fullmatch(r"[\w.-]+", label) or label == "prefix"]
    if bad:
        raise DataError(f"labels {bad}: each names a file LABEL.safetensors, so use letters, digits, '.', '-', '_'.")
    return labels


def example(tok: tiktoken.Encoding, row: Row, labels: list[str]) -> tuple[list[int], list[int], int]:
    """(idx, targets) in the template, and the row's label index (0 without labels)."""
    return (*example_ids(tok, row.source, row.target), labels.index(row.label) if labels else 0)


def batch_of(examples: list, pad_id: int, pad_to: int = 0, max_len: int = 0
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """collate, and each row's label index (B,)."""
    idx, targets = collate([(i, t) for i, t, _ in examples], pad_id, pad_to, max_len)  # (B, T) each
    return idx, targets, torch.tensor([task for _, _, task in examples])


class Batches:
    """The training examples in the order a run sees them, a function of the seed and the epoch alone: a resumed
    run draws exactly the batches the uninterrupted one would have. Each process takes every world-th batch."""

    def __init__(self, examples: list, batch_size: int, grad_accum: int, seed: int, bucket: bool, world: int,
                 rank: int, pad_id: int, pad_to: int = 0, max_len: int = 0):
        self.examples, self.batch_size, self.seed, self.bucket = examples, batch_size, seed, bucket
        self.world, self.rank, self.pad = world, rank, (pad_id, pad_to, max_len)  # collate's padding
        self.lengths = [len(idx) for idx, _, _ in examples]
        n = len(epoch_batches(self.lengths, batch_size, seed)) // world
        self.per_epoch = n // grad_accum * grad_accum  # micro-batches per epoch and process
        self.epoch, self.order = -1, []

    def __call__(self, micro_step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(idx, targets) (B, T) and each row's label index (B,)."""
        epoch, pos = divmod(micro_step, self.per_epoch)
        if epoch != self.epoch:
            self.epoch = epoch
            self.order = epoch_batches(self.lengths, self.batch_size, self.seed + epoch, self.bucket)
        return batch_of([self.examples[i] for i in self.order[pos * self.world + self.rank]], *self.pad)

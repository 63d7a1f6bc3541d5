"""The dataset files, read (Li & Liang 2021, §5 "Experimental Setup"): E2E (the official CSV, or the authors' src1
files), WebNLG 2017 (the challenge's XML), DART v1.1.1 (JSON or XML), and a user's own JSONL.

Each reader turns one file into rows or entries and says exactly where a file is wrong; data.py decides what
training and decoding make of them. The folder's files say which dataset it is. Only regular files of a sane
size are read (run.read_capped), and text must be valid UTF-8 without lone surrogates, so nothing read here can
fail later, after hours of work, when it is written back out.
    dataset, files = split_files("../shared/data/webnlg", "test")     # ("webnlg", [.../testdata_with_lex.xml])
    rows = jsonl_rows(read_text(path), str(path))                     # [Row(source, target, label), ...]
"""
from __future__ import annotations

import csv
import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import NamedTuple

from files.run import read_capped

E2E_URL = "https://github.com/tuetschek/e2e-dataset"
# Per split, the paper code's file first (what the recipe's numbers were trained and scored on: pre-tokenized,
# e.g. "£ 20 - 25"), then the official CSV (linearized here, not tokenized: slightly different tokens).
SPLITS = {"train": ("src1_train.txt", "trainset.csv"), "dev": ("src1_valid.txt", "devset.csv"),
          "test": ("src1_test.txt", "testset_w_refs.csv")}
# CSV keys renamed as in the paper's linearization (RECIPE.md §1); the others are kept as they are.
KEY_RENAME = {"eatType": "Type", "priceRange": "price", "familyFriendly": "family friendly"}
MR_PAIR = re.compile(r"\s*([^\[\],]+?)\s*\[([^\[\]]+)\]\s*(?:,|$)")
WEBNLG_TEST = "test/testdata_with_lex.xml"  # train/ and dev/ hold one XML file per category and triple count
# WebNLG's test categories unseen in training, as the official evaluation.py hard-codes them (U; the rest: S)
WEBNLG_UNSEEN = frozenset({"Artist", "Athlete", "CelestialBody", "MeanOfTransportation", "Politician"})
DART_FILE = "dart-v1.1.1-full-{split}"  # .json (the authors' format) or .xml, the same entries
DATA_CAP = 1 << 30  # bytes of one data file read at most (DART's train JSON is ~30 MB)
SURROGATE = re.compile("[\ud800-\udfff]")  # JSON's "\ud800" escape: valid JSON, not encodable text


class DataError(Exception):
    """A data file is missing or malformed; the message names the file, the line or entry, and the fix."""


class Entry(NamedTuple):
    """One input to decode, with every reference its output is scored against."""
    source: str      # linearized as in training: the prompt is prompt_ids(tok, source)
    refs: list[str]  # in file order
    group: str       # WebNLG: "seen" or "unseen" (the scorer's S and U subsets); "" for the others


class Row(NamedTuple):
    """One training row; source is "" for a labelled or a plain-text row of a user's JSONL (see jsonl_rows)."""
    source: str
    target: str
    label: str = ""


def dataset_of(data_dir: str | Path) -> str:
    """"dart", "webnlg", "jsonl" or "e2e" (the fallback, whose reader names the files it expected)."""
    root = Path(data_dir)
    name = root.name if root.is_file() else ""
    if name.startswith("dart-") or any(root.glob(DART_FILE.format(split="*"))):
        return "dart"
    if name.endswith(".xml") or (root / WEBNLG_TEST).is_file() or any(root.glob("*/*triples/*.xml")):
        return "webnlg"
    has_e2e = any((root / file).is_file() for files in SPLITS.values() for file in files)
    if name.endswith(".jsonl") or (not has_e2e and any(root.glob("*.jsonl"))):
        return "jsonl"
    return "e2e"


def split_files(data_dir: str | Path, split: str) -> tuple[str, list[Path]]:
    """The dataset and files of `split`: a file it names (in data_dir, or a path), data_dir if a file, or the first
    of its names found in data_dir (WebNLG train/dev: all XML files, sorted: the order of the authors' JSON)."""
    root = Path(data_dir)
    if not root.exists():
        raise DataError(f"{root}: no such folder or file. Give the dataset's folder (e.g. ../shared/data/e2e); get "
                        f"E2E from {E2E_URL}, or give a JSONL file of {{\"source\": ..., \"target\": ...}} lines.")
    if (root / split).is_file():
        root = root / split
    dataset = dataset_of(root)
    if root.is_file():
        return dataset, [root]
    names = split_names(dataset, split)
    for name in names:
        files = sorted(root.glob(name))
        if files:
            return dataset, files
    found = sorted(s for s in {*SPLITS, *(p.stem for p in root.glob("*.jsonl"))}
                   if any(any(root.glob(name)) for name in split_names(dataset, s)))
    hint = f" Get E2E from {E2E_URL}, or give a JSONL file of {{\"source\": ..., \"target\": ...}} lines."
    raise DataError(f"{root}: no {dataset} file for split {split!r} (expected {' or '.join(names)}); splits here: "
                    f"{', '.join(found) or 'none'}." + (hint if dataset == "e2e" and not found else ""))


def split_names(dataset: str, split: str) -> list[str]:
    """The file names (glob patterns) a split of `dataset` may have, in order of preference."""
    if dataset == "webnlg":
        return [WEBNLG_TEST] if split == "test" else [f"{split}/*/*.xml"]
    if dataset == "dart":  # the JSON first: the authors' format
        return [DART_FILE.format(split=split) + suffix for suffix in (".json", ".xml")]
    return [*SPLITS.get(split, ()), f"{split}.jsonl"]


def read_text(path: Path) -> str:
    """A UTF-8 file with "\\r\\n" made "\\n". Its lines are then cut at "\\n" only: str.splitlines (and read_text)
    would also cut at a lone "\\r", a form feed, NEL or U+2028, characters of a reference, not line ends."""
    try:
        return read_capped(path, DATA_CAP).decode("utf-8").replace("\r\n", "\n")
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable ({e}).") from None


def checked_text(text: str, where: str) -> str:
    """`text`, refused if it holds a lone surrogate (a JSON escape), which the outputs' UTF-8 write would crash on."""
    m = SURROGATE.search(text)
    if m:
        raise DataError(f"{where}: a lone surrogate {m[0]!r} at character {m.start()} (an escape like \\ud800 that "
                        f"encodes no character); fix the text.")
    return text


# --- E2E (CSV, the paper code's src1 files) and a user's JSONL

def checked(source: str, target: str, where: str) -> tuple[str, str]:
    source, target = source.strip(), target.strip()
    if not source or not target:
        raise DataError(f"{where}: empty {'source' if not source else 'target'}; every row needs both.")
    return source, target


def src1_pairs(text: str, path: str) -> list[tuple[str, str]]:
    """The paper code's format: `linearized MR||reference` a line; blank lines are skipped, as there."""
    pairs = []
    for n, line in enumerate(text.split("\n"), 1):
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


def jsonl_rows(text: str, path: str) -> list[Row]:
    """A user's own task, one JSON object a line: {"source": ..., "target": ...}; or a label and its text, the CPU
    poster's {"prefix": "positive", "text": ...} (one prefix per label); or {"text": ...}, plain text to model."""
    rows = []
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise DataError(f"{path}:{n}: not JSON ({e}).") from None
        kind = sorted(row) if isinstance(row, dict) else []
        known = kind in (["source", "target"], ["prefix", "text"], ["text"])
        if not known or not all(isinstance(row[k], str) and row[k].strip() for k in kind):
            raise DataError(f'{path}:{n}: expected {{"source": "...", "target": "..."}}, {{"prefix": "label", '
                            f'"text": "..."}} or {{"text": "..."}}, with non-empty strings'
                            + (f"; found the keys {kind}." if kind and not known else "."))
        for k in kind:
            checked_text(row[k], f"{path}:{n}: {k!r}")
        if kind == ["source", "target"]:
            rows.append(Row(*checked(row["source"], row["target"], f"{path}:{n}")))
        else:
            rows.append(Row("", row["text"].strip(), row.get("prefix", "").strip()))
    return rows


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


# --- WebNLG 2017 (the challenge's XML) and DART v1.1.1 (JSON or XML): entries of triples

def read_triples(files: list[Path], dataset: str) -> list[tuple[Entry, list[str]]]:
    """The entries of WebNLG or DART files, each with the texts it trains on, in file order."""
    entries = []
    for path in files:
        entries += dart_json(path) if path.suffix == ".json" else triples_xml(path, dataset)
    return entries


def triples_xml(path: Path, dataset: str) -> list[tuple[Entry, list[str]]]:
    """<entry category= eid=>: <modifiedtripleset><mtriple>s | p | o</mtriple>..., then <lex comment=>text</lex>
    elements. WebNLG trains on the "good" ones (77 of 18,102 train ones are "toFix"), DART on all (§2)."""
    try:
        root = ET.fromstring(read_capped(path, DATA_CAP))
    except (OSError, ValueError, ET.ParseError) as e:
        raise DataError(f"{path}: not readable as XML ({e}).") from None
    entries = []
    for n, node in enumerate(root.iter("entry"), 1):
        triples = [(m.text or "").split(" | ") for m in node.iterfind("modifiedtripleset/mtriple")]
        lexes = [(lex.text or "", lex.get("comment")) for lex in node.iterfind("lex")]
        where = f"{path}: entry {node.get('eid', n)}"
        entry = triples_entry(dataset, triples, [text for text, _ in lexes], node.get("category", ""), where)
        entries.append((entry, [text for text, comment in lexes if dataset == "dart" or comment == "good"]))
    return entries


def dart_json(path: Path) -> list[tuple[Entry, list[str]]]:
    """DART's JSON: [{"tripleset": [[s, r, o], ...], "annotations": [{"text": ..., ...}, ...], ...}, ...]."""
    try:
        rows = json.loads(read_capped(path, DATA_CAP))
    except (OSError, ValueError, RecursionError) as e:
        raise DataError(f"{path}: not readable as JSON ({e}).") from None
    entries = []
    for n, row in enumerate(rows, 1):
        try:
            texts = [note["text"] or "" for note in row["annotations"]]
            entries.append((triples_entry("dart", row["tripleset"], texts, "", f"{path}: entry {n}"), texts))
        except (KeyError, TypeError) as e:
            raise DataError(f'{path}: entry {n}: no key {e} or a wrong type; a DART entry is {{"tripleset": '
                            f'[[s, r, o], ...], "annotations": [{{"text": ...}}, ...]}}.') from None
    return entries


def triples_entry(dataset: str, triples: list[list[str]], texts: list[str], category: str, where: str) -> Entry:
    """An Entry from triples of three parts and at least one text, its source linearized as the authors'
    training code does (RECIPE-DATA2TEXT §2; their decoder drops the first test entry's " | ", §3)."""
    for parts in triples:
        if len(parts) != 3:
            raise DataError(f"{where}: triple {parts} has {len(parts)} parts, expected subject | property | object.")
    if not texts:
        raise DataError(f"{where}: no references (<lex> elements or annotations); every entry needs one.")
    if dataset == "dart":  # "s1 : r1 : o1 | s2 : r2 : o2": relations lower-cased, no leading separator
        return Entry(" | ".join(f"{s} : {r.lower()} : {o}" for s, r, o in triples), texts, "")
    # " | s1 : p1 : o1 | s2 : p2 : o2": " | " before every triple, the first included; all verbatim
    source = "".join(f" | {s} : {p} : {o}" for s, p, o in triples)
    return Entry(source, texts, "unseen" if category in WEBNLG_UNSEEN else "seen")

"""beam.py's files: the prompts and requests it reads, and the outputs python -m eval scores.

Input files are checked line by line, so a bad one is refused naming the line, before a model is loaded. Every
output goes through run.atomic_write: a killed decode never leaves half a file. With --data-dir, OUT and the files
python -m eval reads are written as a set: the old set is removed first, so a decode killed midway leaves files
missing (which eval refuses), never old and new mixed.
    prompts = read_prompts("prompts.txt")               # one source a line
    write_results(Path("out/test.jsonl"), rows, entries)  # test.jsonl, test.txt, test.refs.txt (+ .seen, .unseen)
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from files.datasets import DATA_CAP, DataError, Entry, checked_text
from files.run import atomic_write, read_capped


# --- what beam.py reads ------------------------------------------------------------------------------------

def read_prompts(path: str) -> list[str]:
    """One prompt a line, split on "\n" only: a U+2028 or form feed inside a prompt stays in it."""
    try:
        lines = read_capped(path, DATA_CAP).decode("utf-8").split("\n")
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read it ({e}). Give a UTF-8 text file, one prompt a line.") from None
    lines = [line.removesuffix("\r") for line in (lines[:-1] if lines[-1] == "" else lines)]
    if not lines:
        raise DataError(f"{path}: empty. Write one prompt a line.")
    for number, line in enumerate(lines, 1):
        if not line:
            raise DataError(f"{path}, line {number}: an empty prompt. Remove the blank line.")
    return lines


def read_requests(path: str) -> list[tuple[str, str]]:
    """--requests: one {"prefix": ..., "source": ...} a line -> (prefix, source) per request."""
    try:
        lines = read_capped(path, DATA_CAP).decode("utf-8").splitlines()
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read it ({e}). Give a UTF-8 JSONL file.") from None
    requests = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise DataError(f"{path}, line {number}: not JSON ({e}).") from None
        given = row if isinstance(row, dict) else {}
        bad = [k for k in ("prefix", "source") if not (isinstance(given.get(k), str) and given[k])]
        if bad:
            raise DataError(f"{path}, line {number}: {' and '.join(map(repr, bad))} missing or not a non-empty string;"
                            f" expected {{\"prefix\": FILE, \"source\": TEXT}}, found {line[:80]!r}.")
        requests.append((checked_text(row["prefix"], f"{path}, line {number}"),
                         checked_text(row["source"], f"{path}, line {number}")))
    if not requests:
        raise DataError(f"{path}: empty. Write one request a line.")
    return requests


# --- what beam.py writes -----------------------------------------------------------------------------------

def check_out(out: str, with_side_files: bool, inputs: list[str]) -> Path | None:
    """Refuse an unusable destination (or one that is an input) before hours of decoding, not after."""
    if not out:
        if with_side_files:
            raise DataError("--data-dir needs --out: it writes OUT, OUT's .txt and .refs.txt for python -m eval.")
        return None
    path = Path(out)
    if path.is_dir():
        raise DataError(f"--out {out}: is a folder; name a file (e.g. {path / 'test.jsonl'}).")
    if any(i and Path(i).resolve() == path.resolve() for i in inputs):
        raise DataError(f"--out {out} is also an input file: it would be overwritten. Name another file.")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_lines(path: Path, lines: list[str]) -> None:
    atomic_write(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8"))


def write_results(out: Path, rows: list[dict], entries: list[Entry] | None) -> None:
    """OUT: one JSON row per prompt. With --data-dir (`entries`) the rows follow the dataset, one per entry in file
    order (a source several entries share repeats its row); OUT is written last, after write_outputs' set."""
    labelled = any("prefix" in r for r in rows)  # a label run's rows: one per label, every prompt EOS alone
    of_source = {(r["prompt"], r.get("prefix", "")): r for r in rows}
    ordered = rows if entries is None else [of_source[e.source, e.group if labelled else ""] for e in entries]
    if entries is not None:
        side = re.compile(rf"{re.escape(out.stem)}(\.\w+)?(\.refs)?\.txt")  # test.txt, test.seen.refs.txt, ...
        for old in [out, *(p for p in out.parent.iterdir() if side.fullmatch(p.name))]:
            old.unlink(missing_ok=True)
        write_outputs(out, entries, [r["text"] for r in ordered])
    write_lines(out, [json.dumps(r, ensure_ascii=False) for r in ordered])


def refs_of(entry: Entry) -> list[str]:
    """An entry's references as lines: an empty one dropped (DART test Id116 has one; the official TER and METEOR
    files drop it too, and it would read as the end of the entry), a line break inside one made a space."""
    return [" ".join(ref.split("\n")) for ref in entry.refs if ref.strip()]


def write_outputs(out: Path, entries: list[Entry], texts: list[str]) -> None:
    """What python -m eval scores: OUT.txt (entry i's output `texts[i]`, in file order; DART repeats a shared
    source's output), OUT.refs.txt (an entry's references, a blank line after each); WebNLG also per seen/unseen
    group (a label run, per label)."""
    pairs = list(zip(entries, texts))
    groups = {"": pairs} | {g: [p for p in pairs if p[0].group == g] for g in sorted({e.group for e in entries} - {""})}
    for group, members in groups.items():
        name = f"{out.stem}.{group}" if group else out.stem  # test.txt, test.seen.txt, test.unseen.txt
        write_lines(out.with_name(name + ".txt"), [text for _, text in members])
        write_lines(out.with_name(name + ".refs.txt"), [line for e, _ in members for line in [*refs_of(e), ""]])

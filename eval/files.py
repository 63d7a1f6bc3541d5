"""Reading references and outputs the way the official E2E scorer (measure_scores.py) reads them.

References: the challenge CSV (`mr,ref`; consecutive rows with the same MR are one MR's references), or text with one
reference a line and a blank line after each MR's group. Outputs: one line per MR, or beam.py's JSONL (its "text"
fields). Lines are stripped; an empty output line is an empty output. Also the one error type of eval/.
"""
import csv
import json
import os
import re
import stat
from itertools import groupby
from pathlib import Path

# measure_scores.py's header patterns (re.match, any case) for the MR and the reference column.
HEADER_SRC = r"(mr|src|source|meaning(?:[_ .-]rep(?:resentation)?)?|da|dial(?:ogue)?[_ .-]act)s?"
HEADER_REF = r"(trg|tgt|target|ref(?:erence)?|human(?:[_ .-](?:ref(?:erence)?))?)s?"
# measure_scores.py repairs these mis-encodings in CSV files before parsing.
CSV_FIXES = (("Ł", "£"), ("Â£", "£"), ("Ã©", "é"), ("ã©", "é"))
CAP = 1 << 28  # bytes read at most: scored files are a few MB, and /dev/zero must be an error, not a MemoryError


class EvalError(Exception):
    """Input eval/ cannot score; the message names the file, the line and the fix."""


def check_pairs(refs: list[list[str]], outputs: list[str]) -> None:
    """One output per entry, and references for every entry."""
    if len(refs) != len(outputs):
        raise EvalError(f"{len(outputs)} outputs for {len(refs)} entries (MRs). Give exactly one output per entry.")
    if not outputs or not all(refs):
        raise EvalError("nothing to score, or an entry without references. Every entry needs a reference.")


def read_lines(path: str | Path) -> list[str]:
    """UTF-8 lines, stripped; split like Python's codecs reader (str.splitlines), as the official script is.
    Only a regular file is read (a FIFO would hang), up to CAP bytes."""
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:  # O_NONBLOCK: a FIFO opens at once
            regular = stat.S_ISREG(os.fstat(f.fileno()).st_mode)
            data = f.read(CAP + 1) if regular else b""
    except OSError as e:
        raise EvalError(f"{path}: cannot read it ({e.strerror}). Check the path.") from None
    if not regular or len(data) > CAP:
        raise EvalError(f"{path}: {f'over {CAP >> 20} MiB' if regular else 'not a regular file'}; give a text file.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise EvalError(f"{path}, line {line}: bytes that are not UTF-8 ({e.reason}). "
                        f"Re-save the file as UTF-8.") from None
    if "\0" in text:
        raise EvalError(f"{path}: NUL bytes, so not a text file. Give plain text, one line per entry.")
    return [line.strip() for line in text.splitlines()]


def json_rows(lines: list[str]) -> list[dict] | None:
    """The lines as JSON objects if every non-blank one is an object (beam.py's JSONL), else None."""
    try:
        rows = [json.loads(line) for line in lines if line]
    except ValueError:
        return None
    return rows if rows and all(isinstance(row, dict) for row in rows) else None


def read_refs(path: str | Path, unit: str = "MR") -> list[list[str]]:
    """References per MR, from the challenge CSV (.csv/.tsv) or a blank-line-separated text file. `unit` names an
    entry in messages: "MR" for E2E, "source" for the other tasks."""
    if re.search(r"\.[ct]sv$", str(path), re.I):
        return read_csv_refs(path)
    lines = read_lines(path)
    if json_rows(lines):
        raise EvalError(f"{path}: JSON lines, not references. Give the references as text, one a line and a blank "
                        f"line after each entry's group (beam.py --data-dir writes them beside its output as "
                        f"{Path(path).stem}.refs.txt).")
    groups: list[list[str]] = [[]]
    for number, line in enumerate(lines, start=1):
        if line:
            groups[-1].append(line)
        elif groups[-1]:
            groups.append([])
        elif len(groups) > 1 and any(lines[number:]):  # only blank lines may follow a second blank line
            raise EvalError(f"{path}, line {number}: a second blank line in a row, so a group without references. "
                            f"Put exactly one blank line after each {unit}'s group of references.")
    groups = [g for g in groups if g]
    if not groups:
        raise EvalError(f"{path}: no references. Write one reference a line, a blank line after each {unit}'s group.")
    if len(groups) == 1:  # no blank lines: a single-reference file, one MR a line (as measure_scores.py reads it)
        groups = [[line] for line in groups[0]]
    return groups


def read_csv_refs(path: str | Path) -> list[list[str]]:
    """The challenge CSV (or TSV): the `mr` and `ref` columns by header, references grouped per MR."""
    lines = read_lines(path)
    if lines:
        lines[0] = lines[0].replace("\ufeff", "")
    for bad, good in CSV_FIXES:
        lines = [line.replace(bad, good) for line in lines]
    lines = [line for line in lines if line]
    if not lines:
        raise EvalError(f"{path}: empty. Expected a header `mr,ref` and one row per reference.")
    rows = list(csv.reader(lines, delimiter="\t" if "\t" in lines[0] else ","))
    header = rows[0]
    src_cols = [i for i, name in enumerate(header) if re.match(HEADER_SRC, name, re.I)]
    ref_cols = [i for i, name in enumerate(header) if re.match(HEADER_REF, name, re.I)]
    if len(src_cols) != 1 or len(ref_cols) != 1:
        raise EvalError(f"{path}: the header {header} needs exactly one MR column (e.g. `mr`) and one reference "
                        f"column (e.g. `ref`); found MR columns {src_cols} and reference columns {ref_cols}. "
                        f"Use the challenge's header `mr,ref`.")
    bad = [number for number, row in enumerate(rows[1:], start=1) if len(row) != len(header)]
    if bad:
        raise EvalError(f"{path}: rows {bad[:10]} (not counting blank lines) have a number of fields other than "
                        f"the header's {len(header)}. Quote fields that contain the delimiter.")
    mr, ref = src_cols[0], ref_cols[0]
    return [[row[ref] for row in group] for _, group in groupby(rows[1:], key=lambda row: row[mr])]


def read_outputs(path: str | Path, unit: str = "MR") -> list[str]:
    """System outputs, one line per MR; from beam.py's JSONL, the "text" of each row (its line breaks as spaces)."""
    outputs = read_lines(path)
    if not outputs:
        raise EvalError(f"{path}: empty. Write one output a line, one line per {unit}, in the references' order.")
    rows = json_rows(outputs)
    if rows is None:
        return outputs
    if not all(isinstance(row.get("text"), str) for row in rows):
        raise EvalError(f"{path}: every line is a JSON object, not all with a \"text\" string, so neither outputs "
                        f"nor beam.py's JSONL. Give the outputs as text, one line per entry (beam.py --data-dir "
                        f"writes {Path(path).stem}.txt beside its JSONL).")
    return [" ".join(row["text"].splitlines()).strip() for row in rows]

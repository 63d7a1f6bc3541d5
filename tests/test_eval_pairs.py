"""`python -m eval` with several REFS OUTPUTS pairs: the scores of one call per pair, in one call.

One call shares a METEOR JVM across its pairs and computes each distinct entry's METEOR statistics and TER
once (WebNLG's all repeats seen and unseen), so these check the shared call against one call per pair,
byte for byte. One pair prints exactly what it always has. METEOR needs Java; without it these tests fail.
    python -m pytest -q tests/test_eval_pairs.py
"""
import json

import pytest

from eval.__main__ import main
from test_eval_data2text import SHARED, UNSEEN, WEBNLG, lines, xml_refs

CASES = SHARED / "eval-cases"


def printed(argv: list[str], capsys) -> str:
    """What `python -m eval ARGV` prints; it must succeed."""
    assert main(argv) == 0
    return capsys.readouterr().out


@pytest.mark.slow
def test_webnlg_seen_unseen_all_in_one_call(tmp_path, capsys):
    """S, U, then A (= S + U, every METEOR statistic and TER from the memo) of one system, as beam.py writes them."""
    refs, categories = xml_refs(SHARED / "data" / "webnlg" / "test" / "testdata_with_lex.xml")
    outputs = lines(WEBNLG / "submissions" / "ADAPT_Centre.txt")
    entries = list(zip(refs, outputs, categories))[::6]  # 311 of 1,862 entries, every category
    paths = []
    subsets = (("seen", lambda c: c not in UNSEEN), ("unseen", lambda c: c in UNSEEN), ("all", lambda c: True))
    for subset, keep in subsets:
        rows = [(r, o) for r, o, c in entries if keep(c)]
        (tmp_path / f"{subset}.refs.txt").write_text("".join(line + "\n" for r, _ in rows for line in [*r, ""]))
        (tmp_path / f"{subset}.txt").write_text("".join(o + "\n" for _, o in rows))
        paths += [str(tmp_path / f"{subset}.refs.txt"), str(tmp_path / f"{subset}.txt")]
    one_each = [printed([r, o, "--task", "webnlg", "--json"], capsys) for r, o in zip(paths[::2], paths[1::2])]
    together = printed([*paths, "--task", "webnlg", "--json"], capsys)
    assert together == "".join(one_each)  # one JSON object per pair, per line, in the order given
    assert [sorted(json.loads(line)) for line in together.splitlines()] == [["BLEU", "METEOR", "TER"]] * 3


@pytest.mark.slow
def test_e2e_pairs_in_one_call(capsys):
    """E2E shares its METEOR too: the same pair twice (the second from the memo) scores as one call does."""
    pair = [str(CASES / "example-refs.txt"), str(CASES / "example-baseline-output.txt")]
    assert printed([*pair, *pair, "--json"], capsys) == printed([*pair, "--json"], capsys) * 2


@pytest.mark.slow
def test_one_pair_prints_as_before(tmp_path, capsys):
    """The one-pair output is a contract: these bytes were printed before several pairs existed."""
    refs, _ = xml_refs(SHARED / "data" / "webnlg" / "test" / "testdata_with_lex.xml")
    (tmp_path / "refs.txt").write_text("".join(line + "\n" for g in refs[:40] for line in [*g, ""]))
    (tmp_path / "out.txt").write_text("\n".join(lines(WEBNLG / "submissions" / "GKB_Unimelb.txt")[:40]) + "\n")
    pair = [str(tmp_path / "refs.txt"), str(tmp_path / "out.txt")]
    assert printed([*pair, "--task", "webnlg"], capsys) == "BLEU    82.23\nMETEOR  0.5535\nTER     0.1451\n"
    assert printed([*pair, "--task", "webnlg", "--json"], capsys) == (
        '{"BLEU": 82.23, "METEOR": 0.5534716303528909, "TER": 0.14505956552207427}\n')
    text_table = "BLEU    0.7996\nROUGE_1 0.9190\nROUGE_2 0.8009\nROUGE_L 0.8723\n"
    assert printed([*pair, "--task", "text"], capsys) == text_table
    # Several pairs: a header line naming each pair's outputs file, then its table as one pair prints it.
    assert printed([*pair, "--task", "text", *pair], capsys) == (  # options may stand between pairs
        f"==> {pair[1]} <==\n" + text_table) * 2


def test_odd_number_of_paths_is_refused(capsys):
    pair = [str(CASES / "example-refs.txt"), str(CASES / "example-baseline-output.txt")]
    assert main([*pair, pair[0], "--json"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "3 paths" in err and "no partner" in err and "REFS OUTPUTS" in err

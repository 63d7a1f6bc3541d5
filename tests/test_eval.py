"""eval/ against the official E2E scorer: its printed scores on real system outputs, and errors on bad input.

The expected numbers are what tuetschek/e2e-metrics' measure_scores.py (default mode) printed, to 4
decimals: ../shared/eval-cases/expected-scores.json, plus two small cases scored with it for this file.
METEOR needs Java; without it these tests fail rather than skip (CI installs Java).
"""
import json
import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CASES = SHARED / "eval-cases"
sys.path.insert(0, str(ROOT))

from eval import METRICS, EvalError, read_outputs, read_refs, score, score_files  # noqa: E402
from eval.__main__ import main  # noqa: E402
from eval.rouge_cider import lcs_length  # noqa: E402

EXPECTED = json.loads((CASES / "expected-scores.json").read_text())

# Scored with measure_scores.py for this file: an empty output line; entities, £, abbreviations, clitics,
# '|||' and a double space; and references with the word "0" (mteval treats the context "0" as none).
TRICKY_OUTPUTS = {
    0: "",
    1: "Café Rouge &amp; Co. costs £20-25, it's 5.5 stars! \"Great\" (really) -- St. John's ||| near  the U.S. etc.",
    2: "Alimentum is a family-friendly restaurant in the city centre. 0 0 1,000 20.5% A.B e.g. can't cannot gonna",
}
TRICKY_EXPECTED = {"BLEU": 0.5246, "NIST": 5.8880, "METEOR": 0.3956, "ROUGE_L": 0.6168, "CIDEr": 1.6335}
ZERO_REFS = [["The Eagle has 0 stars and 0 reviews.", "The Eagle, rated 0 out of 5, is near the river."],
             ["Zizzi is a cheap pub; it is rated 5 out of 5 by 0 customers."],
             ["A coffee shop, Blue Spice, serves Italian food in the city centre.", "Blue Spice is an Italian coffee shop.",
              "In the city centre there is Blue Spice."]]
ZERO_OUTPUTS = ["The Eagle has 0 stars.", "", "Blue Spice serves Italian food in the city centre."]
ZERO_EXPECTED = {"BLEU": 0.2498, "NIST": 0.3848, "METEOR": 0.2793, "ROUGE_L": 0.5247, "CIDEr": 2.6642}


def assert_official(ours: dict[str, float], expected: dict[str, float]) -> None:
    """Equal to the official script's 4-decimal print: within half a unit of the last digit."""
    for name in METRICS:
        assert abs(ours[name] - expected[name]) <= 0.5e-4 + 1e-9, f"{name}: ours {ours[name]}, official {expected[name]}"


@pytest.fixture(scope="module")
def case_scores() -> dict[int, dict[str, float]]:
    """Each shared case scored once per session (METEOR's JVM takes seconds per run)."""
    return {i: score_files(CASES / c["refs"], CASES / c["outputs"]) for i, c in enumerate(EXPECTED)}


@pytest.mark.slow
@pytest.mark.parametrize("i", range(len(EXPECTED)), ids=[c["outputs"] for c in EXPECTED])
def test_equals_official_scorer(case_scores, i):
    assert_official(case_scores[i], EXPECTED[i]["scores"])


@pytest.mark.slow
def test_tricky_text_and_empty_output():
    refs = read_refs(CASES / "example-refs.txt")
    outputs = read_outputs(CASES / "example-baseline-output.txt")
    for i, text in TRICKY_OUTPUTS.items():
        outputs[i] = text
    assert_official(score(refs, outputs), TRICKY_EXPECTED)
    assert_official(score(ZERO_REFS, ZERO_OUTPUTS), ZERO_EXPECTED)


def test_lcs_matches_dynamic_programming():
    def lcs_dp(a, b):
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(1, len(a) + 1):
            for j in range(1, len(b) + 1):
                table[i][j] = table[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1] else max(table[i - 1][j], table[i][j - 1])
        return table[-1][-1]

    rng = random.Random(0)
    for _ in range(300):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 30))]
        b = [rng.choice("abcde") for _ in range(rng.randint(0, 30))]
        assert lcs_length(a, b) == lcs_dp(a, b)


# --- reading files, and the errors a user gets


def test_reads_challenge_csv_grouped_per_mr():
    refs = read_refs(SHARED / "data" / "e2e" / "testset_w_refs.csv")
    assert (len(refs), sum(map(len, refs))) == (630, 4693)


def test_text_refs_single_and_multi(tmp_path):
    (tmp_path / "multi.txt").write_text("a\nb\n\nc\n\n\n")
    (tmp_path / "single.txt").write_text("a\nb\n")
    assert read_refs(tmp_path / "multi.txt") == [["a", "b"], ["c"]]
    assert read_refs(tmp_path / "single.txt") == [["a"], ["b"]]


def test_count_mismatch_names_both_counts_and_file(tmp_path):
    outputs = tmp_path / "out.txt"
    outputs.write_text("one\ntwo\n")
    with pytest.raises(EvalError, match=r"out\.txt has 2 lines but .*example-refs\.txt has references for 10 MRs"):
        score_files(CASES / "example-refs.txt", outputs)


def test_empty_outputs_file(tmp_path):
    (tmp_path / "out.txt").write_bytes(b"")
    with pytest.raises(EvalError, match=r"out\.txt: empty"):
        read_outputs(tmp_path / "out.txt")


def test_undecodable_bytes_name_file_and_line(tmp_path):
    (tmp_path / "out.txt").write_bytes(b"fine\nalso fine\nbad \xff byte\n")
    with pytest.raises(EvalError, match=r"out\.txt, line 3: .*not UTF-8"):
        read_outputs(tmp_path / "out.txt")


def test_csv_without_mr_ref_columns(tmp_path):
    (tmp_path / "refs.csv").write_text("meaning,text\nname[A],A is here.\n")
    with pytest.raises(EvalError, match=r"refs\.csv: the header .* needs exactly one MR column"):
        read_refs(tmp_path / "refs.csv")


def test_two_blank_lines_inside_refs(tmp_path):
    (tmp_path / "refs.txt").write_text("a\n\n\nb\n")
    with pytest.raises(EvalError, match=r"refs\.txt, line 3: a second blank line"):
        read_refs(tmp_path / "refs.txt")


def test_cli_prints_error_and_exits_nonzero(tmp_path, capsys):
    (tmp_path / "out.txt").write_text("only one line\n")
    assert main([str(CASES / "example-refs.txt"), str(tmp_path / "out.txt")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err

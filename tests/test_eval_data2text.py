"""eval --task webnlg|dart against the official WebNLG 2017 and DART scorers' figures and intermediate files.

The expected numbers and files are ../shared/eval-cases/{webnlg,dart}/ (what evaluation.py, multi-bleu.perl,
METEOR 1.5 and tercom 0.7.25 printed and wrote; see their READMEs). Ours start from the raw data, as
beam.py writes it: every reference of an entry from the test XML, and the systems' raw outputs. One METEOR
JVM serves every case. METEOR needs Java; without it these tests fail rather than skip.
"""
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
WEBNLG, DART = SHARED / "eval-cases" / "webnlg", SHARED / "eval-cases" / "dart"

from eval import EvalError, score_files  # noqa: E402  (conftest puts the repo on the path)
from eval.__main__ import main  # noqa: E402
from eval.data2text import normalize, score_data2text  # noqa: E402
from eval.java import Meteor  # noqa: E402
from eval.multi_bleu import multi_bleu  # noqa: E402
from eval.ter import ter  # noqa: E402

UNSEEN = {"MeanOfTransportation", "CelestialBody", "Politician", "Athlete", "Artist"}  # evaluation.py's new_categories


def xml_refs(path: Path) -> tuple[list[list[str]], list[str]]:
    """Every non-empty <lex> of each entry, in document order, as a line of our references file holds it;
    and each entry's category. Entries come in Id order, as the official files have them."""
    entries = sorted(ET.parse(path).getroot().iter("entry"), key=lambda e: int(e.get("eid")[2:]))
    refs = [[" ".join(lex.text.split()) for lex in e.iter("lex") if lex.text and lex.text.strip()] for e in entries]
    return refs, [e.get("category") for e in entries]


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def meteor():
    running = Meteor()
    yield running
    running.close()


@pytest.fixture(scope="module")
def webnlg() -> tuple[list[list[str]], list[str], dict[str, list[str]]]:
    refs, categories = xml_refs(SHARED / "data" / "webnlg" / "test" / "testdata_with_lex.xml")
    expected = json.loads((WEBNLG / "expected-scores.json").read_text())
    outputs = {s["system"]: lines(WEBNLG / s["submission"]) for s in expected}
    return refs, categories, outputs


@pytest.mark.parametrize("system", ["ADAPT_Centre", "GKB_Unimelb"])
def test_webnlg_rewriting_equals_official_files(webnlg, system):
    refs, _, outputs = webnlg
    assert [normalize(o, "webnlg", reference=False) for o in outputs[system]] == lines(
        WEBNLG / "teams" / f"{system}_all-cat.txt")
    for j in range(3):  # an entry with fewer references has an empty line
        official = lines(WEBNLG / "references" / f"gold-all-cat-reference{j}.lex")
        assert [normalize(g[j], "webnlg", reference=True) if j < len(g) else "" for g in refs] == official


@pytest.mark.slow
def test_webnlg_equals_official_scores(webnlg, meteor):
    """Both systems, seen (S), unseen (U) and all (A): BLEU as printed, METEOR and TER to 4 decimals."""
    refs, categories, outputs = webnlg
    for system in json.loads((WEBNLG / "expected-scores.json").read_text()):
        for subset, keep in (("S", lambda c: c not in UNSEEN), ("U", lambda c: c in UNSEEN), ("A", lambda c: True)):
            rows = [(r, o) for r, o, c in zip(refs, outputs[system["system"]], categories) if keep(c)]
            ours = score_data2text([r for r, _ in rows], [o for _, o in rows], "webnlg", meteor)
            expected = system["scores"][subset]
            assert ours["BLEU"] == expected["BLEU"], (system["system"], subset, ours)
            for name in ("METEOR", "TER"):
                assert abs(ours[name] - expected[name]) < 0.5e-4, (system["system"], subset, name, ours)


def test_dart_references_from_xml_equal_official_files():
    refs, _ = xml_refs(SHARED / "data" / "dart" / "dart-v1.1.1-full-test.xml")
    for j in range(3):
        official = (DART / "dart_reference" / f"all-delex-reference{j}.lex").read_text(encoding="utf-8").splitlines()
        # Split, then lower-case: the other order splits "İ" (an "i" and a combining dot) in two.
        assert [normalize(g[j], "dart", reference=True) if j < len(g) else "" for g in refs] == official


@pytest.mark.slow
def test_dart_equals_official_scores(meteor):
    """Case 1 from the raw test XML and the raw outputs; case 2's references (2020) exist only in their
    cased, tokenized official form, which --task dart would lower-case: its scorers are checked on the
    texts the official scripts read."""
    expected = json.loads((DART / "expected-scores.json").read_text())
    refs, _ = xml_refs(SHARED / "data" / "dart" / "dart-v1.1.1-full-test.xml")
    cases = [score_data2text(refs, lines(DART / expected[0]["outputs"]), "dart", meteor)]
    columns = [lines(DART / f) for f in expected[1]["refs"]]
    outputs = [o.strip() for o in lines(DART / expected[1]["outputs"])]
    present = [[r for r in group if r] for group in zip(*columns)]  # prepare_files.py drops empty ones
    cases.append({"BLEU": multi_bleu([list(g) for g in zip(*columns)], outputs),
                  "METEOR": meteor.score(present, outputs), "TER": ter(present, outputs)})
    for ours, case in zip(cases, expected):
        assert ours["BLEU"] == case["BLEU"], (case["outputs"], ours)
        for name in ("METEOR", "TER"):
            assert abs(ours[name] - case[name]) < 0.5e-4, (case["outputs"], name, ours)


# --- the command line, and inputs eval refuses


@pytest.mark.slow
def test_cli_task_webnlg(tmp_path, webnlg, meteor, capsys):
    refs, _, outputs = webnlg
    (tmp_path / "refs.txt").write_text("".join(line + "\n" for g in refs[:40] for line in [*g, ""]))
    (tmp_path / "out.txt").write_text("\n".join(outputs["GKB_Unimelb"][:40]) + "\n")
    assert main([str(tmp_path / "refs.txt"), str(tmp_path / "out.txt"), "--task", "webnlg", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == score_data2text(refs[:40], outputs["GKB_Unimelb"][:40], "webnlg", meteor)
    assert sorted(printed) == ["BLEU", "METEOR", "TER"] and 0 < printed["BLEU"] <= 100


def test_bad_inputs_name_the_problem(tmp_path):
    (tmp_path / "refs.txt").write_text("a b\n\nc d\n\n")
    (tmp_path / "out.txt").write_text("a b\n")
    with pytest.raises(EvalError, match=r"out\.txt has 1 lines but .*refs\.txt has references for 2"):
        score_files(tmp_path / "refs.txt", tmp_path / "out.txt", task="dart")
    with pytest.raises(EvalError, match="entry without references"):
        score_data2text([["a"], []], ["a", "b"], "webnlg")
    with pytest.raises(EvalError, match="task 'wmt'"):
        score_files(tmp_path / "refs.txt", tmp_path / "out.txt", task="wmt")


def test_multi_bleu_and_ter_edge_cases():
    # An empty reference has length 0 and takes part in the closest-length choice, ties to the shorter:
    # here it sets the first entry's length to 0, so no brevity penalty (with it ignored: 60.65).
    assert multi_bleu([["a b c d e f g h", ""], ["x y z w"]], ["a b c d", "x y z w"]) == 100.0
    assert multi_bleu([["a b c d e f g h"], ["x y z w"]], ["a b c d", "x y z w"]) == 60.65
    assert multi_bleu([["a b c d"]], ["a b d c"]) == 0.0  # no 4-gram match: no smoothing
    assert multi_bleu([["a b"]], [""]) == 0.0  # no output words (the script divides by zero)
    # An empty output is all deletions; the length is the references' average.
    assert ter([["a b c", "a b"]], [""]) == 2 / 2.5
    # One shift (cost 1) beats four substitutions; tercom is case-insensitive.
    assert ter([["a b c d e"]], ["C D a b e"]) == 1 / 5

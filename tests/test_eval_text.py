"""eval --task text against Google's rouge-score (the reference), and the inputs eval reads or refuses.

ROUGE-1/2/L are rouge-score's RougeScorer defaults (no stemming), the best reference per output
(score_multi), averaged over outputs; BLEU is the E2E scorer's, checked in test_eval.py. No Java here.
"""
import json
import os
import random
import signal
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

ROOT = Path(__file__).resolve().parents[1]
CASES = ROOT.parent / "shared" / "eval-cases"

import eval.__main__ as eval_main  # noqa: E402  (conftest puts the repo on the path)
from eval import TASK_METRICS, EvalError, read_outputs, read_refs, score_files  # noqa: E402
from eval.__main__ import main  # noqa: E402
from eval.files import CAP  # noqa: E402
from eval.rouge import rouge  # noqa: E402

SCORER = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
NAMES = {"ROUGE_1": "rouge1", "ROUGE_2": "rouge2", "ROUGE_L": "rougeL"}


def reference_rouge(refs: list[list[str]], outputs: list[str]) -> dict[str, float]:
    """rouge-score's score_multi per output, F-measures averaged over outputs."""
    per_output = [SCORER.score_multi(group, output) for group, output in zip(refs, outputs)]
    return {ours: sum(s[theirs].fmeasure for s in per_output) / len(outputs) for ours, theirs in NAMES.items()}


def assert_same(ours: dict[str, float], theirs: dict[str, float]) -> None:
    for name in NAMES:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-12), name


def test_rouge_equals_rouge_score_on_tricky_text():
    refs = [["The cat sat on the mat.", "A cat was sitting on the mat!"],
            ["Über-cool CAFÉ: 5 stars, isn't it?"],
            ["x"],
            ["the the the the", "a b c"],
            ["Price: £20-25; rated 4.5/5 (great)."]]
    outputs = ["the cat is on the mat", "uber cool cafe 5 stars isn t it", "", "the the", "rated 4 5 5 great price 20"]
    assert_same(rouge(refs, outputs), reference_rouge(refs, outputs))


def test_rouge_equals_rouge_score_on_random_text():
    rng = random.Random(0)
    words = ["a", "b", "c", "D", "e-f", "g.", "h1", "ß", "é", "!"]
    def text() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(0, 12)))
    refs = [[text() for _ in range(rng.randint(1, 3))] for _ in range(300)]
    outputs = [text() for _ in refs]
    assert_same(rouge(refs, outputs), reference_rouge(refs, outputs))


def test_task_text_on_e2e_example(capsys):
    refs_path, outputs_path = CASES / "example-refs.txt", CASES / "example-baseline-output.txt"
    ours = score_files(refs_path, outputs_path, task="text")
    assert_same(ours, reference_rouge(read_refs(refs_path), read_outputs(outputs_path)))
    e2e = next(c for c in json.loads((CASES / "expected-scores.json").read_text()) if c["outputs"] == outputs_path.name)
    assert ours["BLEU"] == e2e["scores"]["BLEU"]  # the official E2E BLEU (0-1)
    assert main([str(refs_path), str(outputs_path), "--task", "text", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == ours


# --- beam.py's JSONL, and files that are not text lines


def beam_rows(texts: list[str]) -> str:
    """beam.py's JSONL: one object a line with prompt, text, tokens, score (and more)."""
    return "".join(json.dumps({"prompt": f"p{i}", "text": t, "tokens": [1, 2], "score": -1.5, "made_by": {}}) + "\n"
                   for i, t in enumerate(texts))


def test_jsonl_outputs_are_read_by_their_text(tmp_path):
    (tmp_path / "test.jsonl").write_text(beam_rows([" The Eagle is a pub. ", "two\nlines", ""]))
    assert read_outputs(tmp_path / "test.jsonl") == ["The Eagle is a pub.", "two lines", ""]
    (tmp_path / "refs.txt").write_text("The Eagle is a pub.\n\ntwo lines\n\nsomething\n\n")
    assert score_files(tmp_path / "refs.txt", tmp_path / "test.jsonl", task="text")["ROUGE_1"] == pytest.approx(2 / 3)


def test_json_without_text_is_refused_naming_the_txt(tmp_path):
    (tmp_path / "test.jsonl").write_text('{"prompt": "a", "score": 1}\n{"prompt": "b", "score": 2}\n')
    with pytest.raises(EvalError, match=r"test\.jsonl: every line is a JSON object.*writes test\.txt"):
        read_outputs(tmp_path / "test.jsonl")
    (tmp_path / "refs.jsonl").write_text(beam_rows(["a", "b"]))
    with pytest.raises(EvalError, match=r"refs\.jsonl: JSON lines, not references.*refs\.refs\.txt"):
        read_refs(tmp_path / "refs.jsonl")


def test_plain_lines_that_look_like_json_stay_text(tmp_path):
    (tmp_path / "out.txt").write_text('{"text": "a"}\nplain words\n42\n')
    assert read_outputs(tmp_path / "out.txt") == ['{"text": "a"}', "plain words", "42"]


def test_binary_file_is_refused(tmp_path):
    (tmp_path / "out.bin").write_bytes(b"abc\x00def\n")
    with pytest.raises(EvalError, match=r"out\.bin: NUL bytes"):
        read_outputs(tmp_path / "out.bin")


def test_task_default_is_said_in_help_and_on_stderr(monkeypatch, capsys):
    """Without --task, the E2E scoring runs (its table) and stderr says so, naming the other tasks."""
    monkeypatch.setattr(eval_main, "score_files_many", lambda pairs, task: [dict.fromkeys(TASK_METRICS[task], 0.5)])
    pair = [str(CASES / "example-refs.txt"), str(CASES / "example-baseline-output.txt")]
    assert main(pair) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == "BLEU    0.5000" and len(out.splitlines()) == 5
    assert err.count("\n") == 1 and "--task e2e (the default)" in err and "--task webnlg, dart or text" in err
    assert main([*pair, "--task", "text"]) == 0 and capsys.readouterr().err == ""
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "e2e (the default)" in " ".join(capsys.readouterr().out.split())


def test_swapped_refs_and_outputs_are_named(tmp_path):
    (tmp_path / "refs.txt").write_text("a b\nA b.\n\nc d\n\ne f\nE f.\n\n")
    (tmp_path / "out.txt").write_text("a b\nc d\ne f\n")
    with pytest.raises(EvalError, match=r"3 sources\. .*Did you swap REFS and OUTPUTS\? REFS comes first\.$"):
        score_files(tmp_path / "out.txt", tmp_path / "refs.txt", task="text")
    (tmp_path / "short.txt").write_text("a b\nc d\n")  # one line short: a real mismatch, no swap would fit
    with pytest.raises(EvalError, match=r"per source, in the references' order\.$"):
        score_files(tmp_path / "refs.txt", tmp_path / "short.txt", task="text")


@pytest.mark.parametrize("kind", ["fifo", "huge"])
def test_fifo_or_huge_file_is_refused_at_once(kind, tmp_path):
    path = tmp_path / kind
    if kind == "fifo":
        os.mkfifo(path)  # no writer: reading it would block forever (a device, /dev/zero, is refused alike)
    else:
        path.touch()
        os.truncate(path, CAP + 1)  # sparse: over the cap, with no disk used
    (tmp_path / "out.txt").write_text("a\n")

    def expired(*_):
        raise TimeoutError("still reading after 10 s")
    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(10)  # fail, not hang, if the FIFO is opened for reading
    try:
        for refs, outputs in ((path, tmp_path / "out.txt"), (tmp_path / "out.txt", path)):
            with pytest.raises(EvalError, match=rf"{path}: (not a regular file|over 256 MiB); give a text file"):
                score_files(refs, outputs, task="text")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)

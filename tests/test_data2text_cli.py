"""WebNLG and DART through the same commands as E2E: train.py -> beam.py -> python -m eval --task, on a tiny model.
    python -m pytest -q tests/test_data2text_cli.py
"""
import json

import pytest

import beam
import train
from conftest import SHARED
from eval.__main__ import main as score


@pytest.mark.slow
@pytest.mark.parametrize("task, split", [("webnlg", "dev"), ("dart", "dev")])
def test_train_decode_score(tiny_ckpt, tmp_path, capsys, task, split):
    data = SHARED / "data" / task
    out = tmp_path / "run"
    train.main(["--init-from", str(tiny_ckpt), "--data-dir", str(data), "--train-split", split, "--train-limit", "40",
                "--valid-split", "", "--batch-size", "4", "--max-steps", "2", "--out-dir", str(out)])
    beam.main(["--ckpt", str(out), "--data-dir", str(data), "--split", "test", "--limit", "4", "--beams", "2",
               "--max-new-tokens", "5", "--out", str(out / "test.jsonl")])
    lines = (out / "test.txt").read_text().splitlines()
    entries = (out / "test.refs.txt").read_text().strip("\n").split("\n\n")
    assert len(lines) == len(entries) == 4
    capsys.readouterr()
    assert score([str(out / "test.refs.txt"), str(out / "test.txt"), "--task", task, "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert set(scores) == {"BLEU", "METEOR", "TER"} and 0 <= scores["BLEU"] <= 100


def test_webnlg_writes_seen_and_unseen(tiny_ckpt, tmp_path):
    """The test file lists the 971 seen entries first: the first four are seen, so .unseen files are empty lists."""
    out = tmp_path / "test.jsonl"
    beam.main(["--ckpt", str(tiny_ckpt), "--data-dir", str(SHARED / "data" / "webnlg"), "--split", "test",
               "--limit", "3", "--beams", "1", "--max-new-tokens", "3", "--out", str(out)])
    assert len((tmp_path / "test.seen.txt").read_text().splitlines()) == 3
    assert not (tmp_path / "test.unseen.txt").exists()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["prompt"].startswith(" | ") and rows[0]["made_by"]["search"]["banned"] == [198, 628]

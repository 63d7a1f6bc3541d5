"""Honest, friendly runs: the best weights kept and early stopping, no half-made run folder after a failed start,
clear words for a mistyped checkpoint or data folder, and --help that reads well.
    python -m pytest -q tests/test_runs.py
"""
import json
import sys

import pytest

import beam
import train
from files.checkpoint import CheckpointError, resolve
from conftest import E2E_DIR, ROOT
from data import DataError

sys.path.insert(0, str(ROOT / "scripts"))
import reproduce  # noqa: E402


def small_run(ckpt, out, *extra):
    return ["--init-from", str(ckpt), "--data-dir", str(E2E_DIR), "--train-split", "dev", "--valid-split", "test",
            "--valid-limit", "6", "--train-limit", "40", "--batch-size", "4", "--out-dir", str(out), *extra]


def test_best_weights_and_early_stop(tiny_ckpt, tmp_path):
    """A learning rate that overshoots: validation stops improving, the run stops early and OUT/best holds the
    weights of the best validation, a run folder beam.py decodes."""
    out = tmp_path / "run"
    train.main(small_run(tiny_ckpt, out, "--tuner", "fine", "--lr", "0.3", "--max-steps", "40", "--eval-every", "2",
                         "--early-stop", "2"))
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert rows[-1]["step"] < 40 and len(val) - 1 - val.index(min(val)) == 2  # stopped at the 2nd without a gain
    assert (out / "model.safetensors").is_file() and (out / "best" / "model.safetensors").is_file()
    assert json.loads((out / "best" / "args.json").read_text())["tuner"] == "fine"
    beam.main(["--ckpt", str(out / "best"), "--data-dir", str(E2E_DIR), "--split", "test", "--limit", "1",
               "--max-new-tokens", "3", "--beams", "1", "--out", str(tmp_path / "o.jsonl")])
    assert (tmp_path / "o.txt").read_text().strip()


def test_failed_start_leaves_no_run_folder(tiny_ckpt, tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        train.main(small_run(tiny_ckpt, tmp_path / "run", "--data-dir", str(tmp_path / "nodata")))
    assert not (tmp_path / "run").exists()


def test_clear_words_for_a_wrong_checkpoint(tiny_ckpt, tmp_path, monkeypatch):
    import huggingface_hub

    class RepositoryNotFoundError(Exception):
        pass

    def not_found(*a, **k):
        raise RepositoryNotFoundError("404")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_found)
    with pytest.raises(CheckpointError, match="not found on the hub"):
        resolve("gpt2-medum")
    out = tmp_path / "run"
    train.main(small_run(tiny_ckpt, out, "--max-steps", "1", "--valid-split", ""))
    with pytest.raises(SystemExit, match="--ckpt .*prefix.safetensors is a trained file.*--prefix"):
        beam.main(["--ckpt", str(out / "prefix.safetensors"), "--prompts", str(out / "args.json")])


@pytest.mark.parametrize("main", [train.main, beam.main, reproduce.main])
def test_help_reads_well(main, capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "examples:" in text
    assert "\n    python " in text  # the header's commands, as written (not re-wrapped)


@pytest.mark.slow
def test_reproduce_reuses_finished_steps_and_force_redoes_them(tmp_path, capsys):
    flags = ["smoke", "--steps", "2", "--limit", "2", "--data-dir", str(E2E_DIR), "--work", str(tmp_path / "runs"),
             "--results", str(tmp_path / "results")]
    reproduce.main(flags)
    capsys.readouterr()
    reproduce.main(flags)
    assert "reusing the finished training run" in capsys.readouterr().out
    reproduce.main([*flags, "--force"])
    assert "reusing" not in capsys.readouterr().out


def test_init_text_sets_p_recorded_and_said(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "run"
    train.main(small_run(tiny_ckpt, out, "--prefix-init", "table-to-text:", "--max-steps", "1", "--valid-split", ""))
    assert json.loads((out / "args.json").read_text())["prefix_len"] == 6  # " table-to-text:" is 6 tokens
    assert "prefix-tuning (P=6)" in capsys.readouterr().out


def test_decoded_rows_say_what_made_them(tiny_ckpt, tmp_path):
    """beam.py's JSONL traces each output to its run, prefixes, base and settings; --split takes a file path too."""
    out = tmp_path / "run"
    train.main(small_run(tiny_ckpt, out, "--max-steps", "1", "--valid-split", ""))
    split = tmp_path / "data" / "mine.jsonl"
    split.parent.mkdir()
    split.write_text(json.dumps({"source": "name : Aromi", "target": "Aromi is a pub."}) + "\n")
    beam.main(["--ckpt", str(out), "--data-dir", str(split.parent), "--split", str(split), "--beams", "1",
               "--max-new-tokens", "2", "--out", str(tmp_path / "o.jsonl")])
    row = json.loads((tmp_path / "o.jsonl").read_text())
    made = row["made_by"]
    assert made["ckpt"] == str(out) and made["base_fingerprint"] == json.loads((out / "args.json").read_text())[
        "base_fingerprint"] and made["search"]["beams"] == 1
    assert (tmp_path / "o.refs.txt").read_text() == "Aromi is a pub.\n\n"


def test_a_split_needed_only_is_fetched(tmp_path):
    """lowdata/prefix-length with --train-split dev need no trainset.csv: only missing splits are downloaded."""
    from tasks import TASKS, ensure_data
    ensure_data(TASKS["e2e"], E2E_DIR, ["dev", "test"])  # both here: nothing to download, nothing raised

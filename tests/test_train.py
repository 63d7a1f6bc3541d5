"""train.py through its CLI on a tiny random GPT-2 and the shared E2E dev set (no train set here: train on dev).

Fine-tuning must learn and leave a folder transformers loads; prefix-tuning must leave a small prefix that
prefix.load reads; SIGTERM + --resume must reproduce an uninterrupted run bit for bit; torchrun must work on gloo.
    python -m pytest -q tests/test_train.py
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import prefix
import train
from conftest import E2E_DIR, ROOT
from data import DataError
from files.run import RunFolderError
from model import GPT


def args(ckpt, out, *extra: str) -> list[str]:
    return ["--init-from", str(ckpt), "--data-dir", str(E2E_DIR), "--train-split", "dev", "--valid-split", "test",
            "--valid-limit", "8", "--train-limit", "200", "--batch-size", "2", "--out-dir", str(out), *extra]


def log_rows(out) -> list[dict]:
    path = out / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_fine_tuning_learns_and_loads_in_transformers(tiny_ckpt, tmp_path):
    from transformers import GPT2LMHeadModel

    train.main(args(tiny_ckpt, tmp_path, "--tuner", "fine", "--max-steps", "40", "--lr", "3e-3", "--log-every", "5"))
    losses = [r["loss"] for r in log_rows(tmp_path) if "loss" in r]
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 1.0, losses  # from ~10.8 nats per token, clearly down
    assert "val_loss" in log_rows(tmp_path)[-1]
    assert json.loads((tmp_path / "args.json").read_text())["tuner"] == "fine"
    assert (tmp_path / "vocab.json").is_file() and (tmp_path / "merges.txt").is_file()
    hf = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ours = GPT.from_pretrained(tmp_path)
    idx = torch.randint(0, 50257, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx).logits, hf(idx).logits, atol=1e-4, rtol=1e-4)


def test_prefix_file_is_small_and_loads(tiny_ckpt, tmp_path):
    train.main(args(tiny_ckpt, tmp_path, "--max-steps", "3", "--log-every", "1"))
    size, model_size = (tmp_path / "prefix.safetensors").stat().st_size, (tiny_ckpt / "model.safetensors").stat().st_size
    assert size < 0.01 * model_size
    past_kv = prefix.load(tmp_path, GPT.from_pretrained(tiny_ckpt))
    assert len(past_kv) == 2 and past_kv[0][0].shape == (1, 4, 5, 8)  # (1, H, P, D)
    saved = json.loads((tmp_path / "args.json").read_text())
    assert (saved["tuner"], saved["init_from"], saved["lr"]) == ("prefix", str(tiny_ckpt.resolve()), 8e-5)


def test_sigterm_then_resume_matches_uninterrupted_run(tiny_ckpt, tmp_path):
    steps = ["--max-steps", "14", "--log-every", "1", "--save-every", "4", "--lr", "1e-2"]
    train.main(args(tiny_ckpt, tmp_path / "whole", *steps))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args(tiny_ckpt, cut, *steps)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while len(log_rows(cut)) < 3 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in output, output  # not finished
    stopped = json.loads((cut / "resume" / "state.json").read_text())["step"]
    assert 3 <= stopped < 14
    with pytest.raises(RunFolderError, match="--lr 0.01"):  # another schedule: refused
        train.main(args(tiny_ckpt, cut, *steps[:-1], "2e-2", "--resume"))
    train.main(args(tiny_ckpt, cut, *steps, "--resume"))
    whole, resumed = log_rows(tmp_path / "whole"), log_rows(cut)
    assert [r["step"] for r in resumed] == list(range(1, 15))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in whole]  # bit-identical on CPU
    assert torch.equal(load_file(cut / "prefix.safetensors")["past_kv"],
                       load_file(tmp_path / "whole" / "prefix.safetensors")["past_kv"])


@pytest.mark.slow
def test_two_processes_on_gloo(tiny_ckpt, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(ROOT / "train.py"), *args(tiny_ckpt, tmp_path, "--max-steps", "3", "--log-every", "1")]
    run = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    assert [r["step"] for r in log_rows(tmp_path) if "loss" in r] == [1, 2, 3]
    assert json.loads((tmp_path / "args.json").read_text())["world_size"] == 2
    prefix.load(tmp_path, GPT.from_pretrained(tiny_ckpt))


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tiny_ckpt, tmp_path, monkeypatch):
    calls = []
    real = train.nll_sum

    def nan_on_third_step(loss, targets):
        calls.append(1)
        return real(loss, targets) * (float("nan") if len(calls) == 3 else 1.0)

    monkeypatch.setattr(train, "nll_sum", nan_on_third_step)
    with pytest.raises(train.TrainError, match="step 3: loss nan"):
        train.main(args(tiny_ckpt, tmp_path, "--max-steps", "5", "--save-every", "2", "--valid-split", ""))
    assert json.loads((tmp_path / "resume" / "state.json").read_text())["step"] == 2
    assert not (tmp_path / "prefix.safetensors").exists()


@pytest.mark.parametrize("extra,error,message", [
    (["--batch-size", "0"], train.TrainError, "--batch-size=0"),
    (["--tuner", "fine", "--prefix-init", "table-to-text:"], train.TrainError, "--prefix-init only applies"),
    (["--init-from", "random:huge"], train.TrainError, "unknown shape"),
    (["--data-dir", "/nonexistent"], DataError, "tuetschek/e2e-dataset"),
])
def test_bad_arguments(tiny_ckpt, tmp_path, extra, error, message):
    with pytest.raises(error, match=message):
        train.main(args(tiny_ckpt, tmp_path, *extra))


def test_help_and_schedule(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    assert "8e-05 prefix, 5e-05 fine" in capsys.readouterr().out
    cfg = train.TrainConfig(lr=1.0, warmup_steps=2, max_steps=10)
    assert [train.lr_at(s, cfg) for s in (0, 1, 2, 6, 10)] == [0.0, 0.5, 1.0, 0.5, 0.0]

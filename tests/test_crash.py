"""kill -9 at random moments, then the same command with --resume, until the run finishes (issue 24).

A scheduler restarting a preempted job runs the same command again; nothing may need a person's hands: the lock
is the kernel's (it dies with the process), a run killed before its first checkpoint starts again from step 0,
and every file is written atomically. The run that went through 10 kills (prefix and fine-tuning, 5 each) must
end with the weights and the log (every step's losses and learning rate) of an uninterrupted run with the seed.
    python -m pytest -q tests/test_crash.py
"""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from conftest import ROOT, place_rows

KILLS = 5  # per tuner
LOGGED = ("step", "loss", "tok_loss", "lr")  # a row's timings differ between runs; everything else must not


def command(data, out, tuner: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "--tuner", tuner, "--init-from", "random:tiny", "--data-dir",
            str(data), "--train-split", "train.jsonl", "--valid-split", "", "--batch-size", "2", "--max-steps", "120",
            "--log-every", "1", "--save-every", "7", "--device", "cpu", "--out-dir", str(out)]


def logged(out) -> list[tuple]:
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [tuple(r[k] for k in LOGGED) for r in rows]


def trained(out) -> dict:
    return {f.name: load_file(f) for f in sorted(out.glob("*.safetensors"))}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return place_rows(tmp_path_factory.mktemp("data"), 16)


@pytest.mark.slow
@pytest.mark.parametrize("tuner", ["prefix", "fine"])
def test_kill_9_at_random_moments_then_resume_ends_as_an_uninterrupted_run(tuner, data, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    started = time.time()
    subprocess.run(command(data, whole, tuner), env=env, check=True, capture_output=True, timeout=300)
    span = time.time() - started  # start-up and training: the kills fall anywhere in it
    rng, kills, attempts = random.Random(f"kill-{tuner}"), 0, 0
    while kills < KILLS and attempts < 4 * KILLS:
        attempts += 1
        args = command(data, cut, tuner) + (["--resume"] if cut.exists() else [])
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            proc.wait(timeout=rng.uniform(0.1, 0.7) * span)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        assert proc.returncode == 0 and (cut / "done.json").exists(), proc.stderr.read()
        break  # it finished before the next kill landed
    assert kills >= 3, f"only {kills} kills landed in {attempts} tries"
    final = subprocess.run(command(data, cut, tuner) + ["--resume"], env=env, capture_output=True, text=True,
                           timeout=300)
    assert final.returncode == 0, final.stderr
    assert (cut / "done.json").exists() and not list(cut.rglob("*.tmp"))
    assert logged(cut) == logged(whole)
    want, got = trained(whole), trained(cut)
    assert want and want.keys() == got.keys()
    for w, g in zip(want.values(), got.values()):
        assert w.keys() == g.keys() and all((w[k] == g[k]).all() for k in w)  # bit for bit, on CPU

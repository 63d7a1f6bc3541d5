"""What a crash, a newcomer and a hostile user met (issue 24): each case checked through the public functions.

A crash: a run killed by -9 leaves only the kernel's lock, which dies with it, so the same command runs again with
no manual step; a run killed before its first checkpoint resumes from step 0; SIGINT saves and exits with 130, so
`train.py && beam.py` stops; --resume on a finished run rewrites nothing. A newcomer: --overwrite leaves nothing of
the old run (no stale best/ to decode); beam.py refuses a run that did not finish, or whose trained file changed
since (done.json's sha256), and an --out that is an input. A hostile user: JSON nested 100,000 deep, a FIFO,
/dev/zero-sized promises (n_layer 10**9), a vocab.json tiktoken would choke on, unknown JSONL keys, lone
surrogates, non-string requests: each is one clear error, fast, never a RecursionError, a hang, an OOM or a panic.
    python -m pytest -q tests/test_hardening.py
"""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from dataclasses import dataclass

import pytest
import torch
from safetensors import SafetensorError

import beam
import cli
import files.checkpoint
import train
from conftest import ROOT, beam_refused, place_rows
from files import tuned
from files.checkpoint import CheckpointError, save_pretrained
from files.datasets import DataError, jsonl_rows, read_text
from files.decoding import check_out, read_prompts, read_requests
from files.run import DONE_FILE, RunFolderError, read_run
from files.tokenizer import load_tokenizer
from files.tuned import PEFT_WEIGHTS
from model import GPT
from prefix import PrefixError


pytestmark = pytest.mark.usefixtures("no_plots")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = place_rows(tmp_path_factory.mktemp("data"), 8)
    (folder / "valid.jsonl").write_text("".join((folder / "train.jsonl").read_text().splitlines(keepends=True)[:2]))
    return folder


def argv(out, data_dir, *extra) -> list[str]:
    """A tiny prefix run on CPU from a random base (nothing to download, nothing to convert)."""
    return ["--init-from", "random:tiny", "--data-dir", str(data_dir), "--train-split", "train.jsonl",
            "--valid-split", "", "--batch-size", "2", "--log-every", "1", "--device", "cpu", "--out-dir", str(out),
            *extra]


def decode_args(run, data_dir, tmp_path) -> list[str]:
    return ["--ckpt", str(run), "--prompts", str(data_dir / "prompts.txt"), "--beams", "1", "--max-new-tokens", "1",
            "--out", str(tmp_path / "o.jsonl")]


def steps(out) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]


def snapshot(folder) -> dict:
    """Every file's bytes and mtime, but the lock's: a process that merely looks takes the lock (and writes its pid)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file() and p.name != ".lock"}


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail, rather than hang the suite, if the body blocks (a FIFO read): SIGALRM interrupts the blocking call."""
    def expired(*_):
        raise TimeoutError(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def done_run(data_dir, tmp_path_factory):
    """A finished 2-step prefix run (done.json written), for the tests that look at or damage a copy of it."""
    out = tmp_path_factory.mktemp("run") / "run"
    train.main(argv(out, data_dir, "--max-steps", "2"))
    assert (out / DONE_FILE).is_file() and (out / "prefix.safetensors").is_file()
    return out


# --- a crash ------------------------------------------------------------------------------------------------

def test_live_run_refused_by_pid_and_dead_one_needs_no_cleanup(data_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    hold = ("import fcntl, os, sys, time\n"
            "f = open(sys.argv[1], 'a+')\n"
            "fcntl.flock(f, fcntl.LOCK_EX)\n"
            "f.truncate(0); f.write(str(os.getpid())); f.flush()\n"
            "print('ready', flush=True)\n"
            "time.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(RunFolderError, match=rf"another train.py \(pid {holder.pid}\)") as e:
            train.main(argv(out, data_dir, "--max-steps", "1"))
        assert "\n" not in str(e.value)
        assert sorted(os.listdir(out)) == [".lock"]  # nothing of the refused run written
    finally:
        holder.kill()  # -9: no handler runs, no cleanup
        holder.wait(timeout=30)
    assert (out / ".lock").read_text() == str(holder.pid)  # the dead run's lock file stays, naming it
    train.main(argv(out, data_dir, "--max-steps", "1"))  # the same command, no manual step
    assert (out / DONE_FILE).is_file() and steps(out) == [1]


def test_resume_before_the_first_checkpoint_starts_from_step_0(data_dir, tmp_path, monkeypatch, capsys):
    out, real = tmp_path / "out", train.save_step

    def killed(*a, **k):  # the run dies right after its first log row, long before --save-every 100
        real(*a, **k)
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "save_step", killed)
    with pytest.raises(KeyboardInterrupt):
        train.main(argv(out, data_dir, "--max-steps", "3", "--save-every", "100"))
    monkeypatch.setattr(train, "save_step", real)
    assert (out / "args.json").is_file() and steps(out) == [1] and not (out / "resume" / "state.json").exists()
    capsys.readouterr()
    train.main(argv(out, data_dir, "--max-steps", "3", "--save-every", "100", "--resume"))
    assert "no checkpoint yet" in capsys.readouterr().out
    assert (out / DONE_FILE).is_file() and steps(out) == [1, 2, 3]  # the dead run's row replaced, not kept twice


def test_resume_of_a_finished_run_rewrites_nothing(done_run, data_dir, tmp_path, capsys):
    out = shutil.copytree(done_run, tmp_path / "run")
    before = snapshot(out)
    capsys.readouterr()
    train.main(argv(out, data_dir, "--max-steps", "2", "--resume"))
    assert "already complete" in capsys.readouterr().out
    assert snapshot(out) == before


def test_sigint_saves_and_exits_130(data_dir, tmp_path):
    out, log = tmp_path / "out", tmp_path / "stdout.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "train.py"), *argv(out, data_dir, "--max-steps", "100000", "--save-every",
                                                         "100000")]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
        start = time.monotonic()
        while not ((out / "log.jsonl").is_file() and (out / "log.jsonl").read_text().strip()):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() - start < 120, "no log row after 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text()
    assert code == 128 + signal.SIGINT == 130, output
    assert "stopped by SIGINT" in output, output
    state = json.loads((out / "resume" / "state.json").read_text())
    assert state["step"] >= 1 and (out / "resume" / state["file"]).is_file()
    assert not (out / DONE_FILE).exists() and not (out / "prefix.safetensors").exists()


# --- a newcomer -----------------------------------------------------------------------------------------------

def test_overwrite_leaves_nothing_of_the_old_run(data_dir, tmp_path):
    out = tmp_path / "out"
    train.main(argv(out, data_dir, "--max-steps", "3", "--valid-split", "valid.jsonl"))  # run A: with best/
    assert (out / "best" / DONE_FILE).is_file() and (out / "resume" / "step3.safetensors").is_file()
    train.main(argv(out, data_dir, "--max-steps", "2", "--overwrite"))  # run B: no validation, so no best/
    assert not (out / "best").exists()
    assert sorted(p.name for p in (out / "resume").iterdir()) == ["state.json", "step2.safetensors"]
    assert steps(out) == [1, 2] and json.loads((out / "args.json").read_text())["max_steps"] == 2
    beam_refused(decode_args(out / "best", data_dir, tmp_path), "no such folder")  # never A's best weights
    assert not (tmp_path / "o.jsonl").exists()


def test_beam_refuses_an_unfinished_or_changed_run(done_run, data_dir, tmp_path):
    out = shutil.copytree(done_run, tmp_path / "run")
    beam.main(decode_args(out, data_dir, tmp_path))  # the finished run decodes
    assert (tmp_path / "o.jsonl").is_file()
    (tmp_path / "o.jsonl").unlink()
    done = (out / DONE_FILE).read_bytes()
    (out / DONE_FILE).unlink()
    beam_refused(decode_args(out, data_dir, tmp_path), "not finished")
    assert "--resume" in beam_refused(decode_args(out, data_dir, tmp_path), "not finished")
    (out / DONE_FILE).write_bytes(done)
    weights = out / "prefix.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, in the tensors: same size, still a readable file
    weights.write_bytes(bytes(data))
    beam_refused(decode_args(out, data_dir, tmp_path), "changed since training")
    assert not (tmp_path / "o.jsonl").exists()


def test_out_equal_to_an_input_is_refused(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("name : Alimentum\n")
    before = (prompts.read_bytes(), prompts.stat().st_mtime_ns)
    for out in (str(prompts), str(tmp_path / "." / "prompts.txt")):
        with pytest.raises(DataError, match="also an input"):
            check_out(out, False, [str(prompts)])
    assert (prompts.read_bytes(), prompts.stat().st_mtime_ns) == before
    assert check_out(str(tmp_path / "o.jsonl"), False, [str(prompts)]) == tmp_path / "o.jsonl"  # another file: fine


# --- a hostile user ---------------------------------------------------------------------------------------------

def test_deeply_nested_json_is_an_error_not_a_recursion(tmp_path):
    deep = "[" * 100_000
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "args.json").write_text(deep)
    with pytest.raises(RunFolderError, match="nested too deeply"):
        read_run(tmp_path / "run")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(deep)
    with pytest.raises(CheckpointError, match="config.json"):
        GPT.from_pretrained(tmp_path / "ckpt")


def test_fifo_as_prompts_is_refused_at_once(done_run, data_dir, tmp_path):
    fifo = tmp_path / "prompts.fifo"
    os.mkfifo(fifo)  # no writer: reading it would block forever
    args = [*decode_args(done_run, data_dir, tmp_path)]
    args[args.index("--prompts") + 1] = str(fifo)
    with deadline(60):
        message = beam_refused(args, str(fifo))
    assert "regular file" in message
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("vocab", [{"!": "x"}, {"!": 0}])
def test_bad_vocab_json_is_a_checkpoint_error(vocab, done_run, tmp_path):
    folder = shutil.copytree(done_run / "base", tmp_path / "ckpt")  # a tiny checkpoint: config.json + weights
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("")
    with pytest.raises(CheckpointError, match="vocab.json"):
        load_tokenizer(folder)


def test_unknown_jsonl_keys_are_named(data_dir, tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"label": "a", "text": "b"}) + "\n")
    with pytest.raises(DataError, match=r"train.jsonl:1: .*\['label', 'text'\]"):
        jsonl_rows(read_text(path), str(path))
    with pytest.raises(DataError, match=r"\['label', 'text'\]"):  # train.py, before any folder is made
        train.main(argv(tmp_path / "out", tmp_path, "--max-steps", "1"))
    assert not (tmp_path / "out").exists()


def test_lone_surrogate_is_refused_where_it_is_read(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"source": "name : A", "target": "ok"}\n{"source": "name : B", "target": "x \\ud800 y"}\n')
    with pytest.raises(DataError, match=r"train.jsonl:2: 'target'.*surrogate"):
        jsonl_rows(read_text(path), str(path))
    (tmp_path / "r.jsonl").write_text('{"prefix": "p", "source": "name : A"}\n{"prefix": "p", "source": "a \\udc80"}\n')
    with pytest.raises(DataError, match=r"r.jsonl, line 2: a lone surrogate"):
        read_requests(str(tmp_path / "r.jsonl"))
    (tmp_path / "p.txt").write_bytes("name : A\nname : \ud800\n".encode("utf-8", "surrogatepass"))  # not UTF-8
    with pytest.raises(DataError, match=r"p.txt: cannot read it"):
        read_prompts(str(tmp_path / "p.txt"))


@pytest.mark.parametrize("bad", [{"prefix": "p.safetensors", "source": None}, {"prefix": "p", "source": ["a", 1]},
                                 {"prefix": "p", "source": 5}, {"prefix": "p", "source": ""}, ["p", "a"]])
def test_requests_need_two_non_empty_strings(bad, tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_text(json.dumps({"prefix": "p", "source": "name : A"}) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match="line 2"):
        read_requests(str(path))


@pytest.mark.parametrize("key, value", [("n_layer", 10**9), ("n_embd", 10**12), ("vocab_size", 10**12),
                                        ("n_positions", 10**12)])
def test_huge_config_sizes_are_refused_before_allocating(key, value, done_run, tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to(done_run / "base" / "model.safetensors")  # 2 layers
    config = json.loads((done_run / "base" / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {key: value}))
    start = time.monotonic()
    with pytest.raises(CheckpointError, match=f"{key}={value}"):
        GPT.from_pretrained(folder)
    assert time.monotonic() - start < 2


# --- memory that follows a number: refused before any work, naming the flag and the memory it needs -------------

@pytest.mark.parametrize("flags", [["--init-from", "random:1000000x64"], ["--prefix-mid", "1000000000"]])
def test_huge_model_or_prefix_is_refused_before_allocating(flags, data_dir, tmp_path):
    with deadline(5), pytest.raises((train.TrainError, PrefixError), match=rf"{flags[0]} {flags[1]}.*needs about "
                                                                          rf"[\d.e+]+ GiB of memory"):
        train.main(argv(tmp_path / "out", data_dir, "--max-steps", "1", *flags))
    assert not (tmp_path / "out").exists()


def test_batch_or_beams_beyond_memory_are_refused(done_run, data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(cli.os, "sysconf", lambda name: 4096)  # a machine of 16 MiB: the tiny model fits
    with pytest.raises(train.TrainError, match=r"--batch-size 8: needs about .* this machine has 0.0156 GiB"):
        train.main(argv(tmp_path / "out", data_dir, "--max-steps", "1", "--batch-size", "8"))
    assert not (tmp_path / "out").exists()
    beam_refused([*decode_args(done_run, data_dir, tmp_path), "--beams", "100"], "--beams 100")
    assert not (tmp_path / "o.jsonl").exists()


def test_max_bound_names_the_flag(done_run, data_dir, tmp_path):
    @dataclass
    class Config:
        top_p: float = cli.arg(1.0, "mass kept", min=0, max=1)
    assert cli.parse(Config, ["--top-p", "1"], None, ValueError).top_p == 1
    with pytest.raises(ValueError, match=r"^--top-p=1.5: must be at most 1\.$"):
        cli.parse(Config, ["--top-p", "1.5"], None, ValueError)
    beam_refused([*decode_args(done_run, data_dir, tmp_path), "--sample", "--top-p", "1.5"], "--top-p=1.5: must be")


def test_num_return_without_sample_is_refused(done_run, data_dir, tmp_path):
    """Beam search returns one hypothesis a prompt: --num-return 3 without --sample was silently ignored."""
    beam_refused([*decode_args(done_run, data_dir, tmp_path), "--num-return", "3"], "--num-return is for --sample")
    assert not (tmp_path / "o.jsonl").exists()


def test_full_disk_in_safetensors_is_one_checkpoint_error(done_run, tmp_path, monkeypatch):
    def full(*a, **k):  # what safetensors raises on ENOSPC: its own error, not an OSError
        raise SafetensorError("No space left on device (os error 28)")
    for module in (files.checkpoint, files.tuned):
        monkeypatch.setattr(module, "save_file", full, raising=False)
    model = GPT.from_pretrained(done_run / "base")
    x = {"a": torch.ones(1)}
    for name, write in {"model.safetensors": lambda: save_pretrained(model, tmp_path),
                        "x.safetensors": lambda: tuned.write(tmp_path / "x.safetensors", x, model, {}),
                        PEFT_WEIGHTS: lambda: tuned.write_peft(tmp_path, {"peft_type": "P"}, torch.ones(1, 1))}.items():
        with pytest.raises(CheckpointError, match=rf"{tmp_path / name}: could not write it \(No space.*Free space"):
            write()
    assert [p.name for p in tmp_path.iterdir() if ".safetensors" in p.name] == []  # no temp file left


def test_damaged_run_files_are_one_line_errors_or_dropped(done_run, data_dir, tmp_path, capsys):
    out = shutil.copytree(done_run, tmp_path / "run")
    (out / DONE_FILE).unlink()  # not finished: --resume continues from resume/
    state = (out / "resume" / "state.json").read_text()
    (out / "resume" / "state.json").write_text("[" * 100_000)
    with pytest.raises(RunFolderError, match=r"state.json: unreadable \(JSON nested too deeply\)"):
        train.main(argv(out, data_dir, "--max-steps", "2", "--resume"))
    (out / "resume" / "state.json").write_text(state)
    (out / "log.jsonl").write_bytes(b"[" * 100_000 + b"\n\xff\xfe\n" + (out / "log.jsonl").read_bytes())
    capsys.readouterr()
    train.main(argv(out, data_dir, "--max-steps", "2", "--resume"))
    assert "skipped 2 torn line(s)" in capsys.readouterr().out and steps(out) == [1, 2]
    (out / "args.json").write_text(json.dumps(json.loads((out / "args.json").read_text()) | {"labels": 5}))
    with pytest.raises(RunFolderError, match="'labels' is not a list of names"):
        read_run(out)

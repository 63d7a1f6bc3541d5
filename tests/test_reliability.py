"""Issue 13, "nothing silently wrong, nothing lost": each numbered point checked through train.py and beam.py.

A kill, a full disk, a damaged or hostile file, a bad flag, a second run into the same folder: each ends in exact
continuation or in one line naming what is wrong and the fix, never in a traceback, junk output or lost work.
Faults are injected only where nothing else can cause them (a full disk: fsync raising ENOSPC).
    python -m pytest -q tests/test_reliability.py
"""
import errno
import json
import os
import runpy
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import beam
import files.run as runfolder
import prefix
import train
import tuners
from conftest import beam_refused, place_rows
from data import DataError
from files.checkpoint import CheckpointError
from files.run import RunFolderError
from model import GPT

HANDLED = (train.TrainError, DataError, CheckpointError, RunFolderError, prefix.PrefixError)


pytestmark = pytest.mark.usefixtures("no_plots")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return place_rows(tmp_path_factory.mktemp("data"), 16)


def argv(ckpt, out, data_dir, *extra) -> list[str]:
    """A tiny run on CPU, where resume is bit-exact (CUDA's backward kernels need not be)."""
    return ["--init-from", str(ckpt), "--data-dir", str(data_dir), "--train-split", "train.jsonl", "--valid-split",
            "", "--batch-size", "2", "--log-every", "1", "--device", "cpu", "--out-dir", str(out), *extra]


def refused(args: list[str], match: str) -> str:
    """train.main must raise one of the errors train.py's __main__ prints as one line."""
    with pytest.raises(HANDLED, match=match) as e:
        train.main(args)
    assert "\n" not in str(e.value)
    return str(e.value)


def losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


def copy_ckpt(src, dst, change=None, **config):
    """A copy of a checkpoint folder, its tensors passed through `change`, its config.json updated."""
    shutil.copytree(src, dst)
    if change:
        save_file(change(load_file(dst / "model.safetensors")), dst / "model.safetensors", metadata={"format": "pt"})
    if config:
        cfg = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps(cfg | config))
    return dst


@pytest.fixture(scope="module")
def done_run(tiny_ckpt, data_dir, tmp_path_factory):
    """A finished 2-step prefix run with its resume checkpoint, for the tests that damage a copy of it."""
    out = tmp_path_factory.mktemp("run") / "run"
    train.main(argv(tiny_ckpt, out, data_dir, "--max-steps", "2"))
    return out


# --- 1. exact resume from a Hugging Face folder, for every tuner ------------------------------------------------

@pytest.mark.parametrize("name", list(tuners.TUNERS))
def test_sigterm_then_resume_is_exact_for_every_tuner(name, tiny_ckpt, data_dir, tmp_path, monkeypatch, capsys):
    extra = ["--tuner", name, "--max-steps", "3", "--save-every", "100"]
    train.main(argv(tiny_ckpt, tmp_path / "whole", data_dir, *extra))
    steps = argv(tiny_ckpt, tmp_path / "cut", data_dir, *extra)
    real, sent = train.save_step, []

    def save_step(out, done, *a, **k):  # SIGTERM lands after step 1 decided not to save: step 2 must save and stop
        real(out, done, *a, **k)
        if not sent:
            sent.append(os.kill(os.getpid(), signal.SIGTERM))
    monkeypatch.setattr(train, "save_step", save_step)
    with pytest.raises(SystemExit) as stopped:  # not finished: 128 + SIGTERM, so `train.py && beam.py` stops
        train.main(steps)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert "stopped by SIGTERM after step 2" in capsys.readouterr().out
    assert json.loads((tmp_path / "cut" / "resume" / "state.json").read_text())["step"] == 2
    train.main([*steps, "--resume"])
    assert losses(tmp_path / "cut") == losses(tmp_path / "whole")  # bit-identical on CPU
    files = sorted(f.name for f in (tmp_path / "whole").glob("*.safetensors"))
    assert files and files == sorted(f.name for f in (tmp_path / "cut").glob("*.safetensors"))
    for f in files:
        whole, cut = load_file(tmp_path / "whole" / f), load_file(tmp_path / "cut" / f)
        assert whole.keys() == cut.keys() and all(torch.equal(whole[k], cut[k]) for k in whole), f


# --- 2. numbers range-checked up front, naming the flag ---------------------------------------------------------

@pytest.mark.parametrize("extra,flag", [(["--grad-clip", "-1"], "--grad-clip"), (["--max-steps", "-5"], "--max-steps"),
                                        (["--valid-limit", "-3"], "--valid-limit"), (["--lr", "-1"], "--lr"),
                                        (["--lr", "nan"], "--lr")])
def test_train_flags_are_range_checked(extra, flag, tmp_path, data_dir):
    refused(argv("random:tiny", tmp_path / "out", data_dir, *extra), flag)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra,flag", [(["--batch-size", "0"], "--batch-size"), (["--limit", "-1"], "--limit"),
                                        (["--beams", "100000"], "--beams"), (["--ban", "-1"], "--ban"),
                                        (["--ban", "99999"], "--ban"), (["--ban", "50256"], "EOS")])
def test_beam_flags_are_range_checked(extra, flag, tiny_ckpt, data_dir, tmp_path):
    beam_refused(["--ckpt", str(tiny_ckpt), "--prompts", str(data_dir / "prompts.txt"), "--out",
                  str(tmp_path / "out.jsonl"), *extra], flag)
    assert not (tmp_path / "out.jsonl").exists()


# --- 3. damaged checkpoints refused by name; bfloat16 said aloud ---------------------------------------------------

def poke(name: str, change):
    """A state-dict edit: `change` applied to the tensor whose key ends in `name` (HF may prefix "transformer.")."""
    return lambda sd: {k: change(v) if k.endswith(name) else v for k, v in sd.items()}


@pytest.mark.parametrize("change,config,match", [
    (poke("h.0.mlp.c_fc.weight", lambda t: t * float("nan")), {}, "h.0.mlp.c_fc.weight' holds NaN"),
    (poke("h.1.ln_1.bias", lambda t: t.to(torch.int8)), {}, "h.1.ln_1.bias' is torch.int8"),
    (None, {"layer_norm_epsilon": -1}, "layer_norm_epsilon=-1"),
])
def test_damaged_checkpoint_names_the_tensor(change, config, match, tiny_ckpt, tmp_path):
    with pytest.raises(CheckpointError, match=match):
        GPT.from_pretrained(copy_ckpt(tiny_ckpt, tmp_path / "ckpt", change, **config))


def test_bfloat16_checkpoint_trains_in_float32(tiny_ckpt, data_dir, tmp_path):
    ckpt = copy_ckpt(tiny_ckpt, tmp_path / "bf16", lambda sd: {k: v.bfloat16() for k, v in sd.items()})
    with pytest.warns(UserWarning, match=r"\['torch.bfloat16'\], loaded as float32"):
        train.main(argv(ckpt, tmp_path / "out", data_dir, "--tuner", "fine", "--max-steps", "1", "--dtype", "float32"))
    assert {t.dtype for t in load_file(tmp_path / "out" / "model.safetensors").values()} == {torch.float32}


# --- 4. NaN never written: not by beam.py, not at the end of training ---------------------------------------------

def test_prefix_giving_nan_logits_stops_beam(tiny_ckpt, data_dir, tmp_path):
    model = GPT.from_pretrained(tiny_ckpt)
    c = model.config
    huge = [tuple(torch.full((1, c.n_head, 3, c.head_dim), 3e38) for _ in "kv") for _ in range(c.n_layer)]  # finite
    prefix.save(tmp_path / "huge.safetensors", huge, model, "mlp")
    beam_refused(["--ckpt", str(tiny_ckpt), "--prefix", str(tmp_path / "huge.safetensors"), "--prompts",
                  str(data_dir / "prompts.txt"), "--max-new-tokens", "2", "--out", str(tmp_path / "o.jsonl")], "NaN")
    assert not (tmp_path / "o.jsonl").exists()


def test_training_ending_in_nan_writes_nothing(tiny_ckpt, data_dir, tmp_path, monkeypatch):
    refused(argv(tiny_ckpt, tmp_path / "inf", data_dir, "--max-steps", "1", "--lr", "1e39"), "NaN/Inf")
    assert not (tmp_path / "inf" / "prefix.safetensors").exists()
    assert not (tmp_path / "inf" / "resume" / "state.json").exists()  # no checkpoint of infinite weights either
    real, scale = train.nll_sum, iter([1.0, float("nan")])  # the last step's loss is NaN
    monkeypatch.setattr(train, "nll_sum", lambda loss, targets: real(loss, targets) * next(scale))
    refused(argv(tiny_ckpt, tmp_path / "nan", data_dir, "--max-steps", "2", "--save-every", "1"), "step 2: loss nan")
    assert json.loads((tmp_path / "nan" / "resume" / "state.json").read_text())["step"] == 1
    assert not (tmp_path / "nan" / "prefix.safetensors").exists()


# --- 5. prompts split on \n only -------------------------------------------------------------------------------

def test_prompt_lines_split_on_newline_only(tiny_ckpt, tmp_path):
    lines = ["one\u2028two", "three\x85four\x0cfive"]
    (tmp_path / "p.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    beam.main(["--ckpt", str(tiny_ckpt), "--prompts", str(tmp_path / "p.txt"), "--beams", "1", "--max-new-tokens",
               "1", "--out", str(tmp_path / "o.jsonl")])
    rows = (tmp_path / "o.jsonl").read_text(encoding="utf-8").split("\n")[:-1]
    assert [json.loads(row)["prompt"] for row in rows] == lines


# --- 7-9. one run owns its folder ------------------------------------------------------------------------------

def test_second_run_is_refused_while_the_lock_is_held(data_dir, tmp_path):
    """The lock is the kernel's (flock): a live holder refuses the second run, naming its pid; once the holder is
    dead (kill -9, no clean-up), the same command runs, though .lock still names the dead pid."""
    out = tmp_path / "out"
    out.mkdir()
    hold = ("import fcntl, os, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
            "f.truncate(0); f.write(str(os.getpid())); f.flush(); print('ready', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        refused(argv("random:tiny", out, data_dir), f"another train.py \\(pid {holder.pid}\\)")
    finally:
        holder.kill()
        holder.wait()
    assert (out / ".lock").read_text() == str(holder.pid)  # the dead holder's pid is still written there
    train.main(argv("random:tiny", out, data_dir))
    assert (out / "done.json").is_file()


def snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()}


def test_used_out_dir_is_refused_and_untouched(done_run, tiny_ckpt, data_dir):
    before = snapshot(done_run)
    refused(argv(tiny_ckpt, done_run, data_dir, "--max-steps", "2"), "already holds a run.*--overwrite")
    assert snapshot(done_run) == before


@pytest.mark.parametrize("name", tuners.STANDALONE)
def test_fine_tuning_into_its_own_base_is_refused(name, tiny_ckpt, data_dir, tmp_path):
    base = copy_ckpt(tiny_ckpt, tmp_path / "base")
    (tmp_path / "link").symlink_to(base)
    before = snapshot(base)
    for out in (base, tmp_path / "link"):
        refused(argv(base / "model.safetensors", out, data_dir, "--tuner", name), "overwrite its base")
    assert snapshot(base) == before


# --- 10. a full disk loses nothing -----------------------------------------------------------------------------

def disk_full_at(monkeypatch, name: str, skip: int = 0) -> list:
    """After `skip` good writes, fsync of the temp file written for `name` reports ENOSPC (the disk filled up),
    until the returned list is cleared (space freed)."""
    real, seen, full = os.fsync, [], [True]

    def fsync(fd):
        if full and name in os.readlink(f"/proc/self/fd/{fd}") and len(seen.append(fd) or seen) > skip:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    return full


@pytest.mark.parametrize("name,skip", [("step2.safetensors", 0), ("state.json", 1)])  # the save at step 2
def test_disk_full_at_a_checkpoint_keeps_the_previous_one(name, skip, tiny_ckpt, data_dir, tmp_path, monkeypatch):
    out, steps = tmp_path / "out", ["--max-steps", "2", "--save-every", "1"]
    full = disk_full_at(monkeypatch, name, skip)
    monkeypatch.setattr(sys, "argv", ["train.py", *argv(tiny_ckpt, out, data_dir, *steps)])
    with pytest.raises(SystemExit) as e:  # as the user runs it: train.py's own one-line error
        runpy.run_path(str(train.__file__), run_name="__main__")
    assert str(e.value.code).startswith("train.py: error: step 2:") and "\n" not in str(e.value.code)
    assert "No space left on device" in str(e.value.code) and "None" not in str(e.value.code)
    assert sorted(os.listdir(out / "resume")) == ["state.json", "step1.safetensors"]
    assert json.loads((out / "resume" / "state.json").read_text())["step"] == 1
    assert not list(out.rglob("*.tmp")) and not (out / "prefix.safetensors").exists()
    full.clear()
    train.main(argv(tiny_ckpt, out, data_dir, *steps, "--resume"))
    assert (out / "prefix.safetensors").is_file()


def test_disk_full_at_the_final_save_keeps_the_checkpoint(tiny_ckpt, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    full = disk_full_at(monkeypatch, "prefix.safetensors")
    refused(argv(tiny_ckpt, out, data_dir, "--max-steps", "1"), "No space left on device.*--resume")
    assert not (out / "prefix.safetensors").exists() and not list(out.rglob("*.tmp"))
    full.clear()
    train.main(argv(tiny_ckpt, out, data_dir, "--max-steps", "1", "--resume"))  # 0 steps left: just the save
    assert (out / "prefix.safetensors").is_file()


# --- 11-12. --resume refuses what is not this run's, and says why ------------------------------------------------

def test_resume_refused_after_the_base_changed(tiny_ckpt, data_dir, tmp_path):
    base = copy_ckpt(tiny_ckpt, tmp_path / "base")
    train.main(argv(base, tmp_path / "out", data_dir, "--max-steps", "1"))
    copy_ckpt(tiny_ckpt, tmp_path / "new", lambda sd: {k: v + 0.01 for k, v in sd.items()})
    os.replace(tmp_path / "new" / "model.safetensors", base / "model.safetensors")
    (tmp_path / "out" / "done.json").unlink()  # killed after its last checkpoint, before the done mark
    refused(argv(base, tmp_path / "out", data_dir, "--max-steps", "1", "--resume"), "weights changed")


def set_state(folder, **fields):
    path = folder / "resume" / "state.json"
    path.write_text(json.dumps({k: v for k, v in (json.loads(path.read_text()) | fields).items() if v is not None}))


def set_tensors(folder, change):
    path = folder / "resume" / "step2.safetensors"
    save_file(change(load_file(path)), path)


@pytest.mark.parametrize("damage,match", [
    (lambda f: (f / "resume" / "state.json").write_text('{"step": 2, "fi'), "state.json: unreadable"),
    (lambda f: (f / "resume" / "step2.safetensors").unlink(), "step2.safetensors: missing or damaged"),
    (lambda f: (f / "resume" / "step2.safetensors").write_bytes(b"\x10\x00"), "step2.safetensors: missing or damaged"),
    (lambda f: set_state(f, file=None), "expected"),
    (lambda f: set_state(f, step=-2), "N >= 0"),
    (lambda f: set_tensors(f, lambda t: {k: v for k, v in t.items() if not k.endswith("weight/exp_avg")}), "exp_avg"),
    (lambda f: set_tensors(f, lambda t: {k: v[:1] if k.startswith("param/") else v for k, v in t.items()}),
     "wrong shape"),
])
def test_damaged_resume_files_are_refused_clearly(damage, match, done_run, tiny_ckpt, data_dir, tmp_path):
    out = shutil.copytree(done_run, tmp_path / "run")
    (out / "done.json").unlink()  # killed after its last checkpoint, before the done mark
    damage(out)
    refused(argv(tiny_ckpt, out, data_dir, "--max-steps", "2", "--resume"), match)


def test_torn_log_line_is_dropped_and_reported(done_run, tiny_ckpt, data_dir, tmp_path, capsys):
    out = shutil.copytree(done_run, tmp_path / "run")
    (out / "done.json").unlink()  # killed after its last checkpoint, before the done mark
    with (out / "log.jsonl").open("a") as f:
        f.write('{"step": 3, "lo')
    train.main(argv(tiny_ckpt, out, data_dir, "--max-steps", "2", "--resume"))
    assert "skipped 1 torn line" in capsys.readouterr().out
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2]


def test_setup_errors_are_clear(tiny_ckpt, data_dir, tmp_path):
    (tmp_path / "file").write_text("x")
    refused(argv(tiny_ckpt, tmp_path / "file", data_dir), "is a file")
    refused(argv(tiny_ckpt, tmp_path / "o", data_dir, "--prefix-init", "word " * 200), "n_positions=128")
    bad_vocab = copy_ckpt(tiny_ckpt, tmp_path / "vocab")
    (bad_vocab / "vocab.json").write_text('["not", "a", "vocab"]')
    refused(argv(bad_vocab, tmp_path / "o", data_dir), "vocab.json")
    if not torch.cuda.is_available():
        refused(argv(tiny_ckpt, tmp_path / "o", data_dir, "--device", "cuda"), "--device cuda")
        beam_refused(["--ckpt", str(tiny_ckpt), "--prompts", str(data_dir / "prompts.txt"), "--device", "cuda"],
                     "--device cuda")
    assert not (tmp_path / "o").exists()


def test_beam_out_folder_refused_before_loading(tiny_ckpt, data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(beam, "open_run", lambda *a, **k: pytest.fail("loaded a model before checking --out"))
    beam_refused(["--ckpt", str(tiny_ckpt), "--prompts", str(data_dir / "prompts.txt"), "--out", str(tmp_path)],
                 "is a folder")


# --- 13. hostile config.json fails fast, by name -----------------------------------------------------------------

@pytest.mark.parametrize("config,match", [
    ({"n_layer": 10**6}, "n_layer=1000000"), ("/dev/zero", "not a regular file"), ({"n_head": 0}, "at least 1"),
    ({"n_head": 3}, "divisible"), ({"n_embd": "32"}, "n_embd='32'"), ({"n_embd": 32.0}, "n_embd=32.0"),
    ({"n_positions": None}, "n_positions=None"), ([1, 2], "one JSON object"),
])
def test_hostile_config_is_refused_fast(config, match, tiny_ckpt, tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to(tiny_ckpt / "model.safetensors")
    if config == "/dev/zero":
        (folder / "config.json").symlink_to("/dev/zero")
    else:
        good = json.loads((tiny_ckpt / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(good | config if isinstance(config, dict) else config))
    start = time.monotonic()
    with pytest.raises(CheckpointError, match=match):
        GPT.from_pretrained(folder)
    assert time.monotonic() - start < 2


# --- 14-17. files: no planted link followed, no device replaced, no path sent to the hub, the umask kept ---------

def test_planted_temp_link_not_followed_and_files_follow_the_umask(tiny_ckpt, data_dir, tmp_path):
    out, victim = tmp_path / "out", tmp_path / "victim"
    out.mkdir()
    victim.write_text("keep me")
    for name in ("args.json.tmp", "prefix.safetensors.tmp", "log.jsonl.tmp"):
        (out / name).symlink_to(victim)
    umask = os.umask(0o022)
    try:
        train.main(argv(tiny_ckpt, out, data_dir, "--max-steps", "1"))
        os.umask(0o027)
        runfolder.write_json(tmp_path / "strict.json", {})
    finally:
        os.umask(umask)
    assert victim.read_text() == "keep me" and (out / "args.json").is_file() and not (out / "args.json").is_symlink()
    for path in [out / "prefix.safetensors", out / "args.json", *out.glob("resume/*")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert stat.S_IMODE((tmp_path / "strict.json").stat().st_mode) == 0o640


@pytest.mark.skipif(not os.access("/dev/null", os.W_OK), reason="/dev/null not writable")
def test_beam_out_dev_null_stays_a_device(tiny_ckpt, data_dir, monkeypatch):
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: pytest.fail(f"renamed onto {dst}")
                        if os.path.realpath(dst).startswith("/dev/") else real(src, dst))
    beam.main(["--ckpt", str(tiny_ckpt), "--prompts", str(data_dir / "prompts.txt"), "--beams", "1",
               "--max-new-tokens", "1", "--out", "/dev/null"])
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.mark.parametrize("typo", ["rp/ckk", "./ckk", "ckk/", "weights.safetensors"])
def test_typo_path_is_never_sent_to_the_hub(typo, data_dir, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail(f"{typo} sent to the hub"))
    monkeypatch.chdir(tmp_path)
    refused(argv(typo, tmp_path / "o", data_dir), "no such folder")
    beam_refused(["--ckpt", typo, "--prompts", str(data_dir / "prompts.txt")], "no such folder")

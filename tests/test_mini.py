"""scripts/mini.py through reproduce.py: bases pretrained on text without E2E, then the tuners on E2E, and its table.

The driver at its smallest settings (one 1x64 base, 4 steps; 2 steps per E2E run; 2 test MRs). To fit the suite's
budget, train.py and beam.py run in this process instead of as the subprocesses reproduce.run starts (test_reproduce
runs those), and the scorer is E2E's BLEU and NIST alone: the Java metrics start two JVMs per run (test_eval checks
them), so METEOR, ROUGE_L and CIDEr read 0 here.
"""
import contextlib
import csv
import io
import json
import re
import sys
import time

import pytest

from conftest import ROOT, E2E_DIR

sys.path.insert(0, str(ROOT / "scripts"))
import beam  # noqa: E402
import mini  # noqa: E402
import pipeline  # noqa: E402
import reproduce  # noqa: E402
import train  # noqa: E402
from eval import read_outputs, read_refs  # noqa: E402
from eval.bleu_nist import bleu_nist  # noqa: E402

TINY = ["--bases", "1x64", "--base-steps", "4", "--base-eval", "2", "--base-valid", "16", "--steps", "2", "--limit",
        "2", "--sizes", "100", "--seeds", "1", "--tuners", "prefix", "fine"]


def in_process(cmd: list[str], log) -> tuple[float, float]:
    """reproduce.run without a new Python: `python train.py ARGS` is train.main(ARGS)."""
    t0 = time.time()
    {"train.py": train.main, "beam.py": beam.main}[cmd[1]](cmd[2:])
    return time.time() - t0, 0.0


def bleu_nist_only(out, group: str, task: str) -> dict:
    bleu, nist = bleu_nist(read_refs(out / "test.refs.txt"), read_outputs(out / "test.txt"))
    return {"BLEU": bleu, "NIST": nist, "METEOR": 0.0, "ROUGE_L": 0.0, "CIDEr": 0.0}


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory):
    """One tiny `mini` run, then the same command again (every step cached); both outputs and the folders."""
    tmp = tmp_path_factory.mktemp("mini")
    argv = ["mini", *TINY, "--work", str(tmp / "runs" / "mini"), "--results", str(tmp / "results")]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "run", in_process)
        mp.setattr(pipeline, "score", bleu_nist_only)
        outputs = []
        for _ in range(2):
            with contextlib.redirect_stdout(io.StringIO()) as out:
                reproduce.main(argv)
            outputs.append(out.getvalue())
    return tmp, outputs


@pytest.mark.slow
def test_mini_writes_every_row(mini_run):
    tmp, (first, _) = mini_run
    assert "ETA ~" in first.split("\n")[1]  # the plan and its ETA come first
    rows = json.loads((tmp / "results" / "mini.json").read_text())
    assert [r["run"] for r in rows] == ["1x64-prefix-seed1", "1x64-fine-seed1", "1x64-random-prefix-seed1",
                                        "1x64-random-fine-seed1", "1x64-prefix-low100-seed1", "1x64-fine-low100-seed1"]
    runs = tmp / "runs" / "mini"
    base = json.loads((runs / "1x64-prefix-seed1" / "args.json").read_text())["init_from"]
    assert base == str(runs / "base-1x64" / "best")  # the pretrained base's lowest-validation weights
    assert json.loads((runs / "1x64-random-fine-seed1" / "args.json").read_text())["init_from_arg"] == "random:1x64"
    low = json.loads((runs / "1x64-prefix-low100-seed1" / "args.json").read_text())
    assert (low["train_limit"], low["subset_seed"]) == (100, 1)
    md = (tmp / "results" / "mini.md").read_text()
    for line in ("| 1x64 | 3.33M | 0.05M | 4 (64) |", "| 1x64 | prefix |", "| 1x64 | fine |", "| 1x64 | prefix, random "
                 "base |", "| 1x64 | fine, random base |", "| 100 |", "prefix − fine", "## Why the scales differ"):
        assert line in md
    assert "70.3 vs 68.8" in md  # the paper's claim beside ours


@pytest.mark.slow
def test_mini_reuses_what_it_finished(mini_run):
    tmp, (_, second) = mini_run
    assert "to do: 0 of 1 bases, 0 of 6 runs" in second
    assert f"reusing the trained base {tmp / 'runs' / 'mini' / 'base-1x64'}" in second
    assert second.count("reusing the finished training run") == 6


@pytest.mark.slow
def test_base_texts_hold_no_e2e(mini_run):
    """DART's dev set holds E2E's own references (annotations from "e2e"): none of them reaches a base."""
    tmp, _ = mini_run
    data = tmp / "runs" / "mini" / "base-data"
    texts = [json.loads(line)["text"] for name in ("train", "valid") for line in open(data / f"{name}.jsonl")]
    assert len(texts) == len(set(texts)) > 20_000
    with open(E2E_DIR / "testset_w_refs.csv", newline="") as f:
        names = {n for row in csv.DictReader(f) for n in re.findall(r"name\[([^\]]+)\]", row["mr"])}
    assert len(names) == 18 and not [t for t in texts if any(n in t for n in names)]


@pytest.mark.slow
def test_base_e2e_nll_matches_transformers(mini_run):
    """The untuned base's NLL on E2E test references (the bases table's column) is transformers' loss on the same
    tokens: GPT2LMHeadModel on each (MR, reference) in the template, the MR masked out, summed over target tokens."""
    import torch
    from transformers import GPT2LMHeadModel

    from data import example, read_rows
    from files.tokenizer import load_tokenizer
    tmp, _ = mini_run
    base = tmp / "runs" / "mini" / "base-1x64"
    facts = json.loads((base / "facts.json").read_text())
    ref, tok = GPT2LMHeadModel.from_pretrained(base / "best").eval(), load_tokenizer(base / "best")
    total = count = 0.0
    for row in read_rows(str(E2E_DIR), "test")[:mini.E2E_NLL_ROWS]:
        idx, targets, _ = example(tok, row, [])
        # transformers shifts the labels itself (position t predicts label t+1): the whole text, labels one behind
        ids, labels = torch.tensor([idx + targets[-1:]]), torch.tensor([[-100] + targets])
        labels[labels < 0] = -100
        with torch.no_grad():
            loss = ref(ids, labels=labels).loss
        n = (labels != -100).sum().item()
        total, count = total + loss.item() * n, count + n
    assert facts["e2e_nll"] == pytest.approx(total / count, rel=1e-5)
    assert f"| {facts['e2e_nll']:.3f} |" in (tmp / "results" / "mini.md").read_text()
    assert facts["e2e_text"] is False


@pytest.mark.slow
def test_with_e2e_text_adds_dev_references_only(mini_run):
    """--with-e2e-text: E2E dev's references join the bases' texts, as text; no test reference does, and a work
    folder whose bases were trained otherwise is refused, not silently reused."""
    without, with_e2e = (set(sum(mini.base_texts(e2e_text=e), [])) for e in (False, True))
    added = with_e2e - without
    dev = {r.target.strip() for r in mini.read_rows(str(E2E_DIR), "dev")}
    test = {r.target.strip() for r in mini.read_rows(str(E2E_DIR), "test")}
    assert without < with_e2e and added <= dev and len(added) > 4000 and not added & (test - dev)
    tmp, _ = mini_run
    with pytest.raises(SystemExit, match="trained without E2E dev's text; give this run another --work"):
        reproduce.main(["mini", *TINY, "--with-e2e-text", "--work", str(tmp / "runs" / "mini"),
                        "--results", str(tmp / "results")])


@pytest.mark.slow
def test_smoke_uses_the_cached_base(mini_run, monkeypatch):
    """The README's first command picks up the small base `mini` trained beside it, and says so."""
    tmp, _ = mini_run
    seen = []

    def first_run(name, tuner, train_flags, decode_flags, a):
        seen.append(a.model)
        raise SystemExit

    monkeypatch.setattr(reproduce, "one_run", first_run)
    with pytest.raises(SystemExit):
        reproduce.main(["smoke", "--work", str(tmp / "runs" / "smoke")])
    with pytest.raises(SystemExit):
        reproduce.main(["smoke", "--work", str(tmp / "elsewhere" / "smoke")])
    assert seen == [str(tmp / "runs" / "mini" / "base-1x64" / "best"), "random:tiny"]


def test_quick_and_full_presets(monkeypatch):
    """--quick fills what the command line leaves open from its own preset, and works in WORK/quick."""
    given = []
    monkeypatch.setitem(reproduce.EXPERIMENTS, "mini", (given.append, "random:tiny"))
    reproduce.main(["mini", "--quick", "--steps", "3"])
    reproduce.main(["mini"])
    quick, full = (mini.settings(a) for a in given)
    assert (quick.bases, quick.seeds, quick.limit, quick.steps, quick.work.name) == (["1x64", "2x128"], [1], 20, 3,
                                                                                      "quick")
    assert (full.bases, full.seeds, full.limit, full.sizes, full.work.name) == (["4x128", "4x256"], [1, 2], 0,
                                                                                [100, 500], "mini")
    assert mini.spread([0.5, 0.7]) == "0.6000 ± 0.1414" and mini.spread([0.5]) == "0.5000"

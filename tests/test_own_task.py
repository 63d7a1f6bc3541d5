"""A user's own task: JSONL rows with a label instead of a source (the CPU poster's {"prefix": label, "text": ...}),
plain-text rows that train on every token, random:LxD bases, and GPT-2's dropout (train mode only).
    python -m pytest -q tests/test_own_task.py
"""
import json

import pytest
import torch
from transformers import GPT2LMHeadModel

import beam
import prefix
import train
from conftest import TINY, make_checkpoint
from data import IGNORE, example_ids, read_rows
from eval.__main__ import main as score
from model import GPT, GPTConfig
from files.tokenizer import load_tokenizer


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def reviews(tmp_path):
    """A tiny labelled set: the poster's format, two labels."""
    good = ["The food was great.", "Lovely place, friendly staff.", "Great coffee and a warm welcome."]
    bad = ["The food was cold.", "Rude staff and a long wait.", "Bad coffee, never again."]
    rows = [{"prefix": "positive", "text": t} for t in good] + [{"prefix": "negative", "text": t} for t in bad]
    write_jsonl(tmp_path / "train.jsonl", rows * 4)
    write_jsonl(tmp_path / "dev.jsonl", rows)
    return tmp_path


def test_rows_without_a_source_learn_every_token():
    tok = load_tokenizer()
    idx, targets = example_ids(tok, "", "Hello there, world.")
    assert idx[0] == tok.eot_token and IGNORE not in targets  # EOS starts the text; every token is predicted
    assert targets[-1] == tok.eot_token and targets[:-1] == idx[1:]


def test_jsonl_row_kinds(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [{"source": "a", "target": "b"}, {"prefix": "pos", "text": "c"},
                                                  {"text": "d"}])
    assert [tuple(r) for r in read_rows(tmp_path, "mixed")] == [("a", "b", ""), ("", "c", "pos"), ("", "d", "")]
    write_jsonl(path, [{"prefix": "pos"}])
    with pytest.raises(Exception, match='"prefix": "label"'):
        read_rows(tmp_path, "mixed")


def test_label_prefixes_train_decode_and_mix(tiny_ckpt, reviews, tmp_path, capsys):
    out = tmp_path / "run"
    train.main(["--init-from", str(tiny_ckpt), "--data-dir", str(reviews), "--train-split", "train",
                "--valid-split", "dev", "--batch-size", "4", "--max-steps", "30", "--lr", "1e-2", "--log-every", "5",
                "--out-dir", str(out)])
    run = json.loads((out / "args.json").read_text())
    assert run["labels"] == ["negative", "positive"] and run["template"] == ""
    losses = [json.loads(line)["tok_loss"] for line in (out / "log.jsonl").read_text().splitlines() if "tok_loss" in line]
    assert sum(losses[-2:]) < sum(losses[:2]) - 0.05, losses  # a random base: the prefix learns, slowly
    model = GPT.from_pretrained(tiny_ckpt)
    pos, neg = (prefix.load(out / f"{label}.safetensors", model) for label in ("positive", "negative"))
    assert not torch.equal(pos[0][0], neg[0][0])  # one prefix per label
    flags = ["--ckpt", str(out), "--beams", "2", "--max-new-tokens", "6"]
    capsys.readouterr()
    beam.main([*flags, "--label", "positive"])
    alone = capsys.readouterr().out
    beam.main([*flags, "--prefix", f"{out / 'positive.safetensors'}:1.0"])
    assert capsys.readouterr().out == alone  # --label L is L's prefix, from no source
    for alpha in (0.0, 0.25, 0.5, 0.75, 1.0):  # the poster's sweep: α·positive + (1−α)·negative
        beam.main([*flags, "--prefix", f"{out / 'positive.safetensors'}:{alpha}",
                   "--prefix", f"{out / 'negative.safetensors'}:{1 - alpha}"])
    assert len(capsys.readouterr().out.splitlines()) == 5
    (tmp_path / "p.txt").write_text("The food\n")
    with pytest.raises(SystemExit, match="pass --label"):  # a label run has no one prefix to decode with
        beam.main([*flags, "--prompts", str(tmp_path / "p.txt")])
    dev = [json.loads(line) for line in (reviews / "dev.jsonl").read_text().splitlines()]
    out_file = tmp_path / "dev.jsonl"  # the README's route: each label's output, scored against its own texts
    beam.main([*flags, "--data-dir", str(reviews), "--split", "dev", "--out", str(out_file)])
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [row["prefix"] for row in rows] == ["positive", "negative"]  # the label each output was made with
    assert rows[0]["text"].replace("\n", " ") + "\n" == alone  # positive's output is --label positive's
    refs = "".join("".join(row["text"] + "\n" for row in dev if row["prefix"] == label) + "\n"
                   for label in ("positive", "negative"))
    assert (tmp_path / "dev.refs.txt").read_text() == refs
    assert (tmp_path / "dev.txt").read_text().splitlines() == [row["text"] for row in rows]
    assert score([str(tmp_path / "dev.refs.txt"), str(tmp_path / "dev.txt"), "--task", "text"]) == 0


def test_rows_of_a_batch_take_their_labels_prefix(tiny_ckpt, reviews):
    """The label run's forward with per-row pasts equals running each row alone with its label's prefix."""
    model, tok = GPT.from_pretrained(tiny_ckpt), load_tokenizer(tiny_ckpt)
    tuner = prefix.PrefixTuner.build(model, tok, prefix.PrefixConfig(3, 16, "mlp", "", 0), labels=["a", "b"])
    idx = torch.randint(0, 50257, (3, 7), generator=torch.Generator().manual_seed(0))
    task = torch.tensor([1, 0, 1])
    with torch.no_grad():
        both = tuner(idx, task=task).logits
        for b in range(3):
            one = model(idx[b:b + 1], past_kv=tuner.prefixes[task[b]]()).logits
            torch.testing.assert_close(both[b:b + 1], one, atol=1e-5, rtol=0)


def test_labels_need_the_prefix_tuner(tiny_ckpt, reviews, tmp_path):
    with pytest.raises(Exception, match="one prefix per label"):
        train.main(["--tuner", "fine", "--init-from", str(tiny_ckpt), "--data-dir", str(reviews), "--train-split",
                    "train", "--valid-split", "", "--max-steps", "1", "--out-dir", str(tmp_path / "x")])


def test_random_shape_by_layers_and_width(tmp_path):
    lm = ["--data-dir", str(tmp_path), "--train-split", "lm.jsonl", "--valid-split", "", "--batch-size", "2"]
    write_jsonl(tmp_path / "lm.jsonl", [{"text": "plain text to model"}] * 4)
    train.main(["--init-from", "random:3x128", *lm, "--max-steps", "1", "--out-dir", str(tmp_path / "run")])
    config = json.loads((tmp_path / "run" / "base" / "config.json").read_text())
    assert (config["n_layer"], config["n_embd"], config["n_head"]) == (3, 128, 2)
    with pytest.raises(train.TrainError, match="random:LxD"):
        train.main(["--init-from", "random:3x100", *lm, "--out-dir", str(tmp_path / "bad")])


def test_dropout_in_train_mode_only(tiny_ckpt):
    """GPT-2's dropout (config.json's *_pdrop): off in eval mode (exact parity), on in train mode at its rate."""
    model = GPT.from_pretrained(tiny_ckpt)
    hf = GPT2LMHeadModel.from_pretrained(tiny_ckpt).eval()
    idx = torch.randint(0, 50257, (4, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(idx).logits, hf(idx).logits, atol=1e-4, rtol=0)  # eval: no drop
        model.train()
        assert not torch.equal(model(idx).logits, model(idx).logits)  # train: each forward drops anew
    rate = GPTConfig(**TINY, embd_pdrop=0.3)
    drop = GPT(rate).train().transformer.drop
    x = torch.ones(200_000)
    assert abs((drop(x) == 0).float().mean().item() - 0.3) < 0.01  # drops at the configured rate


def test_prefix_tunings_base_never_drops(tiny_ckpt, tmp_path):
    folder = make_checkpoint(tmp_path / "drop", **TINY, resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5)
    model, tok = GPT.from_pretrained(folder), load_tokenizer(folder)
    tuner = prefix.PrefixTuner.build(model, tok, prefix.PrefixConfig(3, 16, "mlp", "", 0)).train()
    assert not model.training and all(not m.training for m in model.modules())
    idx = torch.randint(0, 50257, (2, 9))
    with torch.no_grad():
        assert torch.equal(tuner(idx).logits, tuner(idx).logits)

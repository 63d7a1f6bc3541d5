"""beam.py's stream (continuous batching) against transformers' generate(num_beams=K) on each prompt alone.

A few prompts at a time share the batch and a finished prompt's rows go to the next one, so a prompt decodes
beside others that joined earlier or later, at other columns of the preallocated cache: its output must still be
what generate makes of that prompt alone. test_beam.py's sharp checkpoint makes EOS end some beams early, so
prompts leave at varied steps; the stream runs long enough to compact its columns. beam.py's two scale-outs,
torchrun shards and many tasks in one stream (--requests), must write what one process and one task at a time do.
    python -m pytest -q tests/test_search.py
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import data
import prefix
import beam as search
from beam import main
from conftest import ROOT
from model import GPT
from beam import BeamConfig, beam_search
from test_beam import SCORE_ATOL, past_for, reference, sharp  # noqa: F401  (sharp is a fixture)
from files.tokenizer import load_tokenizer

NEW = 8  # max_new_tokens: a few prompts end at once, most later, some at 8


def test_stream_equals_each_prompt_alone(sharp, monkeypatch):  # noqa: F811
    ours, ref, eos, prompts = sharp
    compactions = []
    compact = search.Rows.compact
    monkeypatch.setattr(search.Rows, "compact", lambda self, *a, **kw: compactions.append(1) or compact(self, *a, **kw))
    cfg = BeamConfig(beams=3, max_new_tokens=NEW, eos=eos, no_repeat_ngram_size=3, length_penalty=0.8)
    hyps = beam_search(ours, prompts, cfg, batch_size=3)
    expected = [reference(ref, [p], cfg)[0] for p in prompts]  # generate on each prompt alone
    assert [h.tokens for h in hyps] == [tokens for tokens, _ in expected]
    assert max(abs(h.score - score) for h, (_, score) in zip(hyps, expected)) <= SCORE_ATOL
    lengths = {len(h.tokens) for h in hyps}
    assert min(lengths) < NEW and len(lengths) >= 3, lengths  # prompts really leave at different steps
    assert compactions


def test_tasks_mixed_in_one_stream(sharp):  # noqa: F811
    """Three prefixes of different lengths, rows of all three in every batch (past_rows), against each task's
    prompts decoded alone with its own prefix."""
    ours, _, eos, prompts = sharp
    prompts = prompts[:24]
    pasts = [past_for(ours, P, seed=P) for P in (2, 5, 3)]
    task = [i % 3 for i in range(len(prompts))]
    cfg = BeamConfig(beams=2, max_new_tokens=NEW, eos=eos)
    stacked, key_mask = prefix.stack(pasts)
    mixed = beam_search(ours, prompts, cfg, stacked, key_mask, past_rows=task, batch_size=4)
    for u, past in enumerate(pasts):
        mine = [i for i in range(len(prompts)) if task[i] == u]
        alone = beam_search(ours, [prompts[i] for i in mine], cfg, past)
        assert [mixed[i].tokens for i in mine] == [h.tokens for h in alone]
        assert all(abs(mixed[i].score - h.score) <= SCORE_ATOL for i, h in zip(mine, alone))


# --- beam.py: torchrun shards, many tasks on one backbone ------------------------------------------------------

def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_torchrun_shards_write_one_output(tiny_ckpt, tmp_path):
    lines = ["Hello world", "The cat sat on the mat and looked", "A", "name[Blue Spice], eatType[pub]", "x y z"]
    (tmp_path / "p.txt").write_text("\n".join(lines) + "\n")
    argv = ["--ckpt", str(tiny_ckpt), "--prompts", str(tmp_path / "p.txt"), "--beams", "2", "--max-new-tokens",
            "4", "--batch-size", "2"]
    main([*argv, "--out", str(tmp_path / "one.jsonl")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(ROOT / "beam.py"), *argv, "--out", str(tmp_path / "two.jsonl")]
    run = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    one, two = read_jsonl(tmp_path / "one.jsonl"), read_jsonl(tmp_path / "two.jsonl")
    assert [r["prompt"] for r in two] == lines
    assert [(r["tokens"], r["score"]) for r in two] == [(r["tokens"], r["score"]) for r in one]


def test_requests_mix_tasks_in_one_stream(tiny_ckpt, tmp_path):
    """--requests: each row names its prefix; the output equals each task decoded alone, in the request order."""
    model, tok = GPT.from_pretrained(tiny_ckpt), load_tokenizer(tiny_ckpt)
    names = []
    for u, P in enumerate((3, 5)):
        names.append(str(tmp_path / f"task{u}.safetensors"))
        prefix.save(names[-1], past_for(model, P, seed=u), model, "direct")
    sources = ["name[Aromi], food[Chinese]", "name[Blue Spice]", "a b", "name[The Mill], area[riverside], near[X]",
               "c", "name[Zizzi], priceRange[cheap]"]
    requests = [{"prefix": names[i % 2], "source": s} for i, s in enumerate(sources)]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in requests))
    main(["--ckpt", str(tiny_ckpt), "--requests", str(tmp_path / "r.jsonl"), "--beams", "3", "--max-new-tokens", "6",
          "--batch-size", "2", "--out", str(tmp_path / "o.jsonl")])
    rows = read_jsonl(tmp_path / "o.jsonl")
    assert [(r["prefix"], r["prompt"]) for r in rows] == [(r["prefix"], r["source"]) for r in requests]
    cfg = BeamConfig(beams=3, max_new_tokens=6, banned=(198, 628))  # the recipe's template and bans, as --data-dir
    for u, name in enumerate(names):
        mine = [i for i in range(len(sources)) if i % 2 == u]
        alone = beam_search(model, [data.prompt_ids(tok, sources[i]) for i in mine], cfg, prefix.load(name, model))
        assert [rows[i]["tokens"] for i in mine] == [h.tokens for h in alone]


@pytest.mark.parametrize("line,says", [("not json", "line 2"), ('{"source": "x"}', "'prefix'"),
                                       ('{"prefix": "nope.safetensors", "source": "x"}', "nope")])
def test_requests_bad_rows(tiny_ckpt, tmp_path, line, says):
    model = GPT.from_pretrained(tiny_ckpt)
    prefix.save(tmp_path / "a.safetensors", past_for(model, 2, seed=0), model, "direct")
    good = json.dumps({"prefix": str(tmp_path / "a.safetensors"), "source": "y"})
    (tmp_path / "r.jsonl").write_text(f"{good}\n{line}\n")
    with pytest.raises(SystemExit) as e:
        main(["--ckpt", str(tiny_ckpt), "--requests", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "o.jsonl")])
    assert says in str(e.value.code)


def test_preallocated_cache_is_written_in_place(tiny_ckpt):
    """model.forward(write_at=c) writes the new keys into the buffer and equals the usual cat of a past."""
    model = GPT.from_pretrained(tiny_ckpt)
    idx = torch.randint(0, 50257, (2, 7))
    with torch.no_grad():
        out = model(idx[:, :5], use_cache=True)
        want = model(idx[:, 5:], past_kv=out.present_kv, use_cache=True)
        c = model.config
        buf = [tuple(torch.zeros(2, c.n_head, 9, c.head_dim) for _ in "kv") for _ in range(c.n_layer)]
        for (bk, bv), (k, v) in zip(buf, out.present_kv):
            bk[:, :, :5], bv[:, :, :5] = k, v
        got = model(idx[:, 5:], past_kv=buf, attention_mask=torch.ones(2, 7, dtype=torch.long), write_at=5)
    torch.testing.assert_close(got.logits, want.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(buf[1][0][:, :, :7], want.present_kv[1][0], atol=0, rtol=0)
    assert not buf[0][0][:, :, 7:].any()

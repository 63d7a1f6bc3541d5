"""beam.py against transformers' generate(num_beams=K, do_sample=False) on the same random checkpoints.

A random GPT-2 rarely says <|endoftext|>, so EOS would never end a beam and half the rules (finished set, length
penalty, stopping heuristic) would go untested. With initializer_range=0.2 the model is sharp (few tokens carry
the mass) and some tokens are favourite next tokens; the fixture takes the most frequent argmax as EOS, for both
searches (eos_token_id=EOS), and the prompts avoid it. Each comparison is 50 prompts of 1-12 tokens, batched and
left-padded on both sides (transformers: attention_mask, pad_token_id=EOS).
"""
import json
import shutil
from collections import Counter

import pytest
import torch
from transformers import DynamicCache, GPT2LMHeadModel

import prefix
from beam import BeamConfig, beam_search, main
from data import e2e_text
from conftest import E2E_DIR, make_checkpoint
from model import GPT
from files.tokenizer import load_tokenizer

SHARP = dict(n_layer=2, n_head=4, n_embd=64, n_positions=256)
NEW = 12        # max_new_tokens in the comparisons
SCORE_ATOL = 1e-4  # |Δ sequence score|, fp32 models that differ by ~1e-6 per logit


@pytest.fixture(scope="module")
def sharp(tmp_path_factory):
    """(ours, reference, EOS, 50 prompts) on one sharp random checkpoint."""
    folder = make_checkpoint(tmp_path_factory.mktemp("sharp"), seed=0, initializer_range=0.2, **SHARP)
    ours, ref = GPT.from_pretrained(folder), GPT2LMHeadModel.from_pretrained(folder).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        favourites = ours(torch.randint(0, 50257, (32, 16), generator=g)).logits.argmax(-1)
    eos = Counter(favourites.flatten().tolist()).most_common(1)[0][0]
    prompts = []
    for n in torch.randint(1, 13, (50,), generator=g).tolist():
        prompts.append([t if t != eos else t + 1 for t in torch.randint(0, 50256, (n,), generator=g).tolist()])
    return ours, ref, eos, prompts


def past_for(model, P, seed):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    return [tuple(torch.randn(1, c.n_head, P, c.head_dim, generator=g) for _ in range(2)) for _ in range(c.n_layer)]


@torch.no_grad()
def reference(ref, prompts, cfg, past=None, past_mask=None):
    """transformers' generate on the same batch -> [(tokens without EOS, sequence score or None)]."""
    B, T = len(prompts), max(map(len, prompts))
    idx = torch.tensor([[cfg.eos] * (T - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    kw = {}
    if past is not None:  # the prefix as a cache of B·K rows (generate does not expand a cache), mask extended
        past_mask = torch.ones(1, past[0][0].size(2), dtype=torch.long) if past_mask is None else past_mask
        mask = torch.cat([past_mask.expand(B, -1), mask], 1)
        rows = [tuple(t.expand(B, -1, -1, -1).repeat_interleave(cfg.beams, 0) for t in pair) for pair in past]
        kw["past_key_values"] = DynamicCache(ddp_cache_data=rows, config=ref.config)
    extra = {} if cfg.no_repeat_ngram_size == 0 else {"no_repeat_ngram_size": cfg.no_repeat_ngram_size}
    out = ref.generate(idx, attention_mask=mask, num_beams=cfg.beams, do_sample=False, eos_token_id=cfg.eos,
                       pad_token_id=cfg.eos, max_new_tokens=cfg.max_new_tokens, min_new_tokens=cfg.min_new_tokens,
                       length_penalty=cfg.length_penalty, early_stopping=cfg.early_stopping,
                       return_dict_in_generate=True, output_scores=True, **extra, **kw)
    scores = getattr(out, "sequences_scores", None)
    results = []
    for i in range(B):
        gen = out.sequences[i, T:].tolist()
        gen = gen[:gen.index(cfg.eos)] if cfg.eos in gen else gen
        results.append((gen, None if scores is None else scores[i].item()))
    return results


def assert_matches(hyps, expected):
    """Token-identical on all prompts but at most one (a near-tie can flip on a 1e-6 logit difference)."""
    same = [h.tokens == tokens for h, (tokens, _) in zip(hyps, expected)]
    assert sum(same) >= len(hyps) - 1, [(h.tokens, e) for h, e, s in zip(hyps, expected, same) if not s][:3]
    for h, (tokens, score), s in zip(hyps, expected, same):
        if s and score is not None:
            assert abs(h.score - score) <= SCORE_ATOL, (h, score)


@pytest.mark.parametrize("settings", [
    dict(beams=5),
    dict(beams=1),                                                     # greedy
    dict(beams=5, length_penalty=0.6),
    dict(beams=4, length_penalty=2.0, early_stopping="never"),
    dict(beams=5, early_stopping=True),
    dict(beams=5, no_repeat_ngram_size=2, min_new_tokens=3),
], ids=["K5", "greedy", "lp0.6", "never-lp2", "early-true", "ngram2-min3"])
def test_matches_transformers(sharp, settings):
    ours, ref, eos, prompts = sharp
    cfg = BeamConfig(max_new_tokens=NEW, eos=eos, **settings)
    hyps = beam_search(ours, prompts, cfg)
    assert_matches(hyps, reference(ref, prompts, cfg))
    if settings.get("early_stopping") != "never":  # EOS must really end some beams, or the test proves little
        assert any(len(h.tokens) < NEW for h in hyps)


def test_prefix_matches_transformers(sharp):
    """One prefix shared by every row (broadcast, batch 1), and one per row via prefix.stack (left-padded)."""
    ours, ref, eos, prompts = sharp
    prompts = prompts[:20]
    cfg = BeamConfig(max_new_tokens=NEW, eos=eos)
    shared = past_for(ours, 3, seed=1)
    hyps = beam_search(ours, prompts, cfg, shared)
    assert_matches(hyps, reference(ref, prompts, cfg, shared))
    assert hyps != beam_search(ours, prompts, cfg)  # the prefix changes the outputs
    per_row, key_mask = prefix.stack([past_for(ours, 2 + i % 3, seed=i) for i in range(len(prompts))])
    hyps = beam_search(ours, prompts, cfg, per_row, key_mask)
    assert_matches(hyps, reference(ref, prompts, cfg, per_row, key_mask))


def test_batch_equals_alone(sharp):
    ours, _, eos, prompts = sharp
    cfg = BeamConfig(beams=3, max_new_tokens=NEW, eos=eos, no_repeat_ngram_size=3)
    batched = beam_search(ours, prompts[:8], cfg)
    for p, h in zip(prompts[:8], batched):
        alone, = beam_search(ours, [p], cfg)
        assert alone.tokens == h.tokens
        assert abs(alone.score - h.score) < 1e-5


def test_e2e_text():
    tok = load_tokenizer()
    ids = tok.encode(" The Eagle is n't a pub , it 's near the river . <|endoftext|> junk", allowed_special="all")
    assert e2e_text(tok, ids) == "The Eagle isn't a pub, it's near the river."
    assert e2e_text(tok, tok.encode("  ")) == "Error"


# --- command line ---------------------------------------------------------------------------------------

def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_prompts(tiny_ckpt, tmp_path):
    (tmp_path / "p.txt").write_text("Hello world\nThe cat sat on the mat and looked\nA\n")
    main(["--ckpt", str(tiny_ckpt), "--prompts", str(tmp_path / "p.txt"), "--beams", "3", "--max-new-tokens", "6",
          "--batch-size", "2", "--out", str(tmp_path / "o.jsonl")])
    rows = read_jsonl(tmp_path / "o.jsonl")
    assert [r["prompt"] for r in rows] == ["Hello world", "The cat sat on the mat and looked", "A"]
    model, tok = GPT.from_pretrained(tiny_ckpt), load_tokenizer(tiny_ckpt)
    hyps = beam_search(model, [tok.encode(r["prompt"]) for r in rows], BeamConfig(beams=3, max_new_tokens=6))
    assert [r["tokens"] for r in rows] == [h.tokens for h in hyps]
    assert [r["text"] for r in rows] == [tok.decode(h.tokens) for h in hyps]
    assert all(isinstance(r["score"], float) for r in rows)


def test_cli_split(tiny_ckpt, tmp_path):
    out = tmp_path / "test.jsonl"
    main(["--ckpt", str(tiny_ckpt), "--data-dir", str(E2E_DIR), "--split", "test", "--limit", "3",
          "--max-new-tokens", "5", "--out", str(out)])
    rows = read_jsonl(out)
    lines = (tmp_path / "test.txt").read_text().splitlines()
    assert len(rows) == len(lines) == 3 and lines == [r["text"] for r in rows]
    assert all(198 not in r["tokens"] and 628 not in r["tokens"] for r in rows)  # the recipe's banned tokens
    groups = (tmp_path / "test.refs.txt").read_text().split("\n\n")
    assert len([g for g in groups if g.strip()]) == 3 and "Blue Spice" in groups[0]


def test_cli_run_dirs(tiny_ckpt, tmp_path):
    """A train.py out dir: prefix runs decode base + prefix.safetensors, fine runs their own weights; --prefix mixes."""
    model, tok = GPT.from_pretrained(tiny_ckpt), load_tokenizer(tiny_ckpt)
    past = past_for(model, 4, seed=3)
    run = tmp_path / "prefix_run"
    prefix.save(run, past, model, "direct")
    (run / "args.json").write_text(json.dumps({"tuner": "prefix", "init_from": str(tiny_ckpt)}))
    fine = tmp_path / "fine_run"
    shutil.copytree(tiny_ckpt, fine)
    (fine / "args.json").write_text(json.dumps({"tuner": "fine", "init_from": str(tiny_ckpt)}))
    other = past_for(model, 4, seed=4)
    prefix.save(tmp_path / "other.safetensors", other, model, "direct")
    (tmp_path / "p.txt").write_text("Hello world\n")
    cfg = BeamConfig(beams=2, max_new_tokens=4)
    mixed = prefix.mix([(past, 0.25), (other, 0.75)])
    cases = [([str(run)], past), ([str(fine)], None),
             ([str(run), "--prefix", f"{run}:0.25", "--prefix", f"{tmp_path / 'other.safetensors'}:0.75"], mixed)]
    for ckpt, expected in cases:
        main(["--ckpt", *ckpt, "--prompts", str(tmp_path / "p.txt"), "--raw", "--beams", "2", "--max-new-tokens", "4",
              "--out", str(tmp_path / "o.jsonl")])
        want, = beam_search(model, [tok.encode("Hello world")], cfg, expected)
        assert read_jsonl(tmp_path / "o.jsonl")[0]["tokens"] == want.tokens


def test_cli_bad_inputs(tiny_ckpt, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("Hello\n")
    (tmp_path / "empty.txt").write_text("")
    other = GPT.from_pretrained(make_checkpoint(tmp_path / "other", n_layer=3, n_head=4, n_embd=32, n_positions=64))
    prefix.save(tmp_path / "other.safetensors", past_for(other, 2, seed=0), other, "direct")
    base = ["--ckpt", str(tiny_ckpt), "--out", str(tmp_path / "o.jsonl")]
    cases = {
        "missing checkpoint": (["--ckpt", str(tmp_path / "nope"), "--prompts", str(prompts), "--out", "o"], "nope"),
        "missing prefix": (base + ["--prefix", str(tmp_path / "no.safetensors"), "--prompts", str(prompts)], "no.safe"),
        "prefix of another base": (base + ["--prefix", str(tmp_path / "other.safetensors"), "--prompts", str(prompts)],
                                   "n_layer=3"),
        "empty prompts file": (base + ["--prompts", str(tmp_path / "empty.txt")], "empty"),
        "prompt too long": (base + ["--prompts", str(prompts), "--max-new-tokens", "200"], "context"),
        "no beams": (base + ["--prompts", str(prompts), "--beams", "0"], "beams=0"),
    }
    for name, (argv, says) in cases.items():
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code not in (0, None), name
        assert says in str(e.value.code) and "Traceback" not in err, name


def test_prompts_decode_in_the_runs_template(tiny_ckpt, tmp_path, capsys):
    """A run folder's --prompts lines are sources in its training template: the same outputs as --data-dir."""
    run = tmp_path / "run"
    prefix.save(run, past_for(GPT.from_pretrained(tiny_ckpt), 3, seed=5), GPT.from_pretrained(tiny_ckpt), "direct")
    (run / "args.json").write_text(json.dumps({"tuner": "prefix", "init_from": str(tiny_ckpt)}))
    flags = ["--ckpt", str(run), "--beams", "2", "--max-new-tokens", "6", "--limit", "3"]
    main([*flags, "--data-dir", str(E2E_DIR), "--split", "test", "--out", str(tmp_path / "d.jsonl")])
    sources = [r["prompt"] for r in read_jsonl(tmp_path / "d.jsonl")]
    (tmp_path / "p.txt").write_text("".join(s + "\n" for s in sources))
    main([*flags, "--prompts", str(tmp_path / "p.txt"), "--out", str(tmp_path / "p.jsonl")])
    assert [r["tokens"] for r in read_jsonl(tmp_path / "p.jsonl")] == [r["tokens"] for r in read_jsonl(tmp_path / "d.jsonl")]
    capsys.readouterr()
    main([*flags, "--prompts", str(tmp_path / "p.txt")])  # no --out: one line per prompt on stdout
    printed = capsys.readouterr().out.splitlines()
    assert printed == [r["text"] for r in read_jsonl(tmp_path / "p.jsonl")]

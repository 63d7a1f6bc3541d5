"""generate.py's sampling against transformers' generate(do_sample=True) on test_beam.py's sharp random checkpoint.

Two proofs: the filtered distribution equals the one transformers' own `_get_logits_processor` list makes from
the same logits (ties and edge values included), and with the same seed the sampled tokens equal generate's on a
left-padded batch of 50 prompts. Our logits differ from transformers' by ~1e-6, which can flip a draw that falls
on a near-tie, so a few rows may differ; `MATCH` is the share that must not.
"""
import pytest
import torch
from transformers import DynamicCache, GenerationConfig

import prefix
from beam import main
from conftest import E2E_DIR
from model import GPT
from generate import SampleConfig, process, sample, warp
from beam import BeamConfig, beam_search
from test_beam import NEW, SCORE_ATOL, past_for, read_jsonl, sharp  # noqa: F401  (sharp: the checkpoint fixture)
from files.tokenizer import load_tokenizer

MATCH = 0.9  # rows token-identical to generate: ≥ 45 of 50


def transformers_filter(ref, cfg: SampleConfig, logits, made):
    """transformers' processors and warpers, as generate builds them, on logits (R, V) after `made` new tokens."""
    gc = GenerationConfig(do_sample=True, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                          min_new_tokens=cfg.min_new_tokens, suppress_tokens=list(cfg.banned) or None,
                          eos_token_id=cfg.eos, pad_token_id=cfg.eos)
    ref._prepare_special_tokens(gc, kwargs_has_attention_mask=True, device="cpu")
    processors = ref._get_logits_processor(gc, input_ids_seq_length=4, device="cpu")
    return processors(torch.zeros(logits.size(0), 4 + made, dtype=torch.long), logits.clone())


@pytest.mark.parametrize("settings", [
    dict(temperature=0.7, top_k=50, top_p=0.9),
    dict(top_k=0, top_p=0.5, banned=(198, 628), min_new_tokens=2),
    dict(temperature=1.3, top_k=7),
    dict(top_k=0, top_p=0.0),                     # only the most likely token stays (min_tokens_to_keep)
    dict(top_k=60000, top_p=0.95),                # K > V
])
@pytest.mark.parametrize("made", [0, 3])
def test_filter_equals_transformers(sharp, settings, made):
    _, ref, eos, _ = sharp
    cfg = SampleConfig(eos=eos, **settings)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50257, generator=g) * 4                       # (R, V)
    logits[0, :10] = logits[0].max() + 1                                  # ten tied favourites: top-k cuts a tie
    logits[1] = (logits[1] * 2).round() / 2                               # ties everywhere, top-p's edge included
    logits[2, 5] = 100                                                    # one token holds all the mass
    logits[3, [198, 628, eos]] = 50                                       # banned tokens and EOS are favourites
    ours = warp(process(logits, made, cfg), cfg).log_softmax(-1)
    theirs = transformers_filter(ref, cfg, logits, made).log_softmax(-1)
    assert torch.equal(ours.isinf(), theirs.isinf()) and ours.isinf().any()
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


@torch.no_grad()
def generated(ref, prompts, cfg: SampleConfig, past=None, past_mask=None):
    """generate(do_sample=True) after torch.manual_seed(seed) -> [(tokens without EOS, sum log p)] per row."""
    B, T, N = len(prompts), max(map(len, prompts)), cfg.num_return
    idx = torch.tensor([[cfg.eos] * (T - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    kw = {}
    if past is not None:  # the prefix as a cache of B rows, the mask extended over it (as test_beam.reference)
        past_mask = torch.ones(1, past[0][0].size(2), dtype=torch.long) if past_mask is None else past_mask
        mask = torch.cat([past_mask.expand(B, -1), mask], 1)
        rows = [tuple(t.expand(B, -1, -1, -1) for t in pair) for pair in past]
        kw["past_key_values"] = DynamicCache(ddp_cache_data=rows, config=ref.config)
    torch.manual_seed(cfg.seed)
    out = ref.generate(idx, attention_mask=mask, do_sample=True, temperature=cfg.temperature, top_k=cfg.top_k,
                       top_p=cfg.top_p, num_return_sequences=N, max_new_tokens=cfg.max_new_tokens,
                       min_new_tokens=cfg.min_new_tokens, suppress_tokens=list(cfg.banned) or None,
                       eos_token_id=cfg.eos, pad_token_id=cfg.eos, return_dict_in_generate=True, output_scores=True,
                       **kw)
    logp = torch.stack(out.scores, 1).log_softmax(-1)                                   # (B·N, steps, V)
    rows = []
    for r, seq in enumerate(out.sequences[:, T:].tolist()):
        n = seq.index(cfg.eos) + 1 if cfg.eos in seq else len(seq)                       # EOS scored too
        rows.append((seq[:n - (cfg.eos in seq)], logp[r, range(n), seq[:n]].sum().item()))
    return rows


def assert_matches(hyps, expected):
    same = [h.tokens == tokens for h, (tokens, _) in zip(hyps, expected)]
    assert len(hyps) == len(expected) and sum(same) >= MATCH * len(hyps), sum(same)
    for h, (_, score), s in zip(hyps, expected, same):
        assert not s or abs(h.score - score) <= SCORE_ATOL, (h, score)


@pytest.mark.parametrize("settings", [
    dict(temperature=0.8, top_k=20, top_p=0.9, seed=0),
    dict(temperature=1.2, min_new_tokens=3, banned=(198, 628), seed=1, num_return=3),  # top_k 50, the default
], ids=["T0.8-k20-p0.9", "T1.2-min3-ban-N3"])
def test_samples_equal_generate(sharp, settings):
    ours, ref, eos, prompts = sharp
    prompts = prompts[:50 // settings.get("num_return", 1)]  # about 50 rows
    cfg = SampleConfig(max_new_tokens=NEW, eos=eos, **settings)
    hyps = sample(ours, prompts, cfg)
    assert_matches(hyps, generated(ref, prompts, cfg))
    lengths = [len(h.tokens) for h in hyps]  # some rows ended while others went on: finished rows kept drawing
    assert NEW in lengths and min(lengths) < NEW and min(lengths) >= cfg.min_new_tokens
    assert not any(t in cfg.banned for h in hyps for t in h.tokens)


def test_prefix_samples_equal_generate(sharp):
    """One prefix per row (prefix.stack: prefixes of 2-4 slots, left-padded)."""
    ours, ref, eos, prompts = sharp
    cfg = SampleConfig(max_new_tokens=NEW, eos=eos, seed=3)
    per_row, key_mask = prefix.stack([past_for(ours, 2 + i % 3, seed=i) for i in range(len(prompts))])
    assert_matches(sample(ours, prompts, cfg, per_row, key_mask), generated(ref, prompts, cfg, per_row, key_mask))


def test_seed_top_k1_and_batches(sharp):
    ours, _, eos, prompts = sharp
    prompts = prompts[:6]
    cfg = SampleConfig(max_new_tokens=NEW, eos=eos, num_return=2)
    first = sample(ours, prompts, cfg, batch_size=4)
    assert first == sample(ours, prompts, cfg, batch_size=4)  # reproducible with a seed
    assert first != sample(ours, prompts, SampleConfig(max_new_tokens=NEW, eos=eos, num_return=2, seed=1))
    # top_k=1 leaves one token: sampling is greedy search, every sample alike and each scored log 1 = 0
    greedy = beam_search(ours, prompts, BeamConfig(beams=1, max_new_tokens=NEW, eos=eos))
    hyps = sample(ours, prompts, SampleConfig(top_k=1, max_new_tokens=NEW, eos=eos, num_return=2), batch_size=3)
    assert [h.tokens for h in hyps] == [g.tokens for g in greedy for _ in range(2)]
    assert all(h.score == 0 for h in hyps)


# --- command line ---------------------------------------------------------------------------------------

def test_cli_sample(tiny_ckpt, tmp_path, capsys):
    (tmp_path / "p.txt").write_text("Hello world\nThe cat sat on the mat and looked\nA\n")
    flags = ["--ckpt", str(tiny_ckpt), "--prompts", str(tmp_path / "p.txt"), "--sample", "--top-p", "0.9",
             "--seed", "3", "--num-return", "2", "--max-new-tokens", "6"]
    main([*flags, "--out", str(tmp_path / "a.jsonl")])
    main([*flags, "--out", str(tmp_path / "b.jsonl")])
    rows = read_jsonl(tmp_path / "a.jsonl")
    assert rows == read_jsonl(tmp_path / "b.jsonl")
    prompts = ["Hello world", "The cat sat on the mat and looked", "A"]
    assert [r["prompt"] for r in rows] == [p for p in prompts for _ in range(2)]
    model, tok = GPT.from_pretrained(tiny_ckpt), load_tokenizer(tiny_ckpt)
    cfg = SampleConfig(top_p=0.9, seed=3, num_return=2, max_new_tokens=6)
    hyps = sample(model, [tok.encode(p) for p in prompts], cfg)
    assert [(r["tokens"], r["score"]) for r in rows] == [(h.tokens, h.score) for h in hyps]
    assert rows[0]["made_by"]["search"]["seed"] == 3  # the settings that made the row
    cases = {"--top-p=1.5: must be at most 1": ["--top-p", "1.5"], "--temperature=0": ["--temperature", "0"],
             "without --no-repeat-ngram-size": ["--no-repeat-ngram-size", "3"]}
    for says, extra in cases.items():
        with pytest.raises(SystemExit) as e:
            main([*flags, *extra])
        assert says in str(e.value.code) and "Traceback" not in capsys.readouterr().err, says
    with pytest.raises(SystemExit) as e:
        main([*flags, "--data-dir", str(E2E_DIR), "--limit", "1", "--prompts", "", "--out", str(tmp_path / "c.jsonl")])
    assert "--num-return" in str(e.value.code)

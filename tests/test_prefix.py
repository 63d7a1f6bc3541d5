"""prefix.py (its file format is files/tuned.py's) against PEFT's prefix tuning, the model's own KV, bad input.

PEFT is the reference for the layout (flat L0-key, L0-value, L1-key, ...) and for the positions: its forward
prepends ones to the attention mask and lets GPT-2 place the tokens at P.., offsetting any position_ids by P.
"""
import importlib
import json
import shutil

import pytest
import torch
from peft import PeftModel, PrefixTuningConfig, get_peft_model
from peft.tuners.prefix_tuning.model import PrefixEncoder
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import GPT2LMHeadModel

from conftest import GPT2, TINY, make_checkpoint
from model import GPT, GPTConfig
from files.tokenizer import load_tokenizer
from files.checkpoint import CheckpointError, fingerprint
from prefix import (Prefix, PrefixError, flatten, freeze, init_from_text, load, mix, prefix_counts, save,
                    save_peft, stack, unflatten)

ATOL = 1e-4  # max |Δlogit| in fp32


def ids(B, T, seed):
    return torch.randint(0, 50257, (B, T), generator=torch.Generator().manual_seed(seed))


def random_prefix(config, P, seed, parameterization="mlp"):
    return Prefix(config, P, parameterization, prefix_mid=16, seed=seed)


def peft_model(folder, P, projection, seed=0):
    """A PEFT prefix on the random GPT-2, its encoder weights randomized so no value is trivial."""
    ref = GPT2LMHeadModel.from_pretrained(folder)
    pm = get_peft_model(ref, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P,
                                                prefix_projection=projection, encoder_hidden_size=16))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pm.prompt_encoder.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return pm.eval()


@pytest.fixture(scope="module")
def tiny(tiny_ckpt):
    return GPT.from_pretrained(tiny_ckpt)


def test_prefix_is_the_whole_api():
    """prefix.<name> is what callers, the README and outside checks use, each defined in prefix.py itself (no
    re-exports); a prefix's file format is files/tuned.py's, shared with every tuned weight."""
    api = importlib.import_module("prefix")
    names = "PrefixError flatten unflatten stack mix load save load_peft save_peft Prefix PrefixTuner freeze"
    assert all(getattr(api, n).__module__ == "prefix" for n in names.split())
    assert api.PARAMETERIZATIONS == ("mlp", "direct") and api.PREFIX_FILE == "prefix.safetensors"
    assert callable(api.Prefix.export) and api.PrefixTuner.name == "prefix"


# --- the layout, and PEFT both ways -----------------------------------------------------------------------

def test_layout_is_layer_key_value():
    L, H, P, D = 3, 2, 4, 5
    flat = torch.randn(P, 2 * L * H * D)
    past = unflatten(flat, L, H)
    for i, (k, v) in enumerate(past):
        assert k.shape == v.shape == (1, H, P, D)
        block = flat.view(P, 2 * L, H, D)
        torch.testing.assert_close(k[0], block[:, 2 * i].transpose(0, 1), atol=0, rtol=0)
        torch.testing.assert_close(v[0], block[:, 2 * i + 1].transpose(0, 1), atol=0, rtol=0)
    torch.testing.assert_close(flatten(past), flat, atol=0, rtol=0)


def test_our_mlp_is_peft_encoder():
    """Same module names, same output: our MLP weights load into PEFT's PrefixEncoder unchanged."""
    config = GPTConfig(**TINY)
    ours = random_prefix(config, 3, seed=1)
    enc = PrefixEncoder(PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, token_dim=32, num_layers=2,
                                           num_attention_heads=4, prefix_projection=True, encoder_hidden_size=16))
    enc.load_state_dict(ours.state_dict())
    torch.testing.assert_close(enc(torch.arange(3)[None])[0], ours.flat(), atol=0, rtol=0)


@pytest.mark.parametrize("projection", [True, False])
def test_peft_adapter_loads_with_same_logits(tiny_ckpt, tiny, tmp_path, projection):
    P, B, T = 4, 3, 7
    pm = peft_model(tiny_ckpt, P, projection, seed=2)
    idx = ids(B, T, 3)
    with torch.no_grad():
        want = pm(input_ids=idx).logits  # with projection: PEFT runs its MLP here
    pm.save_pretrained(tmp_path)
    past = load(tmp_path, tiny)
    assert past[0][0].shape == (1, 4, P, 8)
    with torch.no_grad():
        torch.testing.assert_close(tiny(idx, past_kv=past).logits, want, atol=ATOL, rtol=0)
        # Left-padded rows: PEFT prepends ones for the prefix and offsets position_ids by P; give it the
        # positions our model derives from the mask, (real tokens before) + P.
        mask = torch.ones(B, T, dtype=torch.long)
        mask[1, :2], mask[2, :5] = 0, 0
        want = pm(input_ids=idx, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
        got = tiny(idx, past_kv=past, attention_mask=torch.cat([torch.ones(B, P, dtype=torch.long), mask], 1)).logits
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], atol=ATOL, rtol=0)


def test_our_adapter_loads_in_peft(tiny_ckpt, tiny, tmp_path):
    prefix = random_prefix(tiny.config, 5, seed=4)
    past = prefix.export()
    save_peft(past, tmp_path, base_model_name_or_path=str(tiny_ckpt))
    pm = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(tiny_ckpt), tmp_path).eval()
    idx = ids(2, 6, 5)
    with torch.no_grad():
        torch.testing.assert_close(pm(input_ids=idx).logits, tiny(idx, past_kv=past).logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(flatten(load(tmp_path)), flatten(past), atol=0, rtol=0)


def test_gpt2_shape_peft_both_ways_and_small_file(gpt2_ckpt, tmp_path):
    ours, P = GPT.from_pretrained(gpt2_ckpt), 5
    pm = peft_model(gpt2_ckpt, P, projection=False, seed=6)
    idx = ids(2, 8, 7)
    pm.save_pretrained(tmp_path / "peft")
    past = load(tmp_path / "peft", ours)
    with torch.no_grad():
        torch.testing.assert_close(ours(idx, past_kv=past).logits, pm(input_ids=idx).logits, atol=ATOL, rtol=0)
    file = save(tmp_path / "ours", past, ours, "direct")
    n = P * 2 * GPT2["n_layer"] * GPT2["n_embd"]
    assert n * 4 < file.stat().st_size < n * 4 + 1024  # fp32 keys/values plus a small JSON header
    save_peft(load(file, ours), tmp_path / "back")
    back = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(gpt2_ckpt), tmp_path / "back").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=idx).logits, ours(idx, past_kv=past).logits, atol=ATOL, rtol=0)


# --- the prefix module ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("parameterization", ["mlp", "direct"])
def test_gradients_reach_only_the_prefix(tiny, parameterization):
    prefix = random_prefix(tiny.config, 3, seed=8, parameterization=parameterization)
    freeze(tiny, prefix)
    idx = ids(2, 6, 9)
    tiny(idx, past_kv=prefix(), targets=idx).loss.backward()
    assert all(p.grad is None for p in tiny.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prefix.parameters())


def test_freeze_refuses_a_prefix_sharing_model_weights(tiny):
    prefix = random_prefix(tiny.config, 3, seed=0)
    prefix.transform[0].weight = tiny.transformer.h[0].mlp.c_proj.weight  # (C, 4C) tensor, shared by mistake
    with pytest.raises(PrefixError, match="shared with the model"):
        freeze(tiny, prefix)


def test_compiled_prefix_equals_its_mlp(tiny):
    prefix = random_prefix(tiny.config, 4, seed=10)
    idx = ids(2, 5, 11)
    with torch.no_grad():
        want = tiny(idx, past_kv=prefix()).logits
    compiled = prefix.export()
    assert not compiled[0][0].requires_grad
    torch.testing.assert_close(tiny(idx, past_kv=compiled).logits, want, atol=0, rtol=0)


def test_seeded_init_leaves_the_global_rng_alone():
    config = GPTConfig(**TINY)
    state = torch.random.get_rng_state()
    a, b = random_prefix(config, 3, seed=5), random_prefix(config, 3, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.testing.assert_close(a.flat(), b.flat(), atol=0, rtol=0)
    assert not torch.equal(a.flat(), random_prefix(config, 3, seed=6).flat())


def test_dropout_only_while_training():
    prefix = Prefix(GPTConfig(**TINY), 3, prefix_mid=16, dropout=0.5)
    compiled = flatten(prefix.export())
    assert (flatten(prefix.train()()) == 0).float().mean() > 0.3
    torch.testing.assert_close(flatten(prefix.eval()()), compiled, atol=0, rtol=0)


def test_param_counts_gpt2_medium():
    config = GPTConfig(n_layer=24, n_head=16, n_embd=1024)
    with torch.device("meta"):
        counts = prefix_counts(Prefix(config), GPT(config))
    assert counts["stored"] == 245_760
    assert counts["trained"] == 5_120 + 524_800 + 25_214_976
    assert counts["model"] == 354_823_168  # gpt2-medium's published count
    assert counts["stored_frac"] == pytest.approx(245_760 / 354_823_168)


def test_bad_parameterization():
    with pytest.raises(PrefixError, match="expected one of"):
        Prefix(GPTConfig(**TINY), parameterization="lstm")


# --- init from real words ----------------------------------------------------------------------------------

def test_init_direct_is_the_models_own_kv(tiny_ckpt, tiny):
    enc = load_tokenizer(tiny_ckpt)
    prefix = init_from_text(tiny, enc, "table-to-text:", parameterization="direct")
    text = torch.tensor([enc.encode(" table-to-text:")])
    assert text.shape[1] == prefix.embedding.num_embeddings == 6  # the recipe's P for this word
    cont = ids(1, 5, 12)
    with torch.no_grad():
        full = tiny(torch.cat([text, cont], 1)).logits[:, 6:]
        torch.testing.assert_close(tiny(cont, past_kv=prefix.export()).logits, full, atol=ATOL, rtol=0)


def test_init_mlp_prefit_lowers_the_mse(tiny_ckpt, tiny):
    enc = load_tokenizer(tiny_ckpt)
    target = init_from_text(tiny, enc, "table-to-text:", parameterization="direct").flat().detach()
    before = init_from_text(tiny, enc, "table-to-text:", steps=0, prefix_mid=64, seed=3).flat().detach()
    after = init_from_text(tiny, enc, "table-to-text:", steps=500, prefix_mid=64, seed=3).flat().detach()
    mse = lambda x: torch.nn.functional.mse_loss(x, target).item()  # noqa: E731
    assert mse(after) < 0.01 * mse(before)


# --- many tasks on one backbone -----------------------------------------------------------------------------

def test_stacked_rows_equal_each_row_alone(tiny):
    pasts = [random_prefix(tiny.config, P, seed=20 + P).export() for P in (2, 5, 3)]
    stacked, key_mask = stack(pasts)
    assert stacked[0][0].shape == (3, 4, 5, 8) and key_mask.tolist()[0] == [0, 0, 0, 1, 1]
    idx = ids(3, 6, 13)
    mask = torch.cat([key_mask, torch.ones(3, 6, dtype=torch.long)], 1)
    with torch.no_grad():
        got = tiny(idx, past_kv=stacked, attention_mask=mask).logits
        for b, past in enumerate(pasts):
            torch.testing.assert_close(got[b:b + 1], tiny(idx[b:b + 1], past_kv=past).logits, atol=ATOL, rtol=0)


def test_stack_refuses_other_models(tiny):
    small = random_prefix(GPTConfig(n_layer=1, n_head=4, n_embd=32), 2, seed=0).export()
    with pytest.raises(PrefixError, match="different models"):
        stack([random_prefix(tiny.config, 2, seed=0).export(), small])


def test_mix_is_the_weighted_sum(tiny):
    a, b = (random_prefix(tiny.config, 3, seed=s).export() for s in (30, 31))
    mixed = mix([(a, 0.25), (b, 0.75)])
    torch.testing.assert_close(flatten(mixed), 0.25 * flatten(a) + 0.75 * flatten(b), atol=1e-6, rtol=0)
    torch.testing.assert_close(flatten(mix([(a, 1.5), (b, -0.5)])), 1.5 * flatten(a) - 0.5 * flatten(b))


@pytest.mark.parametrize("weights, words", [((0.5, 0.4), "sum to 0.9"), ((float("nan"), 1.0), "expected 1")])
def test_mix_refuses_weights_not_summing_to_one(tiny, weights, words):
    a, b = (random_prefix(tiny.config, 3, seed=s).export() for s in (30, 31))
    with pytest.raises(PrefixError, match=words):
        mix([(a, weights[0]), (b, weights[1])])


def test_mix_refuses_other_shapes_and_nothing(tiny):
    with pytest.raises(PrefixError, match=r"of shapes \(L, H, P, D\) = \[\(2, 4, 3, 8\), \(2, 4, 4, 8\)\]"):
        mix([(random_prefix(tiny.config, 3, seed=0).export(), 0.5),
             (random_prefix(tiny.config, 4, seed=0).export(), 0.5)])
    with pytest.raises(PrefixError, match="give at least one"):
        mix([])


# --- files ------------------------------------------------------------------------------------------------------

def test_save_load_round_trip_is_exact(tiny, tmp_path):
    past = random_prefix(tiny.config, 4, seed=40).export()
    file = save(tmp_path, past, tiny, "mlp")
    assert file.name == "prefix.safetensors" and not list(tmp_path.glob("*.tmp"))
    for a, b in zip(load(tmp_path, tiny), past):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_fingerprint_is_per_weights_not_per_dtype(tiny_ckpt, tiny, tmp_path):
    bf16 = GPT.from_pretrained(tiny_ckpt, dtype=torch.bfloat16)
    assert fingerprint(bf16) == fingerprint(tiny)
    save(tmp_path, random_prefix(tiny.config, 2, seed=0).export(), tiny, "mlp")
    assert load(tmp_path, bf16)[0][0].dtype == torch.bfloat16  # cast to the model it is loaded for
    other = GPT.from_pretrained(make_checkpoint(tmp_path / "other", seed=1, **TINY))
    assert fingerprint(other) != fingerprint(tiny)


def test_other_base_refused_unless_allowed(tiny_ckpt, tiny, tmp_path):
    save(tmp_path, random_prefix(tiny.config, 2, seed=0).export(), tiny, "mlp")
    other = GPT.from_pretrained(tiny_ckpt)
    with torch.no_grad():
        other.transformer.ln_f.weight.add_(0.1)
    with pytest.raises(CheckpointError, match=r"allow_other_base=True \(--allow-other-base\)"):
        load(tmp_path, other)
    assert len(load(tmp_path, other, allow_other_base=True)) == TINY["n_layer"]


def test_other_shape_refused(tiny, tmp_path):
    save(tmp_path, random_prefix(tiny.config, 2, seed=0).export(), tiny, "mlp")
    deeper = GPT(GPTConfig(n_layer=3, n_head=4, n_embd=32, n_positions=16, vocab_size=8))
    with pytest.raises(PrefixError, match="n_layer=2, n_head=4, head_dim=8, but the model has n_layer=3"):
        load(tmp_path, deeper)
    with pytest.raises(PrefixError, match="n_layer=2"):
        save(tmp_path, random_prefix(tiny.config, 2, seed=0).export(), deeper, "mlp")


def test_save_refuses_malformed_past(tiny, tmp_path):
    past = random_prefix(tiny.config, 2, seed=0).export()
    past[1] = (past[1][0][:, :, :1], past[1][1])
    with pytest.raises(PrefixError, match=r"mismatches \(layer, shape\): \[\(1, \(1, 4, 1, 8\)\)\]"):
        save(tmp_path, past, tiny, "mlp")


def rewrite(file, change):
    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(file)
    change(tensors, meta)
    save_file(tensors, file, metadata=meta)


# A damaged file is files/tuned.py's CheckpointError (one format and one error for every tuned weight); a
# parameterization this code does not know is the prefix's own PrefixError.
@pytest.mark.parametrize("change, error, words", [
    (lambda t, m: m.pop("n_head"), CheckpointError, "'n_head' is None, expected a positive whole number"),
    (lambda t, m: m.update(prefix_len="five"), CheckpointError, "'prefix_len' is 'five'"),
    (lambda t, m: m.pop("base_fingerprint"), CheckpointError, "no 'base_fingerprint'"),
    (lambda t, m: m.update(parameterization="lstm"), PrefixError, "parameterization='lstm', expected one of"),
    (lambda t, m: m.update(prefix_len="3"), CheckpointError, "the metadata implies (2, 2, 4, 3, 8)"),
    (lambda t, m: t["past_kv"].view(-1)[7].fill_(float("nan")), CheckpointError, "NaN or Inf in ['past_kv']"),
])
def test_bad_prefix_files(tiny, tmp_path, change, error, words):
    file = save(tmp_path, random_prefix(tiny.config, 2, seed=0).export(), tiny, "mlp")
    rewrite(file, change)
    with pytest.raises(error) as e:
        load(file, tiny)
    assert words in str(e.value) and str(file) in str(e.value)


def test_unreadable_file(tmp_path):
    (tmp_path / "prefix.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load(tmp_path)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load(tmp_path / "missing")


def edit_config(**fields):
    def edit(folder):
        cfg = json.loads((folder / "adapter_config.json").read_text())
        cfg.update(fields)
        (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return edit


@pytest.mark.parametrize("edit, words", [
    (edit_config(peft_type="LORA"), "peft_type='LORA', expected 'PREFIX_TUNING'"),
    (edit_config(num_transformer_submodules=2), "num_transformer_submodules=2"),
    (edit_config(num_layers=3), "implies (3, 192)"),
    (edit_config(num_virtual_tokens=9), "implies (9, 128)"),
    (edit_config(token_dim=None), "'token_dim' is None, expected a positive"),
    (lambda d: (d / "adapter_model.safetensors").unlink(), "not a readable safetensors file"),
])
def test_bad_peft_folders(tiny_ckpt, tiny, tmp_path, edit, words):
    folder = tmp_path / "adapter"
    peft_model(tiny_ckpt, 3, projection=False).save_pretrained(folder)
    edit(folder)
    with pytest.raises(CheckpointError) as e:
        load(folder, tiny)
    assert words in str(e.value), str(e.value)


def test_peft_adapter_of_other_base_refused(tiny, tmp_path):
    save_peft(random_prefix(GPTConfig(n_layer=3, n_head=4, n_embd=32), 2, seed=0).export(), tmp_path)
    with pytest.raises(PrefixError, match="n_layer=3, n_head=4, head_dim=8, but the model has n_layer=2"):
        load(tmp_path, tiny)


def test_peft_nan_refused(tiny_ckpt, tiny, tmp_path):
    shutil.rmtree(tmp_path, ignore_errors=True)
    pm = peft_model(tiny_ckpt, 3, projection=False)
    with torch.no_grad():
        pm.prompt_encoder["default"].embedding.weight[0, 0] = float("inf")
    pm.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        load(tmp_path, tiny)

"""model.py against transformers' GPT2LMHeadModel on the same random checkpoints (tiny and real gpt2 shape)."""
import json
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import DynamicCache, GPT2LMHeadModel

from conftest import E2E_DIR, GPT2, TINY, make_checkpoint
from files.checkpoint import CheckpointError, save_pretrained
from model import GPT
from files.tokenizer import load_tokenizer

ATOL = 1e-4  # max |Δlogit| in fp32


def original_layout(src, dst):
    """Rewrite a save_pretrained folder in the layout of the hub's own gpt2* repos: no 'transformer.'
    prefix, the causal-mask buffers stored, no lm_head (it is tied)."""
    shutil.copytree(src, dst)
    sd = load_file(dst / "model.safetensors")
    out = {k.removeprefix("transformer."): v for k, v in sd.items() if not k.startswith("lm_head.")}
    n_pos = json.loads((dst / "config.json").read_text())["n_positions"]
    for i in range(json.loads((dst / "config.json").read_text())["n_layer"]):
        out[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n_pos, n_pos, dtype=torch.uint8)).view(1, 1, n_pos, n_pos)
        out[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(out, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module", params=["tiny", "gpt2", "tiny-original", "gpt2-original"])
def pair(request, tiny_ckpt, gpt2_ckpt, tmp_path_factory):
    """(ours, reference) loaded from the same folder, for each shape and key layout."""
    folder = tiny_ckpt if request.param.startswith("tiny") else gpt2_ckpt
    if request.param.endswith("original"):
        folder = original_layout(folder, tmp_path_factory.mktemp("orig") / "ckpt")
        assert "h.0.attn.bias" in load_file(folder / "model.safetensors")
    return GPT.from_pretrained(folder), GPT2LMHeadModel.from_pretrained(folder).eval()


def random_past(model, B, P, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    return [(torch.randn(B, c.n_head, P, c.head_dim, generator=g), torch.randn(B, c.n_head, P, c.head_dim, generator=g))
            for _ in range(c.n_layer)]


def hf_cache(ref, past):
    return DynamicCache(ddp_cache_data=[(k.clone(), v.clone()) for k, v in past], config=ref.config)


@torch.no_grad()
def test_plain_logits(pair):
    ours, ref = pair
    idx = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours(idx).logits, ref(idx).logits, atol=ATOL, rtol=0)


@torch.no_grad()
def test_past_kv_logits(pair):
    """A prefix as past_kv equals the same keys/values as past_key_values, positions starting at P."""
    ours, ref = pair
    B, P, T = 3, 5, 12
    idx = torch.randint(0, 50257, (B, T), generator=torch.Generator().manual_seed(2))
    past = random_past(ours, B, P)
    expected = ref(idx, past_key_values=hf_cache(ref, past), attention_mask=torch.ones(B, P + T)).logits
    torch.testing.assert_close(ours(idx, past_kv=past).logits, expected, atol=ATOL, rtol=0)
    # and with an explicit all-ones mask, which takes the masked SDPA path
    torch.testing.assert_close(ours(idx, past_kv=past, attention_mask=torch.ones(B, P + T)).logits, expected,
                               atol=ATOL, rtol=0)


@torch.no_grad()
def test_past_positions_start_at_P(pair):
    """Pin the position convention: the reference with explicit positions P..P+T-1 agrees, 0..T-1 does not."""
    ours, ref = pair
    P, T = 4, 6
    idx = torch.randint(0, 50257, (1, T), generator=torch.Generator().manual_seed(3))
    past = random_past(ours, 1, P)
    ones = torch.ones(1, P + T)
    at_P = ref(idx, past_key_values=hf_cache(ref, past), attention_mask=ones,
               position_ids=torch.arange(P, P + T)[None]).logits
    at_0 = ref(idx, past_key_values=hf_cache(ref, past), attention_mask=ones, position_ids=torch.arange(T)[None]).logits
    got = ours(idx, past_kv=past).logits
    torch.testing.assert_close(got, at_P, atol=ATOL, rtol=0)
    assert (got - at_0).abs().max() > 1e-3


@torch.no_grad()
def test_broadcast_past_equals_repeated(pair):
    ours, _ = pair
    idx = torch.randint(0, 50257, (3, 7), generator=torch.Generator().manual_seed(4))
    past = random_past(ours, 1, 5)
    repeated = [(k.expand(3, -1, -1, -1).clone(), v.expand(3, -1, -1, -1).clone()) for k, v in past]
    torch.testing.assert_close(ours(idx, past_kv=past).logits, ours(idx, past_kv=repeated).logits, atol=1e-5, rtol=0)


@torch.no_grad()
def test_left_padding(pair):
    """Left-padded rows: the reference gets the same mask and the positions generate() derives from it."""
    ours, ref = pair
    idx = torch.randint(0, 50257, (3, 9), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, :7] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    got = ours(idx, attention_mask=mask).logits
    expected = ref(idx, attention_mask=mask, position_ids=pos).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=ATOL, rtol=0)
    assert torch.isfinite(got).all()
    # a padded row equals the same row alone, unpadded
    torch.testing.assert_close(got[2, 7:], ours(idx[2:3, 7:]).logits[0], atol=ATOL, rtol=0)


@torch.no_grad()
def test_cached_decoding_equals_full_forward(pair):
    ours, _ = pair
    idx = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(6))
    full = ours(idx).logits
    out = ours(idx[:, :5], use_cache=True)
    steps, cache = [out.logits], out.present_kv
    for t in range(5, 12):
        out = ours(idx[:, t:t + 1], past_kv=cache, use_cache=True)
        steps.append(out.logits)
        cache = out.present_kv
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=ATOL, rtol=0)


def test_loss_equals_reference(tiny_ckpt):
    ours, ref = GPT.from_pretrained(tiny_ckpt), GPT2LMHeadModel.from_pretrained(tiny_ckpt).eval()
    idx = torch.randint(0, 50257, (2, 10), generator=torch.Generator().manual_seed(7))
    labels = idx.clone()
    labels[:, :4] = -100  # the source part
    targets = torch.cat([labels[:, 1:], torch.full((2, 1), -100)], dim=1)  # ours takes them already shifted
    with torch.no_grad():
        torch.testing.assert_close(ours(idx, targets=targets).loss, ref(idx, labels=labels).loss, atol=1e-5, rtol=0)


def test_bfloat16_runs_close_to_fp32(tiny_ckpt):
    ours32, ours16 = GPT.from_pretrained(tiny_ckpt), GPT.from_pretrained(tiny_ckpt, dtype=torch.bfloat16)
    assert ours16.transformer.h[0].attn.c_attn.weight.dtype == torch.bfloat16
    idx = torch.randint(0, 50257, (2, 8), generator=torch.Generator().manual_seed(8))
    past = [(k.bfloat16(), v.bfloat16()) for k, v in random_past(ours32, 1, 3)]
    with torch.no_grad():
        got = ours16(idx, past_kv=past, attention_mask=torch.ones(2, 11)).logits.float()
        want = ours32(idx, past_kv=[(k.float(), v.float()) for k, v in past]).logits
    assert (got - want).abs().max() < 0.1 * want.abs().max()


def test_sharded_checkpoint(tiny_ckpt, tmp_path):
    ref = GPT2LMHeadModel.from_pretrained(tiny_ckpt)
    ref.save_pretrained(tmp_path, max_shard_size="1MB")
    assert (tmp_path / "model.safetensors.index.json").exists() and not (tmp_path / "model.safetensors").exists()
    idx = torch.randint(0, 50257, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(GPT.from_pretrained(tmp_path)(idx).logits, ref.eval()(idx).logits, atol=ATOL, rtol=0)


def test_loading_builds_no_random_model(tiny_ckpt, monkeypatch):
    """Lean loading: parameters come straight from the file, the random init never runs."""
    def fail(*a, **k):
        raise AssertionError("random init ran during from_pretrained")
    monkeypatch.setattr(GPT, "init_weights", fail)
    model = GPT.from_pretrained(tiny_ckpt)
    assert not any(p.is_meta for p in model.parameters())
    assert model.lm_head.weight is model.transformer.wte.weight


def test_tokenizer_equals_hf_on_e2e(tiny_ckpt):
    from transformers import GPT2TokenizerFast
    import csv
    hf = GPT2TokenizerFast.from_pretrained(tiny_ckpt)  # reads the same vocab.json + merges.txt
    ours = load_tokenizer(tiny_ckpt)
    with open(E2E_DIR / "devset.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    texts = [r["ref"] for r in rows] + [" " + r["mr"] + " <|endoftext|>" for r in rows[:200]]
    with open(E2E_DIR / "src1_valid.txt") as f:
        texts += f.read().splitlines()[:500]
    assert [ours.encode(t, allowed_special="all") for t in texts] == hf(texts)["input_ids"]
    assert ours.eot_token == 50256 and ours.n_vocab == 50257


# --- bad input: one clear CheckpointError, nothing half-loaded -----------------------------------------

def broken_copy(src, dst, edit):
    shutil.copytree(src, dst)
    edit(dst)
    return dst


def edit_weights(change):
    def edit(folder):
        sd = load_file(folder / "model.safetensors")
        change(sd)
        save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})
    return edit


@pytest.mark.parametrize("edit, words", [
    (lambda d: (d / "config.json").unlink(), "config.json: missing"),
    (lambda d: (d / "config.json").write_text("{not json"), "unreadable"),
    (edit_weights(lambda sd: sd.pop("transformer.h.1.mlp.c_fc.bias")), "missing, e.g. ['transformer.h.1.mlp.c_fc.bias']"),
    (edit_weights(lambda sd: sd.update({"transformer.h.0.extra": torch.zeros(1)})), "unexpected weights"),
    (edit_weights(lambda sd: sd.update({"transformer.ln_f.weight": torch.zeros(7)})), "'transformer.ln_f.weight' has shape (7,)"),
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:5000]), "Truncated"),
    (lambda d: (d / "model.safetensors").rename(d / "pytorch_model.bin"), "never unpickles"),
    (lambda d: (d / "model.safetensors").unlink(), "no model.safetensors"),
    (lambda d: (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()),
                                                          "activation_function": "swish"})), "activation_function='swish'"),
    (lambda d: (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()),
                                                          "reorder_and_upcast_attn": True})), "reorder_and_upcast_attn"),
])
def test_bad_checkpoints(tiny_ckpt, tmp_path, edit, words):
    folder = broken_copy(tiny_ckpt, tmp_path / "ckpt", edit)
    with pytest.raises(CheckpointError) as e:
        GPT.from_pretrained(folder)
    assert words in str(e.value) and str(folder) in str(e.value)


def test_bad_source_names(monkeypatch):
    with pytest.raises(CheckpointError, match="neither a folder, a file nor a hub name"):
        GPT.from_pretrained("/no/such/dir/")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed
    with pytest.raises(CheckpointError, match="pip install huggingface_hub"):
        GPT.from_pretrained("gpt2-medium")


def test_hub_offline_is_a_clear_error(monkeypatch):
    import huggingface_hub

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co'")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError, match="hub could not give it"):
        GPT.from_pretrained("hf:owner/some-gpt2")


def test_file_path_loads_its_folder(tiny_ckpt):
    assert GPT.from_pretrained(tiny_ckpt / "model.safetensors").config.n_layer == TINY["n_layer"]


def test_real_shape_config(gpt2_ckpt):
    model = GPT.from_pretrained(gpt2_ckpt)
    assert sum(p.numel() for p in model.parameters()) == 124_439_808  # gpt2's published parameter count
    assert model.config.n_layer == GPT2["n_layer"]


def test_save_pretrained_loads_in_transformers(tiny_ckpt, tmp_path):
    ours = GPT.from_pretrained(tiny_ckpt)
    with torch.no_grad():
        ours.transformer.h[0].attn.c_attn.weight.add_(0.5)  # a change that must survive the round trip
    save_pretrained(ours, tmp_path)
    ref = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, 50257, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx).logits, ref(idx).logits, atol=ATOL, rtol=0)
    assert not list(tmp_path.glob("*.tmp"))


def test_logits_at_targets_are_the_full_logits_there(tiny_ckpt):
    ours = GPT.from_pretrained(tiny_ckpt)
    idx = torch.randint(0, 50257, (2, 9), generator=torch.Generator().manual_seed(9))
    targets = idx.roll(-1, dims=1)
    targets[0, :5] = targets[1, :2] = targets[:, -1] = -100
    with torch.no_grad():
        out, full = ours(idx, targets=targets), ours(idx).logits
    torch.testing.assert_close(out.logits, full[targets != -100], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(full.flatten(0, 1), targets.flatten()),
                               atol=1e-5, rtol=0)


def test_tokenizer_offline_is_a_clear_error(tmp_path, monkeypatch):
    import tiktoken

    def offline(name):
        raise ConnectionError("no network")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(CheckpointError, match="TIKTOKEN_CACHE_DIR"):
        load_tokenizer(tmp_path)

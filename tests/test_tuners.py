"""The paper's comparison (§6, §7): FT-top2, the adapter, the embedding-only prefix and the infix, each against its
reference. Embedding-only is PEFT's prompt tuning (logits both ways); the adapter is the authors' placement, checked
on transformers' GPT-2 with hooks; FT-top2 leaves every other weight bit for bit; the infix equals a plain per-row
rewrite of the authors' get_prompt_p5_infix. Each trains through train.py, saves, and decodes through beam.py.
    python -m pytest -q tests/test_tuners.py
"""
import json
import shutil

import pytest
import torch
from peft import PeftModel, PromptTuningConfig, get_peft_model
from safetensors.torch import load_file
from transformers import GPT2LMHeadModel

import beam
import train
from tuners.adapter import AdapterTuner
from conftest import E2E_DIR, TINY, make_checkpoint
from tuners.prompt import EmbeddingTuner, PromptEmbedding, embedding_past, load_peft, save_peft
from tuners.infix import InfixTuner
from prefix import PrefixConfig
from model import GPT, SHAPES, GPTConfig
from tuners import TUNERS, open_run, tuner_class

ATOL = 1e-4  # max |Δlogit| in fp32
# Each run learns its 8 examples at a high lr; a base with wide weights (initializer_range 0.2) lets a light tuner
# move the loss, where GPT-2's 0.02 makes logits too small to steer in a few steps.
RUNS = {"fine-top2": ["--tuner", "fine-top2", "--lr", "3e-3"],
        "adapter": ["--tuner", "adapter", "--adapter-size", "16", "--lr", "1e-2"],
        "embedding": ["--tuner", "embedding", "--lr", "1e-1"],
        "infix": ["--tuner", "prefix", "--infix", "--lr", "1e-2"]}


def ids(B, T, seed):
    return torch.randint(0, 50257, (B, T), generator=torch.Generator().manual_seed(seed))


def args(ckpt, out, *extra):
    return ["--init-from", str(ckpt), "--data-dir", str(E2E_DIR), "--train-split", "dev", "--valid-split", "",
            "--train-limit", "8", "--batch-size", "8", "--max-steps", "20", "--log-every", "4", "--out-dir", str(out),
            *extra]


@pytest.fixture(scope="module")
def loud_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("loud"), initializer_range=0.2, **TINY)


@pytest.fixture(scope="module")
def trained(loud_ckpt, tmp_path_factory):
    """Each tuner's run, trained once through train.main on first use."""
    runs = {}

    def run(name):
        if name not in runs:
            runs[name] = tmp_path_factory.mktemp(name)
            train.main(args(loud_ckpt, runs[name], *RUNS[name]))
        return runs[name]
    return run


@pytest.fixture(scope="module")
def tiny(tiny_ckpt):
    return GPT.from_pretrained(tiny_ckpt)


# --- every tuner: trains through the CLI, records its share, decodes through beam.py ------------------------------

@pytest.mark.parametrize("name", RUNS)
def test_trains_saves_and_decodes(name, trained, loud_ckpt, tmp_path):
    out = trained(name)
    losses = [json.loads(line)["tok_loss"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] - 0.1, losses  # NLL per target token falls
    run = json.loads((out / "args.json").read_text())
    base = GPT.from_pretrained(loud_ckpt)
    assert run["base_fingerprint"] and run["init_from"] == str(loud_ckpt.resolve())
    n, C, L, P = run["params"]["model"], base.config.n_embd, base.config.n_layer, 5
    stored = {"fine-top2": n, "adapter": L * (2 * C * 16 + 16 + 3 * C), "embedding": P * C,
              "infix": P * 2 * L * C + P * C}[name]
    assert n == sum(p.numel() for p in base.parameters()) and run["params"]["stored"] == stored
    assert run["params"]["trained_frac"] == run["params"]["trained"] / n
    beam.main(["--ckpt", str(out), "--data-dir", str(E2E_DIR), "--split", "test", "--limit", "2", "--beams", "2",
               "--max-new-tokens", "4", "--out", str(tmp_path / "test.jsonl")])
    rows = [json.loads(line) for line in (tmp_path / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(0 < len(r["tokens"]) <= 4 for r in rows)


@pytest.mark.parametrize("name", ["adapter", "embedding", "infix"])
def test_other_base_is_refused(name, trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained(name), run)
    other = make_checkpoint(tmp_path / "other", seed=1, initializer_range=0.2, **TINY)
    record = json.loads((run / "args.json").read_text())
    (run / "args.json").write_text(json.dumps(record | {"init_from": str(other)}))
    with pytest.raises(SystemExit, match="trained on base model .* this model is"):
        beam.main(["--ckpt", str(run), "--prompts", str(E2E_DIR / "src1_test.txt"), "--limit", "1"])
    open_run(run, allow_other_base=True)  # said on purpose: loads


def test_registry_and_bad_flags(loud_ckpt, tmp_path):
    assert set(TUNERS) == {"prefix", "fine", "fine-top2", "adapter", "embedding"}
    for extra, message in [(["--tuner", "fine", "--infix"], "--infix only applies"),
                           (["--tuner", "adapter", "--adapter-size", "0"], "--adapter-size=0")]:
        with pytest.raises(train.TrainError, match=message):
            train.main(args(loud_ckpt, tmp_path, *extra))


# --- FT-top2: the authors' finetune-top, top_layers 2 ---------------------------------------------------------------

def test_fine_top2_changes_only_its_weights(trained, loud_ckpt):
    before, after = load_file(loud_ckpt / "model.safetensors"), load_file(trained("fine-top2") / "model.safetensors")
    learn = ("transformer.h.0.", "transformer.h.1.", "transformer.ln_f.", "transformer.wte.")  # L=2: both blocks
    assert {k for k in before if not k.endswith(".attn.bias")} >= set(after) - {"lm_head.weight"}
    for k, v in after.items():
        if k in before and not k.startswith(learn):
            assert torch.equal(v, before[k]), k                          # bit for bit
    assert not torch.equal(after["transformer.wte.weight"], before["transformer.wte.weight"])
    assert not torch.equal(after["transformer.ln_f.weight"], before["transformer.ln_f.weight"])


def test_fine_top2_share_at_gpt2_medium():
    with torch.device("meta"):
        model = GPT(GPTConfig(**SHAPES["gpt2-medium"]))
    counts = TUNERS["fine-top2"](model).counts()
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {n for n, _ in model.named_parameters()
                       if n.startswith(("transformer.h.22.", "transformer.h.23.", "transformer.ln_f.", "transformer.wte."))}
    assert (counts["trained"], counts["stored"]) == (76_657_664, 354_823_168)  # 21.6%: wte is most of it


# --- the adapter: the authors' adapter_design 1 -------------------------------------------------------------------

def adapted(ckpt, size=8, seed=3, noise=True):
    tuner = AdapterTuner(GPT.from_pretrained(ckpt), size, seed=seed).eval()
    if noise:  # a trained-looking up-projection, so the adapters are not the identity
        with torch.no_grad():
            for block in tuner.model.transformer.h:
                block.adapter.up.weight.normal_(std=0.5)
                block.adapter.up.bias.normal_(std=0.5)
    return tuner


def test_adapter_starts_as_the_base(tiny_ckpt, tiny):
    idx = ids(2, 9, 0)
    with torch.no_grad():
        torch.testing.assert_close(adapted(tiny_ckpt, noise=False)(idx).logits, tiny(idx).logits, atol=0, rtol=0)


def test_adapter_is_the_authors_placement(tiny_ckpt):
    """On transformers' GPT-2, each block's output through the same adapter (their forward_oneAdapter)."""
    tuner = adapted(tiny_ckpt)
    hf = GPT2LMHeadModel.from_pretrained(tiny_ckpt).eval()
    def hook(adapter):  # transformers 5's GPT2Block returns the hidden states alone, older ones a tuple
        return lambda m, a, out: adapter(out) if torch.is_tensor(out) else (adapter(out[0]), *out[1:])
    for block, ours in zip(hf.transformer.h, tuner.model.transformer.h):
        block.register_forward_hook(hook(ours.adapter))
    idx = ids(2, 9, 1)
    with torch.no_grad():
        torch.testing.assert_close(tuner(idx).logits, hf(input_ids=idx).logits, atol=ATOL, rtol=0)


def test_adapter_saves_only_itself_and_opens_on_the_base(tiny_ckpt, tmp_path):
    tuner = adapted(tiny_ckpt)
    file, = tuner.save(tmp_path)
    assert set(load_file(file)) == {f"h.{i}.{k}" for i in range(2) for k in
                                    ("ln.weight", "ln.bias", "down.weight", "down.bias", "up.weight", "up.bias")}
    model, past = AdapterTuner.open(tmp_path, GPT.from_pretrained(tiny_ckpt))
    idx = ids(2, 7, 2)
    with torch.no_grad():
        torch.testing.assert_close(model(idx).logits, tuner(idx).logits, atol=0, rtol=0)
    assert past is None and not model.training


@pytest.mark.parametrize("size,share", [(215, 0.0300), (6, 0.0010)])
def test_adapter_sizes_of_the_paper(size, share):
    with torch.device("meta"):
        model = GPT(GPTConfig(**SHAPES["gpt2-medium"]))
    counts = AdapterTuner(model, size).counts()
    assert counts["model"] == 354_823_168 and abs(counts["trained_frac"] - share) < 0.00005


# --- embedding-only = PEFT's prompt tuning ---------------------------------------------------------------------

def test_embedding_to_peft(tiny_ckpt, tiny, tmp_path):
    P = 4
    embeds = PromptEmbedding(tiny.config, P, "direct", seed=5)().detach()
    save_peft(embeds, tiny, tmp_path, base_model_name_or_path=str(tiny_ckpt))
    pm = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(tiny_ckpt), tmp_path).eval()
    idx = ids(3, 7, 6)
    with torch.no_grad():
        want = pm(input_ids=idx).logits[:, P:]  # PEFT returns the virtual tokens' logits too
        torch.testing.assert_close(tiny(idx, past_kv=embedding_past(tiny, embeds)).logits, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(load_peft(tmp_path, tiny), embeds, atol=0, rtol=0)


def test_peft_to_embedding_training_loss_and_padded_decoding(tiny_ckpt, tiny, tmp_path):
    P, B, T = 5, 3, 8
    pm = get_peft_model(GPT2LMHeadModel.from_pretrained(tiny_ckpt), PromptTuningConfig(task_type="CAUSAL_LM",
                                                                                      num_virtual_tokens=P)).eval()
    with torch.no_grad():
        pm.prompt_encoder.default.embedding.weight.normal_(std=0.5, generator=torch.Generator().manual_seed(7))
    pm.save_pretrained(tmp_path)
    embeds = load_peft(tmp_path, tiny)
    tuner = EmbeddingTuner(tiny, PromptEmbedding(tiny.config, P, "direct"))
    with torch.no_grad():
        tuner.prompt.embedding.weight.copy_(embeds)
    idx = ids(B, T + 1, 8)
    targets = idx[:, 1:].clone()
    targets[:, :3] = targets[:, -1] = -100     # a source without targets, as in training; labels hold T-1 targets
    labels = torch.cat([torch.full((B, 1), -100), targets[:, :-1]], 1)   # transformers shifts them itself
    with torch.no_grad():
        torch.testing.assert_close(tuner(idx[:, :T], targets).loss, pm(input_ids=idx[:, :T], labels=labels).loss,
                                   atol=1e-5, rtol=0)
        # beam.py's case: the run's past, rows left-padded; each real row as PEFT decodes it alone
        tuner.save(tmp_path / "run")
        model, past = EmbeddingTuner.open(tmp_path / "run", GPT.from_pretrained(tiny_ckpt))
        mask = torch.ones(B, T, dtype=torch.long)
        mask[1, :2], mask[2, :5] = 0, 0
        got = model(idx[:, :T], past_kv=past, attention_mask=torch.cat([torch.ones(B, P, dtype=torch.long), mask], 1))
        for b in range(B):
            want = pm(input_ids=idx[b:b + 1, :T][:, mask[b].bool()]).logits[0, P:]
            torch.testing.assert_close(got.logits[b][mask[b].bool()], want, atol=ATOL, rtol=0)


# --- the infix: the authors' get_prompt_p5_infix, one unpadded row at a time --------------------------------------

def reference_past(tuner, src):
    """One source (s,) alone: GPT-2 reads [source; infix embeddings], and the MLP's output is added at the infix's
    keys/values -> per layer (1, H, s+P, D)."""
    model, s = tuner.model, len(src)
    x = torch.cat([model.transformer.wte(src), tuner.embeds.weight])[None]                 # (1, s+P, C)
    present = model(torch.zeros(1, x.size(1), dtype=torch.long), embeds=x, use_cache=True).present_kv
    return [tuple(torch.cat([t[:, :, :s], t[:, :, s:] + a], 2) for t, a in zip(kv, add))
            for kv, add in zip(present, tuner.prefix())]


def test_infix_equals_per_row_reference_and_decodes_the_same(tiny_ckpt, tiny, tmp_path):
    P, B = 3, 3
    tuner = InfixTuner.build(tiny, None, PrefixConfig(prefix_len=P, prefix_mid=16, prefix_param="mlp", seed=9))
    rows = [(ids(1, n, n)[0], s) for n, s in ((12, 5), (9, 6), (15, 3))]  # (tokens, separator column), ragged
    T = max(len(r) for r, _ in rows)
    idx = torch.stack([torch.cat([r, torch.zeros(T - len(r), dtype=torch.long)]) for r, _ in rows])   # right-padded
    targets = torch.full_like(idx, -100)
    for b, (r, s) in enumerate(rows):
        targets[b, s:len(r) - 1] = r[s + 1:]
    with torch.no_grad():
        want = sum(tuner.model(r[None, s:-1], past_kv=reference_past(tuner, r[:s]), targets=targets[b:b + 1, s:len(r) - 1])
                   .loss * (len(r) - 1 - s) for b, (r, s) in enumerate(rows))
        torch.testing.assert_close(tuner(idx, targets).loss * (targets != -100).sum(), want, atol=1e-4, rtol=1e-6)
        # Decoding as the search calls the model: [source; separator] left-padded after the placeholder past, then
        # one more token with the cache.
        tuner.save(tmp_path)
        decoder, placeholder = tuner_class("prefix", infix=True).open(tmp_path, GPT.from_pretrained(tiny_ckpt))
        W, new = max(s + 1 for _, s in rows), ids(B, 1, 10)
        prompts = torch.stack([torch.cat([torch.zeros(W - s - 1, dtype=torch.long), r[:s + 1]]) for r, s in rows])
        mask = torch.cat([torch.ones(B, P), torch.stack([torch.arange(W) >= W - s - 1 for _, s in rows])], 1).long()
        past = [tuple(t.expand(B, -1, -1, -1) for t in kv) for kv in placeholder]
        first = decoder(prompts, past_kv=past, attention_mask=mask, use_cache=True, last_only=True)
        second = decoder(new, past_kv=first.present_kv, attention_mask=torch.cat([mask, torch.ones(B, 1).long()], 1))
        for b, (r, s) in enumerate(rows):
            want = tuner.model(torch.cat([r[s:s + 1], new[b]])[None], past_kv=reference_past(tuner, r[:s])).logits[0]
            torch.testing.assert_close(first.logits[b, -1], want[0], atol=ATOL, rtol=0)
            torch.testing.assert_close(second.logits[b, -1], want[1], atol=ATOL, rtol=0)

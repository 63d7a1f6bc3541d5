"""The job at the hardware's pace (issue 25), on the CPU: static shapes change no number.

Training pads each batch to a length bucket (--pad-to) so a compiled step is reused: the loss and the prefix's
gradients must be those of the unpadded batch, and train.py --compile must log eager's losses. Decoding with the
static step (one forward over every row and column of the preallocated cache, what CUDA captures once as a graph)
must give the stream's tokens, and so transformers' generate(num_beams=K)'s, eagerly and under torch.compile.
    python -m pytest -q tests/test_pace.py
"""
import copy
import json
from functools import partialmethod

import pytest
import torch

import beam
import prefix
import train
from beam import BeamConfig, beam_search
from conftest import E2E_DIR
from data import collate, example_ids, read_pairs
from files.tokenizer import load_tokenizer
from model import GPT
from test_beam import SCORE_ATOL, assert_matches, past_for, reference, sharp  # noqa: F401  (sharp is a fixture)

LOSS_ATOL = 1e-5  # fp32; padding changes the matmuls' blocking, not the arithmetic of a real position


def test_padding_to_buckets_keeps_loss_and_gradients(tiny_ckpt):
    model, tok = GPT.from_pretrained(tiny_ckpt), load_tokenizer(tiny_ckpt)
    torch.manual_seed(0)
    pfx = prefix.Prefix(model.config, 5, "mlp", 16)
    prefix.freeze(model, pfx)
    examples = [example_ids(tok, s, t) for s, t in read_pairs(str(E2E_DIR), "dev")[:6]]

    def loss_and_grads(pad_to: int) -> tuple[torch.Tensor, list[torch.Tensor], int]:
        idx, targets = collate(examples, tok.eot_token, pad_to, max_len=model.config.n_positions - 5)  # (B, T)
        pfx.zero_grad(set_to_none=True)
        loss = model(idx, past_kv=pfx(), targets=targets).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in pfx.parameters()], idx.size(1)

    loss, grads, T = loss_and_grads(0)
    for pad_to in (16, 32, 100):
        padded, padded_grads, T_padded = loss_and_grads(pad_to)
        assert T_padded % pad_to == 0 and T_padded > T
        torch.testing.assert_close(padded, loss, atol=LOSS_ATOL, rtol=0)
        for g, want in zip(padded_grads, grads):
            torch.testing.assert_close(g, want, atol=LOSS_ATOL, rtol=1e-4)
    # never past the positions the model has left (a long example in a short-context model)
    idx, _ = collate(examples, tok.eot_token, pad_to=100, max_len=T + 3)
    assert idx.size(1) == T + 3


def log_losses(out) -> list[float]:
    """Every logged training and validation loss, in order."""
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [row[k] for row in rows for k in ("loss", "val_loss") if k in row]


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu.sh runs it)")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_compiled_training_logs_eager_losses(tiny_ckpt, tmp_path, device):
    """torch.compile at bucketed shapes (CPU: inductor; CUDA: also a CUDA graph per shape), with a validation between
    steps (another graph, in eval mode): the same losses step for step."""
    common = ["--init-from", str(tiny_ckpt), "--data-dir", str(E2E_DIR), "--train-split", "dev",
              "--valid-split", "test", "--valid-limit", "8", "--eval-every", "2", "--train-limit", "40",
              "--batch-size", "4", "--max-steps", "4", "--log-every", "1", "--lr", "1e-2", "--pad-to", "64",
              "--device", device]
    train.main([*common, "--out-dir", str(tmp_path / "eager")])
    train.main([*common, "--out-dir", str(tmp_path / "compiled"), "--compile"])
    eager, compiled = log_losses(tmp_path / "eager"), log_losses(tmp_path / "compiled")
    assert len(eager) == 6 and eager[0] != eager[-2]  # the prefix learns, so later steps test the updates too
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_static_step_decodes_the_streams_tokens(sharp, compile, monkeypatch):  # noqa: F811
    """A stream of 3 prompts at a time over 50 (prompts leave and join, columns compact), K=3, n-gram blocking."""
    ours, ref, eos, prompts = sharp
    if compile:  # StaticStep(compile=True): the CUDA path's shapes, compiled by inductor on the CPU
        monkeypatch.setattr(beam.StaticStep, "__init__", partialmethod(beam.StaticStep.__init__, compile=True))
    cfg = BeamConfig(beams=3, max_new_tokens=8, eos=eos, no_repeat_ngram_size=3, length_penalty=0.8)
    streamed = beam_search(ours, prompts, cfg, batch_size=3)
    static = beam_search(ours, prompts, cfg, batch_size=3, static=True)
    assert [h.tokens for h in static] == [h.tokens for h in streamed]
    assert max(abs(a.score - b.score) for a, b in zip(static, streamed)) <= SCORE_ATOL
    expected = [reference(ref, [p], cfg)[0] for p in prompts]  # generate on each prompt alone
    assert [h.tokens for h in static] == [tokens for tokens, _ in expected]


def test_static_step_with_prefixes(sharp):  # noqa: F811
    """Three prefixes of different lengths in one stream (left-padded by prefix.stack: masked keys in every row)."""
    ours, _, eos, prompts = sharp
    pasts, task = [past_for(ours, P, seed=P) for P in (2, 5, 3)], [i % 3 for i in range(24)]
    stacked, key_mask = prefix.stack(pasts)
    cfg = BeamConfig(beams=2, max_new_tokens=8, eos=eos)
    streamed = beam_search(ours, prompts[:24], cfg, stacked, key_mask, past_rows=task, batch_size=4)
    static = beam_search(ours, prompts[:24], cfg, stacked, key_mask, past_rows=task, batch_size=4, static=True)
    assert [h.tokens for h in static] == [h.tokens for h in streamed]
    assert max(abs(a.score - b.score) for a, b in zip(static, streamed)) <= SCORE_ATOL


@CUDA
def test_cuda_graph_step_decodes_the_streams_tokens(sharp):  # noqa: F811
    """On CUDA the static step is captured once as a CUDA graph and replayed at every column."""
    ours, ref, eos, prompts = sharp
    model = copy.deepcopy(ours).cuda()
    cfg = BeamConfig(beams=3, max_new_tokens=8, eos=eos, no_repeat_ngram_size=3, length_penalty=0.8)
    streamed = beam_search(model, prompts, cfg, batch_size=3)
    static = beam_search(model, prompts, cfg, batch_size=3, static=True)
    assert [h.tokens for h in static] == [h.tokens for h in streamed]
    assert max(abs(a.score - b.score) for a, b in zip(static, streamed)) <= SCORE_ATOL
    assert_matches(static, [reference(ref, [p], cfg)[0] for p in prompts])  # GPU arithmetic: one near-tie may flip

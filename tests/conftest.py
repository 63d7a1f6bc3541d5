"""Shared test fixtures: the ../shared folder, and Hugging Face GPT-2 checkpoints with random weights.

No pretrained weights can be downloaded here, so every reference comparison builds a checkpoint with
`transformers` (`GPT2LMHeadModel(config).save_pretrained(dir)`: the hub's own file layout) and copies
GPT-2's real BPE files beside it.
"""
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
E2E_DIR = SHARED / "data" / "e2e"
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken-cache"))
sys.path.insert(0, str(ROOT))

from model import SHAPES  # noqa: E402  (after the path above)

TINY = dict(**SHAPES["tiny"], n_positions=128)
GPT2 = dict(**SHAPES["gpt2"], n_positions=1024)


def make_checkpoint(folder: Path, seed: int = 0, initializer_range: float = 0.02, **shape) -> Path:
    """Write a random GPT-2 in Hugging Face's layout: config.json, model.safetensors, vocab.json, merges.txt."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=50257, initializer_range=initializer_range, **shape)
    model = GPT2LMHeadModel(config).eval()
    # Random LayerNorm and bias values too, so a parity test would see a mixed-up parameter.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    shutil.copy(SHARED / "tokenizer" / "gpt2" / "encoder.json", folder / "vocab.json")
    shutil.copy(SHARED / "tokenizer" / "gpt2" / "vocab.bpe", folder / "merges.txt")
    return folder


def place_rows(folder: Path, n: int) -> Path:
    """A tiny own task in `folder`: train.jsonl of n {"source", "target"} rows in E2E's style, and prompts.txt."""
    rows = [{"source": f"name : Place{i} | food : Thai", "target": f"Place{i} serves Thai food."} for i in range(n)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "prompts.txt").write_text("name : Alimentum\n")
    return folder


def beam_refused(args: list[str], match: str) -> str:
    """beam.main must end in its one-line error naming `match`."""
    import beam
    with pytest.raises(SystemExit) as e:
        beam.main(args)
    message = str(e.value.code)
    assert message.startswith("beam.py: error:") and match in message and "\n" not in message, message
    return message


@pytest.fixture
def no_plots(monkeypatch):
    """The loss plot costs seconds a run; the tests that use this look at none."""
    import cli
    import train
    for module in (cli, train):
        monkeypatch.setattr(module, "line_plot", lambda *a, **k: True)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("tiny"), **TINY)


@pytest.fixture(scope="session")
def gpt2_ckpt(tmp_path_factory) -> Path:
    """The real gpt2 shape (12 layers, 768 wide, 124M parameters), random weights."""
    return make_checkpoint(tmp_path_factory.mktemp("gpt2"), **GPT2)

"""Embedding-only prefix, the paper's EMB-P ablation (Li & Liang 2021, §7.2 "Full vs Embedding-only"): prompt tuning.

Prefix-tuning trains the keys/values of every layer; here only the P virtual tokens' *input embeddings* learn. They
enter GPT-2 like words, at positions 0..P-1, and the text follows at P.. (PEFT's PROMPT_TUNING does the same by
concatenating them to the input embeddings). Because GPT-2 is causal, the virtual tokens never see the text, so we
run them through the frozen model once per step, with use_cache=True, and their keys/values are a past like a
prefix's: a batch-1 pass of P tokens instead of P more tokens in every row. After training the embeddings are
turned into that past once, so beam.py decodes them as it decodes a prefix.
The authors' code (train_control.py `PrefixEmbTuning`, `--prefix_mode embedding`) reparameterizes the embeddings
by an MLP by default (`--parametrize_emb MLP`): P′ (P, C) -> Linear(C, M) -> Tanh -> Linear(M, C); "direct"
(their `Emb`) trains the (P, C) embeddings themselves, as PEFT does.
    python train.py --tuner embedding --prefix-len 10 --out-dir out/emb        # out/emb/embedding.safetensors
"""
from __future__ import annotations

import json
from pathlib import Path

import tiktoken
import torch
import torch.nn as nn
from safetensors.torch import save_file

from checkpoint import CheckpointError
from model import GPT, GPTConfig, GPTOutput, PastKV
from runfolder import atomic_write
from tuned_files import read, tally, whole, write

EMBEDDING_FILE = "embedding.safetensors"
PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


class PromptEmbedding(nn.Module):
    """The trained part: P virtual tokens' input embeddings, (P, C), through the MLP ("mlp") or as they are
    ("direct"). Init is PyTorch's default, as in the authors' code: Embedding N(0, 1), Linear Kaiming-uniform."""

    def __init__(self, config: GPTConfig, prefix_len: int, parameterization: str = "mlp", prefix_mid: int = 512,
                 seed: int = 0):
        super().__init__()
        self.parameterization = parameterization
        with torch.random.fork_rng(devices=[]):  # seeded; the caller's RNG stream is left as it was
            torch.manual_seed(seed)
            self.embedding = nn.Embedding(prefix_len, config.n_embd)                        # P′ or the embeddings
            if parameterization == "mlp":
                self.transform = nn.Sequential(nn.Linear(config.n_embd, prefix_mid), nn.Tanh(),
                                               nn.Linear(prefix_mid, config.n_embd))

    def forward(self) -> torch.Tensor:
        """(P, C): what enters GPT-2 in place of P tokens' wte rows."""
        x = self.embedding.weight
        return self.transform(x) if self.parameterization == "mlp" else x


def embedding_past(model: GPT, embeds: torch.Tensor) -> PastKV:
    """(P, C) input embeddings -> their keys/values in every layer, per layer (1, H, P, D): the virtual tokens run
    through the model at positions 0..P-1 (no past), so tokens given this past sit at P.., as after PEFT's
    concatenation. The idx passed alongside is only a shape: `embeds` replaces wte(idx)."""
    w = model.lm_head.weight
    idx = torch.zeros(1, embeds.size(0), dtype=torch.long, device=w.device)                     # (1, P)
    return model(idx, embeds=embeds[None].to(w.dtype), use_cache=True, last_only=True).present_kv


# --- PEFT's PROMPT_TUNING adapter folder -------------------------------------------------------------------------

def save_peft(embeds: torch.Tensor, model: GPT, folder: str | Path, base_model_name_or_path: str = "gpt2") -> None:
    """Write (P, C) embeddings as a folder `PeftModel.from_pretrained(GPT2LMHeadModel..., folder)` loads."""
    folder, c = Path(folder), model.config
    folder.mkdir(parents=True, exist_ok=True)
    cfg = dict(peft_type="PROMPT_TUNING", task_type="CAUSAL_LM", base_model_name_or_path=base_model_name_or_path,
               num_virtual_tokens=embeds.size(0), token_dim=c.n_embd, num_attention_heads=c.n_head,
               num_layers=c.n_layer, num_transformer_submodules=1, prompt_tuning_init="RANDOM", inference_mode=True)
    tensors = {"prompt_embeddings": embeds.detach().float().cpu().contiguous()}
    atomic_write(folder / PEFT_WEIGHTS, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    atomic_write(folder / PEFT_CONFIG, lambda tmp: tmp.write_text(json.dumps(cfg, indent=2)))


def load_peft(folder: str | Path, model: GPT) -> torch.Tensor:
    """A PEFT prompt-tuning folder for GPT-2 -> its (P, C) embeddings, in the model's dtype and device. PEFT names
    its base only by hub name, so only the shape is checked."""
    folder = Path(folder)
    try:
        cfg = json.loads((folder / PEFT_CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder / PEFT_CONFIG}: unreadable ({e}).") from None
    if cfg.get("peft_type") != "PROMPT_TUNING" or cfg.get("num_transformer_submodules", 1) != 1:
        raise CheckpointError(f"{folder / PEFT_CONFIG}: peft_type={cfg.get('peft_type')!r}, expected a decoder-only "
                              f"'PROMPT_TUNING' adapter.")
    P = cfg.get("num_virtual_tokens")
    _, tensors = read(folder / PEFT_WEIGHTS, model, lambda _: {"prompt_embeddings": (P, model.config.n_embd)},
                      allow_other_base=True)
    return tensors["prompt_embeddings"]


# --- embedding-only tuning as train.py and beam.py see it (tuner.py says what a tuner is) -------------------------

class EmbeddingTuner(nn.Module):
    """GPT-2 frozen and in eval mode; only the P input embeddings learn. The authors run this ablation through the
    prefix-tuning trainer (tuning_mode prefixtune), so the loss is theirs too: each sequence's NLL summed."""
    name, weights_learn = "embedding", False
    per_sequence_loss = True

    def __init__(self, model: GPT, prompt: PromptEmbedding):
        super().__init__()
        self.model, self.prompt = model.requires_grad_(False).eval(), prompt

    @classmethod
    def build(cls, model: GPT, tok: tiktoken.Encoding, prefix_len: int, prefix_mid: int, prefix_param: str,
              seed: int, **_: object) -> EmbeddingTuner:
        prompt = PromptEmbedding(model.config, prefix_len, prefix_param, prefix_mid, seed)
        return cls(model, prompt.to(model.lm_head.weight.device))

    def train(self, mode: bool = True) -> EmbeddingTuner:
        super().train(mode)
        self.model.eval()  # the frozen base never drops, as in prefix-tuning
        return self

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> GPTOutput:
        return self.model(idx, past_kv=embedding_past(self.model, self.prompt()), targets=targets)

    def settings(self) -> dict:
        return {"prefix_len": self.prompt.embedding.num_embeddings}

    def counts(self) -> dict[str, float]:
        n_model = sum(p.numel() for p in self.model.parameters())
        return tally(n_model, sum(p.numel() for p in self.prompt.parameters()), self.prompt.embedding.weight.numel())

    def save(self, out: Path) -> Path:
        """Only the (P, C) embeddings (the MLP is dropped, as a prefix's is)."""
        with torch.no_grad():
            embeds = self.prompt()
        meta = {"prefix_len": embeds.size(0), "parameterization": self.prompt.parameterization}
        return write(out / EMBEDDING_FILE, {"prompt_embeddings": embeds}, self.model, meta)

    @staticmethod
    def open(folder: Path, base: GPT, allow_other_base: bool = False) -> tuple[GPT, PastKV]:
        """For decoding: the base, and the embeddings' keys/values as its past (computed once)."""
        file = folder / EMBEDDING_FILE
        _, tensors = read(file, base, lambda m: {"prompt_embeddings": (whole(m, "prefix_len", file), base.config.n_embd)},
                          allow_other_base)
        with torch.no_grad():
            return base.eval(), embedding_past(base.eval(), tensors["prompt_embeddings"])

"""Embedding-only prefix, the paper's EMB-P ablation (Li & Liang 2021, §7.2 "Full vs Embedding-only"): prompt tuning.

Prefix-tuning trains the keys/values of every layer; here only the P virtual tokens' *input embeddings* learn. They
enter GPT-2 like words, at positions 0..P-1, and the text follows at P.. (PEFT's PROMPT_TUNING does the same by
concatenating them to the input embeddings). Because GPT-2 is causal, the virtual tokens never see the text, so we
run them through the frozen model once per step, with use_cache=True, and their keys/values are a past like a
prefix's: a batch-1 pass of P tokens instead of P more tokens in every row (beam.py decodes that past as a prefix).
The authors' code (train_control.py `PrefixEmbTuning`, `--prefix_mode embedding`) reparameterizes the embeddings
by an MLP by default (`--parametrize_emb MLP`): P′ (P, C) -> Linear(C, M) -> Tanh -> Linear(M, C); "direct"
(their `Emb`) trains the (P, C) embeddings themselves, as PEFT does.
    python train.py --tuner embedding --prefix-len 10 --out-dir out/emb        # out/emb/embedding.safetensors
"""
from __future__ import annotations

from pathlib import Path

import tiktoken
import torch
import torch.nn as nn

from files.tuned import read, read_peft, whole, write, write_peft
from model import GPT, GPTConfig, GPTOutput, PastKV, param_counts
from prefix import FrozenBase, PrefixConfig, freeze

EMBEDDING_FILE = "embedding.safetensors"


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
    """(P, C) input embeddings, run at positions 0..P-1 (no past) -> their keys/values, per layer (1, H, P, D). The idx
    passed alongside is only a shape: `embeds` replaces wte(idx)."""
    w = model.lm_head.weight
    idx = torch.zeros(1, embeds.size(0), dtype=torch.long, device=w.device)                     # (1, P)
    return model(idx, embeds=embeds[None].to(w.dtype), use_cache=True, last_only=True).present_kv


# --- PEFT's PROMPT_TUNING adapter folder -------------------------------------------------------------------------

def save_peft(embeds: torch.Tensor, model: GPT, folder: str | Path, base_model_name_or_path: str = "gpt2") -> None:
    """Write (P, C) embeddings as a folder `PeftModel.from_pretrained(GPT2LMHeadModel..., folder)` loads."""
    c = model.config
    cfg = dict(peft_type="PROMPT_TUNING", base_model_name_or_path=base_model_name_or_path,
               num_virtual_tokens=embeds.size(0), token_dim=c.n_embd, num_attention_heads=c.n_head,
               num_layers=c.n_layer, prompt_tuning_init="RANDOM")
    write_peft(folder, cfg, embeds)


def load_peft(folder: str | Path, model: GPT) -> torch.Tensor:
    """A PEFT prompt-tuning folder -> its (P, C) embeddings, in the model's dtype and device (see read_peft)."""
    _, embeds = read_peft(folder, "PROMPT_TUNING", lambda cfg: model.config.n_embd)
    w = model.lm_head.weight
    return embeds.to(w.device, w.dtype)


# --- embedding-only tuning as train.py and beam.py see it (tuners/__init__.py says what a tuner is) ---------------

class EmbeddingTuner(FrozenBase):
    """GPT-2 frozen and in eval mode; only the P input embeddings learn. The authors run this ablation through the
    prefix-tuning trainer (tuning_mode prefixtune), so the loss is theirs too: each sequence's NLL summed."""
    name, weights_learn = "embedding", False
    per_sequence_loss = True
    Config = PrefixConfig  # P, M and the parameterization, as a prefix's (prefix_init does not apply)

    def __init__(self, model: GPT, prompt: PromptEmbedding):
        super().__init__()
        self.model, self.prompt = model, prompt
        freeze(model, prompt)

    @property
    def past_len(self) -> int:
        return self.prompt.embedding.num_embeddings

    @classmethod
    def build(cls, model: GPT, tok: tiktoken.Encoding, cfg: PrefixConfig, labels: list[str] = ()) -> EmbeddingTuner:
        prompt = PromptEmbedding(model.config, cfg.prefix_len, cfg.prefix_param, cfg.prefix_mid, cfg.seed)
        return cls(model, prompt.to(model.lm_head.weight.device))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> GPTOutput:
        return self.model(idx, past_kv=embedding_past(self.model, self.prompt()), targets=targets)

    def counts(self) -> dict[str, float]:
        n_model = sum(p.numel() for p in self.model.parameters())
        return param_counts(n_model, sum(p.numel() for p in self.prompt.parameters()),
                            self.prompt.embedding.weight.numel())

    def save(self, out: Path) -> list[Path]:
        """Only the (P, C) embeddings (the MLP is dropped, as a prefix's is)."""
        with torch.no_grad():
            embeds = self.prompt()
        meta = {"prefix_len": embeds.size(0), "parameterization": self.prompt.parameterization}
        return [write(out / EMBEDDING_FILE, {"prompt_embeddings": embeds}, self.model, meta)]

    @staticmethod
    def open(folder: Path, base: GPT, allow_other_base: bool = False) -> tuple[GPT, PastKV]:
        """For decoding: the base, and the embeddings' keys/values as its past (computed once)."""
        file = folder / EMBEDDING_FILE
        _, tensors = read(file, base, lambda m: {"prompt_embeddings": (whole(m, "prefix_len", file),
                                                                      base.config.n_embd)}, allow_other_base)
        with torch.no_grad():
            return base.eval(), embedding_past(base.eval(), tensors["prompt_embeddings"])

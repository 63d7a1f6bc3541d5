"""Infix-tuning, the paper's INFIX-P ablation (Li & Liang 2021, §7.3 "Prefix-tuning vs Infix-tuning"): [x; INFIX; y].

The P trained activations sit between the source x and the target y instead of before x: they see the source, but
the source no longer sees them. What the authors' code does (train_control.py, `get_prompt_p5_infix`, run with
`--format_mode infix`): the frozen GPT-2 first reads the source followed by P trained input embeddings (their
`wte2`); to the keys/values it makes at those P slots the prefix MLP's output (prefix.Prefix, §4.3) is added, the
source's slots get nothing; the target then runs after that past. The added activations do not flow into the
infix's own deeper layers (GPT-2 made those before the addition). Positions: x at 0..s-1, the infix at s..s+P-1,
y after, as their code gives an unpadded row (their right-padded batches shift the infix by the padding; we don't).
The data template is unchanged: each row's split is read off its targets (the separator EOS is the first position
with a target, data.example_ids), so the infix lands just before it, where theirs is: x ends in ' ', y starts at EOS.
    python train.py --tuner prefix --infix --prefix-len 10 --out-dir out/infix    # out/infix/infix.safetensors
"""
from __future__ import annotations

from pathlib import Path

import tiktoken
import torch
import torch.nn as nn

from files.tuned import read, whole, write
from model import IGNORE, GPT, GPTOutput, PastKV, param_counts, past_len
from prefix import FrozenBase, Prefix, PrefixConfig, flatten, freeze, unflatten

INFIX_FILE = "infix.safetensors"


def split(idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Right-padded examples (B, T) -> the sources, left-padded, src (B, S) and src_mask (B, S); and what follows
    them from the separator on, right-padded, rest (B, R) and rest_targets (B, R) (IGNORE past each row's end)."""
    B, T = idx.shape
    s = (targets != IGNORE).int().argmax(1)                           # (B,) each separator's column
    S, R = int(s.max()), int((T - s).max())
    src_col = torch.arange(S, device=idx.device) - (S - s)[:, None]        # (B, S) column in idx; < 0 pads
    rest_col = s[:, None] + torch.arange(R, device=idx.device)              # (B, R) column in idx; >= T ends
    rest_targets = targets.gather(1, rest_col.clamp(max=T - 1)).masked_fill(rest_col >= T, IGNORE)
    return (idx.gather(1, src_col.clamp(min=0)), (src_col >= 0).long(), idx.gather(1, rest_col.clamp(max=T - 1)),
            rest_targets)


def infix_past(model: GPT, src: torch.Tensor, src_mask: torch.Tensor, embeds: torch.Tensor,
               added: PastKV) -> PastKV:
    """Sources (B, S) left-padded, the infix's input embeddings (P, C) and added keys/values (per layer (1, H, P, D))
    -> per layer (B, H, P+S, D), the infix's slots first. A query attends to keys in any order (each key carries its
    position already), so with the infix in front the caller's key mask is [P ones, src_mask, ...], as for a prefix."""
    B, S = src.shape
    x = torch.cat([model.transformer.wte(src), embeds[None].expand(B, -1, -1).to(model.lm_head.weight.dtype)], 1)
    mask = torch.cat([src_mask, src_mask.new_ones(B, embeds.size(0))], 1)                   # (B, S+P)
    present = model(mask, embeds=x, attention_mask=mask, use_cache=True, last_only=True).present_kv  # idx: a shape
    return [tuple(torch.cat([t[:, :, S:] + a, t[:, :, :S]], 2) for t, a in zip(kv, add))  # (B, H, P+S, D)
            for kv, add in zip(present, added)]


class InfixDecoder(GPT):
    """The base model, as beam.py's search calls it, with the infix placed per prompt. open() hands the search a
    placeholder past of P slots, so its key masks count the infix's P positions; when a prompt is read (a call whose
    past is just those P slots), its last token is the separator and the tokens before it the source: the infix's
    past is made from them, and the separator runs after it. Every later call is the base model's own forward."""

    def __init__(self, base: GPT, embeds: torch.Tensor, added: torch.Tensor):
        nn.Module.__init__(self)  # not GPT.__init__: the base's own modules, so its state_dict and fingerprint
        self.config, self.transformer, self.lm_head = base.config, base.transformer, base.lm_head
        self.register_buffer("embeds", embeds)   # (P, C) the infix's input embeddings
        self.register_buffer("added", added)     # (P, 2·L·C) added to their keys/values

    def forward(self, idx: torch.Tensor, past_kv: PastKV | None = None, attention_mask: torch.Tensor | None = None,
                **kw: object) -> GPTOutput:
        P = self.embeds.size(0)
        if past_kv is None or past_len(past_kv) != P or kw.get("write_at") is not None:
            return super().forward(idx, past_kv=past_kv, attention_mask=attention_mask, **kw)
        mask = attention_mask if attention_mask is not None else idx.new_ones(idx.size(0), P + idx.size(1))
        added = unflatten(self.added, self.config.n_layer, self.config.n_head)
        past = infix_past(self, idx[:, :-1], mask[:, P:-1], self.embeds, added)            # (B, H, P+T-1, D)
        return super().forward(idx[:, -1:], past_kv=past, attention_mask=mask, **kw)


# --- infix-tuning as train.py and beam.py see it (tuners/__init__.py says what a tuner is) ------------------------

class InfixTuner(FrozenBase):
    """GPT-2 frozen and in eval mode; the prefix MLP and the P infix input embeddings learn. The authors run it
    through the prefix-tuning trainer, so the loss is prefix-tuning's too: each sequence's NLL summed. A run of it
    is `--tuner prefix --infix` (args.json: tuner "prefix", infix true), as the paper names it INFIX-P."""
    name, weights_learn = "infix", False
    per_sequence_loss = True
    Config = PrefixConfig  # P, M and the parameterization, as a prefix's

    def __init__(self, model: GPT, prefix: Prefix, embeds: nn.Embedding):
        super().__init__()
        self.model, self.prefix, self.embeds = model, prefix, embeds
        freeze(model, nn.ModuleList([prefix, embeds]))

    @property
    def past_len(self) -> int:
        return self.embeds.num_embeddings

    @classmethod
    def build(cls, model: GPT, tok: tiktoken.Encoding, cfg: PrefixConfig, labels: list[str] = ()) -> InfixTuner:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)  # the prefix draws from `seed`; wte2: PyTorch's default N(0, 1), as theirs
            embeds = nn.Embedding(cfg.prefix_len, model.config.n_embd)
        device = model.lm_head.weight.device
        prefix = Prefix(model.config, cfg.prefix_len, cfg.prefix_param, cfg.prefix_mid, seed=cfg.seed)
        return cls(model, prefix.to(device), embeds.to(device))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> GPTOutput:
        src, src_mask, rest, rest_targets = split(idx, targets)
        past = infix_past(self.model, src, src_mask, self.embeds.weight, self.prefix())
        mask = torch.cat([src_mask.new_ones(idx.size(0), self.embeds.num_embeddings), src_mask,
                          torch.ones_like(rest)], 1)                                       # (B, P+S+R)
        return self.model(rest, past_kv=past, attention_mask=mask, targets=rest_targets)

    def counts(self) -> dict[str, float]:
        n_model = sum(p.numel() for p in self.model.parameters())
        trained = sum(p.numel() for p in self.parameters() if p.requires_grad)
        P, C = self.embeds.weight.shape
        return param_counts(n_model, trained, P * self.prefix.width + P * C)

    def save(self, out: Path) -> list[Path]:
        """The added keys/values (P, 2·L·C), the MLP dropped as a prefix's is, and the infix embeddings (P, C)."""
        tensors = {"added": flatten(self.prefix.export()), "embeds": self.embeds.weight}
        meta = {"prefix_len": self.embeds.num_embeddings, "parameterization": self.prefix.parameterization}
        return [write(out / INFIX_FILE, tensors, self.model, meta)]

    @staticmethod
    def open(folder: Path, base: GPT, allow_other_base: bool = False) -> tuple[InfixDecoder, PastKV]:
        """For decoding: the base wrapped to place the infix per prompt, and its placeholder past."""
        file, c = folder / INFIX_FILE, base.config
        _, t = read(file, base, lambda m: {"added": (whole(m, "prefix_len", file), 2 * c.n_layer * c.n_embd),
                                           "embeds": (whole(m, "prefix_len", file), c.n_embd)}, allow_other_base)
        decoder = InfixDecoder(base.eval(), t["embeds"], t["added"]).eval()
        P = t["embeds"].size(0)
        return decoder, [(t["added"].new_zeros(1, c.n_head, P, c.head_dim),) * 2 for _ in range(c.n_layer)]

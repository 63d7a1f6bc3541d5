"""Beam search over a frozen GPT-2 with a prefix (Li & Liang 2021, "Experimental Setup": E2E is decoded by beam, K=5).

Many prompts × K beams run in one forward per step. Each prompt is read once; its KV cache is fanned out to
K beams at the first step, grows one token a step and is reordered by indexing rows (`beam_idx`), never
recomputed. A prefix is a past that every row and beam attends to. The rules are transformers'
`generate(num_beams=K)`: 2K candidates a step, K finished hypotheses scored
sum(log p) / generated_length ** length_penalty, and its stopping rule for early_stopping False, True, "never".

examples:
    python beam.py --ckpt out/ --data-dir ../shared/data/e2e --split test --out out/test.jsonl
    python beam.py --ckpt gpt2 --prompts prompts.txt --max-new-tokens 40 --out gen.jsonl
    python beam.py --ckpt base/ --prefix pos.safetensors:0.7 --prefix neg.safetensors:0.3 --prompts p.txt
"""
from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import NamedTuple

import tiktoken
import torch
import torch.nn.functional as F

import data
import prefix
from checkpoint import CheckpointError, atomic_write
from cli import arg, parse
from model import GPT, PastKV
from tuner import open_run

E2E_BANNED = (198, 628)  # "\n" and "\n\n": an E2E output is one line (RECIPE.md §4)
# transformers' clean_up_tokenization_spaces, applied in this order: the authors decode with it (RECIPE.md §4).
CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
           (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


class BeamError(Exception):
    """Input beam.py cannot decode; the message names the prompt or file and the fix."""


@dataclass
class BeamConfig:
    beams: int = 5                       # K; 1 is greedy
    max_new_tokens: int = 100
    min_new_tokens: int = 0              # EOS is banned until this many new tokens
    length_penalty: float = 1.0          # exponent on the generated length, EOS included
    early_stopping: bool | str = False   # False: transformers' heuristic; True: stop at K finished; "never"
    no_repeat_ngram_size: int = 0        # 0 = off; an n-gram of prompt + output may not occur twice
    banned: tuple[int, ...] = ()
    eos: int = 50256

    def __post_init__(self) -> None:
        if self.beams < 1 or self.max_new_tokens < 1 or self.min_new_tokens < 0 or self.no_repeat_ngram_size < 0:
            raise BeamError(f"beams={self.beams}, max_new_tokens={self.max_new_tokens}, min_new_tokens="
                            f"{self.min_new_tokens}, no_repeat_ngram_size={self.no_repeat_ngram_size}: need beams "
                            f"and max_new_tokens >= 1, the others >= 0.")
        if self.early_stopping not in (False, True, "never"):
            raise BeamError(f"early_stopping={self.early_stopping!r}; expected False, True or 'never'.")


class Hyp(NamedTuple):
    tokens: list[int]  # generated ids, without the final EOS
    score: float       # sum of log-probs / len(generated, EOS included) ** length_penalty


# --- the search -----------------------------------------------------------------------------------------

def left_pad(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged prompts -> idx (B, T) left-padded with -1 (it matches no n-gram) and attention_mask (B, T).
    Left padding puts every row's next token in the last column; model.py derives positions from the mask."""
    T = max(len(p) for p in prompts)
    idx = torch.tensor([[-1] * (T - len(p)) + p for p in prompts])  # (B, T)
    return idx, (idx >= 0).long()


def block(logp: torch.Tensor, hist: torch.Tensor, t: int, cfg: BeamConfig) -> torch.Tensor:
    """Set forbidden next tokens of logp (N, V) to -inf, after log_softmax as transformers' processors do.
    hist (N, L): prompt + the t tokens generated so far, -1 on padding."""
    logp[:, list(cfg.banned)] = float("-inf")
    if t < cfg.min_new_tokens:
        logp[:, cfg.eos] = float("-inf")
    n = cfg.no_repeat_ngram_size
    if n and hist.size(1) >= n:
        windows = hist.unfold(1, n, 1)                                        # (N, L-n+1, n)
        seen = (windows[..., :-1] == hist[:, None, hist.size(1) - n + 1:]).all(-1)  # (N, L-n+1) starts as our tail
        V = logp.size(1)
        ban = torch.zeros(logp.size(0), V + 1, dtype=torch.bool, device=logp.device)  # column V: no ban
        ban.scatter_(1, torch.where(seen, windows[..., -1], V), True)
        logp = logp.masked_fill(ban[:, :V], float("-inf"))
    return logp


def beam_step(logp: torch.Tensor, beam_scores: torch.Tensor, K: int) -> tuple[torch.Tensor, ...]:
    """logp (B, k, V) of each live beam's next token, beam_scores (B, k) -> the 2K best continuations per row:
    scores (B, 2K) best first, source beam (B, 2K), token (B, 2K). 2K, as transformers keeps: even if K of
    them end in EOS, K remain to continue."""
    B, k, V = logp.shape
    scores, flat = (beam_scores[:, :, None] + logp).view(B, k * V).topk(2 * K)
    return scores, flat // V, flat % V


def keep_best(pool: list[Hyp], new: list[Hyp], K: int) -> list[Hyp]:
    """The K best finished hypotheses of a prompt, best first (ties: the earlier one)."""
    return sorted(pool + new, key=lambda h: -h.score)[:K]


def is_done(pool: list[Hyp], bound: float, cfg: BeamConfig) -> bool:
    """transformers' stopping rule for one prompt: never before K hypotheses have finished; then at once
    (early_stopping=True), or once the best live beam, scored as if it ended now (False) or at
    max_new_tokens ("never", length_penalty > 0), cannot beat the worst finished one."""
    if len(pool) < cfg.beams:
        return False
    return cfg.early_stopping is True or bound <= pool[-1].score


def check_lengths(prompts: list[list[int]], P: int, cfg: BeamConfig, n_positions: int) -> None:
    if not prompts:
        raise BeamError("no prompts to decode (an empty file, or --limit 0?).")
    for i, p in enumerate(prompts, 1):
        if not p:
            raise BeamError(f"prompt {i} is empty. Give every prompt at least one token.")
        if P + len(p) + cfg.max_new_tokens - 1 > n_positions:
            raise BeamError(f"prompt {i}: {len(p)} tokens + prefix {P} + max_new_tokens {cfg.max_new_tokens} does "
                            f"not fit the context of {n_positions} positions. Shorten it or lower --max-new-tokens.")


@torch.no_grad()
def beam_search(model: GPT, prompts: list[list[int]], cfg: BeamConfig, past_kv: PastKV | None = None,
                past_mask: torch.Tensor | None = None) -> list[Hyp]:
    """The best hypothesis per prompt. past_kv: per layer (1 or B, H, P, D), the prefix; past_mask (1 or B, P):
    its real slots (prefix.stack left-pads per-row prefixes), all real if None."""
    dev, B, K = model.lm_head.weight.device, len(prompts), cfg.beams
    P = 0 if past_kv is None else past_kv[0][0].size(2)
    check_lengths(prompts, P, cfg, model.config.n_positions)
    hist, mask = (t.to(dev) for t in left_pad(prompts))                      # (B, T)
    T = hist.size(1)
    if past_kv is not None:  # the prefix is real keys before every prompt: extend the mask by P
        past_mask = torch.ones(1, P, dtype=torch.long) if past_mask is None else past_mask.long()
        mask = torch.cat([past_mask.to(dev).expand(B, P), mask], 1)          # (B, P+T)
    out = model(hist.clamp(min=0), past_kv=past_kv, attention_mask=mask, use_cache=True, last_only=True)
    cache, logits = out.present_kv, out.logits[:, -1]                        # (B, H, S, D), (B, V)
    beam_scores = torch.zeros(B, 1, device=dev)   # (B, k): one beam per prompt until the first step fans out
    rows = list(range(B))                         # the prompt of each live row
    pools: list[list[Hyp]] = [[] for _ in range(B)]
    for t in range(cfg.max_new_tokens):
        b, k = beam_scores.shape
        logp = block(F.log_softmax(logits.float(), -1), hist, t, cfg)         # (b·k, V)
        scores, src, tok = beam_step(logp.view(b, k, -1), beam_scores, K)    # (b, 2K) each
        last = t + 1 == cfg.max_new_tokens
        ends = (tok == cfg.eos) | last                                       # (b, 2K)
        # Only the top K candidates may finish (the other K are spares to go on with); a finished
        # hypothesis is scored on its generated length, EOS included.
        final = (scores / (t + 1) ** cfg.length_penalty).tolist()
        for i, j in ends[:, :K].nonzero().tolist():
            s, e = src[i, j].item(), tok[i, j].item()
            gen = hist[i * k + s, T:].tolist() + ([] if e == cfg.eos else [e])
            pools[rows[i]] = keep_best(pools[rows[i]], [Hyp(gen, final[i][j])], K)
        keep = (scores - 1e9 * ends.float()).topk(K).indices                 # (b, K) the best K going on
        beam_scores, src, tok = scores.gather(1, keep), src.gather(1, keep), tok.gather(1, keep)
        es, lp = cfg.early_stopping, cfg.length_penalty
        length = cfg.max_new_tokens if es == "never" and lp > 0 else t + 1
        bound = (beam_scores[:, 0] / length ** lp).tolist()
        live = [not last and not is_done(pools[r], bound[i], cfg) for i, r in enumerate(rows)]
        if not any(live):
            break
        # Finished prompts leave the batch; their pools can no longer change (transformers freezes them).
        alive = torch.tensor(live, device=dev)
        beam_idx = (torch.arange(b, device=dev)[:, None] * k + src)[alive].flatten()  # (b'·K,) cache rows
        rows = [r for r, keep_row in zip(rows, live) if keep_row]
        beam_scores, tok = beam_scores[alive], tok[alive].view(-1, 1)         # (b', K), (b'·K, 1)
        hist = torch.cat([hist[beam_idx], tok], 1)                            # (b'·K, T+t+1)
        mask = torch.cat([mask[beam_idx], torch.ones_like(tok)], 1)           # (b'·K, S+1)
        if k == K and all(live):
            # The K beams of a prompt hold the same prefix + prompt keys, so only the generated slots of the
            # beams that changed need moving, in place (transformers copies every slot of every beam).
            moved = (beam_idx != torch.arange(b * K, device=dev)).nonzero()[:, 0]  # (m,)
            for c in (c for pair in cache for c in pair):                     # (b·K, H, S, D)
                gen = c[:, :, P + T:]                                         # (b·K, H, t+1, D) a view
                gen.index_copy_(0, moved, gen.index_select(0, beam_idx[moved]))
        else:  # the first step fans each prompt out to K beams; finished prompts leave
            cache = [(pk[beam_idx], pv[beam_idx]) for pk, pv in cache]        # (b'·K, H, S, D)
        out = model(tok, past_kv=cache, attention_mask=mask, use_cache=True, last_only=True)
        cache, logits = out.present_kv, out.logits[:, -1]
    return [pool[0] for pool in pools]


def e2e_text(tok: tiktoken.Encoding, tokens: list[int]) -> str:
    """RECIPE.md §4: decode, clean up tokenization spaces, cut at the first EOS, strip; empty -> "Error"."""
    text = tok.decode(tokens)
    for before, after in CLEANUP:
        text = text.replace(before, after)
    return text.split(data.EOS)[0].strip() or "Error"


# --- command line ---------------------------------------------------------------------------------------

@dataclass
class DecodeConfig:
    ckpt: str = arg(MISSING, "a train.py run folder, or a Hugging Face GPT-2 (folder or hub name)")
    prefix: list[str] | None = arg(None, "prefix file or folder, FILE[:WEIGHT] (default: the run's own); several are "
                                         "mixed, weights summing to 1", action="append", metavar="FILE[:WEIGHT]")
    allow_other_base: bool = arg(False, "load a prefix trained on other base weights")
    prompts: str = arg("", "UTF-8 text file, one prompt a line, encoded as is")
    data_dir: str = arg("", "a dataset folder (as train.py's): prompts are its unique sources, the recipe's "
                            "encoding and decoding settings")
    split: str = arg("test", "with --data-dir: a split name (train, dev, test), a file in it, or a path")
    out: str = arg("", "JSONL, one object per prompt (default: print one line per prompt); with --data-dir also "
                       "OUT's .txt (one line per source, for python -m eval) and .refs.txt beside it")
    beams: int = arg(BeamConfig.beams, "K; 1 is greedy", min=1)
    max_new_tokens: int = arg(BeamConfig.max_new_tokens, "tokens generated at most", min=1)
    min_new_tokens: int = arg(BeamConfig.min_new_tokens, "EOS is banned before this many new tokens", min=0)
    length_penalty: float = arg(BeamConfig.length_penalty, "finished score = sum log p / generated length ** this")
    early_stopping: str = arg("false", "as transformers: true stops a prompt at K finished beams",
                              choices=("false", "true", "never"))
    no_repeat_ngram_size: int = arg(BeamConfig.no_repeat_ngram_size, "no n-gram occurs twice; 0 = off", min=0)
    ban: list[int] | None = arg(None, "token ids never generated (default: 198 628 with --data-dir, RECIPE.md §4; "
                                      "none with --prompts)", type=int, nargs="*")
    batch_size: int = arg(10, "prompts per forward, each with K beams", min=1)
    device: str = arg("cpu", "cpu, cuda, cuda:1, ...")
    dtype: str = arg("float32", "model weights", choices=("float32", "bfloat16"))
    limit: int = arg(0, "only the first N prompts (sources), for smoke runs; 0: all", min=0)


def parse_prefix(spec: str) -> tuple[str, float]:
    """"FILE[:WEIGHT]" -> (FILE, WEIGHT); weight 1 when absent."""
    m = re.fullmatch(r"(.+):([-+]?[\d.]+(?:[eE][-+]?\d+)?)", spec)
    return (m[1], float(m[2])) if m else (spec, 1.0)


def load_decoder(cfg: DecodeConfig) -> tuple[GPT, PastKV | None, tiktoken.Encoding]:
    """The model and its past: the run's own (tuner.open_run), or the --prefix files mixed on its base."""
    model, past, tok, _ = open_run(cfg.ckpt, getattr(torch, cfg.dtype), cfg.device, cfg.allow_other_base)
    if cfg.prefix:
        weighted = [(prefix.load(path, model, cfg.allow_other_base), w) for path, w in map(parse_prefix, cfg.prefix)]
        past = prefix.mix(weighted)  # one prefix of weight 1 mixes to itself
    return model, past, tok


def read_prompts(path: str) -> list[str]:
    """One prompt a line, split on "\n" only: a U+2028 or form feed inside a prompt stays in it."""
    try:
        lines = Path(path).read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise BeamError(f"{path}: cannot read it ({e}). Give a UTF-8 text file, one prompt a line.") from None
    lines = [line.removesuffix("\r") for line in (lines[:-1] if lines[-1] == "" else lines)]
    if not lines:
        raise BeamError(f"{path}: empty. Write one prompt a line.")
    for number, line in enumerate(lines, 1):
        if not line:
            raise BeamError(f"{path}, line {number}: an empty prompt. Remove the blank line.")
    return lines


def show_progress(done: int, total: int, start: float) -> None:
    elapsed = time.time() - start
    eta = elapsed / done * (total - done) if done else 0.0
    print(f"\r[{'#' * (30 * done // total):<30}] {done}/{total} prompts  {elapsed:.0f}s elapsed, ETA {eta:.0f}s",
          end="\n" if done == total else "", file=sys.stderr, flush=True)


def write_lines(path: Path, lines: list[str]) -> None:
    atomic_write(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8"))


def main(argv: list[str] | None = None) -> None:
    try:
        decode(parse(DecodeConfig, argv, __doc__, BeamError))
    except (CheckpointError, prefix.PrefixError, data.DataError, BeamError) as e:
        sys.exit(f"beam.py: error: {e}")
    except OSError as e:  # a full disk or an unwritable --out: one line, not a traceback
        sys.exit(f"beam.py: error: could not write {e.filename or 'the output'} ({e.strerror or e}).")


def check_out(out: str, with_side_files: bool) -> Path | None:
    """Refuse an unusable destination before hours of decoding, not after."""
    if not out:
        if with_side_files:
            raise BeamError("--data-dir needs --out: it writes OUT, OUT's .txt and .refs.txt for python -m eval.")
        return None
    path = Path(out)
    if path.is_dir():
        raise BeamError(f"--out {out}: is a folder; name a file (e.g. {path / 'test.jsonl'}).")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def decode(cfg: DecodeConfig) -> None:
    if bool(cfg.prompts) == bool(cfg.data_dir):
        raise BeamError("give exactly one of --prompts FILE and --data-dir DIR.")
    on_data = bool(cfg.data_dir)
    out = check_out(cfg.out, on_data)
    model, past, tok = load_decoder(cfg)
    if on_data:
        groups = data.group_refs(data.read_pairs(cfg.data_dir, cfg.split))[:cfg.limit or None]
        sources = [source for source, _ in groups]
        prompts = [data.prompt_ids(tok, source) for source in sources]
    else:
        sources = read_prompts(cfg.prompts)[:cfg.limit or None]
        prompts = [tok.encode(line, allowed_special="all") for line in sources]
    es = {"false": False, "true": True, "never": "never"}[cfg.early_stopping]
    banned = cfg.ban if cfg.ban is not None else E2E_BANNED if on_data else ()
    bad = [b for b in banned if not 0 <= b < model.config.vocab_size or b == tok.eot_token]
    if bad:
        raise BeamError(f"--ban {bad}: token ids are 0..{model.config.vocab_size - 1}, and EOS ({tok.eot_token}) "
                        f"cannot be banned (use --min-new-tokens).")
    search = BeamConfig(beams=cfg.beams, max_new_tokens=cfg.max_new_tokens, min_new_tokens=cfg.min_new_tokens,
                        length_penalty=cfg.length_penalty, early_stopping=es,
                        no_repeat_ngram_size=cfg.no_repeat_ngram_size, banned=tuple(banned))
    P = 0 if past is None else past[0][0].size(2)
    check_lengths(prompts, P, search, model.config.n_positions)  # fail before hours of decoding, not after
    # Similar lengths share a batch (less padding); a prompt decodes the same in any batch, so order is free.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    hyps: list[Hyp | None] = [None] * len(prompts)
    start = time.time()
    for first in range(0, len(order), cfg.batch_size):
        batch = order[first:first + cfg.batch_size]
        for i, hyp in zip(batch, beam_search(model, [prompts[i] for i in batch], search, past)):
            hyps[i] = hyp
        show_progress(first + len(batch), len(order), start)
    texts = [e2e_text(tok, h.tokens) if on_data else tok.decode(h.tokens) for h in hyps]
    if out is None:
        print("\n".join(text.replace("\n", " ") for text in texts))
        return
    write_lines(out, [json.dumps({"prompt": s, "text": x, "tokens": h.tokens, "score": h.score}, ensure_ascii=False)
                      for s, x, h in zip(sources, texts, hyps)])
    if on_data:
        write_lines(out.with_suffix(".txt"), texts)
        write_lines(out.with_suffix(".refs.txt"), [line for _, refs in groups for line in [*refs, ""]])


if __name__ == "__main__":
    main()

"""Beam search over a frozen GPT-2 with a past, and the command that decodes with a tuned GPT-2 (Li & Liang 2021,
"Experimental Setup": E2E is decoded by beam search, K=5). With --data-dir it writes what python -m eval scores.

A test set is decoded as one stream (continuous batching): up to batch_size prompts × K beams run in one forward
per step, and when a prompt finishes, its K rows are handed to the next prompt waiting, so the batch stays full
to the end instead of idling until its slowest prompt is done. Each prompt is read once (one row, not K); its
KV cache then grows one token a step in a preallocated buffer and beams are reordered by copying rows
(`beam_idx`), never recomputed. A prefix is a past each row attends to, one per prompt if need be (many tasks,
one backbone). The rules are transformers' `generate(num_beams=K)` on each prompt alone: 2K candidates a step,
K finished hypotheses scored sum(log p) / generated_length ** length_penalty, its stopping rules (early_stopping).

examples:
    python beam.py --ckpt out/ --data-dir ../shared/data/e2e --split test --out out/test.jsonl
    python beam.py --ckpt gpt2 --prompts prompts.txt --max-new-tokens 40 --out gen.jsonl
    python beam.py --ckpt base/ --prefix pos.safetensors:0.7 --prefix neg.safetensors:0.3 --prompts p.txt
    python beam.py --ckpt base/ --requests reqs.jsonl --out out.jsonl    # many tasks (prefixes), one stream
    torchrun --nproc-per-node 4 beam.py --ckpt out/ --data-dir ../shared/data/e2e --out out/test.jsonl --device cuda
    hyps = beam_search(model, [prompt_ids, ...], BeamConfig(beams=5), past_kv, batch_size=10)   # in Python
"""
from __future__ import annotations

import math
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import MISSING, asdict, dataclass

import torch
import torch.nn.functional as F

import data
from cli import arg, check_memory, end_ddp, gather, parse, pick_device, progress, share, start_ddp
from files.checkpoint import CheckpointError, fingerprint
from files.datasets import DataError
from files.decoding import check_out, read_requests, write_results
from files.run import RunFolderError
from generate import (DecodeError, Hyp, SampleConfig, StaticStep, check_lengths, decode_bytes, decode_sources,
                      prefill, rows_of_past, sample)
from model import GPT, PastKV, past_len
from prefix import PrefixError
from tuners import open_run, requests_past


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
            raise DecodeError(f"beams={self.beams}, max_new_tokens={self.max_new_tokens}, min_new_tokens="
                              f"{self.min_new_tokens}, no_repeat_ngram_size={self.no_repeat_ngram_size}: need beams "
                              f"and max_new_tokens >= 1, the others >= 0.")
        if self.early_stopping not in (False, True, "never"):
            raise DecodeError(f"early_stopping={self.early_stopping!r}; expected False, True or 'never'.")


# --- one step of the search ---------------------------------------------------------------------------------

def block(logp: torch.Tensor, hist: torch.Tensor, made: torch.Tensor, cfg: BeamConfig) -> torch.Tensor:
    """Set forbidden next tokens of logp (N, V) to -inf, after log_softmax as transformers' processors do.
    hist (N, L): each row's prompt + output so far, -1 before it; made (N,): tokens each row has generated."""
    logp[:, list(cfg.banned)] = float("-inf")
    logp[made < cfg.min_new_tokens, cfg.eos] = float("-inf")
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
    """logp (B, K, V) of each beam's next token, beam_scores (B, K) -> the 2K best continuations per prompt:
    scores (B, 2K) best first, source beam (B, 2K), token (B, 2K). 2K, as transformers keeps: even if K of
    them end in EOS, K remain to continue."""
    B, k, V = logp.shape
    scores, flat = (beam_scores[:, :, None] + logp).view(B, k * V).topk(2 * K)
    return scores, flat // V, flat % V


def best_k(pool: list[Hyp], new: list[Hyp], K: int) -> list[Hyp]:
    """The K best finished hypotheses of a prompt, best first (ties: the earlier one)."""
    return sorted(pool + new, key=lambda h: -h.score)[:K]


def is_done(pool: list[Hyp], bound: float, cfg: BeamConfig) -> bool:
    """transformers' stopping rule for one prompt: never before K hypotheses have finished; then at once
    (early_stopping=True), or once the best live beam, scored as if it ended now (False) or at
    max_new_tokens ("never", length_penalty > 0), cannot beat the worst finished one."""
    if len(pool) < cfg.beams:
        return False
    return cfg.early_stopping is True or bound <= pool[-1].score


# --- the stream ---------------------------------------------------------------------------------------------

SLACK = 16  # dead columns (of prompts gone) tolerated before `compact` shifts the live ones left

class Rows:
    """The batch's rows, allocated once: per layer keys and values (R, H, W, D), and the key mask (R, W) and
    tokens (R, W, -1 where none) of the same columns. Slot s, one prompt, owns rows s·K..s·K+K-1.

    Columns are time: every live row writes its next key and value at column `c`, model.forward(write_at=c).
    A prompt that joins mid-stream is read (prefill) beside nothing else and its keys are placed right-aligned
    before column c, whatever the other rows hold there: a decoding query attends to every real key, in any
    order, and model.py takes the new token's position from the count of real keys before it (the mask), so
    the row decodes as it would alone. In place, a step writes one column per row, where torch.cat would copy
    every row's whole past (transformers also reorders all of it, see `reorder`).
    """

    def __init__(self, model: GPT, R: int, W: int, c: int):
        cf, w = model.config, model.lm_head.weight
        self.kv = [tuple(torch.zeros(R, cf.n_head, W, cf.head_dim, dtype=w.dtype, device=w.device) for _ in "kv")
                   for _ in range(cf.n_layer)]                                   # per layer (R, H, W, D)
        self.mask = torch.zeros(R, W, dtype=torch.long, device=w.device)         # (R, W) 1 = real key
        self.toks = torch.full((R, W), -1, device=w.device)                      # (R, W) for n-gram blocking
        self.c = c                                                               # the next column written

    def tensors(self) -> list[tuple[torch.Tensor, int]]:
        """Every buffer with its column axis."""
        return [(t, 2) for pair in self.kv for t in pair] + [(self.mask, 1), (self.toks, 1)]

    def place(self, rows: slice, kv: PastKV, mask: torch.Tensor, idx: torch.Tensor, K: int) -> None:
        """Prefilled prompts -> their K rows each: kv per layer (n, H, S, D), mask (n, S), idx (n, T) ending
        at column c - 1."""
        n, S = mask.shape
        for (bk, bv), (k, v) in zip(self.kv, kv):
            bk[rows].view(n, K, *bk.shape[1:])[:, :, :, self.c - S:self.c] = k[:, None]  # (n, K, H, S, D)
            bv[rows].view(n, K, *bv.shape[1:])[:, :, :, self.c - S:self.c] = v[:, None]
        self.mask[rows], self.toks[rows] = 0, -1  # the leaving prompt's columns are forgotten
        self.mask[rows, self.c - S:self.c] = mask.repeat_interleave(K, 0)
        self.toks[rows, self.c - idx.size(1):self.c] = idx.repeat_interleave(K, 0)

    def reorder(self, beam_idx: torch.Tensor, lo: int) -> None:
        """Row r takes the keys of row beam_idx[r] (n·K,). A prompt's K beams share its prefix and prompt keys
        and its mask, so only the rows that changed beam are copied, and only the generated columns lo..c."""
        moved = (beam_idx != torch.arange(beam_idx.numel(), device=beam_idx.device)).nonzero()[:, 0]  # (m,)
        for t, axis in [(t, 2) for pair in self.kv for t in pair] + [(self.toks, 1)]:
            gen = t.narrow(axis, lo, self.c - lo)                                # (R, H, c-lo, D) or (R, c-lo), a view
            gen.index_copy_(0, moved, gen.index_select(0, beam_idx[moved]))

    def move(self, src: slice, dst: slice) -> None:
        """A slot's rows to another slot (the last slot fills a finished one's gap, keeping live rows first)."""
        for t, axis in self.tensors():
            t.narrow(axis, 0, self.c + 1)[dst] = t.narrow(axis, 0, self.c + 1)[src]

    def compact(self, rows: int, keep: int) -> int:
        """Shift the first `rows` rows left past the columns none of them reads any more, once there are SLACK of
        them (or the buffer is full), leaving c >= keep (room for a joining prompt's keys). Every step attends over
        all c columns, so dead ones cost time; a shift copies the live ones, so it waits for SLACK.
        Returns the shift, by which the slots' start columns move."""
        used = self.mask[:rows, :self.c].any(0).nonzero()                        # (u, 1) columns still read
        d = min(int(used[0]) if used.numel() else self.c, self.c - keep)
        if d < SLACK and self.c < self.mask.size(1):
            return 0
        for t, axis in self.tensors():
            t[:rows].narrow(axis, 0, self.c - d).copy_(t[:rows].narrow(axis, d, self.c - d).clone())
        self.c -= d
        return d


@torch.no_grad()
def stream(model: GPT, prompts: list[list[int]], cfg: BeamConfig, past_kv: PastKV | None = None,
           past_mask: torch.Tensor | None = None, past_rows: list[int] | None = None,
           batch_size: int | None = None, static: bool = False) -> Iterator[tuple[int, Hyp]]:
    """Yield (i, best hypothesis of prompt i) as prompts finish. past_kv: per layer (U, H, P, D), the prefixes;
    past_mask (U, P), past_rows: as generate.rows_of_past; batch_size: prompts decoded at once (default: all);
    static: each step a generate.StaticStep over all rows and columns (a CUDA graph on CUDA), the same tokens."""
    dev, N, K, P = model.lm_head.weight.device, len(prompts), cfg.beams, past_len(past_kv)
    check_lengths(prompts, P, cfg.max_new_tokens, model.config.n_positions)
    past_mask, past_rows = rows_of_past(past_kv, past_mask, past_rows, N, dev)
    width, nb = P + max(map(len, prompts)), min(batch_size or N, N)  # width: the most columns a prompt reads
    # A live row spans at most width + max_new_tokens columns, and `compact` leaves fewer than SLACK dead ones.
    rows = Rows(model, nb * K, width + cfg.max_new_tokens + SLACK, c=width)
    step = StaticStep(model, rows.kv, rows.mask, rows.toks) if static else None
    waiting, slots, start = deque(range(N)), [], []  # prompts not begun; per slot its prompt, first output column
    pools: list[list[Hyp]] = [[] for _ in range(N)]
    beam_scores = torch.zeros(0, K, device=dev)                              # (n, K)
    logits = torch.zeros(0, model.config.vocab_size, device=dev)             # (n·K, V) each row's next token
    while waiting or slots:
        joined = bool(waiting) and len(slots) < nb
        if joined:  # prompts join the free slots, read in one forward of their own
            new = [waiting.popleft() for _ in range(min(nb - len(slots), len(waiting)))]
            kv, mask, idx, first_logits = prefill(model, [prompts[i] for i in new], past_kv, past_mask,
                                                  [past_rows[i] for i in new])
            rows.place(slice(len(slots) * K, (len(slots) + len(new)) * K), kv, mask, idx, K)
            # A prompt enters as K beams with the same keys; beams 1..K-1 start at -1e9, as transformers starts
            # them, so the first step's 2K candidates all come from beam 0: the prompt alone, fanned out.
            first = torch.tensor([0.0] + [-1e9] * (K - 1), device=dev).expand(len(new), K)  # (n', K)
            beam_scores, slots, start = torch.cat([beam_scores, first]), slots + new, start + [rows.c] * len(new)
            logits = torch.cat([logits, first_logits.repeat_interleave(K, 0)])  # (n·K, V)
        n, c = len(slots), rows.c
        made = torch.tensor([c - s for s in start], device=dev)                # (n,) tokens each prompt has made
        logp = block(F.log_softmax(logits.float(), -1), rows.toks[:n * K, :c], made.repeat_interleave(K), cfg)
        scores, src, tok = beam_step(logp.view(n, K, -1), beam_scores, K)    # (n, 2K) each
        last = (made + 1 == cfg.max_new_tokens)[:, None]                     # (n, 1)
        ends = (tok == cfg.eos) | last                                       # (n, 2K)
        # Only the top K candidates may finish (the other K are spares to go on with); a finished
        # hypothesis is scored on its generated length, EOS included.
        final = (scores / (made[:, None] + 1) ** cfg.length_penalty).tolist()
        for i, j in ends[:, :K].nonzero().tolist():
            e, row = tok[i, j].item(), i * K + src[i, j].item()
            gen = rows.toks[row, start[i]:c].tolist() + ([] if e == cfg.eos else [e])
            pools[slots[i]] = best_k(pools[slots[i]], [Hyp(gen, final[i][j])], K)
        keep = (scores - 1e9 * ends.float()).topk(K).indices                 # (n, K) the best K going on
        beam_scores, src, tok = scores.gather(1, keep), src.gather(1, keep), tok.gather(1, keep)
        never, lp = cfg.early_stopping == "never" and cfg.length_penalty > 0, cfg.length_penalty
        bound = (beam_scores[:, 0] / (cfg.max_new_tokens if never else made + 1) ** lp).tolist()
        done = [stop or is_done(pools[p], b, cfg) for p, b, stop in zip(slots, bound, last.flatten().tolist())]
        rows.reorder((torch.arange(n, device=dev)[:, None] * K + src).flatten(), lo=min(start))
        rows.toks[:n * K, c], rows.mask[:n * K, c] = tok.flatten(), 1
        # A finished prompt leaves (transformers freezes its pool too); the last slot moves into its rows, so
        # the live rows stay first and the forward takes them as a view.
        for i in reversed([i for i, d in enumerate(done) if d]):
            yield slots[i], pools[slots[i]][0]
            if i != len(slots) - 1:
                rows.move(slice((len(slots) - 1) * K, len(slots) * K), slice(i * K, (i + 1) * K))
                slots[i], start[i], beam_scores[i] = slots[-1], start[-1], beam_scores[-1]
            slots, start, beam_scores = slots[:-1], start[:-1], beam_scores[:-1]
        R = len(slots) * K
        logits = logits[:0]
        if R and step:
            logits = step(c)[:R]                                              # (R, V)
        elif R:
            kv = [(k[:R], v[:R]) for k, v in rows.kv]                         # (R, H, W, D) views
            logits = model(rows.toks[:R, c:c + 1], past_kv=kv, attention_mask=rows.mask[:R, :c + 1],
                           last_only=True, write_at=c).logits[:, -1]          # (R, V)
        rows.c += 1
        # compact shifts by min(first column any row reads, c - width) once that reaches SLACK. The first moves
        # only when a prompt joins or leaves (a reorder stays within a prompt's beams, which share its columns) and
        # c - width grows by one a step, so the per-step scan of the key mask is needed only at those steps.
        if joined or any(done) or rows.c in (width + SLACK, rows.mask.size(1)):
            d = rows.compact(R, keep=width)
            start = [s - d for s in start]


def beam_search(model: GPT, prompts: list[list[int]], cfg: BeamConfig, past_kv: PastKV | None = None,
                past_mask: torch.Tensor | None = None, past_rows: list[int] | None = None,
                batch_size: int | None = None, static: bool = False) -> list[Hyp]:
    """The best hypothesis per prompt, in input order (`stream`'s arguments)."""
    best = dict(stream(model, prompts, cfg, past_kv, past_mask, past_rows, batch_size, static))
    return [best[i] for i in range(len(prompts))]


# --- the command -------------------------------------------------------------------------------------------

@dataclass
class DecodeConfig:
    ckpt: str = arg(MISSING, "a train.py run folder, or a Hugging Face GPT-2 (folder or hub name)")
    prefix: list[str] | None = arg(None, "prefix file or folder, FILE[:WEIGHT] (default: the run's own); several are "
                                         "mixed, weights summing to 1", action="append", metavar="FILE[:WEIGHT]")
    allow_other_base: bool = arg(False, "load a prefix trained on other base weights")
    prompts: str = arg("", "UTF-8 text file, one source a line, decoded in the run's template (see --raw)")
    raw: bool = arg(False, "with --prompts: continue each line as plain text, without the training template")
    label: str = arg("", "a label run's prefix (LABEL.safetensors) to generate with, from no source")
    data_dir: str = arg("", "a dataset folder (as train.py's): prompts are its unique sources, the recipe's "
                            "encoding and decoding settings")
    split: str = arg("test", "with --data-dir: a split name (train, dev, test), a file in it, or a path")
    requests: str = arg("", "JSONL, one {\"prefix\": FILE or a label of --ckpt, \"source\": TEXT} a line: many tasks "
                            "on one base, decoded in one stream (sources in the recipe's template)")
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
    sample: bool = arg(False, "sample instead of beam search, as transformers' generate(do_sample=True) (generate.py); "
                              "score: sum log p of the sampled tokens under the filtered distribution")
    temperature: float = arg(SampleConfig.temperature, "with --sample: logits / T", min=0, strict=True)
    top_k: int = arg(SampleConfig.top_k, "with --sample: keep the K most likely tokens; 0 = all", min=0)
    top_p: float = arg(SampleConfig.top_p, "with --sample: keep the likeliest tokens holding mass P", min=0, max=1)
    seed: int = arg(SampleConfig.seed, "with --sample: same seed, prompts and --batch-size, same samples", min=0)
    num_return: int = arg(SampleConfig.num_return, "with --sample: samples per prompt, one row each", min=1)
    batch_size: int = arg(10, "prompts decoded at once, K beams each; a finished one's rows go to the next", min=1)
    graph: bool = arg(False, "beam search at fixed shapes, a step captured once as a CUDA graph (same outputs)")
    device: str = arg("auto", "auto (CUDA when there is one), cpu, cuda, cuda:N")
    dtype: str = arg("float32", "model weights", choices=("float32", "bfloat16"))
    limit: int = arg(0, "only the first N prompts (sources), for smoke runs; 0: all", min=0)


def main(argv: list[str] | None = None) -> None:
    try:
        decode(parse(DecodeConfig, argv, __doc__, DecodeError))
    except (CheckpointError, RunFolderError, PrefixError, DataError, DecodeError) as e:
        sys.exit(f"beam.py: error: {e}")
    except OSError as e:  # a full disk or an unwritable --out: one line, not a traceback
        sys.exit(f"beam.py: error: could not write {e.filename or 'the output'} ({e.strerror or e}).")
    finally:
        end_ddp()


# --- what to decode, and how ----------------------------------------------------------------------------

def search_config(cfg: DecodeConfig, vocab_size: int, eos: int, templated: bool) -> BeamConfig:
    """The beam search's settings from the flags; the banned ids must leave EOS and 2K tokens to rank each step."""
    banned = cfg.ban if cfg.ban is not None else data.E2E_BANNED if templated else ()
    bad = [b for b in banned if not 0 <= b < vocab_size or b == eos]
    if bad:
        raise DecodeError(f"--ban {bad}: token ids are 0..{vocab_size - 1}, and EOS ({eos}) "
                          f"cannot be banned (use --min-new-tokens).")
    if 2 * cfg.beams > vocab_size - len(set(banned)):  # each step ranks 2K distinct candidates
        raise DecodeError(f"--beams {cfg.beams}: each step ranks 2K = {2 * cfg.beams} distinct tokens, but only "
                          f"{vocab_size - len(set(banned))} may be generated. Use fewer (the recipe: 5).")
    es = {"false": False, "true": True, "never": "never"}[cfg.early_stopping]
    return BeamConfig(beams=cfg.beams, max_new_tokens=cfg.max_new_tokens, min_new_tokens=cfg.min_new_tokens,
                      length_penalty=cfg.length_penalty, early_stopping=es,
                      no_repeat_ngram_size=cfg.no_repeat_ngram_size, banned=tuple(banned))


def run_search(model: GPT, prompts: list[list[int]], search: BeamConfig, past: PastKV | None, batch_size: int,
               past_mask: torch.Tensor | None = None, past_rows: list[int] | None = None,
               static: bool = False) -> list[Hyp] | None:
    """Every prompt's best hypothesis, in input order, decoded as one stream (`stream`). Under torchrun each
    process streams its share of the prompts and rank 0 gathers them all (the other ranks get None)."""
    mine = share(len(prompts))
    rows = None if past_rows is None else [past_rows[i] for i in mine]
    found = {}
    if mine:
        hyps = stream(model, [prompts[i] for i in mine], search, past, past_mask, rows, batch_size, static)
        found = {mine[i]: hyp for i, hyp in progress(hyps, len(mine), "prompt")}
    return gather(found, len(prompts))


def decode(cfg: DecodeConfig) -> None:
    given = bool(cfg.prompts) + bool(cfg.data_dir) + bool(cfg.requests)
    if given > 1 or (given == 0 and not (cfg.label or cfg.prefix)):
        raise DecodeError("give one of --prompts FILE, --data-dir DIR and --requests FILE (or --label / --prefix to "
                          "generate from no source).")
    if cfg.num_return > 1 and not cfg.sample:
        raise DecodeError("--num-return is for --sample: beam search gives each prompt its best hypothesis.")
    device, _, world = start_ddp(pick_device(cfg.device, DecodeError))  # torchrun: one stream per process and GPU
    out = check_out(cfg.out, bool(cfg.data_dir), [cfg.prompts, cfg.requests])
    model, past, tok, run = open_run(cfg.ckpt, getattr(torch, cfg.dtype), device, cfg.allow_other_base, cfg.prefix,
                                     cfg.label, bool(cfg.requests or cfg.data_dir))
    past_mask = names = past_rows = None
    if cfg.requests:
        names, sources = map(list, zip(*read_requests(cfg.requests)))
        entries, templated = None, not cfg.raw
    else:
        sources, entries, templated = decode_sources(cfg.data_dir, cfg.split, cfg.prompts, cfg.limit, run, cfg.raw,
                                                     cfg.label)
        if entries and (run or {}).get("labels") and not (cfg.label or cfg.prefix):  # each label with its prefix
            names, sources = [e.group for e in entries], [e.source for e in entries]
    if names:  # many prefixes, one stream: a row's prefix is its request's, or its label's
        past, past_mask, past_rows = requests_past(cfg.ckpt, model, run, names, cfg.allow_other_base)
    prompts = [data.prompt_ids(tok, s) if templated else tok.encode(s, allowed_special="all") for s in sources]
    search = search_config(cfg, model.config.vocab_size, tok.eot_token, templated)
    check_lengths(prompts, past_len(past), search.max_new_tokens, model.config.n_positions)  # before hours, not after
    K, cols = cfg.num_return if cfg.sample else cfg.beams, past_len(past) + max(map(len, prompts)) + cfg.max_new_tokens
    check_memory(f"--batch-size {cfg.batch_size}, --{'num-return' if cfg.sample else 'beams'} {K}",
                 decode_bytes(model, min(cfg.batch_size, len(prompts)) * K, cols), DecodeError, device)
    sampling = SampleConfig(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed,
                            num_return=cfg.num_return, max_new_tokens=cfg.max_new_tokens,
                            min_new_tokens=cfg.min_new_tokens, banned=search.banned) if cfg.sample else None
    if sampling and (cfg.no_repeat_ngram_size or world > 1 or (cfg.num_return > 1 and cfg.data_dir)):
        raise DecodeError("--sample runs in one process (one RNG stream), without --no-repeat-ngram-size, and with "
                          "--data-dir only with --num-return 1 (its .txt has one output per source).")
    if sampling:  # prompt i's N samples are rows i·N..i·N+N-1
        hyps = sample(model, prompts, sampling, past, past_mask, past_rows, cfg.batch_size)
        sources = [s for s in sources for _ in range(cfg.num_return)]
        names = names and [n for n in names for _ in range(cfg.num_return)]
    else:
        hyps = run_search(model, prompts, search, past, cfg.batch_size, past_mask, past_rows, cfg.graph)
    if hyps is None:  # a torchrun rank other than 0: rank 0 writes
        return
    junk = [i for i, h in enumerate(hyps, 1) if not math.isfinite(h.score)]  # NaN logits: overflowed prefix/weights
    if junk:
        raise DecodeError(f"prompts {junk[:5]}: NaN/Inf log-probabilities (the prefix or the weights overflow the "
                          f"model's arithmetic); nothing was written. Check the prefix (or --prefix weights).")
    texts = [data.e2e_text(tok, h.tokens) if templated else tok.decode(h.tokens) for h in hyps]
    if out is None:
        print("\n".join(text.replace("\n", " ") for text in texts))
        return
    # Traceability: every row says what made it (the run, the prefixes mixed or its label, the base, the settings).
    made_by = dict(ckpt=str(cfg.ckpt), prefixes=cfg.prefix or [], label=cfg.label, base_fingerprint=fingerprint(model),
                   search=asdict(sampling or search))
    rows = [dict(prompt=s, text=x, tokens=h.tokens, score=h.score, made_by=made_by) for s, x, h in
            zip(sources, texts, hyps)]
    for row, name in zip(rows, names or []):
        row["prefix"] = name
    write_results(out, rows, entries)


if __name__ == "__main__":
    main()

"""Decode a dataset's test split, or your own prompts, with a tuned GPT-2 (Li & Liang 2021, "Experimental Setup").

Opens a run folder (tuner.open_run: the base, its prefix or weights, the tokenizer), builds the prompts in the
recipe's template and runs search.py's beam search, which equals transformers' generate(num_beams=K). With
--data-dir it writes what python -m eval scores: OUT's .txt (one line per source) and .refs.txt.

examples:
    python beam.py --ckpt out/ --data-dir ../shared/data/e2e --split test --out out/test.jsonl
    python beam.py --ckpt gpt2 --prompts prompts.txt --max-new-tokens 40 --out gen.jsonl
    python beam.py --ckpt base/ --prefix pos.safetensors:0.7 --prefix neg.safetensors:0.3 --prompts p.txt
    python beam.py --ckpt base/ --requests reqs.jsonl --out out.jsonl    # many tasks (prefixes), one stream
    torchrun --nproc-per-node 4 beam.py --ckpt out/ --data-dir ../shared/data/e2e --out out/test.jsonl --device cuda
"""
from __future__ import annotations

import math
import re
import sys
from dataclasses import MISSING, asdict, dataclass
from pathlib import Path

import tiktoken
import torch

import data
import ddp
import prefix
from beam_files import check_out, read_prompts, read_requests, write_results
from checkpoint import CheckpointError, fingerprint
from cli import arg, parse, pick_device
from model import GPT, PastKV
from report import progress
from runfolder import RunFolderError
from sample import SampleConfig, sample
from search import BeamConfig, BeamError, Hyp, beam_search, check_lengths, stream  # noqa: F401  (beam_search: public)
from tuner import open_run

E2E_BANNED = (198, 628)  # "\n" and "\n\n": an E2E output is one line (RECIPE.md §4)
# transformers' clean_up_tokenization_spaces, applied in this order: the authors decode with it (RECIPE.md §4).
CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
           (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


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
    sample: bool = arg(False, "sample instead of beam search, as transformers' generate(do_sample=True) (sample.py); "
                              "score: sum log p of the sampled tokens under the filtered distribution")
    temperature: float = arg(SampleConfig.temperature, "with --sample: logits / T", min=0, strict=True)
    top_k: int = arg(SampleConfig.top_k, "with --sample: keep the K most likely tokens; 0 = all", min=0)
    top_p: float = arg(SampleConfig.top_p, "with --sample: keep the most likely tokens holding mass P; 1 = all", min=0)
    seed: int = arg(SampleConfig.seed, "with --sample: same seed, prompts and --batch-size, same samples", min=0)
    num_return: int = arg(SampleConfig.num_return, "with --sample: samples per prompt, one row each", min=1)
    batch_size: int = arg(10, "prompts decoded at once, each with K beams; a finished one's rows go to the next",
                          min=1)
    device: str = arg("cpu", "cpu, cuda, cuda:1, ...")
    dtype: str = arg("float32", "model weights", choices=("float32", "bfloat16"))
    limit: int = arg(0, "only the first N prompts (sources), for smoke runs; 0: all", min=0)


def parse_prefix(spec: str) -> tuple[str, float]:
    """"FILE[:WEIGHT]" -> (FILE, WEIGHT); weight 1 when absent."""
    m = re.fullmatch(r"(.+):([-+]?[\d.]+(?:[eE][-+]?\d+)?)", spec)
    return (m[1], float(m[2])) if m else (spec, 1.0)


def main(argv: list[str] | None = None) -> None:
    try:
        decode(parse(DecodeConfig, argv, __doc__, BeamError))
    except (CheckpointError, RunFolderError, prefix.PrefixError, data.DataError, BeamError) as e:
        sys.exit(f"beam.py: error: {e}")
    except OSError as e:  # a full disk or an unwritable --out: one line, not a traceback
        sys.exit(f"beam.py: error: could not write {e.filename or 'the output'} ({e.strerror or e}).")
    finally:
        ddp.end()


# --- what to decode, and how ----------------------------------------------------------------------------

def load_decoder(cfg: DecodeConfig, device: torch.device
                 ) -> tuple[GPT, PastKV | None, tiktoken.Encoding, dict | None]:
    """The model and its past (the run's own, or the --prefix files mixed on its base), and the run's record."""
    ckpt = Path(cfg.ckpt)
    if ckpt.suffix == ".safetensors" and ckpt.is_file() and not (ckpt.parent / "config.json").is_file():
        raise BeamError(f"--ckpt {ckpt} is a trained file, not a model: pass its run folder (--ckpt {ckpt.parent}), "
                        f"or the base model with it as a prefix (--ckpt BASE --prefix {ckpt}).")
    model, past, tok, run = open_run(cfg.ckpt, getattr(torch, cfg.dtype), device, cfg.allow_other_base)
    labels = (run or {}).get("labels") or []
    if cfg.label and cfg.label not in labels:
        raise BeamError(f"--label {cfg.label}: {cfg.ckpt} has the labels {labels or 'none'}.")
    specs = cfg.prefix or ([str(Path(cfg.ckpt) / f"{cfg.label}.safetensors")] if cfg.label else [])
    if specs:
        weighted = [(prefix.load(path, model, cfg.allow_other_base), w) for path, w in map(parse_prefix, specs)]
        past = prefix.mix(weighted)  # one prefix of weight 1 mixes to itself
    elif labels and not cfg.requests:
        raise BeamError(f"{cfg.ckpt} trained one prefix per label: pass --label (one of {labels}), or mix them with "
                        f"--prefix {Path(cfg.ckpt) / labels[0]}.safetensors:0.5 --prefix ...:0.5.")
    return model, past, tok, run


def load_requests(cfg: DecodeConfig, model: GPT, run: dict | None
                  ) -> tuple[list[str], list[str], PastKV, torch.Tensor, list[int]]:
    """--requests: each request's prefix name and source, the distinct prefixes stacked as one past with its mask,
    and each request's row of that stack; so many tasks share one base and one stream (prefix.stack)."""
    names, sources = map(list, zip(*read_requests(cfg.requests)))
    labels, distinct = (run or {}).get("labels") or [], list(dict.fromkeys(names))
    paths = [str(Path(cfg.ckpt) / f"{n}.safetensors") if n in labels else n for n in distinct]
    past, past_mask = prefix.stack([prefix.load(p, model, cfg.allow_other_base) for p in paths])
    return names, sources, past, past_mask, [distinct.index(n) for n in names]


def sources_of(cfg: DecodeConfig, run: dict | None) -> tuple[list[str], list[data.Entry] | None, bool]:
    """The sources to decode, the dataset's entries (with --data-dir), and whether to wrap them in the template.

    A run folder records the template it was trained in; its --prompts lines are *sources* in that template, as
    --data-dir's are (a fine-tuned model ignores a bare line). A bare base model, or --raw, continues plain text.
    """
    if cfg.data_dir:
        entries = data.read_entries(cfg.data_dir, cfg.split)[:cfg.limit or None]
        return list(dict.fromkeys(e.source for e in entries)), entries, True  # each distinct source decoded once
    if not cfg.prompts:  # a label's prefix (or a mix) generates from no source: the prompt is EOS alone
        return [""], None, True
    templated = run is not None and bool(run.get("template", True)) and not cfg.raw
    return read_prompts(cfg.prompts)[:cfg.limit or None], None, templated


def search_config(cfg: DecodeConfig, vocab_size: int, eos: int, templated: bool) -> BeamConfig:
    """The beam search's settings from the flags; the banned ids must leave EOS and 2K tokens to rank each step."""
    banned = cfg.ban if cfg.ban is not None else E2E_BANNED if templated else ()
    bad = [b for b in banned if not 0 <= b < vocab_size or b == eos]
    if bad:
        raise BeamError(f"--ban {bad}: token ids are 0..{vocab_size - 1}, and EOS ({eos}) "
                        f"cannot be banned (use --min-new-tokens).")
    if 2 * cfg.beams > vocab_size - len(set(banned)):  # each step ranks 2K distinct candidates
        raise BeamError(f"--beams {cfg.beams}: each step ranks 2K = {2 * cfg.beams} distinct tokens, but only "
                        f"{vocab_size - len(set(banned))} may be generated. Use fewer (the recipe: 5).")
    es = {"false": False, "true": True, "never": "never"}[cfg.early_stopping]
    return BeamConfig(beams=cfg.beams, max_new_tokens=cfg.max_new_tokens, min_new_tokens=cfg.min_new_tokens,
                      length_penalty=cfg.length_penalty, early_stopping=es,
                      no_repeat_ngram_size=cfg.no_repeat_ngram_size, banned=tuple(banned))


def run_search(model: GPT, prompts: list[list[int]], search: BeamConfig, past: PastKV | None, batch_size: int,
               past_mask: torch.Tensor | None = None, past_rows: list[int] | None = None) -> list[Hyp] | None:
    """Every prompt's best hypothesis, in input order, decoded as one stream (search.stream). Under torchrun each
    process streams its share of the prompts and rank 0 gathers them all (the other ranks get None)."""
    mine = ddp.share(len(prompts))
    rows = None if past_rows is None else [past_rows[i] for i in mine]
    found = {}
    if mine:
        hyps = stream(model, [prompts[i] for i in mine], search, past, past_mask, rows, batch_size)
        found = {mine[i]: hyp for i, hyp in progress(hyps, len(mine), "prompt")}
    return ddp.gather(found, len(prompts))


# --- the decode -----------------------------------------------------------------------------------------

def decode(cfg: DecodeConfig) -> None:
    given = bool(cfg.prompts) + bool(cfg.data_dir) + bool(cfg.requests)
    if given > 1 or (given == 0 and not (cfg.label or cfg.prefix)):
        raise BeamError("give one of --prompts FILE, --data-dir DIR and --requests FILE (or --label / --prefix to "
                        "generate from no source).")
    device, _, world = ddp.start(pick_device(cfg.device, BeamError))  # torchrun: one stream per process and GPU
    out = check_out(cfg.out, bool(cfg.data_dir))
    model, past, tok, run = load_decoder(cfg, device)
    past_mask = names = past_rows = None
    if cfg.requests:
        names, sources, past, past_mask, past_rows = load_requests(cfg, model, run)
        entries, templated = None, not cfg.raw
    else:
        sources, entries, templated = sources_of(cfg, run)
    prompts = [data.prompt_ids(tok, s) if templated else tok.encode(s, allowed_special="all") for s in sources]
    search = search_config(cfg, model.config.vocab_size, tok.eot_token, templated)
    P = 0 if past is None else past[0][0].size(2)
    check_lengths(prompts, P, search, model.config.n_positions)  # fail before hours of decoding, not after
    sampling = SampleConfig(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed,
                            num_return=cfg.num_return, max_new_tokens=cfg.max_new_tokens,
                            min_new_tokens=cfg.min_new_tokens, banned=search.banned) if cfg.sample else None
    if sampling and (cfg.no_repeat_ngram_size or world > 1 or (cfg.num_return > 1 and cfg.data_dir)):
        raise BeamError("--sample runs in one process (one RNG stream), without --no-repeat-ngram-size, and with "
                        "--data-dir only with --num-return 1 (its .txt has one output per source).")
    if sampling:  # prompt i's N samples are rows i·N..i·N+N-1
        hyps = sample(model, prompts, sampling, past, past_mask, past_rows, cfg.batch_size)
        sources = [s for s in sources for _ in range(cfg.num_return)]
        names = names and [n for n in names for _ in range(cfg.num_return)]
    else:
        hyps = run_search(model, prompts, search, past, cfg.batch_size, past_mask, past_rows)
    if hyps is None:  # a torchrun rank other than 0: rank 0 writes
        return
    junk = [i for i, h in enumerate(hyps, 1) if not math.isfinite(h.score)]  # NaN logits: overflowed prefix/weights
    if junk:
        raise BeamError(f"prompts {junk[:5]}: NaN/Inf log-probabilities (the prefix or the weights overflow the "
                        f"model's arithmetic); nothing was written. Check the prefix (or --prefix weights).")
    texts = [e2e_text(tok, h.tokens) if templated else tok.decode(h.tokens) for h in hyps]
    if out is None:
        print("\n".join(text.replace("\n", " ") for text in texts))
        return
    # Traceability: every row says what made it (the run, the prefixes mixed, the base, the decoding settings).
    made_by = dict(ckpt=str(cfg.ckpt), prefixes=cfg.prefix or [], base_fingerprint=fingerprint(model),
                   search=asdict(sampling or search))
    rows = [dict(prompt=s, text=x, tokens=h.tokens, score=h.score, made_by=made_by) for s, x, h in
            zip(sources, texts, hyps)]
    for row, name in zip(rows, names or []):
        row["prefix"] = name
    write_results(out, rows, entries)


if __name__ == "__main__":
    main()

"""Benchmark: our beam search (beam.py, a stream of prompts) against transformers' generate(num_beams=K), side by side.

One process, same weights, same prompts in the same order, same torch thread count, CPU fp32. Each row prints
output tokens/s (generated tokens of the final outputs / wall seconds) of both sides, the ratio, and how many
outputs are the same tokens.
  e2e     the first --prompts E2E test MRs (default 200) in the recipe's template and settings: K=5, at most
          100 new tokens, 198 and 628 banned, --batch-size prompts at once on both sides. Ours is one stream (a
          finished prompt's rows go to the next); generate decodes --batch-size prompts at a time and a batch
          lasts as long as its longest output. The weights: the gpt2 shape (random init, seed 0) fine-tuned
          briefly on E2E dev with our train.py (--tuner fine, 150 steps of 4 pairs, lr 1e-3), so outputs end by
          EOS at natural, varied lengths as a real model's do. Trained once (2 CPU cores: an hour or more) and kept
          in --cache; the first lines say so when it trains.
  forced  random gpt2-shape weights, 10 random prompts, exactly 32 new tokens each (min = max new tokens): both
          sides do equal work, so this is the cost of a step alone.
  tasks   many tasks on one backbone: 4 prefixes × --tasks-requests requests on the e2e weights (prefixes: the
          model's own keys/values of 4 short texts), one stream mixing tasks against one stream per task (ours),
          each side loading the backbone as it would deployed (once; once per task). On CUDA, peak memory too.
    python bench/bench_beam.py                                      # every row
    python bench/bench_beam.py --only e2e --prompts 40 --repeats 1  # a quick check
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import data  # noqa: E402
import prefix  # noqa: E402
from model import GPT  # noqa: E402
from beam import BeamConfig, beam_search  # noqa: E402
from files.tokenizer import load_tokenizer  # noqa: E402

TRAIN = ["--tuner", "fine", "--seed", "0", "--train-split", "dev", "--valid-split", "", "--batch-size", "4", "--lr",
         "1e-3", "--warmup-steps", "10", "--bucket"]  # + --init-from random:SHAPE --max-steps N
TASK_TEXTS = ["name[The Eagle]", "A pub near the river, family friendly.", "eatType[coffee shop], area[city centre]",
              "The Mill serves cheap Italian food"]  # their keys/values make the 4 tasks' prefixes


def e2e_weights(cache: Path, data_dir: Path, device: str, shape: str = "gpt2", steps: int = 150) -> Path:
    """The cached fine-tuned run folder (the gpt2 shape, 150 steps unless told), trained now if absent (train.py
    writes it atomically)."""
    if not (cache / "model.safetensors").is_file():
        train = [*TRAIN, "--init-from", f"random:{shape}", "--max-steps", str(steps)]
        print(f"training the e2e weights into {cache} (once): python train.py {' '.join(train)} ...", flush=True)
        subprocess.run([sys.executable, str(ROOT / "train.py"), *train, "--data-dir", str(data_dir),
                        "--out-dir", str(cache), "--overwrite", "--device", device], cwd=ROOT, check=True)
    return cache


def timed(fn, *args, **kwargs) -> tuple[float, float, list[list[int]]]:
    """-> (wall seconds, CPU seconds of this process, generated tokens per prompt)."""
    wall, cpu = time.perf_counter(), time.process_time()
    tokens = fn(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu, tokens


GRAPH = False  # --graph: ours decodes with the static step (a CUDA graph on CUDA); set once by main


def ours(model: GPT, prompts: list[list[int]], cfg: BeamConfig, batch_size: int, **past) -> list[list[int]]:
    return [h.tokens for h in beam_search(model, prompts, cfg, batch_size=batch_size, static=GRAPH, **past)]


@torch.no_grad()
def theirs(ref, prompts: list[list[int]], cfg: BeamConfig, batch_size: int) -> list[list[int]]:
    """generate on --batch-size prompts at a time, left-padded, in order; outputs cut at the first EOS."""
    outputs = []
    for first in range(0, len(prompts), batch_size):
        batch = prompts[first:first + batch_size]
        T = max(map(len, batch))
        idx = torch.tensor([[cfg.eos] * (T - len(p)) + p for p in batch], device=ref.device)  # (B, T)
        mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in batch], device=ref.device)
        out = ref.generate(idx, attention_mask=mask, num_beams=cfg.beams, do_sample=False,
                           max_new_tokens=cfg.max_new_tokens, min_new_tokens=cfg.min_new_tokens,
                           suppress_tokens=list(cfg.banned) or None, eos_token_id=cfg.eos, pad_token_id=cfg.eos)
        outputs += [gen[:gen.index(cfg.eos)] if cfg.eos in gen else gen for gen in out[:, T:].tolist()]
    return outputs


def compare(name: str, what: str, a, b, ref_name: str, target: str, n_prompts: int) -> dict:
    """Print one row from the best timed runs of each side, a and b (lists of `timed` results, run in pairs), and
    the spread: each pair's own ratio."""
    ratios = sorted(y[0] / x[0] for x, y in zip(a, b))
    (t_a, cpu_a, tok_a), (t_b, cpu_b, tok_b) = min(a), min(b)
    n, same = sum(map(len, tok_a)), sum(x == y for x, y in zip(tok_a, tok_b))
    print(f"\n{name}: {what}")
    print(f"  {'ours':<22} {t_a:8.2f} s  {n / t_a:7.1f} output tokens/s   ({cpu_a:.1f} CPU s)")
    print(f"  {ref_name:<22} {t_b:8.2f} s  {n / t_b:7.1f} output tokens/s   ({cpu_b:.1f} CPU s)")
    print(f"  {'ratio':<22} {t_b / t_a:8.2f}x  identical outputs: {same}/{n_prompts}, output lengths "
          f"{min(map(len, tok_a))}-{max(map(len, tok_a))} (mean {n / n_prompts:.1f})")
    print(f"  {'ratio of each run':<22} " + " ".join(f"{r:.2f}x" for r in ratios))
    return dict(bench=name, what=what, ours=n / t_a, reference=n / t_b, ref_name=ref_name, ratio=t_b / t_a,
                spread=[ratios[0], ratios[-1]], target=target)


def peak(fn, *args) -> tuple[object, float]:
    """fn(*args) and the CUDA allocator's peak during it, GiB (0 on the CPU: one process's RSS can't be split)."""
    if not torch.cuda.is_available():
        return fn(*args), 0.0
    torch.cuda.reset_peak_memory_stats()
    return fn(*args), torch.cuda.max_memory_allocated() / 2**30


def random_prompts(n: int, lo: int, hi: int, seed: int) -> list[list[int]]:
    """n random prompts, lengths uniform in [lo, hi]. E2E test prompts are 15-48 tokens, mean 37."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 50256, (T,), generator=g).tolist() for T in torch.randint(lo, hi + 1, (n,), generator=g)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=("e2e", "forced", "tasks"), default=("e2e", "forced", "tasks"))
    p.add_argument("--prompts", type=int, default=200, help="e2e: the first N distinct test MRs")
    p.add_argument("--batch-size", type=int, default=10, help="e2e and tasks: prompts at once, both sides")
    p.add_argument("--tasks-requests", type=int, default=50, help="tasks: requests per task")
    p.add_argument("--repeats", type=int, default=1,
                   help="timed runs of each side, interleaved (a loaded machine drifts); the best is reported")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads, for both")
    p.add_argument("--device", default="cpu", help="cpu or cuda, both sides (fp32 either way)")
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "e2e")
    p.add_argument("--cache", type=Path, default=ROOT / "out" / "bench" / "e2e-fine-gpt2", help="e2e weights")
    p.add_argument("--graph", action="store_true", help="ours: the static step (beam.py --graph), a CUDA graph on CUDA")
    p.add_argument("--shape", default="gpt2", help="e2e weights' shape (tiny: a smoke run; a new --cache for it)")
    p.add_argument("--train-steps", type=int, default=150, help="e2e weights' fine-tuning steps")
    args = p.parse_args(argv)
    global GRAPH
    GRAPH = args.graph
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(args.threads)
    where = ("CPU fp32" if args.device == "cpu" else f"{torch.cuda.get_device_name()} fp32") + ", --graph" * args.graph
    print(f"{args.shape} shape, {where}, {torch.get_num_threads()} threads")
    rows = []
    if "e2e" in args.only or "tasks" in args.only:
        folder = e2e_weights(args.cache, args.data_dir, args.device, args.shape, args.train_steps)
        model, ref = GPT.from_pretrained(folder).to(args.device), GPT2LMHeadModel.from_pretrained(folder).to(args.device)
        ref, tok = ref.eval(), load_tokenizer(folder)
        sources = list(dict.fromkeys(e.source for e in data.read_entries(str(args.data_dir), "test")))
        cfg = BeamConfig(beams=5, max_new_tokens=100, banned=(198, 628))
    if "e2e" in args.only:
        prompts = [data.prompt_ids(tok, s) for s in sources[:args.prompts]]
        warm = BeamConfig(beams=5, max_new_tokens=2)
        timed(ours, model, prompts[:2], warm, 2), timed(theirs, ref, prompts[:2], warm, 2)
        runs = [(timed(ours, model, prompts, cfg, args.batch_size), timed(theirs, ref, prompts, cfg, args.batch_size))
                for _ in range(args.repeats)]  # interleaved
        rows.append(compare("beam search, E2E", f"output tokens/s, first {len(prompts)} E2E test MRs, K=5, batch "
                            f"{args.batch_size}, {args.shape} shape fine-tuned briefly, {where}", [r[0] for r in runs],
                            [r[1] for r in runs], "transformers generate", ">= 2x", len(prompts)))
    if "tasks" in args.only:
        with torch.no_grad():
            pasts = [model(torch.tensor([tok.encode(text)], device=args.device), use_cache=True).present_kv
                     for text in TASK_TEXTS]
        stacked, key_mask = prefix.stack(pasts)
        n = args.tasks_requests
        prompts = [data.prompt_ids(tok, s) for s in sources[:n * len(pasts)]]
        task = [i % len(pasts) for i in range(len(prompts))]  # requests arrive interleaved

        def load() -> GPT:  # each side loads the backbone as a deployment would: once, or once per task
            return GPT.from_pretrained(folder).to(args.device)

        def one_stream() -> list[list[int]]:
            return ours(load(), prompts, cfg, args.batch_size, past_kv=stacked, past_mask=key_mask, past_rows=task)

        def per_task() -> list[list[int]]:
            out = [None] * len(prompts)
            for u, past in enumerate(pasts):
                mine = [i for i in range(len(prompts)) if task[i] == u]
                for i, tokens in zip(mine, ours(load(), [prompts[i] for i in mine], cfg, args.batch_size, past_kv=past)):
                    out[i] = tokens
            return out

        runs = [(peak(timed, one_stream), peak(timed, per_task)) for _ in range(args.repeats)]
        rows.append(compare("many tasks, one stream", f"output tokens/s, {len(pasts)} prefixes × {n} E2E requests, "
                            f"K=5, batch {args.batch_size}, gpt2 shape, {where}", [r[0][0] for r in runs],
                            [r[1][0] for r in runs], "one run per task", "> 1x", len(prompts)))
        if args.device.startswith("cuda"):
            print(f"  peak CUDA memory: one stream {max(r[0][1] for r in runs):.2f} GiB, one run per task "
                  f"{max(r[1][1] for r in runs):.2f} GiB (the backbone loaded for the other rows included)")
    if "forced" in args.only:
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as tmp:
            GPT2LMHeadModel(GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=1024)).save_pretrained(tmp)
            ref, model = GPT2LMHeadModel.from_pretrained(tmp).to(args.device).eval(), GPT.from_pretrained(tmp).to(args.device)
        prompts = random_prompts(10, 26, 48, seed=0)
        cfg, warm = BeamConfig(beams=5, max_new_tokens=32, min_new_tokens=32), BeamConfig(beams=5, max_new_tokens=2)
        timed(ours, model, prompts[:1], warm, 1), timed(theirs, ref, prompts[:1], warm, 1)
        runs = [(timed(ours, model, prompts, cfg, 10), timed(theirs, ref, prompts, cfg, 10))
                for _ in range(args.repeats)]
        rows.append(compare("beam search, forced length", "output tokens/s, 10 prompts, K=5, 32 new tokens, gpt2 shape "
                            f"random, {where}", [r[0] for r in runs], [r[1] for r in runs], "transformers generate",
                            ">= 1x", 10))
    for row in rows:
        print("RESULT " + json.dumps(row))


if __name__ == "__main__":
    main()

"""Benchmark: our beam search (beam.py) against transformers' generate(num_beams=K), side by side, one process.

Same random gpt2-shape weights (GPT2LMHeadModel(config).save_pretrained), same left-padded prompts, same torch
thread count, CPU fp32. Both make exactly --new-tokens tokens per beam: min_new_tokens = max_new_tokens bans
EOS until the last step, so neither search can stop early and the work is equal. Prints output tokens/s
(prompts × new tokens / seconds) of each and the ratio, and checks the outputs are the same tokens.
    python bench/bench_beam.py --prompts 10 --beams 5 --new-tokens 32
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from beam import BeamConfig, beam_search  # noqa: E402
from model import GPT  # noqa: E402


def make_prompts(n: int, lo: int, hi: int, seed: int) -> list[list[int]]:
    """n random prompts, lengths uniform in [lo, hi]. E2E test prompts are 15-48 tokens, mean 37."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    return [torch.randint(0, 50256, (T,), generator=g).tolist() for T in lengths]


def run_ours(model: GPT, prompts: list[list[int]], cfg: BeamConfig) -> tuple[float, float, list[list[int]]]:
    """-> (wall seconds, CPU seconds of this process, generated tokens per prompt)."""
    wall, cpu = time.perf_counter(), time.process_time()
    hyps = beam_search(model, prompts, cfg)
    return time.perf_counter() - wall, time.process_time() - cpu, [h.tokens for h in hyps]


@torch.no_grad()
def run_hf(ref, prompts: list[list[int]], cfg: BeamConfig) -> tuple[float, float, list[list[int]]]:
    T = max(len(p) for p in prompts)
    idx = torch.tensor([[cfg.eos] * (T - len(p)) + p for p in prompts])  # (B, T) left-padded
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    wall, cpu = time.perf_counter(), time.process_time()
    out = ref.generate(idx, attention_mask=mask, num_beams=cfg.beams, do_sample=False,
                       max_new_tokens=cfg.max_new_tokens, min_new_tokens=cfg.min_new_tokens,
                       eos_token_id=cfg.eos, pad_token_id=cfg.eos)
    return time.perf_counter() - wall, time.process_time() - cpu, out[:, T:].tolist()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--prompts", type=int, default=10)
    p.add_argument("--beams", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--min-len", type=int, default=26, help="shortest prompt, tokens")
    p.add_argument("--max-len", type=int, default=48, help="longest prompt, tokens")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads, for both")
    p.add_argument("--repeats", type=int, default=2,
                   help="timed runs of each, interleaved (a loaded machine drifts); the best is reported")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        GPT2LMHeadModel(GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=1024)).save_pretrained(tmp)
        ref = GPT2LMHeadModel.from_pretrained(tmp).eval()
        ours = GPT.from_pretrained(tmp)
    prompts = make_prompts(args.prompts, args.min_len, args.max_len, args.seed)
    cfg = BeamConfig(beams=args.beams, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    run_ours(ours, prompts[:1], BeamConfig(beams=args.beams, max_new_tokens=2))  # warm-up
    run_hf(ref, prompts[:1], BeamConfig(beams=args.beams, max_new_tokens=2))
    runs = [(run_ours(ours, prompts, cfg), run_hf(ref, prompts, cfg)) for _ in range(args.repeats)]  # interleaved
    (t_ours, cpu_ours, tokens_ours), (t_hf, cpu_hf, tokens_hf) = min(r[0] for r in runs), min(r[1] for r in runs)
    n = sum(len(t) for t in tokens_ours)
    if n != sum(len(t) for t in tokens_hf) or n != args.prompts * args.new_tokens:
        raise SystemExit(f"unequal work: ours made {n} tokens, transformers {sum(map(len, tokens_hf))}")
    same = sum(a == b for a, b in zip(tokens_ours, tokens_hf))
    print(f"gpt2 shape, CPU fp32, {torch.get_num_threads()} threads, {args.prompts} prompts "
          f"({args.min_len}-{args.max_len} tokens), K={args.beams}, {args.new_tokens} new tokens each")
    print(f"ours          {t_ours:7.2f} s  {n / t_ours:7.1f} output tokens/s   ({cpu_ours:.2f} CPU s)")
    print(f"transformers  {t_hf:7.2f} s  {n / t_hf:7.1f} output tokens/s   ({cpu_hf:.2f} CPU s)")
    print(f"ratio         {t_hf / t_ours:7.2f}x   (CPU time {cpu_hf / cpu_ours:.2f}x)   "
          f"identical outputs: {same}/{args.prompts}")
    print("RESULT " + json.dumps(dict(bench="beam search", what=f"output tokens/s, {args.prompts} prompts, K={args.beams}, "
                                      f"{args.new_tokens} new tokens, gpt2 shape, CPU fp32", ours=n / t_ours,
                                      reference=n / t_hf, ref_name="transformers generate", ratio=t_hf / t_ours,
                                      target=">= 2x")))


if __name__ == "__main__":
    main()

"""One training step of prefix-tuning (Li & Liang 2021, §4) and of fine-tuning: ours against PEFT and transformers.

At the gpt2 shape (random weights, built with transformers and saved in Hugging Face's layout), B=10, T=64, fp32
on CPU, it times our prefix step against PEFT's prefix-tuning step on transformers' GPT-2, our embedding-only step
(§7.2, tuners/prompt.py) against PEFT's prompt tuning (PEFT has no bottleneck adapter, so tuners/adapter.py has no row), and
our fine-tune step against transformers'; then, at the gpt2-medium shape, the peak memory of a prefix step against a
fine step, each in its own process (peak resident set size, VmHWM). Steps alternate ours/theirs so a busy machine
slows both.
    python bench/train_step.py                    # a few minutes on 2 cores
    python bench/train_step.py --steps 5 --threads 8 --peak-gflops 1000
    python bench/train_step.py --device cuda --dtype bfloat16 --shape gpt2-medium --steps 20 --peak-gflops 989000
On CUDA both sides run in --dtype (weights and activations; AdamW on the same dtype), steps are timed between
synchronizations, and memory is the CUDA allocator's peak (torch.cuda.max_memory_allocated) instead of RSS.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import prefix as pfx  # noqa: E402  (ours, from the repository root)
from tuners.prompt import EmbeddingTuner, PromptEmbedding  # noqa: E402
from model import GPT, SHAPES, GPTConfig, flops_per_token  # noqa: E402
from tuners import nll_sum, objective  # noqa: E402

GPT2, MEDIUM = SHAPES["gpt2"], SHAPES["gpt2-medium"]
B, T, P, M = 10, 64, 5, 512  # the recipe's batch; E2E-like length; the recipe's prefix
TARGET = {"prefix": ">= 1.5x", "embedding": ">= 1.3x", "fine": ">= 1.2x"}  # speed-up over the reference, per row


DEVICE, DTYPE = torch.device("cpu"), torch.float32  # where both sides run: set once by main from --device, --dtype


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """idx (B, T) and targets (B, T), already shifted; the first half is the source (IGNORE), as in E2E."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50257, (B, T + 1), generator=g)
    targets = ids[:, 1:].clone()
    targets[:, : T // 2] = -100
    return ids[:, :T].to(DEVICE), targets.to(DEVICE)


def placed(model: torch.nn.Module) -> torch.nn.Module:
    return model.to(DEVICE, DTYPE)


def adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-5, fused=True)  # one optimizer for both sides: the step, not AdamW, is timed


def ours_prefix(folder: Path):
    model = placed(GPT.from_pretrained(folder))
    prefix = placed(pfx.Prefix(model.config, P, "mlp", M))
    pfx.freeze(model, prefix)
    opt = adamw(prefix.parameters())
    idx, targets = batch()

    def step() -> None:
        nll = nll_sum(model(idx, past_kv=prefix(), targets=targets).loss, targets)  # as train.py computes it
        objective(nll, (targets != -100).sum(), B, per_sequence=True).backward()
        torch.nn.utils.clip_grad_norm_(prefix.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def ours_embedding(folder: Path):
    """PEFT's prompt embeddings have no MLP: "direct" is the same trained part."""
    model = placed(GPT.from_pretrained(folder))
    tuner = EmbeddingTuner(model, placed(PromptEmbedding(model.config, P, "direct")))
    opt = adamw(tuner.prompt.parameters())
    idx, targets = batch()

    def step() -> None:
        nll = nll_sum(tuner(idx, targets).loss, targets)  # as train.py computes it
        objective(nll, (targets != -100).sum(), B, per_sequence=True).backward()
        torch.nn.utils.clip_grad_norm_(tuner.prompt.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def ours_fine(folder: Path):
    model = placed(GPT.from_pretrained(folder)).train()
    opt = adamw(model.parameters())
    idx, targets = batch()

    def step() -> None:
        model(idx, targets=targets).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def hf_step(model: torch.nn.Module):
    """transformers shifts the labels itself: labels = idx with the source part IGNORE, the same targets as ours."""
    idx, targets = batch()
    labels = torch.cat([torch.full((B, 1), -100, device=DEVICE), targets[:, :-1]], dim=1)  # labels[t+1] = targets[t]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params)

    def step() -> None:
        model(input_ids=idx, labels=labels).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def peft_prefix(folder: Path):
    from peft import PrefixTuningConfig, get_peft_model
    from transformers import GPT2LMHeadModel

    base = GPT2LMHeadModel.from_pretrained(folder).eval()  # frozen and without dropout, as the paper runs GPT-2
    cfg = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P, prefix_projection=True, encoder_hidden_size=M)
    return hf_step(placed(get_peft_model(base, cfg)).eval())


def peft_prompt(folder: Path):
    from peft import PromptTuningConfig, get_peft_model
    from transformers import GPT2LMHeadModel

    base = GPT2LMHeadModel.from_pretrained(folder).eval()  # frozen and without dropout, as for the prefix
    return hf_step(placed(get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P))).eval())


def hf_fine(folder: Path):
    from transformers import GPT2LMHeadModel

    return hf_step(placed(GPT2LMHeadModel.from_pretrained(folder)).train())  # dropout 0.1 on both sides, as the recipe


def side_by_side(ours, theirs, steps: int) -> tuple[float, float]:
    """Median seconds per step of each, after one warm-up step each; the two alternate."""
    ours(), theirs()
    t_ours, t_theirs = [], []
    for _ in range(steps):
        for fn, times in ((ours, t_ours), (theirs, t_theirs)):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
    return statistics.median(t_ours), statistics.median(t_theirs)


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def peak_memory(tuner: str) -> dict:
    """Run in a child process: build a random gpt2-medium, take one step, report peak memory before and after."""
    torch.manual_seed(0)
    with torch.device("meta"):  # then allocate once: GPT(config) on the CPU leaves init temporaries in the peak
        model = GPT(GPTConfig(**MEDIUM))
    model = model.to(DTYPE).to_empty(device=DEVICE)  # in DTYPE from the start: no float32 copy in the peak
    model.tie_weights()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    model_rss = peak_rss_gib()
    idx, targets = batch()
    if tuner == "prefix":
        prefix = placed(pfx.Prefix(model.config, P, "mlp", M))
        pfx.freeze(model, prefix)
        params = list(prefix.parameters())
        nll = nll_sum(model(idx, past_kv=prefix(), targets=targets).loss, targets)
        loss = objective(nll, (targets != -100).sum(), B, per_sequence=True)
    else:
        params = list(model.parameters())
        loss = model(idx, targets=targets).loss
    loss.backward()
    adamw(params).step()  # the moments exist from the first step on, so one step reaches the peak
    return dict(model_gib=model_rss, peak_gib=peak_rss_gib())


def peak_rss_gib() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that over exec from the parent.
    On CUDA, the allocator's peak on the device instead."""
    if DEVICE.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20  # kB -> GiB
    raise RuntimeError("no VmHWM in /proc/self/status: the memory part needs Linux")


def main(argv: list[str] | None = None) -> None:
    global DEVICE, DTYPE, B, T  # where and at what size both sides run
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=6, help="timed steps per side (median reported)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads, both sides")
    p.add_argument("--peak-gflops", type=float, default=333.0,
                   help="peak fp32 GFLOP/s for MFU (default: 2 cores × 2.6 GHz × 64 FLOP/cycle: two AVX-512 FMAs)")
    p.add_argument("--device", default="cpu", help="cpu or cuda, both sides")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="both sides")
    p.add_argument("--batch-size", type=int, default=B, help="B, sequences per step (the recipe's: 10)")
    p.add_argument("--seq-len", type=int, default=T, help="T, tokens per sequence (E2E-like: 64)")
    p.add_argument("--shape", choices=("gpt2", "gpt2-medium"), default="gpt2", help="the timed steps' model shape")
    p.add_argument("--memory", choices=("prefix", "fine"), help=argparse.SUPPRESS)  # the child process's job
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    DEVICE, DTYPE, B, T = torch.device(args.device), getattr(torch, args.dtype), args.batch_size, args.seq_len
    where = f"{args.dtype} on {torch.cuda.get_device_name() if DEVICE.type == 'cuda' else 'CPU'}"
    if args.memory:
        print(json.dumps(peak_memory(args.memory)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        from transformers import GPT2Config, GPT2LMHeadModel
        from transformers.utils import logging

        logging.set_verbosity_error()  # the figures, not transformers' progress bars and notices
        logging.disable_progress_bar()
        warnings.filterwarnings("ignore", category=FutureWarning)

        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config(**SHAPES[args.shape])).save_pretrained(tmp)  # the hub's layout, random weights
        folder, cfg = Path(tmp), GPTConfig(**SHAPES[args.shape])
        print(f"{args.shape} shape, B={B}, T={T}, {where}, {args.threads} threads; MFU against {args.peak_gflops:g} GFLOP/s")
        print(f"measured {args.dtype} matmul (2048³): {matmul_gflops():.0f} GFLOP/s")
        rows = [("prefix", "PEFT prefix-tuning", ours_prefix(folder), peft_prefix(folder), T + P),
                ("embedding", "PEFT prompt tuning", ours_embedding(folder), peft_prompt(folder), T + P),
                ("fine", "transformers fine-tune", ours_fine(folder), hf_fine(folder), T)]
        for tuner, name, ours, theirs, S in rows:
            t_ours, t_theirs = side_by_side(ours, theirs, args.steps)
            for who, t in (("ours", t_ours), (name, t_theirs)):
                mfu = B * T / t * flops_per_token(cfg, S, weights_learn=tuner == "fine") / (args.peak_gflops * 1e9)
                print(f"  {tuner:9s} {who:24s} {t * 1e3:8.0f} ms/step {B * T / t:8.0f} tok/s  MFU {mfu:6.1%}")
            print(f"  {tuner:9s} speed-up ours vs {name}: {t_theirs / t_ours:.2f}x")
            print("RESULT " + json.dumps(dict(bench=f"{tuner} train step", what=f"tok/s, {args.shape} shape, B={B}, T={T}, {where}",
                                              ours=B * T / t_ours, reference=B * T / t_theirs, ref_name=name,
                                              ratio=t_theirs / t_ours, target=TARGET[tuner])))
    mem = {t: json.loads(subprocess.run([sys.executable, __file__, "--memory", t, "--threads", str(args.threads),
                                         "--device", args.device, "--dtype", args.dtype,
                                         "--batch-size", str(B), "--seq-len", str(T)],
                                        capture_output=True, text=True, check=True).stdout) for t in ("prefix", "fine")}
    measure = "CUDA allocator peak" if DEVICE.type == "cuda" else "peak RSS of its own process (VmHWM)"
    print(f"gpt2-medium shape, B={B}, T={T}, {where}, one step, {measure} (after building the model in brackets):")
    for t, m in mem.items():
        print(f"  {t:6s} {m['peak_gib']:6.2f} GiB  (model {m['model_gib']:.2f} GiB, step adds {m['peak_gib'] - m['model_gib']:.2f})")
    print(f"  prefix / fine peak: {mem['prefix']['peak_gib'] / mem['fine']['peak_gib']:.2f}x; "
          f"above the model: {(mem['prefix']['peak_gib'] - mem['prefix']['model_gib']) / (mem['fine']['peak_gib'] - mem['fine']['model_gib']):.2f}x")
    print("RESULT " + json.dumps(dict(bench="train step memory", what=f"peak {'CUDA memory' if DEVICE.type == 'cuda' else 'RSS'} GiB, gpt2-medium shape, B={B}, T={T}, {where} (ratio: prefix / fine)",
                                      ours=mem["prefix"]["peak_gib"], reference=mem["fine"]["peak_gib"],
                                      ref_name="our fine-tune step", ratio=mem["prefix"]["peak_gib"] / mem["fine"]["peak_gib"],
                                      target="<= 0.5x")))


def matmul_gflops() -> float:
    a, b = torch.randn(2048, 2048, device=DEVICE, dtype=DTYPE), torch.randn(2048, 2048, device=DEVICE, dtype=DTYPE)
    a @ b
    sync()
    t0 = time.perf_counter()
    for _ in range(5):
        a @ b
    sync()
    return 5 * 2 * 2048**3 / (time.perf_counter() - t0) / 1e9


if __name__ == "__main__":
    main()

"""Prefix-tuning GPT-2 on E2E, and the fine-tuning baseline (Li & Liang 2021, §4 "Prefix-Tuning", §5 "Experimental Setup").

Prefix-tuning freezes GPT-2 and trains only the prefix (prefix.py); fine-tuning trains every weight. Defaults are the
paper's E2E recipe (RECIPE.md §3): gpt2-medium, 5 epochs, batch 10, lr 8e-5 (prefix) or 5e-5 (fine), linear decay
without warmup, clip 1.0, AdamW without weight decay, seed 101, P=5, M=512. The output folder is what beam.py decodes.
    python train.py --tuner prefix --data-dir data/e2e --out-dir out/prefix
    torchrun --nproc-per-node 2 train.py --tuner prefix ...          # DDP: each process trains on its shard
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import tiktoken.load
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import prefix as pfx
from resume import load_state, read_state, save_state
from data import DataError, collate, epoch_batches, example_ids, read_pairs, subset
from model import (IGNORE, GPT, SHAPES, CheckpointError, GPTConfig, atomic_write, load_tokenizer, resolve,
                   save_pretrained)

LR = {"prefix": 8e-5, "fine": 5e-5}  # RECIPE.md §3: the paper's table, per tuner
GPT2_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"  # tiktoken's source, name and sha256:
GPT2_FILES = {"vocab.json": ("encoder.json", "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
              "merges.txt": ("vocab.bpe", "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5")}
SAME_RUN = ("resume", "log_every", "save_every", "eval_every", "compile", "device", "peak_tflops")  # may change on resume


def arg(default, help: str, **kw) -> field:
    return field(default=default, metadata=dict(help=help, **kw))


@dataclass
class TrainConfig:
    tuner: str = arg("prefix", "prefix: train P virtual tokens, GPT-2 frozen; fine: train every weight",
                     choices=("prefix", "fine"))
    init_from: str = arg("gpt2-medium", "base model: folder, hub name, or random:tiny|gpt2|gpt2-medium (offline)")
    data_dir: str = arg("data/e2e", "folder with src1_*.txt, the E2E CSVs or {split}.jsonl, or one data file")
    train_split: str = arg("train", "split (train, dev, test), or a file in --data-dir, or a path")
    valid_split: str = arg("dev", "the same, for the validation loss; '' for none")
    valid_limit: int = arg(0, "validate on the first N pairs only (0: all)")
    train_limit: int = arg(0, "low-data setting: train on N pairs drawn with --subset-seed (0: all)")
    subset_seed: int = arg(0, "which low-data subset")
    out_dir: str = arg("out", "where args.json, log.jsonl, the trained weights and resume/ go")
    epochs: int = arg(5, "passes over the training set (unless --max-steps)")
    max_steps: int = arg(0, "optimizer steps; 0: --epochs worth")
    batch_size: int = arg(10, "sequences per step and process (× --grad-accum × processes per update)")
    grad_accum: int = arg(1, "micro-batches summed per optimizer step")
    lr: float | None = arg(None, f"peak learning rate; default {LR['prefix']} prefix, {LR['fine']} fine", type=float)
    warmup_steps: int = arg(0, "linear warmup steps before the linear decay to 0")
    weight_decay: float = arg(0.0, "AdamW decoupled weight decay, on matrices only")
    grad_clip: float = arg(1.0, "max gradient norm (0: off)")
    seed: int = arg(101, "seed of data order, prefix init and random: bases")
    prefix_len: int = arg(5, "P, virtual tokens per layer")
    prefix_mid: int = arg(512, "M, hidden width of the prefix MLP (§4.3)")
    prefix_param: str = arg("mlp", "mlp (the paper's reparameterization) or direct", choices=pfx.PARAMETERIZATIONS)
    prefix_init: str = arg("", "init the prefix from this text's activations (§7.4; P = its tokens); '': random")
    bucket: bool = arg(False, "batch similar lengths together (less padding)")
    dtype: str = arg("float32", "float32 (the paper) or bfloat16 autocast", choices=("float32", "bfloat16"))
    compile: bool = arg(False, "torch.compile the model")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N")
    eval_every: int = arg(5000, "validation loss every N steps (and at the end); 0: only at the end")
    log_every: int = arg(10, "progress line and log.jsonl row every N steps")
    save_every: int = arg(1000, "resume checkpoint every N steps")
    peak_tflops: float = arg(312.0, "peak TFLOP/s that MFU is measured against (312: A100 bf16)")
    resume: bool = arg(False, "continue from out-dir/resume/ with the same arguments")


class TrainError(Exception):
    """Training cannot start or go on; the message says why and what to do."""


def parse_args(argv: list[str] | None) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in fields(TrainConfig):
        kw = dict(f.metadata)
        if isinstance(f.default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw.setdefault("type", type(f.default))
        p.add_argument("--" + f.name.replace("_", "-"), default=f.default, **kw)
    cfg = TrainConfig(**vars(p.parse_args(argv)))
    for name in ("epochs", "batch_size", "grad_accum", "log_every", "save_every", "prefix_len", "prefix_mid"):
        if getattr(cfg, name) < 1:
            raise TrainError(f"--{name.replace('_', '-')}={getattr(cfg, name)}: must be at least 1.")
    if cfg.tuner == "fine" and cfg.prefix_init:
        raise TrainError("--prefix-init only applies to --tuner prefix; fine-tuning starts from the base weights.")
    return replace(cfg, lr=cfg.lr if cfg.lr is not None else LR[cfg.tuner])


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then linear decay to 0 at cfg.max_steps (HF's linear schedule, as the paper)."""
    if step < cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    return cfg.lr * max(0.0, (cfg.max_steps - step) / max(1, cfg.max_steps - cfg.warmup_steps))


def flops_per_token(c: GPTConfig, T: int, tuner: str) -> float:
    """Matmul FLOPs per trained token: forward 2N + attention 4·L·C·T; backward twice the forward when the
    weights learn (fine), once when only activations need gradients (prefix: GPT-2 is frozen). The head counts
    at every token, as MFU is usually reported; model.py runs it at target tokens only, so on E2E (half the
    tokens are source) the MFU shown is high by about the head's half share (~15% at the gpt2 shape)."""
    N = c.n_layer * 12 * c.n_embd ** 2 + c.vocab_size * c.n_embd  # blocks + the tied output head
    return (3 if tuner == "fine" else 2) * 2 * N + 3 * 4 * c.n_layer * c.n_embd * T


def nll_sum(loss: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed NLL over targets != IGNORE from the model's mean (its loss, computed in fp32 inside forward)."""
    return loss * (targets != IGNORE).sum()


def objective(nll: torch.Tensor, n_tok: torch.Tensor, n_seq: int | torch.Tensor, tuner: str) -> torch.Tensor:
    # RECIPE.md §3 (§6.4): prefix-tuning sums each sequence's NLL and averages over the batch (objective_mode 1,
    # the paper's eq. 2 as a sum); fine-tuning averages over target tokens. Under clip 1.0 they differ.
    return nll / n_seq if tuner == "prefix" else nll / n_tok


# --- base model, tokenizer files, resume --------------------------------------------------------------

def load_base(cfg: TrainConfig, out: Path, rank: int) -> tuple[GPT, Path]:
    """The base GPT-2 and the folder beam.py should load it from. random:X builds one from the seed (every rank
    builds the same) and rank 0 saves it under out/base in Hugging Face's layout."""
    if not cfg.init_from.startswith("random:"):
        folder = resolve(cfg.init_from)
        return GPT.from_pretrained(folder), folder
    shape = SHAPES.get(cfg.init_from.removeprefix("random:"))
    if shape is None:
        raise TrainError(f"--init-from {cfg.init_from}: unknown shape; use one of {['random:' + k for k in SHAPES]}.")
    torch.manual_seed(cfg.seed)
    model, folder = GPT(GPTConfig(**shape)).eval(), out / "base"
    if rank == 0:
        save_pretrained(model, folder)
        write_tokenizer_files(None, folder)
    return model, folder


def write_tokenizer_files(src: Path | None, dst: Path) -> bool:
    """vocab.json + merges.txt beside a model: copied from the base, else tiktoken's cached GPT-2 files (the same
    bytes under other names). False when neither exists; the model then loads with tiktoken's gpt2."""
    try:
        for name, (remote, sha) in GPT2_FILES.items():
            have = src is not None and (src / name).is_file()
            data = (src / name).read_bytes() if have else tiktoken.load.read_file_cached(GPT2_URL + remote, sha)
            atomic_write(dst / name, lambda tmp: tmp.write_bytes(data))
    except Exception:  # offline without a cache: not fatal here, the caller says what is missing
        return False
    return True


def resume_from(out: Path, params: dict[str, torch.nn.Parameter], opt: torch.optim.Optimizer,
                cfg: TrainConfig) -> int:
    """--resume: the step to continue from, after refusing a checkpoint written with other arguments."""
    state, now = read_state(out / "resume"), asdict(cfg)
    if state is None:
        raise TrainError(f"--resume: {out / 'resume' / 'state.json'} not found; no checkpoint to continue from. "
                         f"Drop --resume to start anew.")
    changed = [k for k, v in state["config"].items() if k not in SAME_RUN and now.get(k) != v]
    if changed:
        raise TrainError(f"--resume: {out / 'resume'} was written with other arguments: " + ", ".join(
            f"--{k.replace('_', '-')} {state['config'][k]!r} (now {now.get(k)!r})" for k in changed))
    return load_state(out / "resume", state, params, opt)


# --- the run ------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    stop: list[str] = []  # Ctrl-C and SIGTERM end the current step, save, and exit cleanly
    handlers = {s: signal.signal(s, lambda n, _: stop.append(signal.Signals(n).name))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        train(cfg, rank, world, device, stop)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        if world > 1:
            dist.destroy_process_group()


def build(cfg: TrainConfig, model: GPT, tok, device: torch.device) -> tuple[torch.nn.Module, int, str]:
    """The trained module (the prefix, or GPT-2 itself), P, and a line saying what trains."""
    if cfg.tuner == "fine":
        model.train()  # the recipe's fine-tune has dropout 0.1 on; our GPT-2 has no dropout, so nothing changes
        return model, 0, f"fine-tuning all {sum(p.numel() for p in model.parameters()):,} parameters"
    prefix = (pfx.init_from_text(model, tok, cfg.prefix_init, cfg.prefix_param, cfg.prefix_mid, seed=cfg.seed)
              if cfg.prefix_init else pfx.Prefix(model.config, cfg.prefix_len, cfg.prefix_param, cfg.prefix_mid,
                                                 seed=cfg.seed)).to(device)
    pfx.freeze(model, prefix)  # GPT-2 frozen and in eval mode, as the authors ran it
    c, P = pfx.param_counts(prefix, model), prefix.embedding.num_embeddings
    return prefix, P, (f"prefix P={P}: trains {c['trained']:,} parameters ({c['trained_frac']:.2%} of the model's "
                       f"{c['model']:,}), stores {c['stored']:,} ({c['stored_frac']:.3%})")


def optimizer(module: torch.nn.Module, cfg: TrainConfig, device: torch.device):
    """AdamW over the trained parameters only, named in the optimizer's order (for resume.save_state)."""
    trained = {n: p for n, p in module.named_parameters() if p.requires_grad}
    decay = {n: p for n, p in trained.items() if p.dim() >= 2}  # no decay on biases and LayerNorm (RECIPE.md §3)
    rest = {n: p for n, p in trained.items() if n not in decay}
    groups = [{"params": list(decay.values()), "weight_decay": cfg.weight_decay},
              {"params": list(rest.values()), "weight_decay": 0.0}]
    fused = device.type in ("cpu", "cuda")
    return decay | rest, torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, fused=fused)


def train(cfg: TrainConfig, rank: int, world: int, device: torch.device, stop: list[str]) -> None:
    say = print if rank == 0 else (lambda *a, **k: None)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pairs = subset(read_pairs(cfg.data_dir, cfg.train_split), cfg.train_limit, cfg.subset_seed)  # data errors first
    valid = read_pairs(cfg.data_dir, cfg.valid_split)[:cfg.valid_limit or None] if cfg.valid_split else []
    model, base = load_base(cfg, out, rank)
    model.to(device)
    tok = load_tokenizer(base)  # offline without tokenizer files: a CheckpointError that says what to do
    module, P, what = build(cfg, model, tok, device)
    say(what)
    fits = model.config.n_positions - P  # the paper never truncates (block 1024); a short-context model drops
    train_ex = [e for e in (example_ids(tok, s, t) for s, t in pairs) if len(e[0]) <= fits]
    valid_ex = [e for e in (example_ids(tok, s, t) for s, t in valid) if len(e[0]) <= fits][rank::world]
    if len(train_ex) < len(pairs):
        say(f"note: left out {len(pairs) - len(train_ex)} training pairs longer than n_positions - P = {fits} tokens")
    lengths = [len(i) for i, _ in train_ex]
    micro = (len(epoch_batches(lengths, cfg.batch_size, cfg.seed)) // world) // cfg.grad_accum * cfg.grad_accum
    if micro == 0:
        raise TrainError(f"{len(train_ex)} training pairs do not fill one step of --batch-size {cfg.batch_size} × "
                         f"--grad-accum {cfg.grad_accum} × {world} processes.")
    cfg = replace(cfg, max_steps=cfg.max_steps or cfg.epochs * micro // cfg.grad_accum)
    params, opt = optimizer(module, cfg, device)
    start = resume_from(out, params, opt, cfg) if cfg.resume else 0
    net = torch.compile(model) if cfg.compile else model
    trainer = module if cfg.tuner == "prefix" else net
    wrapped = DDP(trainer) if world > 1 else trainer  # DDP averages gradients over processes
    autocast = torch.autocast(device.type, torch.bfloat16) if cfg.dtype == "bfloat16" else nullcontext()

    def forward(idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # summed NLL of the batch
        with autocast:
            out = net(idx, wrapped(), targets=targets) if cfg.tuner == "prefix" else wrapped(idx, targets=targets)
        return nll_sum(out.loss, targets)

    log_path = out / "log.jsonl"
    if rank == 0:  # a resumed run keeps the log up to its checkpoint
        rows = log_path.read_text().splitlines() if cfg.resume and log_path.is_file() else []
        kept = "".join(r + "\n" for r in rows if json.loads(r)["step"] <= start)
        atomic_write(log_path, lambda tmp: tmp.write_text(kept))
        # beam.py loads init_from: a random base is the folder it was saved to, a local folder its absolute path
        local = cfg.init_from.startswith("random:") or Path(cfg.init_from).exists()
        run = {**asdict(cfg), "init_from": str(base.resolve()) if local else cfg.init_from,
               "init_from_arg": cfg.init_from, "world_size": world}
        atomic_write(out / "args.json", lambda tmp: tmp.write_text(json.dumps(run, indent=2)))
    say(f"{len(train_ex):,} training pairs, {cfg.max_steps:,} steps of {cfg.batch_size} × {cfg.grad_accum} × {world}, "
        f"lr {cfg.lr:g}" + (f", resuming at step {start}" if start else ""))
    t0 = t_log = time.time()
    tokens, orders = 0, {}
    for step in range(start, cfg.max_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        stats = torch.zeros(3, device=device)  # summed NLL, target tokens, sequences
        for a in range(cfg.grad_accum):
            epoch, pos = divmod(step * cfg.grad_accum + a, micro)
            if epoch not in orders:  # the order is a function of seed and epoch, so a resumed run sees the same
                orders = {epoch: epoch_batches(lengths, cfg.batch_size, cfg.seed + epoch, cfg.bucket)}
            idx, targets = collate([train_ex[i] for i in orders[epoch][pos * world + rank]], tok.eot_token)
            idx, targets = idx.to(device), targets.to(device)  # (B, T)
            with wrapped.no_sync() if world > 1 and a < cfg.grad_accum - 1 else nullcontext():
                nll, n_tok = forward(idx, targets), (targets != IGNORE).sum()
                (objective(nll, n_tok, idx.size(0), cfg.tuner) / cfg.grad_accum).backward()
            stats += torch.stack([nll.detach(), n_tok.float(), torch.tensor(float(idx.size(0)), device=device)])
            tokens += idx.numel()
        if world > 1:
            dist.all_reduce(stats)
        loss = objective(stats[0], stats[1], stats[2], cfg.tuner).item()
        norm = torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.grad_clip or math.inf)
        if not (math.isfinite(loss) and torch.isfinite(norm)):
            raise TrainError(f"step {step + 1}: loss {loss}, gradient norm {norm.item()}; stopped without saving. The "
                             f"last good checkpoint is in {out / 'resume'} (every --save-every {cfg.save_every} steps): "
                             f"lower --lr or use --dtype float32, and continue from it with --resume.")
        opt.step()
        opt.zero_grad(set_to_none=True)
        done = step + 1
        if world > 1:  # every process must stop at the same step, or the others wait forever in all_reduce
            flag = torch.tensor(float(bool(stop)), device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop += ["a signal on another process"] if flag.item() and not stop else []
        row = None
        if done % cfg.log_every == 0 or done == cfg.max_steps or stop:
            now = time.time()
            tps = tokens * world / (now - t_log)
            mfu = tps * flops_per_token(model.config, idx.size(1) + P, cfg.tuner) / (cfg.peak_tflops * 1e12)
            eta = (now - t0) / (done - start) * (cfg.max_steps - done)
            row = dict(step=done, loss=loss, tok_loss=(stats[0] / stats[1]).item(), lr=lr_at(step, cfg),
                       tok_per_s=tps, elapsed_s=now - t0)
            if device.type == "cuda":  # the paper's table reports memory; this is the GPU's high-water mark
                row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            say(f"step {done}/{cfg.max_steps} | loss {loss:.4f} | lr {row['lr']:.2e} | {tps:,.0f} tok/s | "
                f"ETA {eta / 60:.1f} min | MFU {mfu:.2%}")
            tokens, t_log = 0, now
        if valid_ex and ((cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.max_steps):
            row = (row or dict(step=done)) | dict(val_loss=evaluate(forward, valid_ex, cfg, tok.eot_token, device, world))
            say(f"step {done} | validation loss {row['val_loss']:.4f} per target token")
        if rank == 0 and row:
            with log_path.open("a") as f:  # one whole line per write: a crash loses at most the last row
                f.write(json.dumps(row) + "\n")
        if rank == 0 and (done % cfg.save_every == 0 or done == cfg.max_steps or stop):
            save_state(out / "resume", done, params, opt, asdict(cfg))
        if stop and done < cfg.max_steps:
            say(f"stopped by {stop[0]} after step {done}; the checkpoint is saved: add --resume to continue")
            return
    if rank == 0:
        finish(cfg, out, model, base, module)


@torch.no_grad()
def evaluate(forward, examples: list, cfg: TrainConfig, pad_id: int, device: torch.device, world: int) -> float:
    """Mean NLL per target token over this process's share of the validation pairs, summed over processes."""
    total = torch.zeros(2, device=device)
    for i in range(0, len(examples), cfg.batch_size):
        idx, targets = (t.to(device) for t in collate(examples[i:i + cfg.batch_size], pad_id))
        total += torch.stack([forward(idx, targets), (targets != IGNORE).sum().float()])
    if world > 1:
        dist.all_reduce(total)
    return (total[0] / total[1]).item()


def finish(cfg: TrainConfig, out: Path, model: GPT, base: Path, module: torch.nn.Module) -> None:
    """The trained artefact: the compiled prefix, or a Hugging Face folder with its tokenizer; then the loss curve."""
    if cfg.tuner == "prefix":
        path = pfx.save(out / pfx.PREFIX_FILE, module.compile(), model, cfg.prefix_param)
    else:
        save_pretrained(model, out)
        path = out / "model.safetensors"
        if not write_tokenizer_files(base, out):
            print(f"note: no vocab.json/merges.txt for {base}; {out} loads with tiktoken's gpt2 encoding")
    print(f"wrote {path} ({path.stat().st_size / 2**20:.2f} MiB)")
    try:
        import matplotlib.pyplot as plt  # headless, it falls back to the Agg backend by itself
    except ImportError:
        print("note: matplotlib is not installed, so no loss.png (pip install matplotlib)")
        return
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style in (("tok_loss", "-"), ("val_loss", "o-")):
        ax.plot([r["step"] for r in rows if key in r], [r[key] for r in rows if key in r], style, label=key)
    ax.set(xlabel="step", ylabel="NLL per target token", title=f"{cfg.tuner}-tuning {cfg.init_from}")
    ax.legend()
    atomic_write(out / "loss.png", lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


if __name__ == "__main__":
    try:
        main()
    except (TrainError, DataError, CheckpointError, pfx.PrefixError) as e:
        sys.exit(f"error: {e}")

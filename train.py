"""Prefix-tuning GPT-2 on table-to-text, and the baselines (Li & Liang 2021, §4 "Prefix-Tuning", §5 "Experimental Setup").

One loop for every tuner (tuners/): prefix-tuning freezes GPT-2 and trains only the prefix (prefix.py); fine-tuning
trains every weight. Defaults are the paper's E2E recipe (RECIPE.md §3): gpt2-medium, 5 epochs, batch 10, lr 8e-5
(prefix) or 5e-5 (fine), linear decay without warmup, clip 1.0, AdamW without weight decay, seed 101, P=5, M=512.
The output folder is what beam.py decodes.

examples:
    python train.py --tuner prefix --data-dir data/e2e --out-dir out/prefix
    python train.py --tuner prefix --init-from random:tiny --data-dir ../shared/data/e2e --train-split dev \\
        --valid-split test --valid-limit 100 --max-steps 200 --out-dir out/smoke       # offline CPU smoke run
    python train.py ... --resume                                   # continue a stopped run, bit-identically on CPU
    torchrun --nproc-per-node 2 train.py --tuner prefix ...        # DDP: each process trains on its shard
"""
from __future__ import annotations

import math
import signal
import sys
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from cli import (Meter, any_rank, arg, check_memory, end_ddp, line_plot, parse, peak_tflops, pick_device, progress,
                 start_ddp)
from data import TEMPLATE, Batches, batch_of, example, read_rows, subset, task_labels
from files.checkpoint import CheckpointError, fingerprint, n_params, resolve, save_pretrained
from files.datasets import DataError
from files.run import (DONE_FILE, LOG_FILE, RUN_FILE, RunFolderError, atomic_write, claim, log_rows, mark_done,
                       read_log, resume_from, save_step, val_losses, write_json)
from files.tokenizer import load_tokenizer, write_tokenizer_files
from model import GPT, IGNORE, SHAPES, GPTConfig, flops_per_token, named_shape
from prefix import PARAMETERIZATIONS, PrefixError
from tuners import STANDALONE, TUNERS, tuner_class

# RECIPE.md §3, per tuner; no paper value for FT-top2 and the adapter (the code's 5e-5) or EMB/INFIX (the prefix's)
LR = {"prefix": 8e-5, "fine": 5e-5, "fine-top2": 5e-5, "adapter": 5e-5, "embedding": 8e-5}


@dataclass
class TrainConfig:
    tuner: str = arg("prefix", "what learns: prefix (P keys/values in every layer, GPT-2 frozen, §4; --infix "
                     "puts them between source and target, §7.3), embedding (only P input embeddings, §7.2), "
                     "adapter (a bottleneck after every block, --adapter-size), fine (every weight), fine-top2 (the "
                     "top 2 blocks)", choices=tuple(TUNERS))
    init_from: str = arg("gpt2-medium", "base: folder, hub name (or hf:owner/name), random:tiny|gpt2|gpt2-medium|LxD")
    data_dir: str = arg("data/e2e", "folder with src1_*.txt, the E2E CSVs or {split}.jsonl, or one data file")
    train_split: str = arg("train", "split (train, dev, test), or a file in --data-dir, or a path")
    valid_split: str = arg("dev", "the same, for the validation loss; '' for none")
    valid_limit: int = arg(0, "validate on the first N pairs only (0: all)", min=0)
    train_limit: int = arg(0, "low-data setting: train on N pairs drawn with --subset-seed (0: all)", min=0)
    subset_seed: int = arg(0, "which low-data subset")
    out_dir: str = arg("out", "where args.json, log.jsonl, the trained weights and resume/ go")
    overwrite: bool = arg(False, "replace the run already in --out-dir (without it, a used folder is refused)")
    epochs: int = arg(5, "passes over the training set (unless --max-steps)", min=1)
    max_steps: int = arg(0, "optimizer steps; 0: --epochs worth", min=0)
    batch_size: int = arg(10, "sequences per step and process (× --grad-accum × processes per update)", min=1)
    grad_accum: int = arg(1, "micro-batches summed per optimizer step", min=1)
    lr: float | None = arg(None, f"peak learning rate; default {LR['prefix']} prefix, {LR['fine']} fine", type=float,
                           min=0, strict=True)
    warmup_steps: int = arg(0, "linear warmup steps before the linear decay to 0", min=0)
    weight_decay: float = arg(0.0, "AdamW decoupled weight decay, on matrices only", min=0)
    grad_clip: float = arg(1.0, "max gradient norm (0: off)", min=0)
    seed: int = arg(101, "seed of data order, prefix init and random: bases")
    prefix_len: int = arg(5, "P, virtual tokens per layer", min=1)
    prefix_mid: int = arg(512, "M, hidden width of the prefix MLP (§4.3)", min=1)
    prefix_param: str = arg("mlp", "mlp (the paper's reparameterization) or direct", choices=PARAMETERIZATIONS)
    prefix_init: str = arg("", "init the prefix from this text's activations (§7.4; P becomes its token count)")
    infix: bool = arg(False, "prefix: put the P activations between source and target (§7.3, infix.py)")
    adapter_size: int = arg(215, "adapter: bottleneck width b (215: 3%, 6: 0.1% of gpt2-medium; adapter.py)", min=1)
    bucket: bool = arg(False, "batch similar lengths together (less padding)")
    dtype: str = arg("float32", "float32 (the paper) or bfloat16 autocast", choices=("float32", "bfloat16"))
    compile: bool = arg(False, "torch.compile the step: one graph per batch shape (--pad-to), on one CUDA GPU with "
                               "--grad-accum 1 also a CUDA graph (mode reduce-overhead) replayed with one launch")
    pad_to: int | None = arg(None, "pad each batch's length up to a multiple of N (the loss ignores padding), so a "
                                   "compiled step meets a few shapes; default 32 with --compile, else 0 (off)",
                             type=int, min=0)
    device: str = arg("auto", "auto, cpu, cuda, cuda:N")
    eval_every: int = arg(5000, "validation loss every N steps (and at the end); 0: only at the end", min=0)
    early_stop: int = arg(0, "stop after N validations without a lower loss (0: never); the weights with the "
                             "lowest validation loss are kept in OUT/best either way", min=0)
    log_every: int = arg(10, "progress line and log.jsonl row every N steps", min=1)
    save_every: int = arg(1000, "resume checkpoint every N steps", min=1)
    peak_tflops: float = arg(0.0, "peak TFLOP/s for MFU; 0: the GPU's bf16 peak if known (A100, H100...), "
                                  "on CPU none, so no MFU", min=0)
    resume: bool = arg(False, "continue from out-dir/resume/ with the same arguments")


class TrainError(Exception):
    """Training cannot start or go on; the message says why and what to do."""


def parse_args(argv: list[str] | None) -> TrainConfig:
    cfg = parse(TrainConfig, argv, __doc__, TrainError)
    if cfg.tuner != "prefix" and cfg.prefix_init:
        raise TrainError("--prefix-init only applies to --tuner prefix; fine-tuning starts from the base weights.")
    if cfg.tuner != "prefix" and cfg.infix:
        raise TrainError("--infix only applies to --tuner prefix: it places the prefix between source and target.")
    if cfg.infix and cfg.prefix_init:
        raise TrainError("--infix trains one infix from random: not with --prefix-init.")
    return replace(cfg, lr=cfg.lr if cfg.lr is not None else LR[cfg.tuner])


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then linear decay to 0 at cfg.max_steps (HF's linear schedule, as the paper)."""
    if step < cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    return cfg.lr * max(0.0, (cfg.max_steps - step) / max(1, cfg.max_steps - cfg.warmup_steps))


# --- the objective, the optimizer, validation -------------------------------------------------------------------

def nll_sum(loss: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed NLL over the targets from the model's mean (its loss, computed in fp32 inside forward)."""
    return loss * (targets != IGNORE).sum()


def objective(nll_sum: torch.Tensor, n_tok: torch.Tensor, n_seq: int | torch.Tensor,
              per_sequence: bool) -> torch.Tensor:
    """RECIPE.md §3 (§6.4): prefix-tuning sums each sequence's NLL and averages over the batch (objective_mode 1,
    the paper's eq. 2 as a sum); fine-tuning averages over target tokens. Under clip 1.0 they differ."""
    return nll_sum / n_seq if per_sequence else nll_sum / n_tok


def adamw(tuner: nn.Module, lr: float, weight_decay: float, device: torch.device
          ) -> tuple[dict[str, nn.Parameter], torch.optim.AdamW]:
    """AdamW over the tuner's trainable parameters only, named in the optimizer's order (for the resume state)."""
    trained = {n: p for n, p in tuner.named_parameters() if p.requires_grad}
    decay = {n: p for n, p in trained.items() if p.dim() >= 2}  # no decay on biases and LayerNorm (RECIPE.md §3)
    rest = {n: p for n, p in trained.items() if n not in decay}
    groups = [{"params": list(decay.values()), "weight_decay": weight_decay},
              {"params": list(rest.values()), "weight_decay": 0.0}]
    fused = device.type in ("cpu", "cuda")  # one kernel for every parameter's update
    return decay | rest, torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=fused)


@torch.no_grad()
def evaluate(step_fn: nn.Module, examples: list, batch_size: int, pad: tuple[int, int, int], device: torch.device,
             world: int, labelled: bool) -> float:
    """Mean NLL per target token over this process's share of the validation pairs, summed over processes.
    pad: batch_of's (pad_id, pad_to, max_len)."""
    total = torch.zeros(2, device=device)
    step_fn.eval()  # no dropout while measuring (fine-tuning trains with it)
    for i in range(0, len(examples), batch_size):
        idx, targets, task = (t.to(device) for t in batch_of(examples[i:i + batch_size], *pad))
        loss = step_fn(idx, targets, **({"task": task} if labelled else {})).loss
        total += torch.stack([nll_sum(loss, targets), (targets != IGNORE).sum().float()])
    step_fn.train()
    if world > 1:
        dist.all_reduce(total)
    return (total[0] / total[1]).item()


def compiled(step_fn: nn.Module, cuda_graphs: bool) -> nn.Module:
    """torch.compile at static shapes: each batch shape (--pad-to leaves a few) gets its own graph, where dynamic
    shapes would recompile as lengths change and run slower kernels. With cuda_graphs the graph is also a CUDA graph
    (mode reduce-overhead): a step's hundreds of small kernels replay with one launch, which is what a frozen
    gpt2-medium at batch 10 waits on. Not under DDP (its all-reduce is not captured) nor with --grad-accum > 1
    (a replay overwrites the gradients a .grad still holds: pytorch/pytorch#169545)."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)  # shapes × train/eval
    return torch.compile(step_fn, mode="reduce-overhead" if cuda_graphs else None, dynamic=False)


# --- setup: the base model, the tuner ---------------------------------------------------------------------------

def load_base(cfg: TrainConfig) -> tuple[GPT, Path | None]:
    """The base GPT-2 and the folder it came from (None for random:X, built from the seed on every rank alike)."""
    if not cfg.init_from.startswith("random:"):
        folder = resolve(cfg.init_from)
        return GPT.from_pretrained(folder), folder
    shape = named_shape(cfg.init_from.removeprefix("random:"))
    if shape is None:
        raise TrainError(f"--init-from {cfg.init_from}: unknown shape; use one of {['random:' + k for k in SHAPES]} "
                         f"or random:LxD (L layers, D wide, D a multiple of 64: random:4x256).")
    config = GPTConfig(**shape)
    check_memory(f"--init-from {cfg.init_from}", 4 * n_params(config), TrainError)  # float32, before it is built
    torch.manual_seed(cfg.seed)
    return GPT(config).eval(), None


def build_tuner(cfg: TrainConfig, model: GPT, tok, labels: list[str]) -> nn.Module:
    """The tuner of --tuner (and --infix), given its settings: its Config dataclass, filled from the flags of the
    same names."""
    cls = tuner_class(cfg.tuner, cfg.infix)
    settings = cls.Config(**{f.name: getattr(cfg, f.name) for f in fields(cls.Config)})
    return cls.build(model, tok, settings, labels)


# --- the run ------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    device, rank, world = start_ddp(pick_device(cfg.device, TrainError))  # torchrun: a process per GPU
    stop: list[int] = []  # Ctrl-C and SIGTERM end the current step, save, and exit with 128 + the signal
    handlers = {s: signal.signal(s, lambda n, _: stop.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        finished = train(cfg, rank, world, device, stop)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        end_ddp()
    if not finished:  # `train.py && beam.py` must not go on to decode a run that stopped early
        sys.exit(128 + (stop[0] if stop else signal.SIGTERM))


def train(cfg: TrainConfig, rank: int, world: int, device: torch.device, stop: list[int]) -> bool:
    """The whole run; False when a signal stopped it before its last step (the checkpoint saved)."""
    say = print if rank == 0 else (lambda *a, **k: None)
    out = Path(cfg.out_dir)
    # Setup, every check before the run folder is touched: data, base model, tokenizer, the tuner.
    rows = subset(read_rows(cfg.data_dir, cfg.train_split), cfg.train_limit, cfg.subset_seed)
    valid = read_rows(cfg.data_dir, cfg.valid_split)[:cfg.valid_limit or None] if cfg.valid_split else []
    labels = task_labels(rows + valid, cfg.tuner)
    if cfg.infix and labels:
        raise TrainError("--infix trains one infix: not with label rows ({'prefix': label, 'text': ...}).")
    model, base = load_base(cfg)
    if base is not None and cfg.tuner in STANDALONE and out.resolve() == base.resolve():
        raise TrainError(f"--out-dir {out} is the --init-from folder: fine-tuning would overwrite its base.")
    tok = load_tokenizer(base)  # offline without tokenizer files: a CheckpointError that says what to do
    if cfg.prefix_init and len(tok.encode(cfg.prefix_init)) >= model.config.n_positions:  # §7.4: P = its tokens
        raise TrainError(f"--prefix-init: {len(tok.encode(cfg.prefix_init))} tokens, so P leaves no room for an "
                         f"example in the model's n_positions={model.config.n_positions}. Use a shorter text.")
    tuner = build_tuner(cfg, model.to(device), tok, labels).to(device)
    P = tuner.past_len
    fits = model.config.n_positions - P  # the paper never truncates; a short-context model drops what won't fit
    train_ex = [e for e in (example(tok, row, labels) for row in rows) if len(e[0]) <= fits]
    valid_ex = [e for e in (example(tok, row, labels) for row in valid) if len(e[0]) <= fits][rank::world]
    pad = (tok.eot_token, cfg.pad_to if cfg.pad_to is not None else 32 * cfg.compile, fits)  # collate's padding
    batches = Batches(train_ex, cfg.batch_size, cfg.grad_accum, cfg.seed, cfg.bucket, world, rank, *pad)
    if batches.per_epoch == 0:
        raise TrainError(f"{len(train_ex)} training pairs do not fill one step of --batch-size {cfg.batch_size} × "
                         f"--grad-accum {cfg.grad_accum} × {world} processes" + (f"; {len(rows) - len(train_ex)} "
                         f"are longer than the {fits} positions a prefix of {P} leaves in n_positions="
                         f"{model.config.n_positions}." if len(train_ex) < len(rows) else "."))
    # A micro-batch's tokens each need their logits (V floats) and activations (~16·L·C floats, kept for backward)
    c, tokens = model.config, min(cfg.batch_size, len(train_ex)) * (P + sum(batches.lengths) / len(batches.lengths))
    check_memory(f"--batch-size {cfg.batch_size}", 4 * tokens * (c.vocab_size + 16 * c.n_layer * c.n_embd), TrainError,
                 device)
    cfg = replace(cfg, max_steps=cfg.max_steps or cfg.epochs * batches.per_epoch // cfg.grad_accum,
                  **({"prefix_len": P} if P else {}))  # an init text sets its own P (§7.4): the run records it
    # The run's record, written once with its real settings; beam.py opens the folder through tuners.open_run.
    counts = tuner.counts()
    run = {**asdict(cfg), "init_from": str(base.resolve()) if base else "base",  # a random base: in the run folder
           "init_from_arg": cfg.init_from, "world_size": world, "base_fingerprint": fingerprint(model),
           "template": TEMPLATE if all(row.source for row in rows) else "", "labels": labels, "params": counts,
           "done_file": DONE_FILE}
    lock = claim(out, cfg.resume, cfg.overwrite) if rank == 0 else None
    try:
        if cfg.resume and (out / DONE_FILE).is_file():
            say(f"--resume: {out} is already complete ({DONE_FILE}); nothing to do. Decode it with beam.py.")
            return True
        torch.manual_seed(cfg.seed + rank)  # dropout's masks: a function of the seed (the resume state restores it)
        params, opt = adamw(tuner, cfg.lr, cfg.weight_decay, device)
        start = resume_from(out / "resume", params, opt, run) if cfg.resume else 0
        if start is None:
            say(f"--resume: {out} has no checkpoint yet (stopped before its first one): starting from step 0")
            start = 0
        if rank == 0:
            start_run_folder(out, cfg, run, model, base, start, say)
        say(f"{cfg.tuner}-tuning{f' (P={P})' if P else ''}: trains {counts['trained']:,} parameters ({counts['trained_frac']:.2%} of "
            f"{counts['model']:,}), stores {counts['stored']:,} ({counts['stored_frac']:.3%})")
        say(f"{len(train_ex):,} training pairs ({len(rows) - len(train_ex)} longer than {fits} tokens left out), "
            f"{cfg.max_steps:,} steps of {cfg.batch_size} × {cfg.grad_accum} × {world}, lr {cfg.lr:g}"
            + (f", resuming at step {start}" if start else ""))
        wrapped = DDP(tuner) if world > 1 else tuner  # DDP averages gradients over processes
        graphs = cfg.compile and device.type == "cuda" and world == 1 and cfg.grad_accum == 1  # see `compiled`
        step_fn = compiled(wrapped, graphs) if cfg.compile else wrapped
        autocast = torch.autocast(device.type, torch.bfloat16) if cfg.dtype == "bfloat16" else nullcontext()
        T = P + sum(batches.lengths) / len(batches.lengths)  # MFU at the mean example length
        flops = flops_per_token(model.config, T, tuner.weights_learn)
        meter = Meter(cfg.max_steps, start, world, flops, peak_tflops(device, cfg.peak_tflops))
        history = val_losses(out / LOG_FILE)  # a resumed run remembers its validations (the best, early stop)
        # The loop: accumulate, clip, step; log, validate, checkpoint; stop cleanly on a signal.
        for step in progress(range(start, cfg.max_steps), cfg.max_steps - start, "step", show=rank == 0):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            stats = torch.zeros(3, device=device)  # summed NLL, target tokens, sequences
            for a in range(cfg.grad_accum):
                idx, targets, task = (t.to(device) for t in batches(step * cfg.grad_accum + a))  # (B, T), (B,)
                if graphs:  # a new step: the last replay's outputs may now be overwritten
                    torch.compiler.cudagraph_mark_step_begin()
                rows_of = {"task": task} if labels else {}  # a label run: each row's past is its label's prefix
                with wrapped.no_sync() if world > 1 and a < cfg.grad_accum - 1 else nullcontext(), autocast:
                    nll, n_tok = nll_sum(step_fn(idx, targets, **rows_of).loss, targets), (targets != IGNORE).sum()
                    (objective(nll, n_tok, idx.size(0), tuner.per_sequence_loss) / cfg.grad_accum).backward()
                stats += torch.stack([nll.detach(), n_tok.float(), torch.tensor(float(idx.size(0)), device=device)])
                meter.tokens += idx.numel()
            if world > 1:
                dist.all_reduce(stats)
            loss = objective(stats[0], stats[1], stats[2], tuner.per_sequence_loss).item()
            norm = torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.grad_clip or math.inf)
            if not (math.isfinite(loss) and torch.isfinite(norm)):
                raise TrainError(f"step {step + 1}: loss {loss}, gradient norm {norm.item()}; stopped without saving. "
                                 f"The last good checkpoint is in {out / 'resume'} (every --save-every "
                                 f"{cfg.save_every} steps): lower --lr or use --dtype float32, then --resume.")
            opt.step()
            opt.zero_grad(set_to_none=True)
            done = step + 1
            stopping = sync_stop(stop, device)
            row, early = None, False
            if done % cfg.log_every == 0 or done == cfg.max_steps or stopping:
                row = meter.row(done, loss, (stats[0] / stats[1]).item(), lr_at(step, cfg), device)
                say(meter.line(row))
            if valid_ex and ((cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.max_steps):
                val_loss = evaluate(step_fn, valid_ex, cfg.batch_size, pad, device, world, bool(labels))
                row = (row or dict(step=done)) | dict(val_loss=val_loss)
                say(f"step {done} | validation loss {row['val_loss']:.4f} per target token")
                if rank == 0 and val_loss < min(history, default=math.inf):
                    save_best(out, tuner, run)
                history.append(val_loss)
                early = cfg.early_stop and len(history) - 1 - history.index(min(history)) >= cfg.early_stop
            if rank == 0:
                due = done % cfg.save_every == 0 or done == cfg.max_steps or stopping
                save_step(out, done, row, params, opt, run, due)
            if early:
                say(f"early stop after step {done}: {cfg.early_stop} validations without a lower loss")
                break
            if stopping and done < cfg.max_steps:
                say(f"stopped by {signal.Signals(stop[0]).name if stop[0] else 'a signal on another process'} "
                    f"after step {done}; the checkpoint is saved: add --resume to continue")
                return False
        if rank == 0:
            finish(cfg, out, tuner, params)
        return True
    finally:
        if lock is not None:
            lock.close()  # the kernel's lock goes with it (and with the process, however it ends)


def start_run_folder(out: Path, cfg: TrainConfig, run: dict, model: GPT, base: Path | None, start: int,
                     say) -> None:
    """Record the run (args.json), keep the log up to a resumed checkpoint, and save a random base beside it."""
    log, torn = read_log(out / LOG_FILE, start) if cfg.resume else ("", 0)
    if torn:
        say(f"note: skipped {torn} torn line(s) in {out / LOG_FILE} (a run killed mid-write)")
    write_json(out / RUN_FILE, run)
    atomic_write(out / LOG_FILE, lambda tmp: tmp.write_text(log))  # a kill here keeps the old log whole
    if base is None and not (cfg.resume and (out / "base" / "model.safetensors").is_file()):
        save_pretrained(model, out / "base")  # a random base: beam.py loads it from the run folder
    write_tokenizer_files(base, out)  # a run folder decodes with the tokenizer it was trained with


def save_best(out: Path, tuner: nn.Module, run: dict) -> None:
    """OUT/best: the weights with the lowest validation loss so far, a run folder beam.py decodes like OUT."""
    best = out / "best"
    (best / DONE_FILE).unlink(missing_ok=True)  # until the new weights are whole, best/ is not finished
    files = tuner.save(best)
    write_json(best / RUN_FILE, run)
    write_tokenizer_files(out, best)
    mark_done(best, files)


def sync_stop(stop: list[int], device: torch.device) -> bool:
    """Whether to save and stop after this step, decided once: a signal arriving later (while this step saves)
    stops the next one, never this one unsaved. Every process must stop at the same step, or the others wait
    forever in all_reduce."""
    stopping = any_rank(bool(stop), device)
    stop += [0] if stopping and not stop else []  # 0: a signal on another process
    return stopping


def finish(cfg: TrainConfig, out: Path, tuner: nn.Module, params: dict) -> None:
    """The trained artefact (refused if not finite: never an output that decodes to junk), the done mark written
    last, then the loss curve."""
    bad = [n for n, p in params.items() if not torch.isfinite(p).all()]
    if bad:
        raise TrainError(f"the trained weights hold NaN/Inf ({bad[:3]}); nothing was saved. Lower --lr and "
                         f"continue from the last checkpoint with --resume.")
    try:
        paths = tuner.save(out)
        mark_done(out, paths)
    except OSError as e:
        raise TrainError(f"could not write the trained weights to {out} ({e.strerror or e}); the resume "
                         f"checkpoint is kept: free space, then run again with --resume.") from None
    except CheckpointError as e:  # a safetensors write (files/checkpoint.write_safetensors) names its file
        raise TrainError(f"{e} The resume checkpoint is kept: run again with --resume.") from None
    for path in paths:
        print(f"wrote {path} ({path.stat().st_size / 2**10:,.1f} KiB)")
    rows = log_rows(out / LOG_FILE)
    curves = {k: ([r["step"] for r in rows if k in r], [r[k] for r in rows if k in r]) for k in ("tok_loss", "val_loss")}
    if not line_plot(out / "loss.png", curves, "step", "NLL per target token", f"{cfg.tuner}-tuning {cfg.init_from}"):
        print("note: matplotlib is not installed, so no loss.png (pip install matplotlib)")


if __name__ == "__main__":
    try:
        main()
    except (TrainError, DataError, CheckpointError, RunFolderError, PrefixError) as e:
        sys.exit(f"train.py: error: {e}")
    except OSError as e:  # a full disk or an unwritable folder outside a checkpoint: one line, not a traceback
        sys.exit(f"train.py: error: could not write {e.filename or 'a file'} ({e.strerror or e}).")

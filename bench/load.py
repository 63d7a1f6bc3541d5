"""Benchmark: load a gpt2-medium-shape checkpoint with ours vs transformers.GPT2LMHeadModel.from_pretrained.

Both read the same random-weight checkpoint (config.json + model.safetensors, written by transformers'
save_pretrained). Each load runs in a fresh subprocess, so peak RSS is that loader's alone; loaders
alternate over --repeats rounds and the median time is reported. The file is read once before timing,
so both find it in the page cache. A third row is the floor: a fresh process that only maps the file and touches each of its pages once.
    python bench/load.py                 # gpt2-medium shape, 3 rounds
    python bench/load.py --shape gpt2
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from model import SHAPES  # noqa: E402  (ours, from the repository root)

# Run in a child process: import, load, then one forward (both loaders memory-map the file, so the
# weights are read from it only when first used: the forward is where a lazy load pays). Memory is
# read from /proc (VmHWM), which, unlike ru_maxrss, does not inherit the parent's peak across exec.
CHILD = """
import json, re, sys, time
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads(1)
def mib(field):
    return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024
if {which!r} == "floor":  # the least a loader must do before a first forward: map the file, touch every page
    import mmap, numpy
    def load(folder):
        with open(folder + "/model.safetensors", "rb") as f:
            pages = numpy.frombuffer(mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ), numpy.uint8)
        return int(pages[::mmap.PAGESIZE].sum())  # one byte of each page: all of it mapped in, as a forward needs
elif {which!r} == "ours":
    from model import GPT
    load = GPT.from_pretrained
else:
    from transformers import GPT2LMHeadModel
    load = GPT2LMHeadModel.from_pretrained
before = mib("VmRSS")
t0 = time.perf_counter()
model = load({folder!r})
t1 = time.perf_counter()
with torch.no_grad():
    if {which!r} != "floor":
        model(torch.zeros(1, 8, dtype=torch.long))
t2 = time.perf_counter()
print(json.dumps(dict(load_s=t1 - t0, first_forward_s=t2 - t1, total_s=t2 - t0,
                      peak_mib=mib("VmHWM"), added_mib=mib("VmHWM") - before)))
"""


def make_checkpoint(folder: Path, shape: dict) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(**shape)).save_pretrained(folder)


def load_once(which: str, folder: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), which=which, folder=str(folder))],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--shape", choices=["gpt2", "gpt2-medium"], default="gpt2-medium")
    p.add_argument("--repeats", type=int, default=3, help="rounds; each loads with both, alternating")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_checkpoint(folder, SHAPES[args.shape])
        size_mib = (folder / "model.safetensors").stat().st_size / 2**20
        (folder / "model.safetensors").read_bytes()  # warm the page cache for both loaders alike
        runs: dict[str, list[dict]] = {"ours": [], "transformers": [], "floor": []}
        for _ in range(args.repeats):
            for which in runs:
                runs[which].append(load_once(which, folder))
    med = {w: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for w, rs in runs.items()}
    print(f"load {args.shape} (random weights), median of {args.repeats}, fresh process each, 1 thread")
    print("| loader | from_pretrained s | + first forward s | total s | peak RSS MiB | added by load+forward MiB |")
    print("|---|---|---|---|---|---|")
    for w, m in med.items():
        print(f"| {w} | {m['load_s']:.3f} | {m['first_forward_s']:.3f} | {m['total_s']:.3f} | "
              f"{m['peak_mib']:.0f} | {m['added_mib']:.0f} |")
    o, t, f = med["ours"], med["transformers"], med["floor"]
    print(f"(floor: a fresh process mapping model.safetensors's {size_mib:.0f} MiB and touching each page once, "
          f"after `import torch`.) load + first forward over the floor: ours {o['total_s'] / f['total_s']:.1f}x, "
          f"transformers {t['total_s'] / f['total_s']:.1f}x")
    print(f"speed-up, load + first forward (transformers / ours): {t['total_s'] / o['total_s']:.2f}x; "
          f"from_pretrained alone: {t['load_s'] / o['load_s']:.2f}x; "
          f"peak RSS (ours / transformers): {o['peak_mib'] / t['peak_mib']:.2f}x")
    for what, key, target in (("from_pretrained s", "load_s", ">= 2x"), ("load + first forward s", "total_s", ">= 2x"),
                              ("peak RSS MiB (ratio: theirs / ours)", "peak_mib", "> 1x")):
        print("RESULT " + json.dumps(dict(bench=f"load {args.shape}", what=what, ours=o[key], reference=t[key],
                                          ref_name="transformers from_pretrained", ratio=t[key] / o[key], target=target)))


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# The checks and benchmark rows that need a CUDA GPU, in one run (a lent GPU is held by the minute).
# Run from the repository root, with ../shared beside it (or SHARED=/path/to/shared), on a machine whose
# python3 has torch with CUDA, transformers and peft. Logs go to $OUT (default: out/gpu).
#     bash bench/gpu.sh
# Each step has its own time limit, so one that hangs does not cost the others.
set -u
SHARED=${SHARED:-../shared}
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
export TIKTOKEN_CACHE_DIR=$SHARED/tiktoken-cache PYTHONUNBUFFERED=1
step() {  # step NAME SECONDS COMMAND...: run, log to $OUT/NAME.log, say how long it took
  local name=$1 limit=$2; shift 2
  echo "=== $name: $*"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
# the CUDA tests (fused SDPA with a past, bf16 against fp32) and the model's parity tests on this image's transformers
step tests 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_model.py
# one training step: ours against PEFT / transformers, gpt2-medium, bf16, B=10, T=64 (the recipe's batch)
step train_step 120 python3 bench/train_step.py --device cuda --dtype bfloat16 --shape gpt2-medium --steps 20 \
  --peak-gflops 989000
# decoding the first 200 E2E test MRs, K=5, against generate (trains its gpt2-shape weights first: 150 steps)
step beam 240 python3 bench/bench_beam.py --device cuda --repeats 3 --cache "$OUT/e2e-fine-gpt2" \
  --data-dir "$SHARED/data/e2e"
# the whole E2E test set (630 MRs) through beam.py as a user runs it, on those weights
step decode 90 python3 beam.py --ckpt "$OUT/e2e-fine-gpt2" --data-dir "$SHARED/data/e2e" --split test \
  --device cuda --out "$OUT/test.jsonl"
rm -rf "$OUT/e2e-fine-gpt2"  # 0.5 GB of weights: too large to bring back

#!/usr/bin/env bash
# The checks and benchmark rows that need a CUDA GPU, in one run of at most 8 minutes (a lent GPU is held by the
# minute). Run from the repository root, with ../shared beside it (or SHARED=/path/to/shared), on a machine whose
# python3 has torch with CUDA, transformers and peft. Logs go to $OUT (default: out/gpu).
#     bash bench/gpu.sh              # the CUDA tests, then issue 25's rows (bench/pace.py): a table at the end
#     ALL=1 bash bench/gpu.sh        # and the earlier rows: train step against PEFT, bench_beam's every row (+6 min)
#     TINY=1 bash bench/gpu.sh       # a smoke run of the same script on a CPU: tiny shapes, no GPU needed (~3 min)
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

if [ -n "${TINY:-}" ]; then
  step tests 120 python3 -m pytest -q -p no:cacheprovider tests/test_pace.py
  step pace 300 python3 bench/pace.py --tiny --data-dir "$SHARED/data/e2e" --out "$OUT/pace"
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
# the CUDA tests (fused SDPA with a past, bf16 against fp32; CUDA graphs: compiled training and the captured decoding
# step against eager) and the model's parity tests on this image's transformers
step tests 110 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_model.py tests/test_pace.py \
  -k "cuda or not pace"
# issue 25: train.py eager and --compile (gpt2-medium, B=10, bf16), decoding in process against generate (batch 10
# and 50, --graph and eager), beam.py as a process on the 630 test MRs (trains its gpt2-shape weights first)
step pace 350 python3 bench/pace.py --device cuda --data-dir "$SHARED/data/e2e" --out "$OUT/pace"
if [ -n "${ALL:-}" ]; then
  # one training step: ours against PEFT / transformers, gpt2-medium, bf16, B=10, T=64 (the recipe's batch)
  step train_step 120 python3 bench/train_step.py --device cuda --dtype bfloat16 --shape gpt2-medium --steps 20 \
    --peak-gflops 989000
  # every bench_beam row (e2e, forced, tasks) on the weights pace trained
  step beam 240 python3 bench/bench_beam.py --device cuda --repeats 3 --cache "$OUT/pace/e2e-fine-gpt2" \
    --data-dir "$SHARED/data/e2e"
fi
rm -rf "$OUT/pace/e2e-fine-gpt2" "$OUT"/pace/train-*/base  # weights: too large to bring back

#!/usr/bin/env bash
# Set up a virtual environment with everything: runtime (torch, tiktoken, numpy, safetensors), the eval
# extra (pycocoevalcap's METEOR/PTB jars; needs Java) and the test-only references (pytest, transformers,
# peft). Run from anywhere:  bash scripts/setup.sh  ->  .venv/ in the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v java >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq default-jre-headless >/dev/null
  else
    echo "note: no Java found; METEOR and the PTB tokenizer in eval/ need it (e.g. apt-get install default-jre-headless)" >&2
  fi
fi

python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# One pinned torch for reproducible numbers (a CUDA build from PyPI on Linux; the CPU build where it lies on disk).
python -m pip install -q "torch==2.13.0"
python -m pip install -q -r requirements.txt -r requirements-eval.txt -r requirements-test.txt
echo "ready: . .venv/bin/activate"

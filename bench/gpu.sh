#!/usr/bin/env bash
# The prepared GPU run: on a machine with CUDA and no network, from a fresh clone:
#   bash bench/gpu.sh
# Sets up .venv if needed (make setup), then bench/gpu.py: decode with all cores, embed at 150 frames
# (bf16, channels_last, eager and compiled) vs the model-only forward, `spectral predict` latency,
# `bench/serve.py` with batches of 8 and 1, 1-GPU
# and (2+ GPUs) DDP training. Writes bench/results/gpu_<card>.json; about 10 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
make setup >/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec .venv/bin/python bench/gpu.py "$@"

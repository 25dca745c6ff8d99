#!/usr/bin/env bash
# Builds smallcap with candle's `cuda` feature, checks training on the GPU against the reference
# fixture, and times full-size training (samples per second at batch 8 and 64).
#
# Needs: a Rust toolchain, a CUDA toolkit (nvcc, cuBLAS; CUDA_HOME or nvcc on PATH) and a GPU.
# CI never runs this (it is CPU-only). Usage: scripts/gpu-train-check.sh [extra bench_train args]
# Set CUDA_COMPUTE_CAP (e.g. 90 for H100/H200) when no GPU is visible at build time.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvcc >/dev/null || { echo "nvcc not found: install the CUDA toolkit" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d .)}"
cargo build --release --features cuda --bin smallcap --bin bench_train
# The fixture steps (loss within 1e-5, gradients and parameters within 1e-4 of the reference).
SMALLCAP_TEST_CUDA=1 cargo test --release --features cuda --test train_reference
# Throughput at full size.
./target/release/bench_train --batch 8 --batch 64 --steps 5 "$@"

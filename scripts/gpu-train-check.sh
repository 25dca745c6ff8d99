#!/usr/bin/env bash
# Checks training on a GPU against the reference fixture (loss within 1e-5, gradients and
# parameters within 1e-4) and times full-size training (samples per second at batch 8 and 64).
#
# Two ways to run it, both from the repository root on the GPU machine:
#  - with Rust and a CUDA toolkit there (nvcc, cuBLAS; CUDA_HOME or nvcc on PATH): it builds with
#    `--features cuda` first;
#  - on a machine with a driver but no Rust (the lent H100/H200 machines): build the bundle
#    elsewhere with scripts/cuda-build.sh, bring target/gpu-bundle along, and this script runs it
#    (the CUDA 13 libraries are found in the machine's Python packages, nvidia-cublas and others).
#    The lent machines carry at most 64 MiB of working tree: the fixtures this needs are model/,
#    train/ and tokenizer/; the others can be left untracked for the run.
# CI never runs this (it is CPU-only). Usage: scripts/gpu-train-check.sh [extra bench_train args]
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if [ -f target/gpu-bundle/bench_train.xz ] && ! command -v cargo >/dev/null; then
  bin="$(mktemp -d)"
  for b in bench_train train_reference; do
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      "target/gpu-bundle/$b.xz" "$bin/$b"
    chmod +x "$bin/$b"
  done
  libs="$(python3 -c 'import glob, os, nvidia; print(":".join(sorted({os.path.dirname(p) for d in nvidia.__path__ for p in glob.glob(d + "/**/lib/lib*.so*", recursive=True)})))' 2>/dev/null || true)"
  export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  SMALLCAP_REPO="$PWD" SMALLCAP_TEST_CUDA=1 "$bin/train_reference" --test-threads 1
  bench="$bin/bench_train"
else
  command -v nvcc >/dev/null || { echo "nvcc not found: install the CUDA toolkit" >&2; exit 1; }
  export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d .)}"
  cargo build --release --features cuda --bin bench_train
  SMALLCAP_TEST_CUDA=1 cargo test --release --features cuda --test train_reference
  bench=target/release/bench_train
fi
# Throughput at full size (random weights; the GPU is picked when present).
"$bench" --batch 8 --batch 64 --steps 5 "$@"

#!/usr/bin/env bash
# Builds smallcap's `cuda` feature on a machine with no GPU and no CUDA install, for a GPU machine
# that has a driver but no Rust (the lent H100/H200 machines; see scripts/gpu-train-check.sh).
#
#  - CUDA 13.0's compiler, headers and libraries come from NVIDIA's PyPI wheels, unpacked into
#    target/cuda-toolkit (about 600 MB; nothing is installed system-wide).
#  - The driver library (libcuda.so.1) is not on PyPI: the link goes against a stub with the same
#    soname that defines the driver functions cudarc declares, as the toolkit's lib/stubs/libcuda.so
#    does. The GPU machine's own driver is what runs.
#  - Kernels are built for CUDA_COMPUTE_CAP (default 90: H100/H200).
#
# Output: target/gpu-bundle/{bench_train,train_reference}.xz (the benchmark and the fixture test,
# about 7.5 MB each compressed; 57 MB each unpacked, mostly kernels).
# Usage: scripts/cuda-build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
TOOLKIT="$ROOT/target/cuda-toolkit"
CUDA="$TOOLKIT/nvidia/cu13"
if [ ! -x "$CUDA/bin/nvcc" ] || [ ! -x "$CUDA/nvvm/bin/cicc" ]; then
  python3 -m pip download -q --disable-pip-version-check --no-deps -d "$TOOLKIT/wheels" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
    nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
  for w in "$TOOLKIT"/wheels/*.whl; do python3 -m zipfile -e "$w" "$TOOLKIT"; done
  chmod +x "$CUDA"/bin/* "$CUDA"/nvvm/bin/*
  # The unversioned names the linker looks for.
  for l in cudart cublas cublasLt nvrtc; do ln -sf "lib$l.so.13" "$CUDA/lib/lib$l.so"; done
  ln -sf libcurand.so.10 "$CUDA/lib/libcurand.so"
fi
if [ ! -f "$CUDA/lib/stubs/libcuda.so" ]; then
  CUDARC="$(cargo metadata --format-version 1 --features cuda |
    python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc").rsplit("/", 1)[0])')"
  mkdir -p "$CUDA/lib/stubs"
  grep -oE '^\s+fn cu[A-Za-z0-9_]+\(' "$CUDARC/src/driver/sys/mod.rs" | grep -oE 'cu[A-Za-z0-9_]+' |
    sort -u | awk '{print "void " $1 "(void) {}"}' >"$CUDA/lib/stubs/libcuda.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CUDA/lib/stubs/libcuda.so" "$CUDA/lib/stubs/libcuda.c"
fi
export CUDA_HOME="$CUDA" PATH="$CUDA/bin:$PATH" CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CARGO_TARGET_DIR="$ROOT/target/cuda"
cargo build --release --features cuda --bin bench_train
test_bin="$(cargo test --release --features cuda --test train_reference --no-run --message-format json |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "train_reference" and m.get("executable"):
        print(m["executable"])')"
rm -rf target/gpu-bundle && mkdir -p target/gpu-bundle
cp "$CARGO_TARGET_DIR/release/bench_train" "$test_bin" target/gpu-bundle/
mv target/gpu-bundle/"$(basename "$test_bin")" target/gpu-bundle/train_reference
strip target/gpu-bundle/*
xz -T0 target/gpu-bundle/*
ls -la target/gpu-bundle

#!/usr/bin/env bash
# The CUDA tier and the GPU benchmarks on a GPU machine (see GPU.md); every log under $OUT.
#
#     benchmarks/gpu/run_on_gpu.sh [all|tests|bench]      (default: all)
#
# `tests` (the CUDA tests, at most 9 minutes) and `bench` (the benchmarks, at most 8)
# each fit a 10-minute command; `all` runs both.
#
# Before: build the pycuda wheel on a development machine and carry it over with the tree
# (about 5 minutes; the GPU machine has no network):
#     ../shared/gpu/build-pycuda-wheel.sh .whl
# Then, on the GPU machine, from the repository root:
#     OUT=/some/folder benchmarks/gpu/run_on_gpu.sh
set -uo pipefail
PHASE=${1:-all}
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run-$PHASE.log") 2>&1

echo "== $(date -u +%FT%TZ) $(hostname)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
nvcc --version | tail -2 || true

# pycuda from the carried wheel, needlec from the tree (its native runtime built in place)
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --target .site .whl/*.whl
fi
export PYTHONPATH=$PWD/.site:$PWD
python3 setup.py build_ext --inplace -q > "$OUT/build.log" 2>&1 || echo "native runtime build failed (see build.log)"
python3 - <<'PY'
import needlec as nc
print("cuda enabled:", nc.cuda().enabled())
PY

if [ "$PHASE" = all ] || [ "$PHASE" = tests ]; then
# the CUDA test tier: the op table's cases (one nvcc call per group), every matmul tiling, and
# the training steps on the GPU against the reference (the source, nvcc and host-run tiers run
# on every machine; the arena, graph-replay and vector-loop tests over the host stand-in are
# among them); matmul tiles from the heuristic here (the benchmark autotunes)
NEEDLEC_CUDA_AUTOTUNE=0 timeout 180 python3 -m pytest -q -p no:cacheprovider \
    tests/backends/test_cuda_device.py \
    tests/backends/test_cuda_gemm.py::test_every_matmul_tiling_on_the_gpu \
    --junitxml="$OUT/cuda-tests.xml" > "$OUT/cuda-tests.log" 2>&1
echo "cuda tests: exit $? (tail of cuda-tests.log:)"
tail -25 "$OUT/cuda-tests.log"

# the op table, module and training-step tests on the cuda() device (skipped without a GPU)
timeout 130 python3 -m pytest -q -p no:cacheprovider tests/ops tests/nn tests/models -k cuda \
    --junitxml="$OUT/device-tests.xml" > "$OUT/device-tests.log" 2>&1
echo "device-parametrized tests on cuda: exit $? (tail of device-tests.log:)"
tail -15 "$OUT/device-tests.log"

# device-resident arrays and eager CUDA on the GPU (each eager op signature is one nvcc call)
timeout 110 python3 -m pytest -q -p no:cacheprovider tests/backends/test_cuda_eager.py \
    -k "gpu" --junitxml="$OUT/cuda-eager.xml" > "$OUT/cuda-eager.log" 2>&1
echo "cuda eager tests: exit $? (tail of cuda-eager.log:)"
tail -15 "$OUT/cuda-eager.log"
# the convolution cores (the host-run table, and ResNet9's layers at batch 4) on the GPU
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/backends/test_cuda_conv.py -k on_the_gpu \
    --junitxml="$OUT/cuda-conv-tests.xml" > "$OUT/cuda-conv-tests.log" 2>&1
echo "cuda conv tests: exit $? (tail of cuda-conv-tests.log:)"
tail -15 "$OUT/cuda-conv-tests.log"

fi

if [ "$PHASE" = all ] || [ "$PHASE" = bench ]; then
# the benchmarks: ceilings (copy bandwidth, cuBLAS) measured in the same run; the 64M-float
# elementwise chain (16-byte vector loads) against the copy, the MLP step's host cost per step
# replayed as a CUDA graph against its launch list, matmul, the training steps
timeout 330 python3 -m benchmarks --device cuda --out "$OUT" > "$OUT/bench.log" 2>&1
echo "bench: exit $?"
cat "$OUT/bench.log"
# ResNet9's convolutions (forward, both gradients, batch 128) against cuDNN
timeout 150 python3 -m benchmarks.gpu.bench_conv --out "$OUT" > "$OUT/bench-conv.log" 2>&1
echo "bench_conv: exit $?"
tail -25 "$OUT/bench-conv.log"
echo "== done $(date -u +%FT%TZ); paste $OUT/RESULTS-gpu.md and RESULTS-conv.md into benchmarks/RESULTS.md"
fi

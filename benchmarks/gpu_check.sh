#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one go, for a machine lent for a few minutes:
# the whole test suite with CuPy, the GPU benchmark, and the fast and cnn presets on CuPy.
# Run from the repository root:  OUT=/some/dir bash benchmarks/gpu_check.sh
# (no install needed: it runs the tree with PYTHONPATH=.). Results land in $OUT.
set -uo pipefail
# The GPU machine has no network: bring MNIST along, e.g. gzip the four IDX files from
# ~/.cache/graphnet/mnist into ./mnist-data (about 11 MB) and name it in the device tool's carry.
export GRAPHNET_DATA=${GRAPHNET_DATA:-mnist-data}
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONPATH=.
python -m graphnet > "$OUT/device.txt" 2>&1
GRAPHNET_BACKEND=cupy python -m graphnet >> "$OUT/device.txt" 2>&1
nvidia-smi >> "$OUT/device.txt" 2>&1 || true
# 1. The suite with CuPy present: every backend-fixture test runs on both backends.
timeout 240 python -m pytest -q -m "not slow" -p no:cacheprovider > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest.txt"
# 2. GPU benchmark (CuPy vs PyTorch CUDA vs the NumPy backend).
GRAPHNET_BACKEND=cupy timeout 150 python benchmarks/run.py --only gpu --out "$OUT/bench" > "$OUT/bench.txt" 2>&1
# 3. The presets on CuPy.
GRAPHNET_BACKEND=cupy timeout 120 python examples/mnist/train.py --preset fast --no-progress \
    --out "$OUT/fast" > "$OUT/fast.txt" 2>&1
GRAPHNET_BACKEND=cupy timeout 180 python examples/mnist/train.py --preset cnn --no-progress \
    --out "$OUT/cnn" > "$OUT/cnn.txt" 2>&1
rm -f "$OUT"/*/checkpoint.npz "$OUT"/*/model.npz
tail -n 3 "$OUT"/*.txt

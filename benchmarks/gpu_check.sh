#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one command for a machine lent for a few minutes:
#   1. the test suite with CuPy (all but the slow NumPy-only tests: `-m "not slow or gpu"`;
#      with CuPy present every `backend` test runs on NumPy and on CuPy),
#   2. the cross-backend agreement tests alone (every `gpu` case checks CuPy against NumPy),
#   3. the GPU benchmark against PyTorch CUDA (benchmarks/run.py --only gpu),
#   4. the `fast` MNIST preset on CuPy, with its test accuracy.
# Limits it is built for: timeouts sum to 535 s (< 540 s), `python3` only, no network, and at most
# 6 files back: it writes exactly two directly under $OUT, summary.txt (every figure and verdict)
# and logs.tar.gz (all logs and JSON results).
#
# Run from the repository root:  OUT=/some/dir bash benchmarks/gpu_check.sh
# It runs the tree in place (PYTHONPATH=.; no install). MNIST comes from ./mnist-data, which the
# GPU machine cannot download: create it here with
#     mkdir -p mnist-data && gzip -c ~/.cache/graphnet/mnist/train-images-idx3-ubyte > mnist-data/train-images-idx3-ubyte.gz
# and likewise for train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte
# (about 11 MB; it is git-ignored, so name it in the device tool's `carry`).
#
# Dry run without a GPU: GPU_CHECK_EMULATE=1 runs every step on the CPU emulation of CuPy
# (tests/cupy_emulation) and labels the summary EMULATED; to finish on a CPU it also shortens the
# benchmark (--quick) and the preset (--epochs 1). GPU_CHECK_TIME_SCALE=N multiplies the timeouts
# (for a dry run on a slow machine only; the GPU run uses 1).
set -uo pipefail
OUT=${OUT:-gpu-results}
EMULATE=${GPU_CHECK_EMULATE:-0}
SCALE=${GPU_CHECK_TIME_SCALE:-1}
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export GRAPHNET_DATA=${GRAPHNET_DATA:-$PWD/mnist-data}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
BENCH_ARGS=() FAST_ARGS=()
if [ "$EMULATE" = 1 ]; then
    export PYTHONPATH=$PWD/tests/cupy_emulation/site:$PYTHONPATH
    export GRAPHNET_CUPY_EMULATION=force  # each process says it runs on the emulation
    BENCH_ARGS=(--quick) FAST_ARGS=(--epochs 1)
fi
SUMMARY=$WORK/summary.txt
START=$(date +%s)
say() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME TIMEOUT_S COMMAND...: run with a timeout, log to $WORK/NAME.log, record rc and seconds
step() {
    local name=$1 limit=$(( $2 * SCALE )); shift 2
    local t0=$(date +%s) rc=0
    timeout "$limit" "$@" > "$WORK/$name.log" 2>&1 || rc=$?
    local verdict=ok; [ "$rc" = 0 ] || verdict=FAIL; [ "$rc" = 124 ] && verdict="TIMED OUT after ${limit} s"
    say "$name: $verdict (exit $rc, $(( $(date +%s) - t0 )) s, limit ${limit} s)"
}

if [ "$EMULATE" = 1 ]; then
    say "EMULATED DRY RUN: cupy is the CPU emulation (tests/cupy_emulation), NOT a GPU. No figure below is GPU evidence."
    say "(dry run shortcuts: benchmark --quick, fast preset --epochs 1; timeouts x$SCALE)"
else
    say "GPU check on a CUDA machine"
fi
say "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u +%Y-%m-%dT%H:%M:%SZ), data $GRAPHNET_DATA"

step device 20 env GRAPHNET_BACKEND=cupy python3 -m graphnet
timeout 10 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$WORK/device.log" 2>&1 || true
say "device info: $(grep -E '^(device:|cupy |cuda_runtime )' "$WORK/device.log" | tr '\n' ';')"

# (the benchmark's smoke test is left out: the benchmark itself is step 3)
step suite 230 python3 -m pytest -q -p no:cacheprovider -m "not slow or gpu" -o addopts="" -rfEs \
    --deselect tests/test_benchmarks_smoke.py::test_gpu_benchmark_skips_or_runs_without_cuda
say "suite: $(grep -E '[0-9]+ (passed|failed)' "$WORK/suite.log" | tail -n 1)"
grep -E '^(FAILED|ERROR) ' "$WORK/suite.log" | head -n 20 | sed 's/^/  /' | tee -a "$SUMMARY"

step agreement 75 python3 -m pytest -q -p no:cacheprovider -m gpu -o addopts="" -rfE
say "agreement (CuPy cases vs NumPy): $(grep -E '[0-9]+ (passed|failed|deselected)' "$WORK/agreement.log" | tail -n 1)"

step bench 110 env GRAPHNET_BACKEND=cupy python3 benchmarks/run.py --only gpu --out "$WORK/bench" "${BENCH_ARGS[@]}"
python3 - "$WORK/bench/gpu.json" >> "$SUMMARY" 2>&1 <<'EOF' || say "bench: no gpu.json"
import json, sys
r = json.load(open(sys.argv[1]))
if r.get("skipped"):
    print("bench: skipped:", r.get("reason"))
for note in r.get("notes", []):
    print("bench note:", note)
for case, c in r.get("cases", {}).items():
    for name, st in c["results"].items():
        print(f"bench {case}: {name} {st['epoch_seconds']:.3f} s/epoch (median step {st['median'] * 1e3:.3f} ms)")
    for name, value in c["ratios"].items():
        print(f"bench {case}: {name} = {json.dumps(value)}")
    print(f"bench {case}: agreement {json.dumps(c.get('agreement'))}")
for t in r.get("targets", []):
    print("bench target:", json.dumps(t, sort_keys=True))
EOF

step fast 90 env GRAPHNET_BACKEND=cupy python3 examples/mnist/train.py --preset fast --no-progress --out "$WORK/fast" "${FAST_ARGS[@]}"
say "fast preset: $(grep -E 'test accuracy' "$WORK/fast.log" | tail -n 1)"
rm -f "$WORK"/fast/*.npz

say "total wall time $(( $(date +%s) - START )) s"
cp "$SUMMARY" "$OUT/summary.txt"
tar -czf "$OUT/logs.tar.gz" -C "$WORK" --exclude=summary.txt .
ls -l "$OUT" | tail -n +2 | tee -a "$OUT/summary.txt"

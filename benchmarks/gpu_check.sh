#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one command for a machine lent for a few minutes:
#   0. preflight: real CuPy imports, sees a device and computes on it -- else STOP at once (exit 3);
#   1. warm CuPy's kernel cache (every layer kind and optimizer, float32/float64, the MLP and CNN),
#   2. every `gpu` test once (each CuPy case checks CuPy against NumPy), verbose, on the device:
#      GRAPHNET_CUPY_EMULATION=forbid makes pytest stop rather than fall back to the emulation;
#      MPI tests are deselected where they cannot run (root with Open MPI, or one device),
#   3. the MLP and CNN epoch against PyTorch CUDA eager, with and without CUDA-graph replay
#      (graphnet.capture; the preset CNN's dropout is refused with a line), and a step with and
#      without replay on a CNN without dropout (benchmarks/bench_replay.py),
#   4. the `fast` MNIST preset for a short run (2 epochs), with its test accuracy.
# Limits it is built for: timeouts sum to 510 s with nvidia-smi, 535 s with each kill grace (< 9
# minutes), `python3` only (GPU_CHECK_PYTHON
# overrides), no network, and 2 files back: summary.txt (every figure and verdict) and logs.tar.gz
# (all logs, the JUnit XML of the tests and the JSON results).
#
# Run from the repository root:  OUT=/some/dir bash benchmarks/gpu_check.sh
# It runs the tree in place (PYTHONPATH=.; no install). MNIST comes from ./mnist-data (or
# $GRAPHNET_DATA), which the GPU machine cannot download: create it here with
#     mkdir -p mnist-data && cp ~/.cache/graphnet/mnist/*-ubyte mnist-data/
# (about 55 MB, git-ignored: name it in the device tool's `carry`).
#
# Dry run without a GPU: GPU_CHECK_EMULATE=1 runs every step on the CPU emulation of CuPy
# (tests/cupy_emulation) with less work (benchmark 3 steps a round, preset 1 epoch); every
# result line then starts with EMULATED. GPU_CHECK_TIME_SCALE=N multiplies the timeouts (for a
# dry run on a slow machine only; the GPU run uses 1).
set -uo pipefail
OUT=${OUT:-gpu-results}
EMULATE=${GPU_CHECK_EMULATE:-0}
SCALE=${GPU_CHECK_TIME_SCALE:-1}
PY=${GPU_CHECK_PYTHON:-python3}
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if [ -z "${GRAPHNET_DATA:-}" ] && [ -d "$PWD/mnist-data" ]; then export GRAPHNET_DATA=$PWD/mnist-data; fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export GRAPHNET_BACKEND=cupy
EPOCH_ARGS=(--steps 60 --rounds 3) FAST_ARGS=(--epochs 2) REPLAY_ARGS=(--steps 200) TAG=""
if [ "$EMULATE" = 1 ]; then
    export PYTHONPATH=$PWD/tests/cupy_emulation/site:$PYTHONPATH
    export GRAPHNET_CUPY_EMULATION=force GRAPHNET_CUPY_EMULATION_QUIET=1
    EPOCH_ARGS=(--steps 3 --rounds 1) FAST_ARGS=(--epochs 1) REPLAY_ARGS=(--steps 3 --batch 16)
    TAG="EMULATED: "
else
    export GRAPHNET_CUPY_EMULATION=forbid  # the tests stop instead of falling back to the emulation
fi
SUMMARY=$WORK/summary.txt
START=$(date +%s)
say() { echo "$TAG$*" | tee -a "$SUMMARY"; }

finish() {  # copy the summary and the logs to $OUT (2 files), exit with $1
    say "total wall time $(( $(date +%s) - START )) s"
    cp "$SUMMARY" "$OUT/summary.txt"
    tar -czf "$OUT/logs.tar.gz" -C "$WORK" --exclude=summary.txt .
    exit "$1"
}

# step NAME TIMEOUT_S COMMAND...: run with a timeout (SIGINT first, so pytest still writes its
# summary and JUnit XML), log to $WORK/NAME.log, record the verdict
step() {
    local name=$1 limit=$(( $2 * SCALE )); shift 2
    local t0=$(date +%s) rc=0
    timeout -s INT -k 5 "$limit" "$@" > "$WORK/$name.log" 2>&1 || rc=$?
    local verdict=ok; [ "$rc" = 0 ] || verdict=FAIL; [ "$rc" = 124 ] && verdict="TIMED OUT after ${limit} s"
    say "$name: $verdict (exit $rc, $(( $(date +%s) - t0 )) s, limit ${limit} s)"
    return "$rc"
}

if [ "$EMULATE" = 1 ]; then
    say "DRY RUN: cupy is the CPU emulation (tests/cupy_emulation), NOT a GPU. No figure below is GPU evidence."
    say "(less work: benchmark ${EPOCH_ARGS[*]}, fast preset ${FAST_ARGS[*]}; timeouts x$SCALE)"
else
    say "GPU check on a CUDA machine"
fi
say "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u +%Y-%m-%dT%H:%M:%SZ), python $($PY -c 'import sys; print(sys.version.split()[0])' 2>&1), data ${GRAPHNET_DATA:-default cache}"

# --- 0. preflight: stop at once without CuPy or a device (or, in a dry run, without the emulation)
step preflight 30 "$PY" - "$EMULATE" <<'EOF'
import sys
emulate = sys.argv[1] == "1"
try:
    import cupy
except Exception as exc:
    sys.exit(f"STOP: CuPy is not importable here: {type(exc).__name__}: {exc}")
fake = bool(getattr(cupy, "__graphnet_emulation__", False))
if fake != emulate:
    sys.exit("STOP: cupy is the CPU emulation, not real CuPy" if fake else
             "STOP: GPU_CHECK_EMULATE=1 but cupy is not the emulation")
try:
    n = cupy.cuda.runtime.getDeviceCount()
    total = int((cupy.arange(1000, dtype=cupy.float32) + 1).sum())
    if total != 500500:
        sys.exit(f"STOP: the device computed sum(1..1000) = {total}, not 500500")
except Exception as exc:
    sys.exit(f"STOP: CuPy {cupy.__version__} sees no usable CUDA device: {type(exc).__name__}: {exc}")
import graphnet as gn
b = gn.get_backend("cupy")
print(f"devices {n}")
print(f"device: {b.device_name()}; cupy {cupy.__version__}; {b.memory_info()}")
EOF
PRE=$?
if [ "$PRE" != 0 ]; then
    say "$(grep -E '^STOP' "$WORK/preflight.log" | tail -n 1 || tail -n 1 "$WORK/preflight.log")"
    say "STOPPED: no GPU check was run (nothing below would be evidence)"
    finish 3
fi
DEVICES=$(sed -n 's/^devices //p' "$WORK/preflight.log")
say "$(grep -E '^device:' "$WORK/preflight.log")"
timeout 10 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$WORK/preflight.log" 2>&1 || true

# --- 1. warm the kernel cache
step warm 50 "$PY" -m benchmarks.gpu_warm
say "$(grep -E 'warm:' "$WORK/warm.log" | sed "s/^$TAG//" | tail -n 1)"

# --- 2. every gpu test once
MARK="gpu"
if [ "$(id -u)" = 0 ] && mpiexec --version 2>&1 | grep -qiE 'open ?mpi|openrte'; then
    MARK="gpu and not mpi"; say "mpi tests: skipped: running as root, which Open MPI's mpiexec refuses"
elif [ "${DEVICES:-0}" -lt 2 ]; then
    MARK="gpu and not mpi"; say "mpi tests: skipped: ${DEVICES:-0} device(s), the ranks need one each"
fi
step tests 230 "$PY" -m pytest -p no:cacheprovider -o addopts="" -m "$MARK" -v -rfE \
    --junitxml="$WORK/gpu_tests.xml"
TOTAL=$(grep -E '^(=+ )?[0-9]+ (passed|failed)' "$WORK/tests.log" | tail -n 1)
if [ -z "$TOTAL" ]; then  # interrupted before pytest's last line: count the verbose lines
    TOTAL="$(grep -cE ' PASSED' "$WORK/tests.log") passed, $(grep -cE ' (FAILED|ERROR)' "$WORK/tests.log") failed (incomplete run)"
fi
say "gpu tests (-m \"$MARK\", each CuPy case against NumPy): $TOTAL"
grep -E '^(FAILED|ERROR) |::.* (FAILED|ERROR)' "$WORK/tests.log" | sed 's/ - .*//' | sort -u | head -n 30 \
    | sed "s/^/${TAG}  /" | tee -a "$SUMMARY"
grep -E '^(Exit|!.*Exit): ' "$WORK/tests.log" | head -n 1 | sed "s/^/${TAG}  /" | tee -a "$SUMMARY"

# --- 3. MLP and CNN epoch against PyTorch CUDA eager
step epoch 80 "$PY" -m benchmarks.bench_gpu_epoch "${EPOCH_ARGS[@]}" --out "$WORK/epoch.json"
grep -E 'epoch (mlp|cnn):' "$WORK/epoch.log" | sed "s/^$TAG//" | while IFS= read -r line; do say "$line"; done

# --- 3b. one training step with and without CUDA-graph replay (MLP, and a CNN without dropout)
step replay 20 bash -c "\"$PY\" -m benchmarks.bench_replay --model mlp ${REPLAY_ARGS[*]} && \"$PY\" -m benchmarks.bench_replay --model cnn ${REPLAY_ARGS[*]}"
grep -E '^\{' "$WORK/replay.log" | while IFS= read -r line; do say "replay step: $line"; done

# --- 4. the fast preset, a short run
step fast 90 "$PY" examples/mnist/train.py --preset fast --no-progress --out "$WORK/fast" "${FAST_ARGS[@]}"
say "fast preset (${FAST_ARGS[*]}): $(grep -iE 'test accuracy' "$WORK/fast.log" | tail -n 1 || echo 'no accuracy line')"
rm -f "$WORK"/fast/*.npz

finish 0

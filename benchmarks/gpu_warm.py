"""Fill CuPy's kernel cache before timed work (``gpu_check.sh``): compile every kernel once.

    GRAPHNET_BACKEND=cupy python3 -m benchmarks.gpu_warm

Trains a little, in float32 and float64, the network of every layer kind and optimizer that the
NVRTC survey uses (``tests/cupy_emulation/catalog.py``), then two steps of the MLP and CNN the
epoch benchmark times. CuPy keeps the compiled kernels on disk (``~/.cupy/kernel_cache``), so
later processes load them instead of compiling them inside their time limits.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    import graphnet as gn
    from benchmarks.bench_gpu_epoch import run_case
    from tests.cupy_emulation.catalog import _train_a_little
    b = gn.backend()
    if b.name != "cupy":
        print(f"warm: the active backend is {b.name!r}, not cupy (set GRAPHNET_BACKEND=cupy)")
        return 2
    emulated = bool(getattr(b.xp, "__graphnet_emulation__", False))
    t0 = time.perf_counter()
    for dtype in ("float32", "float64"):
        with gn.default_dtype(dtype):
            _train_a_little(gn)
    for case in ("mlp", "cnn"):
        run_case(case, steps=1, rounds=1, seed=0, emulated=emulated)
    b.synchronize()
    print(f"{'EMULATED: ' if emulated else ''}warm: every layer kind and optimizer in float32 "
          f"and float64, and the MLP and CNN, ran once in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

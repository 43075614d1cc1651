"""Benchmark: conv2d by im2col vs Winograd F(2x2, 3x3) on the NumPy backend.

    python benchmarks/bench_winograd.py conv     # cnn-classic's conv2 (+ max-pool), fwd + bwd
    python benchmarks/bench_winograd.py step     # a whole training step of bench_cnn's network
    python benchmarks/bench_winograd.py channels # conv fwd + bwd for a few C_in (auto's threshold)
    python benchmarks/bench_winograd.py pieces   # conv2's Winograd and im2col steps, one by one

BLAS runs one thread (set before NumPy loads). Each round times both algorithms in turn
(the order alternating), ``REPEAT`` calls each; per algorithm it prints the median over
rounds of the CPU time per call (``time.process_time``) with one worker, and of the wall
time per call with two workers; then the median over rounds of the second algorithm's time
over the first's in the same round (less sensitive to load that comes and goes). Synthetic data (timings do not depend on the values).
"""
from __future__ import annotations

import itertools
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import graphnet as gn  # noqa: E402
from graphnet import ops  # noqa: E402
from graphnet.ops.conv import set_algorithm, set_workers  # noqa: E402

ROUNDS, REPEAT, BATCH = 7, 5, 128


def conv_step(c: int = 32, co: int = 64, hw: int = 26, pool: bool = True) -> Callable[[], Any]:
    """One forward + backward of conv (C_in ``c`` -> ``co``, 3x3) [+ max-pool 2] at batch 128."""
    rng = np.random.default_rng(0)
    x = gn.Input("x", shape=(None, c, hw, hw))
    w = gn.Parameter(0.1 * rng.standard_normal((co, c, 3, 3)).astype(np.float32))
    b = gn.Parameter(np.zeros(co, np.float32))
    z = ops.conv2d(x, w, b)
    z = ops.max_pool2d(z, 2) if pool else gn.relu(z)
    up = gn.Input("up", shape=(None,) + tuple(z.shape[1:]))
    graph = gn.Graph(z, cost=gn.sum(z * up))
    feed = {x: rng.standard_normal((BATCH, c, hw, hw)).astype(np.float32),
            up: rng.standard_normal((BATCH,) + tuple(z.shape[1:])).astype(np.float32)}
    return lambda: graph.gradients(feed, wrt=[x, w, b])


def train_step() -> Callable[[], Any]:
    """One ``Adam.minimize`` of bench_cnn's graphnet network on a synthetic batch."""
    from benchmarks.bench_cnn import GraphnetCNN
    rng = np.random.default_rng(0)
    X = rng.standard_normal((BATCH * 4, 1, 28, 28)).astype(np.float32)
    Y = rng.integers(0, 10, BATCH * 4).astype(np.int64)
    net = GraphnetCNN(X, Y, seed=0)
    turn = itertools.count()

    def step() -> None:
        i = next(turn) % 4
        net.run_steps(i, i + 1)
    return step


def measure(name: str, call: Callable[[], Any], algos: tuple = ("im2col", "auto")) -> dict:
    """Median ms per call over the rounds: CPU time (1 worker) and wall time (2 workers)."""
    times: dict = {(a, k): [] for a in algos for k in ("cpu1", "wall2")}
    for r in range(ROUNDS + 1):
        for algo in (algos if r % 2 else algos[::-1]):
            set_algorithm(algo)
            for kind, workers in (("cpu1", 1), ("wall2", 2)):
                set_workers(workers)
                call()  # the first call of a setting builds its buffers
                clock = time.process_time if kind == "cpu1" else time.perf_counter
                t = clock()
                for _ in range(REPEAT):
                    call()
                if r:  # round 0 warms up
                    times[(algo, kind)].append(1000 * (clock() - t) / REPEAT)
    set_algorithm("auto")
    set_workers(None)
    out = {k: statistics.median(v) for k, v in times.items()}
    ratios = {k: statistics.median(b / a for a, b in zip(times[(algos[0], k)], times[(algos[1], k)]))
              for k in ("cpu1", "wall2")}
    print(f"{name}: " + ", ".join(f"{a} {k} {out[(a, k)]:.1f} ms" for a, k in out)
          + "; paired ratio " + ", ".join(f"{k} {r:.2f}" for k, r in ratios.items()), flush=True)
    return out


def pieces(m: int = 2) -> None:
    """CPU ms per batch of 128 of each step of conv2 (32 -> 64, 26x26), chunks of ``m`` images."""
    from graphnet.ops.conv import winograd as wg
    c, co, th, tw = 32, 64, 12, 12
    b = wg.Buffers(np, (c, co, th, tw), m, m, np.float32, True, True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, c, 26, 26)).astype(np.float32)
    u = rng.standard_normal((16, co, c)).astype(np.float32)
    gx = np.empty_like(x)
    p = wg.load(np, x, 0, m, (0, 0), b)
    v = wg.input_transform(np, p, c, tw + 1, b)
    mm = wg.view(b.m, 16, co, v.shape[2])
    planes = wg.view(b.planes, 2, 2, co, m, (th + 1) * (tw + 1))
    vt = wg.view(b.vt, 16, v.shape[2], c)
    cols = rng.standard_normal((c * 9, m * 24 * 26)).astype(np.float32)
    w2 = rng.standard_normal((co, c * 9)).astype(np.float32)
    y2, gw = np.empty((co, m * 24 * 26), np.float32), np.empty((c * 9, co), np.float32)
    steps = {
        "load images": lambda: wg.load(np, x, 0, m, (0, 0), b),
        "input transform": lambda: wg.input_transform(np, p, c, tw + 1, b),
        "U @ V": lambda: np.matmul(u, v, out=mm),
        "output transform": lambda: wg.output_transform(np, mm, planes, b),
        "output adjoint": lambda: wg.output_adjoint(np, planes.reshape(2, 2, co, m, th + 1, tw + 1), b),
        "dM @ V^T (V^T copied)": lambda: (np.copyto(vt, v.transpose(0, 2, 1)),
                                          np.matmul(mm, vt, out=b.du)),
        "U^T @ dM": lambda: np.matmul(u.transpose(0, 2, 1), mm, out=v),
        "input adjoint": lambda: wg.input_adjoint(np, v, tw + 1, b),
        "store": lambda: wg.store(np, b.dimages.reshape(2, 2, -1), gx, 0, m, ((0, 0), th + 1, tw + 1)),
        "im2col GEMM w2 @ cols": lambda: np.matmul(w2, cols, out=y2),
        "im2col GEMM cols @ g2.T": lambda: np.matmul(cols, y2.T, out=gw),
        "im2col GEMM w2.T @ g2": lambda: np.matmul(w2.T, y2, out=cols),
    }
    for name, call in steps.items():
        call()
        best = []
        for _ in range(ROUNDS):
            t = time.process_time()
            for _ in range(BATCH // m):
                call()
            best.append(time.process_time() - t)
        print(f"{name}: {1000 * min(best):.1f} ms per batch (best of {ROUNDS})", flush=True)


def main(argv: list) -> None:
    what = argv[0] if argv else "conv"
    print(os.popen("uptime").read().strip(), flush=True)
    if what == "conv":
        measure("conv2 32->64 26x26 + max-pool, fwd+bwd", conv_step())
    elif what == "step":
        measure("training step (bench_cnn network)", train_step())
    elif what == "channels":
        for c, co in ((4, 64), (8, 64), (16, 64), (32, 64), (16, 32), (32, 32)):
            measure(f"conv {c}->{co} 26x26 + relu, fwd+bwd", conv_step(c, co, 26, pool=False),
                    ("im2col", "winograd"))
    elif what == "pieces":
        pieces(int(argv[1]) if len(argv) > 1 else 2)
    else:
        raise SystemExit(f"unknown benchmark {what!r}: conv, step, channels or pieces")
    print(os.popen("uptime").read().strip(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

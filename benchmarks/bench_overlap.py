"""Step time of data-parallel training with and without overlapping the all-reduce with backward.

    OPENBLAS_NUM_THREADS=1 mpiexec -n 2 python -m benchmarks.bench_overlap [--steps 60 --rounds 4]

[800, 800, 10] MLP, batch 128 per rank, SGD with momentum. Overlap on and off alternate
round by round on the same model (so load drifts hit both alike), for 1 MiB buckets (four
buckets: overlap possible) and the default 25 MiB (one bucket: nothing to overlap). Rank 0
prints the median step time of each variant and the paired per-round ratios.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import graphnet as gn  # noqa: E402
from graphnet import distributed, nn, optim  # noqa: E402


def median_steps(world, opt, graph, feed, steps: int) -> float:
    world.barrier()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.minimize(graph, feed)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args(argv)
    world = distributed.init()
    gn.set_backend("numpy")
    rng = np.random.default_rng(world.rank)
    result = {"ranks": world.size}
    for bucket in (1 << 20, distributed.BUCKET_BYTES):
        gn.seed(0)
        model = nn.Classifier(nn.MLP([800, 800, 10], 784, "relu"), (784,))
        opt = distributed.DistributedOptimizer(
            optim.SGD(model.parameters(), lr=0.01, momentum=0.9), world, bucket_bytes=bucket)
        feed = {model.images: rng.uniform(0, 1, (128, 784)).astype(np.float32),
                model.labels: rng.integers(0, 10, 128).astype(np.int64)}
        for _ in range(5):
            opt.minimize(model.train_graph, feed)
        on, off = [], []
        for _ in range(args.rounds):
            for flag, into in ((False, off), (True, on)):
                opt.overlap = flag
                into.append(median_steps(world, opt, model.train_graph, feed, args.steps))
        result[f"bucket_{bucket}"] = {
            "buckets": opt.buckets(model.train_graph),
            "overlap_off_ms": [1e3 * t for t in off], "overlap_on_ms": [1e3 * t for t in on],
            "median_off_ms": 1e3 * float(np.median(off)), "median_on_ms": 1e3 * float(np.median(on)),
            "ratio_on_over_off": [a / b for a, b in zip(on, off)]}
    if world.is_root:
        result["load_average"] = Path("/proc/loadavg").read_text().split()[:3]
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

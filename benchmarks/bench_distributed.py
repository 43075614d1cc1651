"""All-reduce bandwidth and its share of a data-parallel step, run under mpiexec.

    OPENBLAS_NUM_THREADS=1 mpiexec -n 2 python -m benchmarks.bench_distributed [--steps 60]

Rank 0 prints a JSON object: the all-reduce's time and bandwidth for message sizes from
4 KiB to 32 MiB and the gradients' size, a training step of the ``fast`` preset's network ([512, 256, 10], batch
128 per rank, SGD with Nesterov momentum) split into compute and all-reduce, and the
efficiency projected for more ranks from those figures (the link measured here, at the
gradients' size, and two typical interconnects).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import graphnet as gn  # noqa: E402
from graphnet import distributed, nn, optim  # noqa: E402

SIZES = [4 << 10, 64 << 10, 1 << 20, 4 << 20, 32 << 20]


def allreduce_seconds(world: distributed.World, nbytes: int, repeats: int) -> float:
    """Fastest of ``repeats`` in-place float32 sums over the ranks of ``nbytes``."""
    buf = np.ones(nbytes // 4, np.float32)
    return _fastest(world, repeats, lambda: world.allreduce_(buf, "the bandwidth probe"))


def blocking_seconds(world: distributed.World, nbytes: int, repeats: int) -> float:
    """The same with MPI's blocking Allreduce (no deadline): what polling for a deadline costs."""
    buf = np.ones(nbytes // 4, np.float32)
    return _fastest(world, repeats,
                    lambda: world.comm.Allreduce(world.MPI.IN_PLACE, buf, op=world.MPI.SUM))


def _fastest(world: distributed.World, repeats: int, collective: Callable[[], Any]) -> float:
    """Seconds of the fastest of ``repeats`` runs of ``collective``, each after a barrier:
    the least-disturbed repeat measures the link, not the scheduler."""
    times = []
    for _ in range(repeats):
        world.barrier()
        t0 = time.perf_counter()
        collective()
        times.append(time.perf_counter() - t0)
    return float(np.min(times))


def step_split(world: distributed.World, steps: int, batch: int) -> dict[str, Any]:
    """Seconds per training step and the part spent in the gradient all-reduce."""
    gn.set_backend("numpy")
    gn.seed(0)
    model = nn.Classifier(nn.MLP([512, 256, 10], 784, "relu"), (784,))
    opt = distributed.DistributedOptimizer(
        optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4), world)
    rng = np.random.default_rng(world.rank)
    x = rng.uniform(0, 1, (batch, 784)).astype(np.float32)
    y = rng.integers(0, 10, batch).astype(np.int64)
    feed = {model.images: x, model.labels: y}
    for _ in range(5):
        opt.minimize(model.train_graph, feed)
    world.barrier()
    totals, comms = [], []
    for _ in range(steps):
        c0, t0 = opt.comm_seconds, time.perf_counter()
        opt.minimize(model.train_graph, feed)
        totals.append(time.perf_counter() - t0)
        comms.append(opt.comm_seconds - c0)
    total, comm = float(np.median(totals)), float(np.median(comms))
    # The all-reduce's time includes waiting for the slower rank; under CPU contention
    # that wait dominates, so the least-disturbed steps are reported too.
    return {"step_s": total, "allreduce_s": comm, "share": comm / total,
            "step_min_s": min(totals), "allreduce_min_s": min(comms),
            "compute_min_s": min(t - c for t, c in zip(totals, comms)),
            "gradient_bytes": sum(opt.buckets(model.train_graph)), "transport": opt.transport}


def projection(compute_s: float, grad_bytes: int, bandwidth: float, latency: float,
               ranks: list[int]) -> dict[int, float]:
    """Weak-scaling efficiency (batch per rank fixed) with a ring all-reduce, no overlap:
    compute / (compute + 2 (N-1)/N * bytes / bandwidth + 2 (N-1) * latency)."""
    out = {}
    for n in ranks:
        comm = 2 * (n - 1) / n * grad_bytes / bandwidth + 2 * (n - 1) * latency
        out[n] = compute_s / (compute_s + comm)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args(argv)
    world = distributed.init()
    split = step_split(world, args.steps, 128)
    grad = split["gradient_bytes"] // 4 * 4
    probe = {n: allreduce_seconds(world, n, args.repeats) for n in sorted(SIZES + [grad])}
    blocking = {n: blocking_seconds(world, n, args.repeats) for n in (min(SIZES), grad)}
    if not world.is_root:
        return 0
    size = world.size
    # Bus bandwidth of a ring all-reduce: each rank sends 2 (N-1)/N of the message.
    bus = {n: 2 * (size - 1) / size * n / t for n, t in probe.items()}
    latency = probe[min(SIZES)] / max(2 * (size - 1), 1)
    compute = split["compute_min_s"]
    ranks = [2, 4, 8, 16, 64]
    result = {
        "ranks": size, "load_average": Path("/proc/loadavg").read_text().split()[:3],
        "allreduce": {str(n): {"seconds": t, "bus_GBps": bus[n] / 1e9} for n, t in probe.items()},
        "blocking_allreduce_s": {str(n): t for n, t in blocking.items()},
        "step": split, "compute_s": compute,
        "projected_efficiency": {
            "measured_link": projection(compute, split["gradient_bytes"], bus[grad], latency, ranks),
            "10GbE": projection(compute, split["gradient_bytes"], 1.25e9, 20e-6, ranks),
            "100Gb_IB": projection(compute, split["gradient_bytes"], 12.5e9, 3e-6, ranks),
        },
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A training step with and without CUDA-graph replay (graphnet.capture), on the CuPy backend.

    GRAPHNET_BACKEND=cupy python3 -m benchmarks.bench_replay --model mlp --steps 300
    GRAPHNET_BACKEND=cupy python3 -m benchmarks.bench_replay --model cnn --steps 100

Two copies of one network (random data, the whole set on the device) train on the same
batches: ``opt.minimize(graph, feed)`` and ``CapturedStep(graph, opt).minimize(feed)``, in
alternating chunks, the device synchronised before each clock read. Prints one JSON line:
milliseconds per step for each, their ratio, and whether the parameters agree bit for bit.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any, Callable, Optional

import numpy as np

import graphnet as gn
from graphnet import optim
from graphnet.capture import CapturedStep


def _network(kind: str, seed: int) -> tuple:
    """(graph, params, x, labels, optimizer factory, input shape)."""
    rng = np.random.default_rng(seed)

    def param(shape: tuple, scale: float) -> gn.Parameter:
        return gn.Parameter((rng.standard_normal(shape) * scale).astype(np.float32))
    labels = gn.Input("labels", shape=(None,), dtype="int64")
    if kind == "mlp":
        x = gn.Input("x", shape=(None, 784))
        ps = [param((784, 800), 0.05), param((800,), 0.0), param((800, 800), 0.05),
              param((800,), 0.0), param((800, 10), 0.05), param((10,), 0.0)]
        h = gn.relu(gn.linear(gn.relu(gn.linear(x, ps[0], ps[1])), ps[2], ps[3]))
        logits = gn.linear(h, ps[4], ps[5])
        make = lambda p: optim.SGD(p, lr=0.05, momentum=0.9)  # noqa: E731
        shape = (784,)
    else:
        x = gn.Input("x", shape=(None, 1, 28, 28))
        ps = [param((32, 1, 3, 3), 0.3), param((32,), 0.0), param((32 * 13 * 13, 10), 0.01),
              param((10,), 0.0)]
        h = gn.max_pool2d(gn.relu(gn.conv2d(x, ps[0], ps[1])), 2)
        logits = gn.linear(gn.flatten(h), ps[2], ps[3])
        make = lambda p: optim.Adam(p, lr=1e-3)  # noqa: E731
        shape = (1, 28, 28)
    cost = gn.softmax_cross_entropy(logits, labels)
    return gn.Graph(cost, cost=cost), ps, x, labels, make, shape


def run(kind: str, steps: int, batch: int, chunk: int = 20) -> dict:
    b = gn.backend()
    nets = [_network(kind, 0) for _ in range(2)]
    shape = nets[0][5]
    rng = np.random.default_rng(1)
    n = batch * 10
    X = b.asarray(rng.standard_normal((n,) + shape).astype(np.float32))
    Y = b.asarray(rng.integers(0, 10, n))
    runners: dict[str, Callable[[dict], Any]] = {}
    for name, (graph, ps, x, labels, make, _) in zip(("plain", "replay"), nets):
        opt = make(ps)
        if name == "plain":
            runners[name] = (lambda g, o: lambda f: o.minimize(g, f))(graph, opt)
        else:
            runners[name] = CapturedStep(graph, opt).minimize
    feeds = [[{net[2]: X[s:s + batch], net[3]: Y[s:s + batch]} for s in range(0, n, batch)]
             for net in nets]
    times = {name: 0.0 for name in runners}
    for name, k in zip(runners, (0, 1)):  # warm-up: plans, kernels, the capture
        for f in feeds[k][:2]:
            runners[name](f)
    done = 0
    while done < steps:
        todo = min(chunk, steps - done)
        for name, k in zip(runners, (0, 1)):
            b.synchronize()
            t0 = time.perf_counter()
            for i in range(done, done + todo):
                runners[name](feeds[k][i % len(feeds[k])])
            b.synchronize()
            times[name] += time.perf_counter() - t0
        done += todo
    same = all(np.array_equal(gn.to_numpy(p.value), gn.to_numpy(q.value))
               for p, q in zip(nets[0][1], nets[1][1]))
    ms = {name: 1e3 * t / steps for name, t in times.items()}
    return {"benchmark": "replay", "backend": b.name, "model": kind, "batch": batch,
            "steps": steps, "ms_per_step_plain": ms["plain"], "ms_per_step_replay": ms["replay"],
            "speedup": ms["plain"] / ms["replay"], "same_bits": same}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch < 1:
        p.error(f"--steps and --batch must be positive, got {args.steps} and {args.batch}")
    print(json.dumps(run(args.model, args.steps, args.batch)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

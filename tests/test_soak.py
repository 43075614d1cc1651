"""Under load: thousands of training steps with flat host memory (and a flat CuPy pool)."""
from __future__ import annotations

import resource

import pytest

import graphnet as gn
from graphnet import optim

from helpers import blobs, tiny_model


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


@pytest.mark.slow
@pytest.mark.gpu_hardware  # the CuPy case measures a real device pool
def test_thousands_of_steps_keep_memory_flat(backend):
    x, y = blobs(256, pixels=64, seed=2)
    model = tiny_model(layers=(32, 16, 10), dropout=0.1, pixels=64)
    model.fit_preprocessing(x)
    X, Y = model.prepare(x), gn.asarray(y)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    feed = {model.images: X[:32], model.labels: Y[:32]}

    def steps(n: int) -> None:
        for i in range(n):
            j = (i % 8) * 32
            feed[model.images], feed[model.labels] = X[j:j + 32], Y[j:j + 32]
            _, grads = model.train_graph.gradients(feed, return_cost=True)
            opt.step(grads)
        backend.synchronize()

    steps(500)  # warm-up: allocator pools and caches settle
    rss0, info0 = _rss_bytes(), backend.memory_info()
    for _ in range(6):
        steps(500)
    rss1, info1 = _rss_bytes(), backend.memory_info()
    assert rss1 <= rss0 * 1.05, f"host RSS grew from {rss0} to {rss1} bytes over 3000 steps"
    if "pool_held_bytes" in info0:  # a backend with a memory pool (CuPy); NumPy has none
        pool0, pool1 = info0["pool_held_bytes"], info1["pool_held_bytes"]
        assert pool0 > 0, "the pool holds nothing after 500 steps: is it measured at all?"
        assert pool1 <= pool0 * 1.05, f"device pool grew from {pool0} to {pool1} bytes"

"""Small networks for the host-sync and capture tests: an MLP and a CNN, with their feeds."""
from __future__ import annotations

import numpy as np

import graphnet as gn
from graphnet import optim


def _param(rng: np.random.Generator, shape: tuple, scale: float, name: str) -> gn.Parameter:
    return gn.Parameter((rng.standard_normal(shape) * scale).astype(np.float32), name=name)


def mlp(dropout: float = 0.5, seed: int = 0) -> tuple:
    """(graph, params, x, labels): 20 -> 32 (relu, dropout) -> 10, softmax cross-entropy."""
    rng = np.random.default_rng(seed)
    x = gn.Input("x", shape=(None, 20))
    labels = gn.Input("labels", shape=(None,), dtype="int64")
    w1, b1 = _param(rng, (20, 32), 0.3, "w1"), _param(rng, (32,), 0.1, "b1")
    w2, b2 = _param(rng, (32, 10), 0.3, "w2"), _param(rng, (10,), 0.1, "b2")
    h = gn.relu(gn.linear(x, w1, b1))
    if dropout:
        h = gn.dropout(h, dropout)
    cost = gn.softmax_cross_entropy(gn.linear(h, w2, b2), labels)
    return gn.Graph(cost, cost=cost), [w1, b1, w2, b2], x, labels


def cnn(seed: int = 0) -> tuple:
    """(graph, params, x, labels): conv 3x3 (4 maps) -> relu -> max-pool 2 -> linear 10."""
    rng = np.random.default_rng(seed)
    x = gn.Input("x", shape=(None, 1, 8, 8))
    labels = gn.Input("labels", shape=(None,), dtype="int64")
    k, kb = _param(rng, (4, 1, 3, 3), 0.3, "k"), _param(rng, (4,), 0.1, "kb")
    w, b = _param(rng, (4 * 3 * 3, 10), 0.2, "w"), _param(rng, (10,), 0.1, "b")
    h = gn.max_pool2d(gn.relu(gn.conv2d(x, k, kb)), 2)
    cost = gn.softmax_cross_entropy(gn.linear(gn.flatten(h), w, b), labels)
    return gn.Graph(cost, cost=cost), [k, kb, w, b], x, labels


def feeds(x: gn.Input, labels: gn.Input, batch: int, steps: int, seed: int = 1) -> list[dict]:
    """``steps`` host feeds of ``batch`` rows, different every step."""
    rng = np.random.default_rng(seed)
    shape = (batch,) + tuple(x.shape[1:])
    return [{x: rng.standard_normal(shape).astype(np.float32),
             labels: rng.integers(0, 10, batch).astype(np.int64)} for _ in range(steps)]


def sgd(params: list) -> optim.SGD:
    return optim.SGD(params, lr=0.05, momentum=0.9)


def adam(params: list) -> optim.Adam:
    return optim.Adam(params, lr=1e-2)

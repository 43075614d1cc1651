"""Small synthetic data and models shared by the training tests."""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest

import graphnet as gn
from graphnet import nn
from graphnet.datasets import mnist

# Real-MNIST tests that take seconds run in the fast suite, but never download there.
needs_cached_mnist = pytest.mark.skipif(
    any(mnist._find(mnist.default_root(), n) is None for n in mnist.FILES),
    reason="MNIST is not in the cache (run mnist.load() once)")


def blobs(n: int = 512, pixels: int = 784, classes: int = 10, seed: int = 0):
    """Separable fake 'images' (uint8, shape (n, 28, 28) when pixels=784) and labels."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 255, size=(classes, pixels))
    y = rng.integers(0, classes, size=n)
    x = np.clip(centres[y] + rng.normal(0, 40, size=(n, pixels)), 0, 255).astype(np.uint8)
    side = int(round(pixels ** 0.5))
    if side * side == pixels:
        x = x.reshape(n, side, side)
    return x, y


def tiny_model(layers=(16, 10), activation: str = "tanh", dropout: float = 0.0, seed: int = 0,
               pixels: int = 784) -> nn.Classifier:
    gn.seed(seed)
    return nn.Classifier(nn.MLP(list(layers), pixels, activation, dropout), input_shape=(pixels,))


def interrupt_at_batch(k: int):
    """An ``augment`` hook that sends this process SIGINT (Ctrl-C) at the k-th batch."""
    calls = {"n": 0}

    def hook(xb):
        calls["n"] += 1
        if calls["n"] == k:
            os.kill(os.getpid(), signal.SIGINT)
        return xb
    return hook


def help_lines(main, prog: str, monkeypatch, capsys) -> list[str]:
    """The lines a CLI's ``main(["--help"])`` prints as ``prog`` on a terminal 200 columns wide."""
    import sys

    import pytest
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(sys, "argv", [prog])
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out.splitlines()

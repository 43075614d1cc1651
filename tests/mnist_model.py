"""A small MNIST model trained once per test process on the real data (a few seconds)."""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import graphnet as gn
from graphnet import nn, optim
from graphnet.datasets import mnist
from graphnet.training import fit

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "mnist"


@functools.lru_cache(maxsize=None)
def small_mnist_model() -> Path:
    """Path of a [128, 10] tanh MLP trained for one epoch on MNIST (about 92% on the test set)."""
    with gn.use_backend("numpy"):
        gn.seed(0)
        x, y, _, _ = mnist.load()
        model = nn.Classifier(nn.MLP([128, 10], 784, "tanh"), (784,))
        model.fit_preprocessing(x)
        fit(model, optim.SGD(model.parameters(), lr=0.1, momentum=0.9), x, y, epochs=1,
            batch_size=64, progress=False)
        folder = Path(tempfile.mkdtemp(prefix="graphnet-digits-"))
        atexit.register(shutil.rmtree, folder, True)
        model.save(folder / "model.npz")
    return folder / "model.npz"

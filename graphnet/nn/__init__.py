"""Layers, containers, initialisers and the Classifier model with save/load."""
from __future__ import annotations

import warnings
from typing import Any

from .layers import (ACTIVATIONS, LAYERS, MLP, Activation, Dropout, Flatten, Layer, Linear, ReLU,
                     Sequential, Sigmoid, Tanh, from_config, register)
from .model import Classifier, ClassifierInputError, TrainableModel, load, model_from_config
from .conv_layers import AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, MaxPool2d  # noqa: E402
from . import init  # noqa: E402

__all__ = ["ACTIVATIONS", "LAYERS", "MLP", "Activation", "Dropout", "Flatten", "Layer", "Linear",
           "ReLU", "Sequential", "Sigmoid", "Tanh", "from_config", "register", "Classifier",
           "ClassifierInputError", "TrainableModel", "load", "model_from_config", "AvgPool2d",
           "BatchNorm1d", "BatchNorm2d", "Conv2d", "MaxPool2d", "init"]


def __getattr__(name: str) -> Any:
    """``nn.mnist_cnn``, deprecated: the MNIST networks live in ``examples.mnist.config``."""
    if name != "mnist_cnn":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn("graphnet.nn.mnist_cnn is deprecated: the MNIST networks are part of the example; "
                  "use examples.mnist.config.mnist_cnn", DeprecationWarning, stacklevel=2)
    try:
        from examples.mnist.config import mnist_cnn
    except ImportError as exc:
        raise ImportError("graphnet.nn.mnist_cnn moved to examples/mnist/config.py; run from a "
                          "graphnet checkout (the repository root importable) to use it") from exc
    return mnist_cnn

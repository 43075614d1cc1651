"""Layers, containers, initialisers and the Classifier model with save/load."""
from __future__ import annotations

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
    """``nn.mnist_cnn`` moved to the example (the library knows nothing of MNIST): say where."""
    if name == "mnist_cnn":
        raise AttributeError("graphnet.nn.mnist_cnn moved to the MNIST example: "
                             "from examples.mnist.config import mnist_cnn (run from a checkout)")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

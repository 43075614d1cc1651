"""Layers, containers and the Classifier model with save/load."""
from .layers import (ACTIVATIONS, LAYERS, MLP, Dropout, Flatten, Layer, Linear, ReLU,
                     Sequential, Sigmoid, Tanh, from_config, register)
from .model import Classifier, ClassifierInputError, load, model_from_config
from .conv_layers import (AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, MaxPool2d,  # noqa: E402
                          mnist_cnn)

__all__ = ["ACTIVATIONS", "LAYERS", "MLP", "Dropout", "Flatten", "Layer", "Linear", "ReLU",
           "Sequential", "Sigmoid", "Tanh", "from_config", "register", "Classifier",
           "ClassifierInputError", "load",
           "model_from_config", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Conv2d", "MaxPool2d",
           "mnist_cnn"]

"""Layers, containers and the Classifier model with save/load."""
from .layers import (ACTIVATIONS, LAYERS, MLP, Dropout, Flatten, Layer, Linear, ReLU,
                     Sequential, Sigmoid, Tanh, from_config, register)
from .model import Classifier, load, model_from_config

__all__ = ["ACTIVATIONS", "LAYERS", "MLP", "Dropout", "Flatten", "Layer", "Linear", "ReLU",
           "Sequential", "Sigmoid", "Tanh", "from_config", "register", "Classifier", "load",
           "model_from_config"]

"""Weight initialisers, drawn from the seeded host generator (float64 host arrays)."""
from __future__ import annotations

import math
from typing import Literal

import numpy as np

from ..backends.host import host_normal, host_uniform

Init = Literal["glorot", "he"]
INITS: tuple[Init, ...] = ("glorot", "he")


def glorot_uniform(shape: tuple[int, ...], fan_in: int, fan_out: int) -> np.ndarray:
    """Uniform in ``±sqrt(6 / (fan_in + fan_out))`` (for tanh and sigmoid)."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return host_uniform(-limit, limit, shape)


def he_normal(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """Normal with standard deviation ``sqrt(2 / fan_in)`` (for ReLU)."""
    return host_normal(math.sqrt(2.0 / fan_in), shape)


def initial_weights(init: Init, shape: tuple[int, ...], fan_in: int, fan_out: int) -> np.ndarray:
    """Weights of ``shape`` drawn by the initialiser named ``init``."""
    if init == "he":
        return he_normal(shape, fan_in)
    return glorot_uniform(shape, fan_in, fan_out)


__all__ = ["Init", "INITS", "glorot_uniform", "he_normal", "initial_weights"]

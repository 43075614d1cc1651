"""graphnet: define-then-run computational graphs for neural networks on NumPy or CuPy."""
from __future__ import annotations

from typing import Optional

from .backends import (Backend, BackendUnavailableError, available_backends, backend,
                       backend_names, get_backend, set_backend, use_backend)
from .backends.host import seed_host as _seed_host
from .backends.host import to_numpy
from .dtypes import default_dtype, get_default_dtype, set_default_dtype
from .errors import (ArgumentError, ArgumentTypeError, FeedError, GraphError, GraphnetError,
                     NumericsError, OutOfMemoryError, RunError, ShapeError)
from .io import CheckpointError
from .graph import Graph
from .hints import Array, Data, DTypeLike
from .node import Constant, Input, Node, Parameter
from .ops import (add, concat, div, dropout, exp, flatten, linear, log, log_softmax, matmul,
                  mean, mse, mul, neg, power, relu, reshape, sigmoid, softmax,
                  softmax_cross_entropy, sub, sum, tanh, transpose)
from .ops import avg_pool2d, batch_norm, conv2d, max_pool2d

from . import nn, optim  # noqa: E402  (after the engine they build on)

__version__ = "0.1.0"


_last_seed: Optional[int] = None  # the Trainer's default seed


def seed(n: int) -> None:
    """Seed the host generator (initial weights) and the active backend's generator.

    The value is also the default ``seed`` of :class:`graphnet.train.Trainer`.
    """
    global _last_seed
    _seed_host(n)
    backend().seed(n)
    _last_seed = n


def asarray(x: Data, dtype: DTypeLike = None) -> Array:
    """``x`` as an array of the active backend."""
    return backend().asarray(x, dtype)


__all__ = ["Backend", "BackendUnavailableError", "available_backends", "backend",
           "backend_names", "get_backend", "set_backend", "use_backend", "to_numpy", "asarray",
           "seed", "default_dtype", "get_default_dtype", "set_default_dtype", "GraphnetError",
           "ArgumentError", "ArgumentTypeError", "CheckpointError", "FeedError",
           "GraphError", "NumericsError", "OutOfMemoryError", "RunError", "ShapeError", "Graph", "Constant", "Input",
           "Node", "Parameter", "nn", "optim", "add", "concat", "div", "dropout", "exp", "flatten", "linear",
           "log", "log_softmax", "matmul", "mean", "mse", "mul", "neg", "power", "relu",
           "reshape", "sigmoid", "softmax", "softmax_cross_entropy", "sub", "sum", "tanh",
           "transpose", "conv2d", "max_pool2d", "avg_pool2d", "batch_norm"]

"""All graph ops; each op's gradient is written beside its forward."""
from .arith import add, div, mul, neg, power, sub
from .batchnorm import batch_norm
from .conv import avg_pool2d, conv2d, max_pool2d
from .dropout import dropout
from . import fused  # noqa: F401  (registers the linear+activation fusion rule)
from .losses import log_softmax, mse, softmax, softmax_cross_entropy
from .matrix import linear, matmul, transpose
from .reduce import mean, sum
from .shape_ops import concat, flatten, getitem, reshape
from .unary import exp, log, relu, sigmoid, tanh

__all__ = ["add", "sub", "mul", "div", "neg", "power", "dropout", "log_softmax", "mse",
           "softmax", "softmax_cross_entropy", "linear", "matmul", "transpose", "mean", "sum",
           "concat", "flatten", "getitem", "reshape", "exp", "log", "relu", "sigmoid", "tanh",
           "conv2d", "max_pool2d", "avg_pool2d", "batch_norm"]

"""Deprecated: the fused conv2d + max-pool step moved to :mod:`graphnet.ops.conv.fusion`
(and its kernel ``first_max_index`` to :mod:`graphnet.ops.conv.kernels`)."""
from __future__ import annotations

import warnings

from .conv.fusion import ConvMaxPool
from .conv.kernels import first_max_index

warnings.warn("graphnet.ops.conv_pool is deprecated: import from graphnet.ops.conv",
              DeprecationWarning, stacklevel=2)

__all__ = ["ConvMaxPool", "first_max_index"]

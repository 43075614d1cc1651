"""2-D convolution and pooling (NCHW), in four parts:

* :mod:`.nodes`: the graph nodes ``Conv2d``, ``MaxPool2d``, ``AvgPool2d`` and their
  wrappers ``conv2d``, ``max_pool2d``, ``avg_pool2d`` (what a convolution and its gradients
  are, and which methods run in a training step);
* :mod:`.engine`: the chunk engine (geometry, chunks and blocks, scratch buffers) that the
  nodes and the fused steps call with an :class:`~.engine.Epilogue`; :mod:`.threads`, the
  worker threads it runs the chunks on (and :func:`run_scope`);
* :mod:`.kernels`: im2col, col2im, pooling, with their CUDA bodies and backend overrides;
* :mod:`.winograd`: Winograd F(2x2, 3x3), the engine's other method for 3x3, stride-1
  convolutions, and :func:`set_algorithm`, which chooses between them;
* :mod:`.fusion`: conv2d + activation and conv2d + max-pool as single steps, registered
  with the step planner.

Every name that ``graphnet.ops.conv`` (once one module) offered is still importable from here.
"""
from __future__ import annotations

from typing import Any

from .engine import (BLOCK_CHUNKS, DEFAULT_CHUNK_BYTES, ConvGeometry, Epilogue, geometry,
                     set_im2col_limit)
from .kernels import (COL2IM_BODY, MAX_POOL_BW_BODY, col2im, conv_row_width, first_max_index,
                      im2col, max_pool_backward, pool_offsets)
from .nodes import AvgPool2d, Conv2d, MaxPool2d, avg_pool2d, conv2d, max_pool2d
from .winograd import set_algorithm
from .threads import GROUPS, for_each_chunk, run_scope, set_workers, workers
from .fusion import ConvActivation, ConvMaxPool  # importing it registers the fusion rules


def __getattr__(name: str) -> Any:
    if name == "IM2COL_LIMIT_BYTES":  # the engine's current limit (set_im2col_limit changes it)
        from . import engine
        return engine.IM2COL_LIMIT_BYTES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["conv2d", "max_pool2d", "avg_pool2d", "set_im2col_limit", "IM2COL_LIMIT_BYTES",
           "Conv2d", "MaxPool2d", "AvgPool2d", "ConvGeometry", "Epilogue", "geometry",
           "BLOCK_CHUNKS", "DEFAULT_CHUNK_BYTES", "COL2IM_BODY", "MAX_POOL_BW_BODY", "col2im",
           "conv_row_width", "first_max_index", "im2col", "max_pool_backward", "pool_offsets",
           "GROUPS", "for_each_chunk", "run_scope", "set_workers", "workers",
           "ConvActivation", "ConvMaxPool", "set_algorithm"]

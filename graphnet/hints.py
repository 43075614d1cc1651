"""Type aliases for graphnet's public signatures."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

if TYPE_CHECKING:
    import cupy

    #: An array of a backend: ``numpy.ndarray`` on the CPU, ``cupy.ndarray`` on the GPU.
    Array = Union[np.ndarray, cupy.ndarray]
else:
    Array = np.ndarray  # (CuPy arrays too: CuPy is imported only where it is used)

#: Host data a public door accepts and converts: NumPy or CuPy arrays, lists, scalars.
Data = Union[ArrayLike, Array]
PathLike = Union[str, os.PathLike]
#: A ``(seed, epoch, sample offset)`` key of the keyed random draws.
RngKey = tuple[int, int, int]

__all__ = ["Array", "ArrayLike", "Data", "DTypeLike", "PathLike", "RngKey"]

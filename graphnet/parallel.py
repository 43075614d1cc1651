"""Deprecated alias of :mod:`graphnet.ops.conv.threads` (host threads for convolution chunks).

``graphnet.parallel.set_workers``, ``run_scope`` and the rest keep working; new code imports
them from ``graphnet.ops.conv``.
"""
from __future__ import annotations

from .ops.conv.threads import (GROUPS, _blas_controller, for_each_chunk, on_workers, run_scope,
                               set_workers, workers)

__all__ = ["GROUPS", "for_each_chunk", "on_workers", "run_scope", "set_workers", "workers"]

"""Which rows of each global batch a rank takes."""
from __future__ import annotations

from typing import Any

from ..checks import integer, positive_int


def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """``[lo, hi)`` of rank's part when ``n`` items are split into ``size`` contiguous parts.

    Parts differ in length by at most one, the first ones taking the extra items.
    """
    n, rank, size = integer(n, "n"), integer(rank, "rank"), integer(size, "size")
    if size <= 0 or not 0 <= rank < size:
        raise ValueError(f"rank must be in [0, size) with size > 0, got rank={rank}, size={size}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    q, r = divmod(n, size)
    lo = rank * q + min(rank, r)
    return lo, lo + q + (1 if rank < r else 0)


class ShardedSampler:
    """This rank's rows of each global batch of an epoch's (global) permutation.

    A global batch is ``batch_size * size`` consecutive entries of the permutation,
    the same batches a single process with that batch size would take; each rank
    takes one contiguous part, so the ranks' parts are disjoint and cover the epoch.
    """

    def __init__(self, batch_size: int, rank: int, size: int) -> None:
        self.batch_size = positive_int(batch_size, "batch_size")
        shard_bounds(0, rank, size)  # validates rank and size
        self.rank, self.size = int(rank), int(size)
        self.global_batch = self.batch_size * self.size

    def batches(self, n: int) -> int:
        """Global batches in an epoch of ``n`` samples."""
        return -(-n // self.global_batch)

    def rows_at(self, permutation: Any, start: int) -> tuple[Any, int]:
        """(this rank's rows, the position of its first row in the epoch) of the global
        batch beginning at sample ``start`` (the position keys e.g. this rank's dropout)."""
        batch = permutation[start:start + self.global_batch]
        lo, hi = shard_bounds(int(batch.shape[0]), self.rank, self.size)
        return batch[lo:hi], start + lo


__all__ = ["shard_bounds", "ShardedSampler"]

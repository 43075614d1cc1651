"""The keyed order of the training samples: a pure function of ``(seed, epoch)``."""
from __future__ import annotations

import sys

import numpy as np

_MAX_KEY = 2**64


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order (int64 indices, a permutation of ``range(n)``) of the training samples in ``epoch``.

    A pure function of its arguments, computed on the host from the raw Philox stream keyed
    by ``(seed, epoch)``: identical on every backend and in every resumed run.
    """
    for name, v in (("seed", seed), ("epoch", epoch)):
        if not is_int(v) or not 0 <= v < _MAX_KEY:
            raise ValueError(f"{name} must be an integer in [0, 2**64), got {v!r}")
    if not is_int(n) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    bits = np.random.Philox(key=np.array([seed, epoch], dtype=np.uint64)).random_raw(int(n))
    return _stable_order(bits)


def _stable_order(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` as int64, for a 1-d array.

    Distinct keys (64 random bits almost always are) have one sorted order, which the
    faster unstable sort finds too (about 5x faster on 60000 keys); only ties need the
    stable sort, and they get it.
    """
    order = np.argsort(keys, kind="quicksort")
    ranked = keys[order]
    if not (ranked[1:] > ranked[:-1]).all():  # a tie: its order is the stable sort's to decide
        order = np.argsort(keys, kind="stable")
    return order.astype(np.int64, copy=False)


def checked_seed(v: object) -> int:
    """``v`` as a seed: an integer in [0, 2**64) (ValueError naming it otherwise)."""
    if not is_int(v) or not 0 <= v < _MAX_KEY:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {v!r}")
    return int(v)


def is_int(v: object) -> bool:
    """Whether ``v`` is an int or a NumPy integer (not a bool)."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def default_seed() -> int:
    """The value last given to ``gn.seed`` (0 if it was never called)."""
    gn = sys.modules.get("graphnet")
    seed = getattr(gn, "_last_seed", None)
    return seed if is_int(seed) and 0 <= seed < _MAX_KEY else 0


__all__ = ["epoch_permutation", "checked_seed", "default_seed", "is_int"]

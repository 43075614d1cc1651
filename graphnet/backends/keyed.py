"""Keyed (counter-based) random bits, identical on every backend.

A random op derives its numbers from the run's ``rng_key`` (a tuple of non-negative
ints, e.g. ``(seed, epoch, sample_offset)``) and its position in the graph's order, never
from a stateful stream: the same key gives the same numbers whatever ran before.

The pair is hashed on the host (BLAKE2b, 128 bits) into a Philox4x64-10 key. Word ``j``
of a draw is the 64-bit word ``j % 4`` of the Philox block with counter
``(j // 4 + 1, 0, 0, 0)``: exactly NumPy's ``Philox(key=...).random_raw()`` stream, which
the NumPy path uses, and which :data:`PHILOX_BODY` (CUDA C, for CuPy) computes per word.
Everything after the words (thresholds, scaling) is the same array code on every backend.
A dropout mask uses each word for two elements (its low, then its high 32 bits).
"""
from __future__ import annotations

import hashlib
import math
import operator
from fractions import Fraction
from typing import Any, Optional

import numpy as np

from ..errors import GraphError

_U64 = 2**64
#: the position a backend's own (unkeyed) stream hashes with, never a node's position
STREAM_POSITION = _U64 - 1


def check_rng_key(rng_key: Any) -> Optional[tuple]:
    """``rng_key`` as a tuple of ints in [0, 2**64), or None; GraphError naming it otherwise."""
    if rng_key is None:
        return None
    ok = isinstance(rng_key, tuple) and len(rng_key) > 0
    if ok:
        try:
            key = tuple(operator.index(v) for v in rng_key if not isinstance(v, (bool, np.bool_)))
        except TypeError:
            ok = False
        else:
            ok = len(key) == len(rng_key) and all(0 <= v < _U64 for v in key)
    if not ok:
        raise GraphError(f"rng_key must be a non-empty tuple of integers in [0, 2**64) "
                         f"(e.g. (seed, epoch, sample_offset)), got {rng_key!r}")
    return key


def philox_key(rng_key: tuple, position: int) -> tuple[int, int]:
    """The two 64-bit Philox key words for ``rng_key`` at graph position ``position``."""
    words = (len(rng_key),) + tuple(rng_key) + (int(position),)
    data = b"".join(int(w).to_bytes(8, "little") for w in words)
    digest = hashlib.blake2b(data, digest_size=16, person=b"graphnet-keyed").digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")


def random_bits(key: tuple[int, int], size: int) -> np.ndarray:
    """``size`` uint64 words of the Philox4x64-10 stream of ``key`` (host, NumPy)."""
    gen = np.random.Philox(key=np.array(key, dtype=np.uint64))
    return gen.random_raw(size)


def keep_threshold(rate: float) -> int:
    """The smallest 32-bit number that keeps an element: P(number >= it) = 1 - rate (to 2**-32)."""
    return min(math.ceil(Fraction(rate) * 2**32), 2**32 - 1)


def dropout_words(size: int) -> int:
    """How many 64-bit words a mask of ``size`` elements takes (two 32-bit halves each)."""
    return -(-size // 2)


def dropout_mask(xp: Any, words: Any, shape: tuple, dtype: Any, rate: float) -> Any:
    """``1/(1-rate)`` where an element's 32-bit number >= :func:`keep_threshold`, else 0.

    Element ``2j`` takes the low half of word ``j`` and element ``2j + 1`` its high half.
    """
    dtype = np.dtype(dtype)
    if np.little_endian or xp is not np:
        halves = words.view(np.uint32)  # GPUs are little-endian too
    else:
        halves = np.stack([words & np.uint64(0xFFFFFFFF), words >> np.uint64(32)], -1)
        halves = halves.astype(np.uint32).reshape(-1)
    keep = halves[:math.prod(shape)].reshape(shape) >= np.uint32(keep_threshold(rate))
    return xp.multiply(keep, dtype.type(1 / (1 - rate)), dtype=dtype)


def uniform(xp: Any, words: Any, dtype: Any) -> Any:
    """Uniform [0, 1) numbers from the words' top 24 (float32) or 53 (float64) bits, exactly."""
    dtype = np.dtype(dtype)
    bits = 24 if dtype.itemsize <= 4 else 53
    top = words >> np.uint64(64 - bits)
    return xp.multiply(top, dtype.type(2.0 ** -bits), dtype=dtype)


# The kernel behind CuPy's keyed words, element ``i``: word i % 4 of Philox4x64-10 with
# counter (i / 4 + 1, 0, 0, 0) under key (k0, k1). The 64x64-bit high products are done
# in 32-bit halves, so that the same C runs on the GPU and, in the tests, on the host.
PHILOX_BODY = """
unsigned long long c0 = (unsigned long long)(i / 4) + 1ULL, c1 = 0ULL, c2 = 0ULL, c3 = 0ULL;
unsigned long long ka = k0, kb = k1;
for (int r = 0; r < 10; ++r) {
    unsigned long long h[2], l[2];
    for (int s = 0; s < 2; ++s) {
        const unsigned long long a = s ? 0xCA5A826395121157ULL : 0xD2E7470EE14C6C93ULL;
        const unsigned long long b = s ? c2 : c0;
        const unsigned long long al = a & 0xFFFFFFFFULL, ah = a >> 32;
        const unsigned long long bl = b & 0xFFFFFFFFULL, bh = b >> 32;
        const unsigned long long ll = al * bl, lh = al * bh, hl = ah * bl, hh = ah * bh;
        const unsigned long long mid = (ll >> 32) + (lh & 0xFFFFFFFFULL) + (hl & 0xFFFFFFFFULL);
        h[s] = hh + (lh >> 32) + (hl >> 32) + (mid >> 32);
        l[s] = a * b;
    }
    c0 = h[1] ^ c1 ^ ka;
    c1 = l[1];
    c2 = h[0] ^ c3 ^ kb;
    c3 = l[0];
    ka += 0x9E3779B97F4A7C15ULL;
    kb += 0xBB67AE8584CAA73BULL;
}
const int w = (int)(i % 4);
out = w == 0 ? c0 : w == 1 ? c1 : w == 2 ? c2 : c3;
"""

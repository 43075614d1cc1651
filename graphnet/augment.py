"""Data augmentation on the active backend: random shifts and small rotations of image batches."""
from __future__ import annotations

import math
from typing import Any, Sequence

from .backends import backend


def random_shift(x: Any, max_shift: int = 2, image_shape: Sequence[int] = (1, 28, 28),
                 rotate: float = 0.0) -> Any:
    """Each image moved by up to ``max_shift`` pixels (and turned by up to ``rotate`` degrees).

    ``x`` is a batch of prepared images, shape ``(N, *image_shape)``; uncovered pixels
    take the batch's background value (its minimum). One gather per batch; nearest-pixel
    sampling.
    """
    b = backend()
    xp = b.xp
    n = x.shape[0]
    h, w = int(image_shape[-2]), int(image_shape[-1])
    flat = x.reshape(n, -1, h * w)
    c = flat.shape[1]
    u = b.uniform((n, 3), x.dtype)
    dy = xp.floor(u[:, 0] * (2 * max_shift + 1)) - max_shift
    dx = xp.floor(u[:, 1] * (2 * max_shift + 1)) - max_shift
    theta = (u[:, 2] * 2 - 1) * (rotate * math.pi / 180)
    yy, xx = xp.meshgrid(xp.arange(h, dtype=x.dtype) - (h - 1) / 2,
                         xp.arange(w, dtype=x.dtype) - (w - 1) / 2, indexing="ij")
    cos, sin = xp.cos(theta)[:, None, None], xp.sin(theta)[:, None, None]
    # source coordinates of each output pixel (inverse map: rotate back, then shift back)
    sy = cos * yy[None] - sin * xx[None] + (h - 1) / 2 - dy[:, None, None]
    sx = sin * yy[None] + cos * xx[None] + (w - 1) / 2 - dx[:, None, None]
    iy, ix = xp.rint(sy).astype(xp.int64), xp.rint(sx).astype(xp.int64)
    inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    src = (xp.clip(iy, 0, h - 1) * w + xp.clip(ix, 0, w - 1)).reshape(n, 1, h * w)
    out = xp.take_along_axis(flat, xp.broadcast_to(src, (n, c, h * w)), axis=2)
    background = flat.min()
    out = xp.where(inside.reshape(n, 1, h * w), out, background)
    return out.reshape(x.shape)

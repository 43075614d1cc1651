"""``image_grid``: the one helper that lays out images (samples, weights, galleries)."""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

from .base import host, new_figure


def as_images(x: Any, image_shape: Optional[Sequence[int]] = None) -> np.ndarray:
    """``(N, H, W)`` host float images from ``(N, H, W)``, ``(N, 1, H, W)`` or flat ``(N, H*W)``.

    Flat rows need ``image_shape`` unless they are square (784 -> 28x28).
    """
    a = host(x).astype(np.float64, copy=False)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim == 2:
        n, d = a.shape
        if image_shape is None:
            side = math.isqrt(d)
            if side * side != d:
                raise ValueError(f"cannot show rows of {d} values as square images: "
                                 "pass image_shape=(H, W)")
            image_shape = (side, side)
        a = a.reshape((n,) + tuple(int(s) for s in image_shape[-2:]))
    if a.ndim != 3:
        raise ValueError(f"expected images of shape (N, H, W), (N, 1, H, W) or (N, H*W), "
                         f"got {a.shape}")
    return a


def grid_shape(n: int, ncols: Optional[int] = None) -> tuple[int, int]:
    """``(rows, cols)`` of a near-square grid for ``n`` cells (``ncols`` to fix the width)."""
    cols = int(ncols) if ncols else max(1, math.ceil(math.sqrt(n)))
    return max(1, math.ceil(n / cols)), cols


def image_grid(images: Any, titles: Optional[Sequence[str]] = None, *,
               colors: Optional[Sequence[Any]] = None, ncols: Optional[int] = None,
               cmap: Optional[str] = None, vmin: Optional[float] = None,
               vmax: Optional[float] = None, symmetric: bool = False, colorbar: bool = False,
               colorbar_label: Optional[str] = None, suptitle: Optional[str] = None,
               image_shape: Optional[Sequence[int]] = None, fig: Any = None,
               figsize: Optional[Sequence[float]] = None, cell: float = 1.1,
               fontsize: float = 8) -> Any:
    """Draw ``images`` in a near-square grid and return the Figure (or the ``fig`` given).

    ``titles``: one short title per image; ``colors``: a colour per image for its
    title and frame (``None`` entries keep the default), e.g. red for mistakes.
    Without titles the images are tiled into one mosaic (fast for hundreds of
    them). ``symmetric`` puts zero in the middle of one shared colour scale
    (``[-max|x|, max|x|]``, or ``[-vmax, vmax]``; diverging colormap); otherwise ``vmin``/``vmax`` (or
    each image's own range when both are None and ``cmap`` is grey).
    ``fig`` may be a Figure or SubFigure to draw into (for side-by-side grids).
    """
    imgs = as_images(images, image_shape)
    n, h, w = imgs.shape
    rows, cols = grid_shape(n, ncols)
    if symmetric:
        lim = vmax if vmax is not None else float(np.nanmax(np.abs(imgs))) if imgs.size else 1.0
        vmin, vmax = -(lim or 1.0), (lim or 1.0)
        cmap = cmap or "RdBu_r"
    elif vmin is None and vmax is None and imgs.size:
        vmin, vmax = float(np.nanmin(imgs)), float(np.nanmax(imgs))
    cmap = cmap or "gray"
    if fig is None:
        if titles is None:
            cell = min(cell, 9.0 / cols)  # a mosaic of many units stays about 9 inches wide
        lines = max((str(t).count("\n") + 1 for t in titles), default=0) if titles else 0
        title_h = 0.1 + 0.14 * lines * fontsize / 8 if titles is not None else 0.0
        width = cols * cell * (w / max(h, w) if titles is None else 1.0)
        height = rows * (cell * (h / max(h, w) if titles is None else 1.0) + title_h)
        if colorbar:
            width += 0.9
        if suptitle:
            height += 0.35
        fig = new_figure(figsize or (max(width, 2.0), max(height, 1.5)), layout="constrained")
    if titles is None:
        im = _mosaic(fig, imgs, rows, cols, cmap, vmin, vmax)
        mappable_axes: Any = im.axes
    else:
        im, mappable_axes = _subplots(fig, imgs, rows, cols, titles, colors, cmap, vmin, vmax,
                                      fontsize)
    if colorbar:
        cb = fig.colorbar(im, ax=mappable_axes, shrink=0.8, aspect=30)
        if colorbar_label:
            cb.set_label(colorbar_label)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def _mosaic(fig: Any, imgs: np.ndarray, rows: int, cols: int, cmap: str, vmin: Any,
            vmax: Any) -> Any:
    """One image of all tiles separated by one-pixel gaps (shown as the background)."""
    scale = max(1, 12 // min(imgs.shape[1:]))  # tiny tiles (3x3 filters): thinner gaps
    if scale > 1:
        imgs = imgs.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w = imgs.shape
    gap = 1
    canvas = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), np.nan)
    for k in range(n):
        r, c = divmod(k, cols)
        canvas[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = imgs[k]
    ax = fig.add_subplot(1, 1, 1)
    cm = _colormap(cmap)
    im = ax.imshow(np.ma.masked_invalid(canvas), cmap=cm, vmin=vmin, vmax=vmax,
                   interpolation="nearest")
    if n < rows * cols:  # blank out the unused cells of the last row
        from matplotlib.patches import Rectangle
        c0 = n - (rows - 1) * cols
        ax.add_patch(Rectangle((c0 * (w + gap) - gap - 0.5, (rows - 1) * (h + gap) - gap - 0.5),
                               canvas.shape[1] + 1, h + gap + 1, facecolor="white",
                               edgecolor="none"))
    ax.set_axis_off()
    return im


def _subplots(fig: Any, imgs: np.ndarray, rows: int, cols: int, titles: Sequence[str],
              colors: Optional[Sequence[Any]], cmap: str, vmin: Any, vmax: Any,
              fontsize: float) -> tuple[Any, Any]:
    axes = fig.subplots(rows, cols, squeeze=False)
    im = None
    for k, ax in enumerate(axes.flat):
        if k >= len(imgs):
            ax.set_axis_off()
            continue
        im = ax.imshow(imgs[k], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        color = colors[k] if colors is not None else None
        ax.set_title(titles[k] if k < len(titles) else "", fontsize=fontsize,
                     color=color or "black", pad=2,
                     fontweight="bold" if color else "normal")
        for spine in ax.spines.values():
            spine.set_visible(color is not None)
            if color is not None:
                spine.set_edgecolor(color)
                spine.set_linewidth(2.5)
    return im, axes


def _colormap(name: str) -> Any:
    import matplotlib
    # the gaps: mid grey, visible on black digits and on white zeros
    return matplotlib.colormaps[name].with_extremes(bad="0.55")

"""Shared plumbing for the figures: host conversion, figure creation, saving.

Figures are plain ``matplotlib.figure.Figure`` objects, never pyplot ones: nothing
here touches pyplot's global state or needs a display, and PNGs are rendered by
Agg. A Jupyter notebook displays a returned Figure as it is.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

from ..backends.host import to_numpy

#: One colour per class (matplotlib's ten-colour qualitative cycle).
CLASS_CMAP = "tab10"
#: Pixel density of saved PNGs unless told otherwise.
DPI = 100


def host(x: Any) -> np.ndarray:
    """Any backend array (or list) as a host NumPy array (0-d stays an array)."""
    return np.asarray(to_numpy(x))


def new_figure(figsize: Sequence[float], dpi: int = DPI, layout: Optional[str] = None) -> Figure:
    """A detached Figure of ``figsize`` inches (no pyplot, no display needed)."""
    return Figure(figsize=tuple(float(s) for s in figsize), dpi=dpi, layout=layout)


def save(fig: Figure, path: str | os.PathLike, dpi: Optional[int] = None) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix) and return the path.

    The image is exactly ``figsize * dpi`` pixels (no tight cropping), so every
    figure's size is known in advance.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi or fig.dpi)
    return path


def pixel_size(fig: Figure, dpi: Optional[int] = None) -> tuple[int, int]:
    """``(width, height)`` in pixels that :func:`save` will write for ``fig``."""
    w, h = fig.get_size_inches() * (dpi or fig.dpi)
    return int(w + 1e-8), int(h + 1e-8)  # truncated, as matplotlib's canvas does


def png_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` read from a PNG file's header."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG file")
    return struct.unpack(">II", head[16:24])


def class_colors(n: int) -> list:
    """``n`` distinct colours, one per class (tab10, then tab20 beyond ten)."""
    import matplotlib
    cmap = matplotlib.colormaps[CLASS_CMAP if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def scatter_classes(ax: Any, points: np.ndarray, labels: np.ndarray,
                    class_names: Optional[Sequence[str]] = None, size: float = 8,
                    alpha: float = 0.8, legend: bool = True, scatter_kw: Optional[dict] = None,
                    **legend_kw: Any) -> None:
    """Scatter 2-D or 3-D ``points`` on ``ax``, one colour and legend entry per class.

    ``scatter_kw`` goes to ``ax.scatter`` (e.g. ``depthshade=False`` in 3-D); the
    other keywords to the legend.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    n = int(classes.max()) + 1 if classes.size else 0
    colors = class_colors(max(n, 1))
    for c in classes:
        sel = labels == c
        name = class_names[c] if class_names is not None else str(c)
        coords = [points[sel, j] for j in range(points.shape[1])]
        ax.scatter(*coords, s=size, color=colors[c], alpha=alpha, label=name, linewidths=0,
                   **(scatter_kw or {}))
    if legend and classes.size:
        kw = dict(markerscale=2, fontsize="small", frameon=False)
        kw.update(legend_kw)
        ax.legend(**kw)

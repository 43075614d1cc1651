"""Decision regions of a classifier in a plane, with the data on top."""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np

from .base import class_colors, host, new_figure, scatter_classes


def decision_regions(predict_proba: Callable[[np.ndarray], Any], points: Any, labels: Any,
                     bounds: Optional[Sequence[float]] = None, resolution: int = 200,
                     title: Optional[str] = None, xlabel: str = "$x_1$", ylabel: str = "$x_2$",
                     class_names: Optional[Sequence[str]] = None, ax: Any = None,
                     figsize: Optional[Sequence[float]] = None) -> Any:
    """Shade the plane by the predicted class and draw the decision boundary.

    ``predict_proba`` maps host points ``(M, 2)`` (float64) to class
    probabilities ``(M, classes)`` on any backend; with two classes the shade is
    the probability of class 1 and the boundary is where it is 0.5. ``bounds``
    ``(x0, x1, y0, y1)`` default to the points' range plus a margin. Draws into
    ``ax`` when given; returns the Figure.
    """
    from matplotlib.colors import LinearSegmentedColormap, ListedColormap
    pts = host(points).astype(np.float64)
    y = host(labels).astype(np.int64)
    if bounds is None:
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        pad = 0.1 * np.maximum(hi - lo, 1e-9)
        bounds = (lo[0] - pad[0], hi[0] + pad[0], lo[1] - pad[1], hi[1] + pad[1])
    x0, x1, y0, y1 = (float(v) for v in bounds)
    gx, gy = np.meshgrid(np.linspace(x0, x1, resolution), np.linspace(y0, y1, resolution))
    grid = np.column_stack([gx.ravel(), gy.ravel()])
    probs = host(predict_proba(grid)).astype(np.float64).reshape(resolution, resolution, -1)
    n_classes = max(probs.shape[-1], int(y.max()) + 1 if y.size else 0)
    colors = class_colors(n_classes)
    if ax is None:
        fig = new_figure(figsize or (5.6, 5.0), layout="constrained")
        ax = fig.add_subplot(1, 1, 1)
    fig = ax.figure
    if probs.shape[-1] == 2:
        cmap = LinearSegmentedColormap.from_list("two", [colors[0], "white", colors[1]])
        ax.contourf(gx, gy, probs[..., 1], levels=np.linspace(0, 1, 11), cmap=cmap, alpha=0.45)
        ax.contour(gx, gy, probs[..., 1], levels=[0.5], colors="black", linewidths=1.5)
    else:
        cls = probs.argmax(axis=-1)
        ax.imshow(cls, origin="lower", extent=(x0, x1, y0, y1), aspect="auto", alpha=0.3,
                  cmap=ListedColormap(colors), vmin=-0.5, vmax=n_classes - 0.5,
                  interpolation="nearest")
        ax.contour(gx, gy, cls, levels=np.arange(n_classes) + 0.5, colors="black",
                   linewidths=1.0)
    scatter_classes(ax, pts, y, class_names, size=10, alpha=0.9, loc="upper right",
                    frameon=True, title="class")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return fig

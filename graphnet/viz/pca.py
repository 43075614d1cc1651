"""PCA on the active backend, and class-coloured 2-D / 3-D scatter plots (and a turning GIF).

``pca`` centres the data and takes ``backend().xp.linalg.svd`` where the data
lives; only the projected points (and the k explained-variance fractions) are
copied to the host. Each component's sign is fixed (its largest loading is
positive), so NumPy and CuPy give the same picture.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..backends import backend, backend_of
from .base import host, new_figure, scatter_classes


@dataclass
class Projection:
    """A fitted PCA: ``points`` (host, ``(N, k)``) and what maps to and from it.

    ``transform`` and ``inverse`` compute on the backend that holds ``mean`` and
    ``components`` (``backend``), whichever backend is active when they are called.
    """

    points: np.ndarray
    explained: np.ndarray  # host (k,): share of the total variance along each component
    mean: Any              # backend (D,)
    components: Any        # backend (k, D), orthonormal rows
    backend: Any = None    # the Backend of mean and components (found from them if None)

    def __post_init__(self) -> None:
        if self.backend is None:
            self.backend = backend_of(self.mean)

    def transform(self, x: Any) -> np.ndarray:
        """Host coordinates of new rows ``x`` (any backend or host; computed on ``backend``)."""
        b = self.backend
        x = x if b.is_array(x) else b.asarray(host(x))
        x = x.reshape(x.shape[0], -1).astype(self.mean.dtype)
        return host((x - self.mean) @ self.components.T)

    def inverse(self, points: Any) -> Any:
        """Rows of feature space (on ``backend``) at the given PCA coordinates."""
        p = self.backend.asarray(host(points), dtype=self.mean.dtype)
        return self.mean + p @ self.components


def pca(x: Any, k: int = 2) -> Projection:
    """Project rows of ``x`` (``(N, D)``, any backend) onto their first ``k`` principal axes.

    Computed in float64 on the active backend.
    """
    b = backend()
    xp = b.xp
    x = x if b.is_array(x) else b.asarray(host(x))
    x = x.reshape(x.shape[0], -1).astype(xp.float64)
    n, d = x.shape
    if not 1 <= k <= min(n, d):
        raise ValueError(f"cannot take {k} components of {n} points in {d} dimensions")
    mean = x.mean(axis=0)
    xc = x - mean
    u, s, vt = xp.linalg.svd(xc, full_matrices=False)
    comps = vt[:k]
    sign = xp.sign(comps[xp.arange(k), xp.abs(comps).argmax(axis=1)])
    sign = xp.where(sign == 0, 1.0, sign)
    comps = comps * sign[:, None]
    pts = (u[:, :k] * s[:k]) * sign
    var = s * s
    total = var.sum()
    explained = var[:k] / (total if float(total) > 0 else 1.0)
    return Projection(host(pts), host(explained), mean, comps, b)


def _axis_labels(k: int, explained: Optional[Sequence[float]]) -> list[str]:
    return [f"PC {i + 1}" + (f" ({100 * explained[i]:.0f}% of variance)"
                             if explained is not None else "") for i in range(k)]


def pca_scatter(points: Any, labels: Any, explained: Optional[Sequence[float]] = None,
                title: Optional[str] = None, class_names: Optional[Sequence[str]] = None,
                size: float = 8, figsize: Optional[Sequence[float]] = None,
                elev: float = 20, azim: float = -60, alpha: float = 0.8,
                depthshade: bool = True) -> Any:
    """Scatter 2-D or 3-D points (by ``points.shape[1]``), one colour per class."""
    pts = host(points).astype(np.float64)
    y = host(labels).astype(np.int64)
    k = pts.shape[1]
    if k not in (2, 3):
        raise ValueError(f"can scatter 2 or 3 components, got {k}")
    fig = new_figure(figsize or ((7.0, 6.0) if k == 2 else (7.0, 6.5)),
                     layout="constrained" if k == 2 else None)
    names = _axis_labels(k, explained)
    if k == 2:
        ax = fig.add_subplot(1, 1, 1)
        scatter_classes(ax, pts, y, class_names, size=size, alpha=alpha, title="class",
                        loc="center left", bbox_to_anchor=(1.0, 0.5))
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
        ax.set_aspect("equal", adjustable="datalim")
    else:
        ax = fig.add_subplot(1, 1, 1, projection="3d")
        scatter_classes(ax, pts, y, class_names, size=size, alpha=alpha, title="class",
                        loc="upper left", bbox_to_anchor=(0.0, 1.0),
                        scatter_kw={"depthshade": depthshade})
        ax.set_xlabel(names[0], fontsize=8)
        ax.set_ylabel(names[1], fontsize=8)
        ax.set_zlabel(names[2], fontsize=8)
        ax.tick_params(labelsize=7)
        ax.view_init(elev=elev, azim=azim)
        fig.subplots_adjust(left=0.0, right=0.95, bottom=0.02, top=0.93)
    if title:
        fig.suptitle(title)
    return fig


def rotating_gif(points: Any, labels: Any, path: str | os.PathLike,
                 explained: Optional[Sequence[float]] = None, title: Optional[str] = None,
                 class_names: Optional[Sequence[str]] = None, frames: int = 36, fps: int = 12,
                 figsize: Sequence[float] = (5.5, 5.2), dpi: int = 72,
                 elev: float = 20) -> Path:
    """An animated GIF of the 3-D scatter turning once around its vertical axis.

    Uses ``matplotlib.animation`` with ``PillowWriter``; returns the path. Points
    are opaque and not depth-shaded, so the GIF's 256-colour palette keeps the
    class colours distinct.
    """
    from matplotlib.animation import FuncAnimation, PillowWriter
    fig = pca_scatter(points, labels, explained, title, class_names, size=5,
                      figsize=figsize, elev=elev, alpha=1.0, depthshade=False)
    ax = fig.axes[0]
    step = 360.0 / frames

    def turn(i: int) -> list:
        ax.view_init(elev=elev, azim=-60 + i * step)
        return []

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    anim = FuncAnimation(fig, turn, frames=frames, blit=False)
    anim.save(path, writer=PillowWriter(fps=fps), dpi=dpi)
    return path


# --- a model's deep features -----------------------------------------------------------
def feature_projection(model: Any, images: Any, k: int = 3) -> tuple[Projection, Any]:
    """PCA of a Classifier's last hidden layer for ``images``; also returns the probabilities.

    The features and probabilities come from one graph run per batch
    (``Classifier.deep_features``); the PCA runs on the backend.
    """
    probs, feats = model.deep_features(images)
    return pca(feats, k), probs


def deep_features(model: Any, images: Any, labels: Any, dims: int = 2,
                  figsize: Optional[Sequence[float]] = None) -> Any:
    """The last hidden layer of ``images`` projected on ``dims`` (2 or 3) principal axes."""
    proj, _ = feature_projection(model, images, dims)
    width = int(proj.mean.shape[0])
    return pca_scatter(proj.points, labels, proj.explained, figsize=figsize,
                       title=f"Last hidden layer ({width} units) of {len(proj.points)} test "
                             f"images, PCA to {dims}-D")

"""Figures about a trained Classifier: samples, first-layer weights, confusion, mistakes.

Every function takes host or device arrays (raw images as the model takes them,
integer labels), computes on the model's backend, moves only what it draws to the
host, and returns a ``matplotlib.figure.Figure``.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

from .base import host, new_figure
from .grid import image_grid

MISTAKE = "#d62728"  # red: titles and frames of wrong predictions


def probabilities(model: Any, images: Any, batch_size: int = 4096) -> Any:
    """Class probabilities ``(N, classes)`` on the model's backend for raw images."""
    x = model.prepare(images)
    xp = model.backend.xp
    out = [model.eval_graph.values({model.images: x[i:i + batch_size]}, [model.probs])[0]
           for i in range(0, x.shape[0], batch_size)]
    return xp.concatenate(out) if out else xp.zeros((0, model.num_classes), dtype=x.dtype)


def _labels_on(model: Any, labels: Any) -> Any:
    b = model.backend
    y = labels if b.is_array(labels) else b.asarray(host(labels))
    return y.astype(b.xp.int64)


# --- 1. samples -------------------------------------------------------------------------
def samples(model: Any, images: Any, labels: Any, n: int = 25, ncols: int = 5,
            probs: Any = None, figsize: Optional[Sequence[float]] = None) -> Any:
    """The first ``n`` images in a grid, titled "predicted (true)"; mistakes in red.

    ``probs``: the model's probabilities for ``images`` if already computed.
    """
    images, labels = images[:n], labels[:n]
    probs = probabilities(model, images) if probs is None else probs[:n]
    pred = host(probs.argmax(axis=1))
    true = host(labels)
    wrong = pred != true
    titles = [f"{p} (true {t})" if w else f"{p}" for p, t, w in zip(pred, true, wrong)]
    n_wrong = int(wrong.sum())
    return image_grid(images, titles, colors=[MISTAKE if w else None for w in wrong],
                      ncols=ncols, cell=1.3, figsize=figsize, fontsize=9,
                      suptitle=f"Predicted label (true label if wrong): {len(pred) - n_wrong} of "
                               f"{len(pred)} right")


# --- 2. first-layer weights --------------------------------------------------------------
def first_layer(model: Any) -> tuple[str, Any]:
    """``(name, value)`` of the first weight matrix or kernel (rank >= 2) of the network."""
    for name, p in model.network.named_parameters().items():
        if p.ndim is not None and p.ndim >= 2:
            return name, p.value
    raise ValueError("the network has no weight matrix or kernel")


def first_layer_images(model: Any) -> np.ndarray:
    """The first layer's units as host images ``(units, H, W)``.

    A dense ``W`` of shape (in, out) gives each unit's column reshaped to the input
    image; a kernel of shape (C_out, C_in, kh, kw) gives each (output, input)
    channel's kh x kw filter.
    """
    _, w = first_layer(model)
    w = host(w)
    if w.ndim == 4:
        return w.reshape(-1, w.shape[-2], w.shape[-1])
    if w.ndim != 2:
        raise ValueError(f"cannot show a first weight of shape {w.shape} as images")
    shape = tuple(model.input_shape)
    n_in = w.shape[0]
    if math.prod(shape) != n_in:
        raise ValueError(f"the first weight matrix has {n_in} inputs, not the "
                         f"{math.prod(shape)} pixels of an image")
    if len(shape) >= 2:
        hw = shape[-2:]
    else:
        side = math.isqrt(n_in)
        if side * side != n_in:
            raise ValueError(f"{n_in} inputs are not a square image")
        hw = (side, side)
    return w.T.reshape((w.shape[1],) + hw)


def first_layer_weights(model: Any, title: Optional[str] = None, vmax: Optional[float] = None,
                        fig: Any = None, figsize: Optional[Sequence[float]] = None) -> Any:
    """Each first-layer unit's weights as an image, on one colour scale centred on zero.

    Red is positive, blue negative. When the first layer is also the output layer
    (a one-layer network) each image is titled with its class. ``vmax`` fixes the
    scale (e.g. to share it between panels); ``fig`` draws into a (sub)figure.
    """
    imgs = first_layer_images(model)
    name, w = first_layer(model)
    kind = "filters" if w.ndim == 4 else "units"
    one_layer = w.ndim == 2 and imgs.shape[0] == model.num_classes and \
        len([p for p in model.network.named_parameters().values() if p.ndim >= 2]) == 1
    titles = [f"{k}" for k in range(imgs.shape[0])] if one_layer else None
    if title is None:
        title = (f"First-layer weights: {imgs.shape[0]} {kind}" +
                 (" (one per digit)" if one_layer else "") + f", {imgs.shape[1]}x{imgs.shape[2]}")
    return image_grid(imgs, titles, symmetric=True, vmax=vmax, colorbar=True,
                      colorbar_label="weight", suptitle=title, fig=fig,
                      figsize=figsize, cell=1.4 if titles else 1.0, fontsize=10)


def weight_decay_comparison(models: Sequence[Any], titles: Sequence[str],
                            shared_scale: bool = False,
                            figsize: Optional[Sequence[float]] = None) -> Any:
    """First-layer weights of several models side by side (e.g. without / with weight decay).

    Each panel has its own symmetric scale (the decayed weights are smaller; the
    point is their shape) unless ``shared_scale``.
    """
    imgs = [first_layer_images(m) for m in models]
    vmax = max(float(np.abs(i).max()) for i in imgs) if shared_scale else None
    fig = new_figure(figsize or (5.4 * len(models), 4.6), layout="constrained")
    subs = fig.subfigures(1, len(models), wspace=0.04)
    for sub, model, t in zip(np.atleast_1d(subs), models, titles):
        first_layer_weights(model, title=t, vmax=vmax, fig=sub)
    return fig


# --- 6. confusion matrix and confident mistakes -----------------------------------------
def confusion_counts(model: Any, images: Any, labels: Any, probs: Any = None) -> np.ndarray:
    """``counts[true, predicted]`` over the images, computed on the backend (host result)."""
    c = model.num_classes
    xp = model.backend.xp
    probs = probabilities(model, images) if probs is None else model.backend.asarray(probs)
    pred = probs.argmax(axis=1).astype(xp.int64)
    y = _labels_on(model, labels)
    return host(xp.bincount(y * c + pred, minlength=c * c).reshape(c, c))


def confusion_matrix(model: Any, images: Any, labels: Any,
                     class_names: Optional[Sequence[str]] = None, probs: Any = None,
                     figsize: Optional[Sequence[float]] = None) -> Any:
    """Counts of (true, predicted) pairs, coloured by the share of each true class.

    ``probs``: the model's probabilities for ``images`` if already computed.
    """
    from matplotlib.colors import PowerNorm
    counts = confusion_counts(model, images, labels, probs)
    c = counts.shape[0]
    names = list(class_names) if class_names is not None else [str(k) for k in range(c)]
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = new_figure(figsize or (6.4, 5.6), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(share, cmap="Blues", norm=PowerNorm(0.35, vmin=0, vmax=1))
    for i in range(c):
        for j in range(c):
            if counts[i, j]:
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else
                        (MISTAKE if i != j else "black"))
    ax.set_xticks(range(c), names)
    ax.set_yticks(range(c), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(f"Confusion matrix on {counts.sum()} test images "
                 f"(accuracy {100 * acc:.2f}%)")
    fig.colorbar(im, ax=ax, label="share of the true class", shrink=0.85)
    return fig


def confident_mistakes(model: Any, images: Any, labels: Any, n: int = 25,
                       ncols: Optional[int] = None, probs: Any = None,
                       figsize: Optional[Sequence[float]] = None) -> Any:
    """The ``n`` wrong predictions the model was surest of, most confident first.

    ``probs``: the model's probabilities for ``images`` if already computed.
    """
    xp = model.backend.xp
    probs = probabilities(model, images) if probs is None else model.backend.asarray(probs)
    y = _labels_on(model, labels)
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    score = xp.where(pred != y, conf, -1.0)
    order = xp.argsort(-score)[:n]
    keep = host(score[order] >= 0)
    idx = host(order)[keep]
    p, t, cf = host(pred[order])[keep], host(y[order])[keep], host(conf[order])[keep]
    n_wrong = int(host((pred != y).sum()))
    b = model.backend
    picked = images[b.asarray(idx)] if b.is_array(images) else host(images)[idx]
    titles = [f"{a} ({100 * q:.0f}%)\ntrue {b}" for a, b, q in zip(p, t, cf)]
    if not len(idx):
        picked, titles = np.zeros((1,) + tuple(picked.shape[1:])), ["no mistakes"]
    return image_grid(picked, titles, colors=[MISTAKE] * len(idx) or None, ncols=ncols,
                      cell=1.3, figsize=figsize, fontsize=8,
                      suptitle=f"The {len(idx)} most confident of {n_wrong} mistakes "
                               "(predicted, confidence, true label)")

"""Learning curves from a training History (or the ``history`` in metrics.json)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .base import new_figure

TRAIN, TEST = "#1f77b4", "#ff7f0e"


def history_dict(history: Any) -> dict[str, list]:
    """A History, its dict, a metrics.json dict (with "history") or a path to metrics.json."""
    if isinstance(history, (str, os.PathLike)):
        history = json.loads(Path(history).read_text())
    if hasattr(history, "to_dict"):
        history = history.to_dict()
    if isinstance(history, Mapping) and "history" in history:
        history = history["history"]
    if not isinstance(history, Mapping):
        raise TypeError(f"expected a History, a dict or a metrics.json path, got {type(history).__name__}")
    return {k: list(v) for k, v in history.items()}


def learning_curves(history: Any, batches_per_epoch: Optional[int] = None,
                    title: Optional[str] = None,
                    figsize: Optional[Sequence[float]] = None) -> Any:
    """Accuracy and loss, train and test, against the number of training batches.

    Uses the ``curve_*`` series (recorded every ``eval_every`` batches); the
    per-epoch values are added as markers when ``batches_per_epoch`` is known. A
    history without curve points is drawn per epoch.
    """
    h = history_dict(history)
    fig = new_figure(figsize or (11.0, 4.2), layout="constrained")
    ax_acc, ax_loss = fig.subplots(1, 2)
    x = h.get("curve_batches") or []
    if x:
        xlabel = "training batches"
        for ax, key in ((ax_acc, "accuracy"), (ax_loss, "loss")):
            _line(ax, x, h.get(f"curve_train_{key}"), TRAIN, "train (subset)")
            _line(ax, x, h.get(f"curve_test_{key}"), TEST, "test (subset)")
        if batches_per_epoch and h.get("epoch"):
            ex = [e * batches_per_epoch for e in h["epoch"]]
            _line(ax_acc, ex, h.get("train_accuracy"), TRAIN, "train, end of epoch", "o")
            _line(ax_acc, ex, h.get("test_accuracy"), TEST, "test, end of epoch", "o")
            _line(ax_loss, ex, h.get("test_loss"), TEST, "test, end of epoch", "o")
    else:
        xlabel = "epoch"
        ex = h.get("epoch") or []
        _line(ax_acc, ex, h.get("train_accuracy"), TRAIN, "train", "o-")
        _line(ax_acc, ex, h.get("test_accuracy"), TEST, "test", "o-")
        _line(ax_loss, ex, h.get("train_loss"), TRAIN, "train (running mean)", "o-")
        _line(ax_loss, ex, h.get("test_loss"), TEST, "test", "o-")
    ax_acc.set_ylabel("accuracy")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_acc.set_title("Accuracy")
    ax_loss.set_title("Loss")
    accs = (h.get("curve_train_accuracy") or []) + (h.get("curve_test_accuracy") or []) \
        + (h.get("train_accuracy") or []) + (h.get("test_accuracy") or [])
    if accs and min(accs) > 0.5:
        ax_acc.set_ylim(max(0.5, min(accs) - 0.02), 1.0 + 0.005)
    for ax in (ax_acc, ax_loss):
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def _line(ax: Any, x: Sequence, y: Optional[Sequence], color: str, label: str,
          style: str = "-") -> None:
    """Plot ``y`` against ``x`` (matplotlib format ``style``: "-", "o" or "o-"); skip if empty."""
    if not y:
        return
    n = min(len(x), len(y))
    ax.plot(list(x)[:n], list(y)[:n], style, color=color, label=label, markersize=5)

"""What a training step refused and why: a cost that is not finite (see Optimizer.minimize)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping

from .backends.host import to_numpy
from .errors import FeedError, NumericsError

if TYPE_CHECKING:
    from .optim import Optimizer


class NonFiniteCostError(NumericsError):
    """A training step's cost was NaN or inf; the weights and optimizer state are unchanged."""

    def __init__(self, message: str, cost: float = math.nan) -> None:
        super().__init__(message)
        self.cost = cost


def non_finite_message(opt: "Optimizer", graph: Any, feed: Mapping[Any, Any], cost: float) -> str:
    """Why a step was refused: the cost, the step, and the culprit where one can be named (a
    class label out of range, a fed input holding NaN/inf)."""
    name = getattr(getattr(graph, "cost", None), "name", None)
    culprit = _bad_label(graph, feed) or next(
        (f"input {getattr(node, 'name', node)!r} holds {bad}" for node, value in feed.items()
         for bad in [_non_finite(value)] if bad), None)
    hint = culprit or ("lower the learning rate, or pass check_numerics=True to the graph to "
                       "name the first node producing it")
    return (f"the cost {name!r} is {cost} at step {opt.steps + 1} of {type(opt).__name__}; the "
            f"weights and the optimizer's state are left unchanged: {hint}")


def _bad_label(graph: Any, feed: Mapping[Any, Any]) -> str:
    """The first class label fed out of the range of the loss reading it (the class count
    found by running the logits where the graph did not know it when built), else ''."""
    from .ops.losses import check_fed_labels
    for node in getattr(getattr(graph, "ref", None), "order", ()):
        if getattr(node, "op", None) != "softmax_cross_entropy":
            continue
        logits, labels = node.inputs
        value = feed.get(labels, feed.get(getattr(labels, "name", None)))
        if value is None:
            continue
        try:
            classes = graph.values(feed, [logits])[0].shape[-1]
            check_fed_labels(to_numpy(value), classes, labels.name, node.name)
        except FeedError as exc:
            return str(exc)
        except Exception:  # noqa: BLE001 (only an explanation is lost)
            continue
    return ""


def _non_finite(value: Any) -> str:
    """'NaN or inf at position k' for a host floating array holding one, else ''."""
    host = to_numpy(value) if hasattr(value, "dtype") else None
    if host is None or host.dtype.kind != "f" or host.size == 0:
        return ""
    flat = host.reshape(-1)
    bad = (flat != flat) | (abs(flat) == float("inf"))
    if not bad.any():
        return ""
    k = int(bad.argmax())
    return f"{flat[k]} at flat position {k}"

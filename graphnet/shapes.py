"""Static shape inference (``None`` = unknown size) and gradient reduction for broadcasting."""
from __future__ import annotations

from typing import Any, Optional, Sequence

from .errors import ShapeError

Shape = Optional[tuple]


def describe(node: Any) -> str:
    """``'name' (shape)`` for error messages."""
    return f"{node.name!r} {fmt(node.shape)}"


def fmt(shape: Shape) -> str:
    if shape is None:
        return "(shape unknown)"
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def broadcast(op: str, a: Any, b: Any) -> Shape:
    """The broadcast shape of two nodes, or ShapeError naming both."""
    sa, sb = a.shape, b.shape
    if sa is None or sb is None:
        return None
    out = []
    for i in range(1, max(len(sa), len(sb)) + 1):
        da = sa[-i] if i <= len(sa) else 1
        db = sb[-i] if i <= len(sb) else 1
        if da == 1:
            out.append(db)
        elif db == 1:
            out.append(da)
        elif da is None or db is None:
            out.append(da if db is None else db)
        elif da == db:
            out.append(da)
        else:
            raise ShapeError(f"{op}: cannot broadcast {describe(a)} with {describe(b)} "
                             f"(axis {-i}: {da} vs {db})")
    return tuple(reversed(out))


def reduce_shape(shape: Shape, axis: Any, keepdims: bool, who: Any) -> Shape:
    """Shape after reducing ``axis`` (None = all)."""
    if shape is None:
        return None if axis is not None or keepdims else ()
    axes = normalize_axes(axis, len(shape), who)
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def normalize_axes(axis: Any, ndim: int, who: Any) -> tuple:
    """Axis argument as a sorted tuple of non-negative ints, checked against ``ndim``."""
    if axis is None:
        return tuple(range(ndim))
    axes = (int(axis),) if hasattr(axis, "__index__") else tuple(int(a) for a in axis)
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ShapeError(f"axis {a} is out of range for {describe(who)} of rank {ndim}")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ShapeError(f"axis {axis!r} names one axis twice for {describe(who)} of rank {ndim}")
    return tuple(sorted(out))


def sum_to(g: Any, shape: Sequence[int]) -> Any:
    """Sum ``g`` over the axes that broadcasting added, so it gets ``shape``."""
    shape = tuple(shape)
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    if lead:
        g = g.sum(axis=tuple(range(lead)))
    kept = tuple(i for i, d in enumerate(shape) if d == 1 and g.shape[i] != 1)
    if kept:
        g = g.sum(axis=kept, keepdims=True)
    return g


def known_size(shape: Shape) -> Optional[int]:
    """Number of elements, or None where any size is unknown."""
    if shape is None or any(d is None for d in shape):
        return None
    n = 1
    for d in shape:
        n *= d
    return n

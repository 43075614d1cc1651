"""Shape manipulation: reshape, flatten, indexing by slice, concatenation."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..backends.host import to_numpy
from ..checks import integer
from ..errors import ArgumentError, ArgumentTypeError, ShapeError
from ..node import Node, as_node
from ..shapes import describe, known_size


class Reshape(Node):
    op = "reshape"

    def __init__(self, x: Any, shape: Sequence[int]) -> None:
        x = as_node(x)
        if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
            raise ArgumentTypeError(f"reshape of {describe(x)}: the shape must be a tuple of ints, "
                                    f"got {shape!r}")
        self.target = tuple(integer(d, f"reshape size {k}", -1) for k, d in enumerate(shape))
        if sum(d == -1 for d in self.target) > 1:
            raise ShapeError(f"reshape of {describe(x)}: only one size may be -1, got {self.target}")
        n_in, n_out = known_size(x.shape), known_size(self.target)
        if n_in is not None and n_out is not None and -1 not in self.target and n_in != n_out:
            raise ShapeError(f"cannot reshape {describe(x)} ({n_in} elements) to {self.target}")
        out = tuple(None if d == -1 else d for d in self.target)
        if n_in is not None and -1 in self.target:
            rest = -known_size(self.target)  # product of the others (the -1 counted once)
            if rest == 0 or n_in % rest:
                raise ShapeError(f"cannot reshape {describe(x)} ({n_in} elements) to {self.target}")
            out = tuple(n_in // rest if d == -1 else d for d in self.target)
        super().__init__((x,), shape=out)

    def forward(self, ctx, x):
        return x.reshape(self.target)

    def backward(self, ctx, g, xs, y):
        return (g.reshape(xs[0].shape),)


class Flatten(Node):
    """Keep the first axis, join the rest: (N, ...) -> (N, prod(...))."""

    op = "flatten"

    def __init__(self, x: Any) -> None:
        x = as_node(x)
        shape = None
        if x.shape is not None:
            if len(x.shape) < 2:
                raise ShapeError(f"flatten needs rank 2 or more, got {describe(x)}")
            shape = (x.shape[0], known_size(x.shape[1:]))
        super().__init__((x,), shape=shape)

    def forward(self, ctx, x):
        return x.reshape(x.shape[0], int(np.prod(x.shape[1:])))  # -1 is ambiguous for 0 images

    def backward(self, ctx, g, xs, y):
        return (g.reshape(xs[0].shape),)


class GetItem(Node):
    """``x[index]`` for ints, slices, Ellipsis, None and integer index arrays.

    Index arrays are constants, kept on the host: every position is checked against the
    input's shape (at build time where the shape is known, else at run time from the
    shape alone, with no device synchronisation), so an out-of-range position is an error
    on every backend; CuPy alone would wrap it round silently.
    """

    op = "getitem"

    def __init__(self, x: Any, index: Any) -> None:
        x = as_node(x)
        index = _host_index(index)
        self.index = index
        self._basic = _is_basic(index)
        self._ranges = _array_ranges(index)
        if not self._basic and x.shape is not None:
            _check_positions(self._ranges, index, x.shape, ShapeError, describe(x))
        super().__init__((x,), shape=_index_shape(x, index) if self._basic else None)

    def forward(self, ctx, x):
        if self._ranges:
            _check_positions(self._ranges, self.index, x.shape, IndexError,
                              describe(self.inputs[0]))
        return x[self.index]

    def backward(self, ctx, g, xs, y):
        out = ctx.xp.zeros(xs[0].shape, dtype=g.dtype)
        if self._basic:
            out[self.index] = g
        else:
            ctx.b.scatter_add(out, self.index, g)
        return (out,)


_MASK_ADVICE = ("boolean masks are not supported (the result's shape would depend on the data): "
                "multiply by the mask as a 0/1 float array instead (x * mask), or index with the "
                "integer positions computed on the host (x[np.flatnonzero(mask)])")


def _host_index(index: Any) -> Any:
    """``index`` checked, with its lists and arrays as host integer arrays (NumPy would reject
    the refused items only at run time: floats, strings, masks, nodes)."""
    items = index if isinstance(index, tuple) else (index,)
    out = tuple(_host_item(it, index) for it in items)
    return out if isinstance(index, tuple) else out[0]


def _host_item(it: Any, index: Any) -> Any:
    if it is None or it is Ellipsis:
        return it
    if isinstance(it, Node):
        raise ArgumentTypeError(f"index {index!r} holds a node: indexing by values computed in "
                                f"the graph is not supported; index with integer positions "
                                f"known when the graph is built")
    if isinstance(it, slice):
        for part in (it.start, it.stop, it.step):
            if part is not None:
                integer(part, f"slice bound in index {index!r}")
        if it.step == 0:
            raise ArgumentError(f"slice step cannot be zero in index {index!r}")
        return it
    if hasattr(it, "dtype") or isinstance(it, list):
        arr = np.asarray(to_numpy(it))  # a device array: one copy home, here at build time
        if arr.dtype.kind == "b":
            raise ArgumentTypeError(f"index {index!r}: {_MASK_ADVICE}")
        if arr.dtype.kind not in "iu" and not (isinstance(it, list) and arr.size == 0):
            raise ArgumentTypeError(f"index arrays must hold integers, got dtype {arr.dtype} "
                                    f"in {index!r}")
        return int(arr) if arr.ndim == 0 else arr.astype(np.intp, copy=False)
    return integer(it, f"index item in {index!r}")


def _array_ranges(index: Any) -> list[tuple[int, int, int]]:
    """``(item position, lowest, highest)`` of each non-empty index array in ``index``."""
    items = index if isinstance(index, tuple) else (index,)
    return [(k, int(it.min()), int(it.max())) for k, it in enumerate(items)
            if isinstance(it, np.ndarray) and it.size]


def _check_positions(ranges: list, index: Any, shape: tuple, error: type, what: str) -> None:
    """Raise ``error`` if an index array reaches outside its axis of ``shape`` (host only)."""
    items = index if isinstance(index, tuple) else (index,)
    axes = _item_axes(items, len(shape))
    for k, lo, hi in ranges:
        axis = axes[k]
        size = shape[axis] if axis is not None and axis < len(shape) else None
        if size is None:
            continue
        bad = hi if hi >= size else lo if lo < -size else None
        if bad is not None:
            raise error(f"index array in {index!r} holds position {bad}, out of range for axis "
                        f"{axis} of size {size} of {what} (valid: {-size} to {size - 1})")


def _item_axes(items: tuple, ndim: int) -> list:
    """The input axis each index item reads (None for None and Ellipsis)."""
    n_real = sum(1 for i in items if i is not None and i is not Ellipsis)
    axes, axis = [], 0
    for it in items:
        if it is Ellipsis:
            axes.append(None)
            axis += max(ndim - n_real, 0)
        elif it is None:
            axes.append(None)
        else:
            axes.append(axis)
            axis += 1
    return axes


def _is_basic(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, slice)) or i is None or i is Ellipsis for i in items)


def _index_shape(x: Node, index: Any) -> Any:
    if x.shape is None:
        return None
    items = list(index) if isinstance(index, tuple) else [index]
    if sum(1 for i in items if i is Ellipsis) > 1:
        raise ShapeError(f"an index can only have one Ellipsis (...), got {index!r} "
                         f"for {describe(x)}")
    n_real = sum(1 for i in items if i is not None and i is not Ellipsis)
    if n_real > len(x.shape):
        raise ShapeError(f"too many indices ({n_real}) for {describe(x)}")
    if Ellipsis in items:
        k = items.index(Ellipsis)
        items[k:k + 1] = [slice(None)] * (len(x.shape) - n_real)
    items += [slice(None)] * (len(x.shape) - sum(1 for i in items if i is not None))
    out, axis = [], 0
    for it in items:
        if it is None:
            out.append(1)
            continue
        size = x.shape[axis]
        axis += 1
        if isinstance(it, slice):
            out.append(None if size is None else len(range(*it.indices(size))))
        elif size is not None and not -size <= it < size:
            raise ShapeError(f"index {it} is out of range for axis {axis - 1} of {describe(x)}")
    return tuple(out)


class Concat(Node):
    op = "concat"

    def __init__(self, nodes: Sequence[Any], axis: int = 0) -> None:
        if isinstance(nodes, (Node, str)) or not isinstance(nodes, (list, tuple)):
            raise ArgumentTypeError(f"concat takes a list of nodes, got {type(nodes).__name__}")
        nodes = [as_node(n) for n in nodes]
        if not nodes:
            raise ShapeError("concat needs at least one node")
        self.axis = integer(axis, "concat axis")
        super().__init__(nodes, shape=_concat_shape(nodes, axis))

    def forward(self, ctx, *xs):
        return ctx.xp.concatenate(xs, axis=self.axis)

    def backward(self, ctx, g, xs, y):
        bounds, start = [], 0
        for x in xs[:-1]:
            start += x.shape[self.axis]
            bounds.append(start)
        return tuple(ctx.xp.split(g, bounds, axis=self.axis))


def _concat_shape(nodes: list, axis: int) -> Any:
    shapes = [n.shape for n in nodes]
    if any(s is None for s in shapes):
        return None
    rank = len(shapes[0])
    if not -rank <= axis < rank:
        raise ShapeError(f"concat axis {axis} is out of range for {describe(nodes[0])}")
    ax = axis % rank
    total = 0
    for n in nodes:
        if len(n.shape) != rank:
            raise ShapeError(f"concat: {describe(n)} has rank {len(n.shape)}, "
                             f"{describe(nodes[0])} has rank {rank}")
        for i, (d0, d) in enumerate(zip(shapes[0], n.shape)):
            if i != ax and d0 is not None and d is not None and d0 != d:
                raise ShapeError(f"concat along axis {axis}: {describe(nodes[0])} and "
                                 f"{describe(n)} differ on axis {i}")
        total = None if total is None or n.shape[ax] is None else total + n.shape[ax]
    return tuple(total if i == ax else d for i, d in enumerate(shapes[0]))


def reshape(x: Any, shape: Sequence[int]) -> Node:
    """``x`` with a new shape of the same size (one entry may be -1)."""
    return Reshape(x, shape)


def flatten(x: Any) -> Node:
    """(N, ...) -> (N, prod(...))."""
    return Flatten(x)


def getitem(x: Any, index: Any) -> Node:
    """``x[index]``."""
    return GetItem(x, index)


def concat(nodes: Sequence[Any], axis: int = 0) -> Node:
    """Join nodes along an existing axis."""
    return Concat(nodes, axis)

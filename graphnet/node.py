"""Graph nodes: the base class with its operators, and the three kinds of leaf."""
from __future__ import annotations

import functools
import itertools
from typing import Any, Callable, Optional, Sequence

import numpy as np

from . import dtypes
from .backends import Backend, backend
from .backends.host import array_library, dtype_of, is_floating, result_dtype, to_numpy
from .checks import flag, integer
from .errors import ArgumentError, ArgumentTypeError, FeedError, GraphError, ShapeError
from .kernels import KernelTable, implementations
from .shapes import Shape, fmt

_ids = itertools.count()


class RunContext:
    """What an op sees while it runs: the backend ``b``, its array namespace ``xp``,
    ``training``, and the run's per-run state.

    ``kernels`` is the backend's kernel table (``ctx.kernels[k](ctx.b, ...)`` runs kernel
    ``k``'s version for this backend). ``rng_key`` is the run's key for random ops (None:
    the backend's own generator) and ``key`` the running node's position in the graph's
    order. In backward, ``needs`` says per input whether it needs a gradient (None: all).
    ``backward`` is False in a forward pass that no backward follows (``Graph.run``,
    ``Graph.values``): an op may then skip what only its backward reads. The reference
    executor uses this class as it is: :meth:`empty` gives a new array and
    :meth:`grad_out` offers nothing. The step planner's context
    (``graphnet.planner.StepContext``) hands out arrays reused from step to step instead.
    """

    __slots__ = ("b", "xp", "kernels", "training", "needs", "key", "rng_key", "backward",
                 "_saved")

    def __init__(self, b: Backend, training: bool, rng_key: Optional[tuple] = None,
                 saved: Optional[dict] = None, kernels: Optional[KernelTable] = None,
                 backward: bool = True) -> None:
        self.b = b
        self.backward = backward
        self.xp = b.xp
        self.kernels = implementations(b.name) if kernels is None else kernels
        self.training = training
        self.rng_key = rng_key
        self._saved = {} if saved is None else saved
        self.needs: Optional[tuple] = None
        self.key = 0

    def empty(self, shape: tuple, dtype: Any, slot: int = 0) -> Any:
        """An uninitialised array for the running node's output number ``slot``."""
        return self.xp.empty(shape, dtype)

    def grad_out(self, k: int, dtype: Any) -> Any:
        """An array to write input ``k``'s gradient (of ``dtype``) into, or None."""
        return None

    def save(self, value: Any) -> None:
        """Keep ``value`` for the running node's backward in this run."""
        self._saved[self.key] = value

    def saved(self) -> Any:
        """What the running node's forward kept with :meth:`save` in this run (or None)."""
        return self._saved.get(self.key)


class Node:
    """A vertex of a computational graph: an op applied to input nodes.

    The op contract (docs/architecture.md has the longer version):

    - ``forward(ctx, *xs)`` gets the inputs' values (backend arrays) and returns the
      output's value. It must not modify its inputs.
    - ``backward(ctx, g, xs, y)`` gets the gradient ``g`` of the cost with respect to the
      output, the inputs' values ``xs`` and the output ``y``, and returns a tuple with one
      gradient per input (None where ``ctx.needs[k]`` is false or there is none). It may
      return ``g`` itself; the engine never writes into an array it did not get offered.
    - Arrays: ``ctx.empty(shape, dtype, slot)`` is where an op may put its output (or a
      second array, ``slot`` 1, 2...); in a training step it is the same array every step,
      so it must be fully written and must not be kept beyond the run. In backward,
      ``ctx.grad_out(k, dtype)`` is an array offered for input ``k``'s gradient, or None;
      an op opts in by writing the gradient there (``out=``) and returning that very
      array, which tells the engine the array is the input's own.
    - Per-run state (a dropout mask, softmax probabilities) goes through ``ctx.save`` in
      forward and ``ctx.saved()`` in backward, never onto the node: nodes are shared
      between graphs and runs.
    - Kernels: an op calls its arithmetic through ``ctx.xp`` or a named kernel function;
      a backend may override a kernel (see docs/architecture.md).
    """

    op = "node"
    __array_ufunc__ = None  # make ``ndarray + node`` defer to Node.__radd__

    def __init__(self, inputs: Sequence["Node"] = (), name: Optional[str] = None,
                 shape: Shape = None, dtype: Any = None) -> None:
        self.id = next(_ids)
        self.inputs = tuple(inputs)
        self.name = name or f"{self.op}_{self.id}"
        self.shape = shape
        self.dtype = dtype if dtype is not None else _infer_dtype(self.inputs)

    def forward(self, ctx: Any, *xs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, ctx: Any, g: Any, xs: tuple, y: Any) -> tuple:
        raise NotImplementedError(f"{type(self).__name__} has no gradient")

    @property
    def ndim(self) -> Optional[int]:
        return None if self.shape is None else len(self.shape)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {fmt(self.shape)}>"

    __hash__ = object.__hash__

    # --- operators (each builds a new node) ---------------------------------------
    def __add__(self, other: Any) -> "Node":
        return _ops().add(self, other)

    def __radd__(self, other: Any) -> "Node":
        return _ops().add(other, self)

    def __sub__(self, other: Any) -> "Node":
        return _ops().sub(self, other)

    def __rsub__(self, other: Any) -> "Node":
        return _ops().sub(other, self)

    def __mul__(self, other: Any) -> "Node":
        return _ops().mul(self, other)

    def __rmul__(self, other: Any) -> "Node":
        return _ops().mul(other, self)

    def __truediv__(self, other: Any) -> "Node":
        return _ops().div(self, other)

    def __rtruediv__(self, other: Any) -> "Node":
        return _ops().div(other, self)

    def __neg__(self) -> "Node":
        return _ops().neg(self)

    def __pow__(self, exponent: float) -> "Node":
        return _ops().power(self, exponent)

    def __matmul__(self, other: Any) -> "Node":
        return _ops().matmul(self, other)

    def __rmatmul__(self, other: Any) -> "Node":
        return _ops().matmul(other, self)

    def __getitem__(self, index: Any) -> "Node":
        return _ops().getitem(self, index)

    @property
    def T(self) -> "Node":
        return _ops().transpose(self)

    def reshape(self, *shape: Any) -> "Node":
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _ops().reshape(self, shape)

    def sum(self, axis: Any = None, keepdims: bool = False) -> "Node":
        return _ops().sum(self, axis, keepdims)

    def mean(self, axis: Any = None, keepdims: bool = False) -> "Node":
        return _ops().mean(self, axis, keepdims)


def _ops() -> Any:
    from . import ops
    return ops


def _infer_dtype(inputs: Sequence[Node]) -> Any:
    """The promoted dtype of the inputs where any is floating (Python scalars stay weak)."""
    known = [n.dtype for n in inputs if n.dtype is not None]
    return result_dtype(*known) if any(is_floating(d) for d in known) else None


class Input(Node):
    """A value fed at run time: ``graph.run({x: array})``.

    ``shape`` may use None for sizes known only at run time (the batch);
    ``dtype`` defaults to the default float dtype; integer inputs (labels) say so.
    """

    op = "input"

    def __init__(self, name: Optional[str] = None, shape: Shape = None, dtype: Any = None) -> None:
        if name is not None and not isinstance(name, str):
            raise ArgumentTypeError(f"Input name must be a string, got {name!r}")
        super().__init__((), name, _input_shape(name, shape), _input_dtype(name, dtype))
        #: reader's name -> its check of each host array fed here, before any transfer
        #: (e.g. softmax_cross_entropy's: class indices in range)
        self.host_checks: dict[str, Callable[[np.ndarray], None]] = {}

    def check_feed(self, b: Backend, value: Any) -> Any:
        """The fed value as an array of ``b`` with this input's dtype, or FeedError.

        Host (NumPy) arrays, lists and scalars are welcome on every backend and are
        copied to the device once here; arrays of another device library are refused.
        Host arrays pass :attr:`host_checks` (device arrays do not: that would wait).
        """
        if type(value) is not b.xp.ndarray:  # the fast path: already a plain backend array
            value = self._to_array(b, value)
        elif self.host_checks and type(value) is np.ndarray:  # the host backend
            self._check_host(value)
        if value.dtype != self.dtype:
            value = self._convert(value)
            if not b.is_array(value):
                value = b.asarray(value)  # a host array converted on the host: one copy over
        if self.shape is not None:
            got = value.shape
            if len(got) != len(self.shape) or any(got[axis] != want for axis, want in self._fixed):
                self._shape_error(got)
        return value

    def _to_array(self, b: Backend, value: Any) -> Any:
        """A plain array (of ``b``, or a host array still to convert) for a value of another type."""
        if b.is_array(value):  # a subclass of the backend's array type
            _refuse_subclass(f"input {self.name!r}", value)
            return value
        if _belongs_elsewhere(value, b):
            raise FeedError(f"input {self.name!r} was fed a {type(value).__module__}."
                            f"{type(value).__name__}, "
                            f"but the graph runs on the {b.name!r} backend: "
                            f"convert it with gn.to_numpy(x) (or gn.asarray(x)) first")
        if isinstance(value, np.ndarray):
            _refuse_subclass(f"input {self.name!r}", value)
            host = value
        else:
            try:
                host = np.asarray(value)
            except (ValueError, TypeError) as exc:
                raise FeedError(f"input {self.name!r} was fed a {type(value).__name__} that is not "
                                f"a regular array (ragged nesting or mixed types?): {exc}") from None
        if host.dtype.kind not in "biuf":
            raise FeedError(f"input {self.name!r} needs numbers, got dtype {host.dtype}"
                            + (" (a ragged or mixed list?)" if host.dtype.kind == "O" else ""))
        if self.host_checks:
            self._check_host(host)
        return host if host.dtype != self.dtype else b.asarray(host)

    def _check_host(self, host: np.ndarray) -> None:
        for check in self.host_checks.values():
            check(host)

    @functools.cached_property
    def _fixed(self) -> tuple:
        """``(axis, size)`` for the axes whose size this input fixes."""
        return tuple((a, n) for a, n in enumerate(self.shape or ()) if n is not None)

    def _convert(self, value: Any) -> Any:
        kind = value.dtype.kind
        if is_floating(self.dtype):
            if kind not in "f":
                raise FeedError(f"input {self.name!r} needs floating values, got dtype {value.dtype}"
                                + (" (scale or cast integer data, e.g. x.astype('float32') / 255)"
                                   if kind in "iub" else ""))
            return value.astype(self.dtype)
        if kind not in "iu":
            raise FeedError(f"input {self.name!r} needs integer values, got dtype {value.dtype}")
        return value

    def _shape_error(self, got: tuple) -> None:
        if len(got) != len(self.shape):
            raise FeedError(f"input {self.name!r} expects rank {len(self.shape)} "
                            f"{fmt(self.shape)}, got shape {tuple(got)}")
        for axis, want in self._fixed:
            if got[axis] != want:
                raise FeedError(f"input {self.name!r} expects size {want} on axis {axis} "
                                f"{fmt(self.shape)}, got shape {tuple(got)}")


def _input_shape(name: Optional[str], shape: Any) -> Shape:
    """A declared input shape: None, or a tuple of sizes (ints >= 0, or None for unknown)."""
    if shape is None:
        return None
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list)):
        raise ArgumentTypeError(f"Input {name!r} shape must be a tuple of sizes (None for "
                                f"unknown), got {shape!r}")
    return tuple(None if d is None else integer(d, f"Input {name!r} shape[{k}]", 0)
                 for k, d in enumerate(shape))


def _input_dtype(name: Optional[str], dtype: Any) -> Any:
    """A declared input dtype: real numbers only (float for data, int for labels)."""
    if dtype is None:
        return dtypes.get_default_dtype()
    try:
        dt = dtype_of(dtype)
    except TypeError:
        raise ArgumentTypeError(f"Input {name!r} dtype {dtype!r} is not a dtype") from None
    if dt.kind not in "iuf":
        raise ArgumentError(f"Input {name!r} dtype must be a float or integer type, got {dt}")
    return dt


def _belongs_elsewhere(value: Any, b: Backend) -> bool:
    """Whether ``value`` is an array of a device library other than ``b``'s (host arrays pass)."""
    root = array_library(value)
    if root == "numpy" or root == b.xp.__name__.split(".")[0]:
        return False
    return root == "cupy" or any(hasattr(value, a) for a in _FOREIGN_MARKS)


# What arrays of other libraries (CuPy, PyTorch, JAX, ...) carry and NumPy arrays do not.
_FOREIGN_MARKS = ("__array_namespace__", "__cuda_array_interface__", "__dlpack__")
_SUBCLASS_REASONS = {"matrix": "np.matrix makes * a matrix product; pass np.asarray(m)",
                     "MaskedArray": "its mask would be ignored; pass m.filled(value) or drop "
                                    "the masked rows"}


def _refuse_subclass(what: str, value: Any, error: type = FeedError) -> None:
    """Refuse array subclasses whose semantics graphnet would not honour (``what`` names the door)."""
    for cls in type(value).__mro__:
        reason = _SUBCLASS_REASONS.get(cls.__name__)
        if reason and cls.__module__.split(".")[0] == "numpy":
            raise error(f"{what} was given a {type(value).__name__}: {reason}")


class Parameter(Node):
    """A trainable array, stored on the active backend; ``.value`` reads and sets it.

    Real numbers only: integer and bool values become the default float dtype; complex,
    object and string values, ``np.matrix`` and masked arrays, and NaN or inf values
    (initial or set through ``.value``) are refused with an error naming the parameter.
    """

    op = "parameter"

    def __init__(self, value: Any, name: Optional[str] = None, trainable: bool = True) -> None:
        if name is not None and not isinstance(name, str):
            raise ArgumentTypeError(f"Parameter name must be a string, got {name!r}")
        what = f"parameter {name!r}" if name else "Parameter"
        b = backend()
        arr = _to_backend(b, value, what=what)
        if arr.dtype.kind == "f" and arr.size and not bool(b.xp.isfinite(arr).all()):
            raise ArgumentError(f"{what} has NaN or inf initial values")
        super().__init__((), name, tuple(arr.shape), arr.dtype)
        self._value = arr
        self.backend = b
        self.trainable = flag(trainable, "Parameter trainable")

    @property
    def value(self) -> Any:
        return self._value

    @value.setter
    def value(self, new: Any) -> None:
        """Set a copy of ``new``: same shape, real and finite (else an error naming this)."""
        what = f"parameter {self.name!r}"
        arr = _to_backend(self.backend, new, self.dtype, what)
        if tuple(arr.shape) != self.shape:
            raise ShapeError(f"{what} has shape {self.shape}, "
                             f"cannot set a value of shape {tuple(arr.shape)}")
        if arr.dtype.kind == "f" and arr.size and not bool(self.backend.xp.isfinite(arr).all()):
            bad = int(arr.size - self.backend.xp.count_nonzero(self.backend.xp.isfinite(arr)))
            raise ArgumentError(f"{what}: the new value holds {bad} NaN or inf "
                                f"value{'s' * (bad != 1)} out of {arr.size}")
        self._value = arr

    def set_running(self, new: Any) -> None:
        """Set a value a graph computes on this parameter's backend every step (running
        statistics): unchecked, so no device synchronisation; NaN is left for the training
        loop's divergence check to report."""
        self._value = new.astype(self.dtype, copy=False)

    def to_backend(self, b: Backend) -> None:
        """Move the value to backend ``b``."""
        self._value = b.asarray(b.to_numpy(self._value) if b is not self.backend else self._value)
        self.backend = b

    def forward(self, ctx: Any) -> Any:
        return self._value


def _to_backend(b: Backend, value: Any, dtype: Any = None, what: str = "Parameter") -> Any:
    """A fresh copy of real ``value`` on ``b``; floating data gets ``dtype`` (default: the default dtype)."""
    if not b.is_array(value):
        if array_library(value) == "cupy":
            value = to_numpy(value)
        elif not isinstance(value, np.ndarray):
            try:
                value = np.asarray(value)
            except (ValueError, TypeError) as exc:
                raise ArgumentError(f"{what}: the value is not a regular array: {exc}") from None
    _refuse_subclass(what, value, ArgumentError)
    if value.dtype.kind not in "biuf":
        raise ArgumentError(f"{what} needs real numbers (float, int or bool), got dtype "
                            f"{value.dtype}")
    arr = b.asarray(value)
    if dtype is None:
        dtype = dtypes.get_default_dtype()
    return arr.astype(dtype, copy=True)


class Constant(Node):
    """A fixed value: a Python scalar (kept weak, so it never promotes) or an array."""

    op = "constant"

    def __init__(self, value: Any, name: Optional[str] = None) -> None:
        if isinstance(value, (bool, int, float)):
            self.value = float(value)
            super().__init__((), name or repr(value), (), None)
        else:
            if not isinstance(value, np.ndarray) and array_library(value) != "cupy":
                try:
                    value = np.asarray(value)
                except (ValueError, TypeError) as exc:
                    raise ArgumentError(f"a constant is not a regular array: "
                                        f"{exc}") from None
            if isinstance(value, np.ndarray):
                _refuse_subclass("a constant", value, ArgumentError)
            if value.dtype.kind not in "biuf":
                raise ArgumentError(f"a constant needs real numbers, got dtype {value.dtype}")
            arr = backend().asarray(value)
            if is_floating(arr.dtype):
                arr = arr.astype(dtypes.get_default_dtype(), copy=False)
            self.value = arr
            super().__init__((), name, tuple(arr.shape), arr.dtype)

    def forward(self, ctx: Any) -> Any:
        return self.value


def as_node(x: Any, like: Optional[Node] = None) -> Node:
    """``x`` itself if it is a node, else a Constant holding it.

    With ``like`` (the other operand), a numeric array constant takes ``like``'s
    floating dtype, so ``x32 * np.array([1, 2])`` stays float32.
    """
    if isinstance(x, Node):
        return x
    if isinstance(x, (list, tuple)) or hasattr(x, "shape") or isinstance(x, (int, float)):
        c = Constant(x)
        if (like is not None and c.dtype is not None and c.dtype.kind in "iubf"
                and like.dtype is not None and is_floating(like.dtype) and c.dtype != like.dtype):
            c.value, c.dtype = c.value.astype(like.dtype), like.dtype
        return c
    raise GraphError(f"cannot use a {type(x).__name__} as a graph node")

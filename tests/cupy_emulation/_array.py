"""The emulated device array and the NumPy functions lifted onto it (CuPy's semantics, on the CPU).

What is emulated, because graphnet's CuPy path depends on it:
- a distinct array type (``cupy.ndarray``, not a NumPy subclass); implicit conversion to NumPy
  (``np.asarray(d)``) raises TypeError, ``.get()`` / ``cupy.asnumpy`` copy to the host;
- host NumPy arrays are refused as operands (TypeError, as CuPy says "Unsupported type");
  ``asarray``/``array`` are the transfers; Python and NumPy scalars pass;
- every reduction and scalar-producing call returns a 0-d device array, never a host scalar;
- integer-array indices are not bounds-checked: they *wrap* modulo the axis length, as CuPy
  documents for fancy indexing (``take``, ``take_along_axis``, ``cupyx.scatter_add`` likewise).
  Only for index tuples without ``None``/``Ellipsis``; others keep NumPy's checks (stricter).
Not emulated: streams and asynchrony, cuRAND's exact streams, device memory (``set_allocation_limit``
only makes large allocations raise CuPy's pool, CUDA runtime or cuBLAS out-of-memory error).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np

from ._errors import KINDS, OutOfMemoryError, allocation_error  # noqa: F401 (re-export)


_LIMIT = {"bytes": None, "error": "pool"}  # set by set_allocation_limit


def set_allocation_limit(nbytes: int | None, error: str = "pool") -> None:
    """Make every new array larger than ``nbytes`` fail (None: no limit), with the error
    of CuPy's pool (``"pool"``: OutOfMemoryError), the CUDA runtime (``"runtime"``:
    CUDARuntimeError) or cuBLAS (``"cublas"``: CUBLASError)."""
    if error not in KINDS:
        raise ValueError(f"error must be one of {KINDS}, got {error!r}")
    _LIMIT.update(bytes=nbytes, error=error)


class ndarray:  # noqa: N801 - CuPy's name
    """A device array: wraps a NumPy array that host code may not touch implicitly."""

    __slots__ = ("_a",)
    __array_priority__ = 100

    # --- conversions the way CuPy allows them ---------------------------------------
    def get(self, stream: Any = None, order: str = "C", out: Any = None,
            blocking: bool = True) -> np.ndarray:
        if out is None:
            return self._a.copy()
        if not isinstance(out, np.ndarray) or out.shape != self._a.shape or out.dtype != self._a.dtype:
            raise ValueError("out must be a numpy.ndarray of the same shape and dtype")
        np.copyto(out, self._a)  # CuPy's get(out=...): a copy into the given host array
        return out

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def __float__(self) -> float:
        return float(self._a)

    def __int__(self) -> int:
        return int(self._a)

    def __bool__(self) -> bool:
        return bool(self._a)

    def __complex__(self) -> complex:
        return complex(self._a)

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self):
        return (wrap(x) for x in self._a)

    def __repr__(self) -> str:
        return repr(self._a)

    def __str__(self) -> str:
        return str(self._a)

    def __format__(self, spec: str) -> str:
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("dlpack export is not emulated")

    # --- attributes and methods: NumPy's, lifted ------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: wrap(self._a.T))
    base = property(lambda self: None if self._a.base is None else wrap(self._a.base))
    real = property(lambda self: wrap(self._a.real))
    imag = property(lambda self: wrap(self._a.imag))

    def __getattr__(self, name: str) -> Any:
        if name not in _METHODS:
            raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r} (emulation)")
        return lift(getattr(self._a, name), owner=self)

    def __getitem__(self, index: Any) -> Any:
        return wrap(self._a[_index(index, self._a.shape)])

    def __setitem__(self, index: Any, value: Any) -> None:
        value = value if isinstance(value, ndarray) else np.asarray(value)  # CuPy copies host values
        self._a[_index(index, self._a.shape)] = unwrap(value, allow_host=True)

    # --- NumPy dispatch: np.exp(d) and np.concatenate([d]) run here, as CuPy does ----
    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        return lift(getattr(ufunc, method))(*inputs, **kwargs)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        mine = FUNCTIONS.get(func.__name__)
        if mine is None:
            return NotImplemented
        return mine(*args, **kwargs)


_METHODS = frozenset("""
all any argmax argmin argsort astype clip conj copy cumsum diagonal dot fill flatten item max mean
min nonzero prod ravel repeat reshape round sort squeeze std sum swapaxes take tolist trace
transpose var view
""".split())


def _binary(name: str, reflected: bool = False, inplace: bool = False) -> Callable:
    ufunc = getattr(np, name)

    def method(self: ndarray, other: Any) -> Any:
        if inplace:
            ufunc(self._a, unwrap(other), out=self._a, casting="same_kind")
            return self
        a, b = (other, self) if reflected else (self, other)
        return wrap(ufunc(unwrap(a), unwrap(b)))
    return method


for _dunder, _name in [("add", "add"), ("sub", "subtract"), ("mul", "multiply"),
                       ("truediv", "true_divide"), ("floordiv", "floor_divide"), ("mod", "remainder"),
                       ("pow", "power"), ("matmul", "matmul"), ("and", "bitwise_and"),
                       ("or", "bitwise_or"), ("xor", "bitwise_xor"), ("lshift", "left_shift"),
                       ("rshift", "right_shift")]:
    setattr(ndarray, f"__{_dunder}__", _binary(_name))
    setattr(ndarray, f"__r{_dunder}__", _binary(_name, reflected=True))
    setattr(ndarray, f"__i{_dunder}__", _binary(_name, inplace=True))
for _dunder, _name in [("lt", "less"), ("le", "less_equal"), ("gt", "greater"),
                       ("ge", "greater_equal"), ("eq", "equal"), ("ne", "not_equal")]:
    setattr(ndarray, f"__{_dunder}__", _binary(_name))
for _dunder, _name in [("neg", "negative"), ("pos", "positive"), ("abs", "absolute"),
                       ("invert", "invert")]:
    setattr(ndarray, f"__{_dunder}__", (lambda f: lambda self: wrap(f(self._a)))(getattr(np, _name)))
ndarray.__hash__ = None  # type: ignore[assignment]  # like CuPy: arrays are unhashable
ndarray.__module__ = "cupy"


# --- moving between the wrapped and the NumPy world -------------------------------------
def wrap(x: Any) -> Any:
    """NumPy results as device values: arrays and NumPy scalars become (0-d) device arrays."""
    if isinstance(x, np.ndarray):
        limit = _LIMIT["bytes"]
        if limit is not None and x.base is None and x.nbytes > limit:
            raise allocation_error(_LIMIT["error"], x.nbytes, limit)
        d = object.__new__(ndarray)
        d._a = x
        return d
    if isinstance(x, np.generic):
        return wrap(np.asarray(x))
    if isinstance(x, tuple):
        return tuple(wrap(v) for v in x)
    if isinstance(x, list):
        return [wrap(v) for v in x]
    return x


def unwrap(x: Any, allow_host: bool = False) -> Any:
    """Device arrays to their NumPy storage; host arrays refused unless this is a transfer."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray) and not allow_host:
        raise TypeError(f"Unsupported type {type(x)} (the CuPy emulation, like CuPy, refuses host "
                        "NumPy arrays as operands: move them with cupy.asarray first)")
    if isinstance(x, (list, tuple)):
        return type(x)(unwrap(v, allow_host) for v in x)
    return x


def _index(index: Any, shape: tuple) -> Any:
    """``index`` for NumPy, with integer-array entries wrapped modulo their axis (no bounds check)."""
    parts = index if isinstance(index, tuple) else (index,)
    parts = tuple(unwrap(p, allow_host=True) for p in parts)
    simple = all(p is not None and p is not Ellipsis for p in parts)
    if simple:
        parts = tuple(_wrap_ints(p, n) for p, n in zip(parts, shape)) + parts[len(shape):]
    return parts if isinstance(index, tuple) else parts[0]


def _wrap_ints(p: Any, n: int) -> Any:
    if isinstance(p, np.ndarray) and p.dtype.kind in "iu" and n > 0:
        return p % n
    return p


def lift(f: Callable, allow_host: bool = False, zero_d: bool = False,
         owner: ndarray | None = None) -> Callable:
    """``f`` on device arrays: arguments unwrapped (host arrays refused), results wrapped.

    A result that is one of the arguments (``out=``, ``asarray`` of a device array, a no-op
    ``astype``) comes back as that same device array object, as in CuPy.
    """
    @functools.wraps(f)
    def lifted(*args: Any, **kwargs: Any) -> Any:
        given = {id(d._a): d for d in _device_arrays((owner, args, kwargs))}
        out = f(*unwrap(args, allow_host), **{k: unwrap(v, allow_host) for k, v in kwargs.items()})
        if zero_d and isinstance(out, (bool, int, float)):
            out = np.asarray(out)
        same = given.get(id(out))
        return same if same is not None and same._a is out else wrap(out)
    return lifted


def _device_arrays(x: Any) -> list:
    if isinstance(x, ndarray):
        return [x]
    if isinstance(x, (list, tuple)):
        return [d for v in x for d in _device_arrays(v)]
    if isinstance(x, dict):
        return _device_arrays(list(x.values()))
    return []


def asnumpy(x: Any, stream: Any = None) -> np.ndarray:
    """The host copy of ``x`` (CuPy's one explicit way home)."""
    return x.get() if isinstance(x, ndarray) else np.asarray(x)


def take_along_axis(a: Any, indices: Any, axis: int) -> Any:
    """Like CuPy: out-of-range indices wrap instead of raising."""
    arr, idx = unwrap(a), unwrap(indices)
    return wrap(np.take_along_axis(arr, idx % arr.shape[axis], axis=axis))


def take(a: Any, indices: Any, axis: int | None = None, out: Any = None) -> Any:
    """Like CuPy: indices wrap (CuPy's ``take`` has no bounds check)."""
    return wrap(np.take(unwrap(a), unwrap(indices, allow_host=True), axis=axis, mode="wrap",
                        out=unwrap(out)))


def scatter_add(a: Any, slices: Any, value: Any) -> None:
    """``cupyx.scatter_add``: unbuffered ``a[slices] += value``; integer indices wrap."""
    np.add.at(unwrap(a), _index(slices, a.shape), unwrap(value))


# Functions CuPy has that graphnet (and its tests/benchmarks) call; a name missing here is a
# name the emulation does not vouch for. tests/test_cupy_emulation.py checks each against CuPy.
_TRANSFERS = "array asarray ascontiguousarray asfortranarray".split()
_ZERO_D = "count_nonzero allclose array_equal".split()
_PLAIN = """
abs absolute add all allclose amax amin any arange arccos arcsin arctan arctan2 argmax argmin
argsort array_equal around atleast_1d atleast_2d bincount broadcast_arrays broadcast_to ceil clip
concatenate copy copyto cos cosh count_nonzero cumsum diag divide dot einsum empty empty_like equal
exp expand_dims expm1 eye flip floor floor_divide full full_like greater greater_equal hstack
identity isclose isfinite isinf isnan less less_equal linspace log log1p log2 logical_and
logical_not logical_or matmul max maximum mean meshgrid min minimum mod moveaxis multiply negative
nonzero not_equal ones ones_like outer pad power prod ravel reciprocal remainder repeat reshape
rint round sign sin sinh sort split sqrt square squeeze stack std subtract sum swapaxes tanh
tensordot tile transpose tril triu true_divide unique var vstack where zeros zeros_like
""".split()

FUNCTIONS: dict[str, Callable] = {name: lift(getattr(np, name)) for name in _PLAIN}
FUNCTIONS.update({name: lift(getattr(np, name), zero_d=True) for name in _ZERO_D})
FUNCTIONS.update({name: lift(getattr(np, name), allow_host=True) for name in _TRANSFERS})
FUNCTIONS.update(take_along_axis=take_along_axis, take=take, asnumpy=asnumpy)

# Names CuPy re-exports from NumPy unchanged (dtypes, constants, type queries).
PASSTHROUGH = """
bool_ complex64 complex128 dtype e euler_gamma finfo float16 float32 float64 iinfo inf int8
int16 int32 int64 intp issubdtype can_cast nan newaxis pi promote_types result_type uint8 uint16
uint32 uint64 uintp number floating integer signedinteger unsignedinteger generic
""".split()

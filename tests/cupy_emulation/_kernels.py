"""``cupy.ElementwiseKernel`` on the CPU: the kernel's C body, compiled by the host C++ compiler.

The body runs inside a loop over ``i`` with CuPy's variable conventions: each non-raw input is a
``const T &`` to its element, each non-raw output a ``T &``, raw parameters are pointers, scalars
are values of their declared type. Compiled libraries are cached by source hash, so a kernel is
compiled once per machine (``GRAPHNET_EMULATION_CACHE`` or a per-user temp folder).
While ``RECORD`` is a list, each launch appends ``(kernel, argument signature)`` to it (the NVRTC
tests compile exactly those launches).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._array import ndarray, unwrap, wrap

C_TYPES = {"bool": "bool", "int8": "signed char", "int16": "short", "int32": "int",
           "int64": "long long", "uint8": "unsigned char", "uint16": "unsigned short",
           "uint32": "unsigned int", "uint64": "unsigned long long", "float16": "_Float16",
           "float32": "float", "float64": "double"}

# CUDA device functions a kernel body may call, for the host.
PRELUDE = r"""
#include <cmath>
#include <cstddef>
#include <cstdint>
using std::sqrt; using std::exp; using std::log; using std::tanh; using std::fabs;
using std::isnan; using std::isinf; using std::isfinite; using std::floor; using std::ceil;
template <class A> static inline A min(A a, A b) { return b < a ? b : a; }
template <class A> static inline A max(A a, A b) { return a < b ? b : a; }
template <class A> static inline A rsqrt(A a) { return A(1) / std::sqrt(a); }
template <class A> static inline A atomicAdd(A *p, A v) { A old = *p; *p = old + v; return old; }
static inline unsigned int __umulhi(unsigned int a, unsigned int b) {
    return (unsigned int)(((unsigned long long)a * b) >> 32); }
static inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64); }
"""


@dataclass(frozen=True)
class Param:
    """One parameter of a kernel: ``[raw] type name``."""
    raw: bool
    ctype: str  # a dtype name (``int32``) or a type placeholder (``T``)
    name: str

    @property
    def placeholder(self) -> bool:
        return self.ctype not in C_TYPES


def parse_params(spec: str) -> tuple[Param, ...]:
    """``"raw T cols, int32 n"`` as Params (CuPy's grammar, the part graphnet uses)."""
    out = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        words = part.split()
        raw = words[0] == "raw"
        words = words[1:] if raw else words
        if len(words) != 2:
            raise ValueError(f"cannot parse kernel parameter {part!r}")
        out.append(Param(raw, words[0], words[1]))
    return tuple(out)


RECORD: list | None = None  # set to a list to record launches (kept off: it would hold memory)


def signature(arg: Any) -> tuple:
    """What NVRTC code generation needs to know of a kernel argument (no reference to it)."""
    if isinstance(arg, ndarray):
        return ("array", arg.dtype.name, arg.ndim, bool(arg.flags.c_contiguous))
    return ("scalar",)


class ElementwiseKernel:
    """CuPy's ElementwiseKernel, executed on the CPU (see the module docstring)."""

    def __init__(self, in_params: str, out_params: str, operation: str, name: str = "kernel",
                 reduce_dims: bool = True, preamble: str = "", no_return: bool = False,
                 return_tuple: bool = False, loop_prep: str = "", after_loop: str = "",
                 **kwargs: Any) -> None:
        self.in_params, self.out_params = parse_params(in_params), parse_params(out_params)
        self.in_spec, self.out_spec = in_params, out_params
        self.operation, self.name, self.preamble = operation, name, preamble
        self.loop_prep, self.after_loop = loop_prep, after_loop
        self.no_return, self.return_tuple = no_return, return_tuple
        self.nin, self.nout = len(self.in_params), len(self.out_params)
        self._libs: dict[tuple, Any] = {}

    def __call__(self, *args: Any, size: int | None = None, **kwargs: Any) -> Any:
        if len(args) not in (self.nin, self.nin + self.nout):
            raise TypeError(f"Wrong number of arguments for {self.name!r}: "
                            f"{len(args)} given, {self.nin} or {self.nin + self.nout} expected")
        for a in args:
            unwrap(a)  # host NumPy arrays are refused, as CuPy refuses them
        if RECORD is not None:
            RECORD.append((self, tuple(signature(a) for a in args)))
        params = self.in_params + self.out_params
        types = _resolve_types(params, args, self.name)
        outs = list(args[self.nin:])
        arrays = [unwrap(a) for p, a in zip(params, args) if isinstance(a, ndarray) and not p.raw]
        shape = outs[0].shape if outs else np.broadcast_shapes(*(a.shape for a in arrays)) \
            if arrays else (size,)
        if size is None and not arrays:
            raise ValueError(f"kernel {self.name!r} has no array argument: pass size=")
        if not outs:
            outs = [wrap(np.empty(shape, np.dtype(types.get(p.ctype, p.ctype))))
                    for p in self.out_params]
        buffers, copy_back = self._buffers(params, list(args[:self.nin]) + outs, types, shape)
        n = int(np.prod(shape)) if arrays or outs else int(size)
        scalars = frozenset(k for k, a in enumerate(args[:self.nin]) if not isinstance(a, ndarray))
        self._lib(types, scalars).run(_pointer_array(buffers), ctypes.c_ssize_t(n))
        for dst, src in copy_back:
            dst[...] = src
        if self.no_return:
            return None
        result = tuple(outs)
        return result if self.return_tuple or len(result) > 1 else result[0]

    def _buffers(self, params: tuple, args: list, types: dict, shape: tuple) -> tuple[list, list]:
        """One contiguous NumPy buffer per parameter, and (target, buffer) pairs to copy back."""
        buffers, copy_back = [], []
        for k, (p, a) in enumerate(zip(params, args)):
            dtype = np.dtype(types.get(p.ctype, p.ctype))
            if not isinstance(a, ndarray):
                buffers.append(np.array([a], dtype=dtype))
                continue
            arr = unwrap(a)
            if arr.dtype != dtype and p.placeholder:
                raise TypeError(f"kernel {self.name!r}: argument {p.name!r} has dtype {arr.dtype}, "
                                f"but {p.ctype} is {dtype}")
            writable = p.raw or k >= self.nin
            buf = arr if writable else np.broadcast_to(arr, shape)
            if not buf.flags.c_contiguous or buf.dtype != dtype:
                buf = np.ascontiguousarray(buf, dtype=dtype)
                if writable:
                    copy_back.append((arr, buf))
            buffers.append(buf)
        return buffers, copy_back

    def source(self, types: dict, scalars: frozenset = frozenset()) -> str:
        """The host C++ source of this kernel: placeholders as ``types``, ``scalars`` by position."""
        params = self.in_params + self.out_params
        lines = [PRELUDE, "extern \"C\" void run(void **args, ptrdiff_t n) {"]
        lines += [f"typedef {C_TYPES[np.dtype(d).name]} {t};" for t, d in sorted(types.items())]
        lines.append(self.preamble)
        body = []
        for k, p in enumerate(params):
            ct = p.ctype if p.placeholder else C_TYPES[p.ctype]
            if k in scalars:
                lines.append(f"const {ct} {p.name} = *({ct} *)args[{k}];")
            elif p.raw:
                lines.append(f"{ct} *{p.name} = ({ct} *)args[{k}];")
            elif k < self.nin:
                lines.append(f"{ct} *_raw_{p.name} = ({ct} *)args[{k}];")
                body.append(f"const {ct} &{p.name} = _raw_{p.name}[i];")
            else:
                lines.append(f"{ct} *_raw_{p.name} = ({ct} *)args[{k}];")
                body.append(f"{ct} &{p.name} = _raw_{p.name}[i];")
        lines += [self.loop_prep, "for (ptrdiff_t i = 0; i < n; ++i) {", *body,
                  self.operation, ";}", self.after_loop, "}"]
        return "\n".join(lines)

    def _lib(self, types: dict, scalars: frozenset) -> Any:
        key = (tuple(sorted((t, np.dtype(d).name) for t, d in types.items())), scalars)
        if key not in self._libs:
            self._libs[key] = compile_shared(self.source(types, scalars))
        return self._libs[key]


def _resolve_types(params: tuple, args: tuple, name: str) -> dict:
    """Placeholder -> dtype, from the first array argument that carries each placeholder."""
    types: dict[str, np.dtype] = {}
    for p, a in zip(params, args):
        if p.placeholder and isinstance(a, ndarray):
            types.setdefault(p.ctype, a.dtype)
    missing = {p.ctype for p in params if p.placeholder} - set(types)
    if missing:
        raise TypeError(f"kernel {name!r}: cannot determine the type of {sorted(missing)} "
                        "(no array argument carries it)")
    return types


def _pointer_array(buffers: list) -> Any:
    ptrs = (ctypes.c_void_p * max(1, len(buffers)))()
    for k, b in enumerate(buffers):
        ptrs[k] = b.ctypes.data
    return ptrs


def cache_dir() -> Path:
    """Where compiled kernels live between runs."""
    path = os.environ.get("GRAPHNET_EMULATION_CACHE") or os.path.join(
        tempfile.gettempdir(), f"graphnet-cupy-emulation-{os.getuid()}")
    Path(path).mkdir(parents=True, exist_ok=True)
    return Path(path)


def compiler() -> str | None:
    """The host C++ compiler, or None."""
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def compile_shared(source: str) -> Any:
    """``source`` as a loaded shared library (compiled once per source text, then cached)."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("the CuPy emulation needs a C++ compiler (g++) to run kernels")
    flags = ["-O1", "-shared", "-fPIC", "-std=c++17"]
    digest = hashlib.sha256("\n".join([cxx, *flags, source]).encode()).hexdigest()[:24]
    lib_path = cache_dir() / f"k{digest}.so"
    if not lib_path.exists():
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            src = Path(tmp) / "kernel.cpp"
            src.write_text(source)
            proc = subprocess.run([cxx, *flags, "-o", str(Path(tmp) / "k.so"), str(src)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"kernel failed to compile on the host:\n{proc.stderr}")
            os.replace(Path(tmp) / "k.so", lib_path)
    lib = ctypes.CDLL(str(lib_path))
    lib.run.restype = None
    return lib

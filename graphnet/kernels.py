"""Kernels: an op's or optimizer's array routine, with optional per-backend overrides.

A kernel is written once against the backend's array namespace ``be.xp`` (NumPy and CuPy
alike): that generic version is the reference. A backend may register a faster version
under its name, next to the reference it must match bit for bit, e.g.::

    @kernel
    def relu_backward(be, y, g, out=None):
        ...                                   # the reference, through be.xp

    @relu_backward.override("numpy")
    def _(be, y, g, out=None): ...            # the same bits with fewer temporaries

    @relu_backward.override("cupy")
    def _(be, y, g, out=None):                # one CUDA elementwise kernel
        return be.elementwise("relu_bw", "T y, T g", "T out", "out = y > 0 ? g : (T)0")(y, g)

Calling ``relu_backward(be, y, g)`` runs ``be``'s override if it has one, else the
reference. Kernels live beside their ops (``graphnet/ops``) and optimizers (``optim``);
backends hold no kernels of their own.

An op running in a graph calls ``ctx.kernels[relu_backward](ctx.b, y, g)`` instead: the
run's :func:`implementations` table, resolved once per backend, so a call costs a dict
lookup rather than a dispatch through :meth:`Kernel.__call__`.
"""
from __future__ import annotations

from typing import Any, Callable

__all__ = ["Kernel", "KernelTable", "implementations", "kernel"]


class Kernel:
    """A routine with a generic reference and optional overrides keyed by backend name."""

    def __init__(self, generic: Callable[..., Any]) -> None:
        self.generic = generic
        self.name = generic.__name__
        self.__doc__ = generic.__doc__
        self.overrides: dict[str, Callable[..., Any]] = {}

    def override(self, backend_name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: register the decorated function as this kernel's version on ``backend_name``."""
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.overrides[backend_name] = fn
            table = _TABLES.get(backend_name)
            if table is not None:
                table.pop(self, None)  # resolved again on next use
            return fn
        return register

    def implementation(self, backend_name: str) -> Callable[..., Any]:
        """The function that runs on ``backend_name``: its override, else the reference."""
        return self.overrides.get(backend_name, self.generic)

    def __call__(self, be: Any, *args: Any, **kwargs: Any) -> Any:
        return self.overrides.get(be.name, self.generic)(be, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<kernel {self.name} (overrides: {', '.join(self.overrides) or 'none'})>"


def kernel(generic: Callable[..., Any]) -> Kernel:
    """Decorator: make ``generic(be, ...)`` the reference of a new :class:`Kernel`."""
    return Kernel(generic)


class KernelTable(dict):
    """``{kernel: its implementation on one backend}``, each resolved on first use."""

    def __init__(self, backend_name: str) -> None:
        super().__init__()
        self.backend_name = backend_name

    def __missing__(self, k: Kernel) -> Callable[..., Any]:
        fn = self[k] = k.implementation(self.backend_name)
        return fn


_TABLES: dict[str, KernelTable] = {}


def implementations(backend_name: str) -> KernelTable:
    """The kernel table of the backend called ``backend_name`` (one per name, shared)."""
    table = _TABLES.get(backend_name)
    if table is None:
        table = _TABLES[backend_name] = KernelTable(backend_name)
    return table

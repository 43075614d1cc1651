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
"""
from __future__ import annotations

from typing import Any, Callable

__all__ = ["Kernel", "kernel"]


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

"""Argument checks for the public doors: each returns the clean value or raises an error naming it."""
from __future__ import annotations

import math
import numbers
import operator
import os
from typing import Any, Iterable, Optional, Sequence

from .errors import ArgumentError, ArgumentTypeError


def _type_name(value: Any) -> str:
    return type(value).__name__


def integer(value: Any, name: str, minimum: Optional[int] = None) -> int:
    """``value`` as an int (ints and NumPy integers; not bools, floats or strings), ``>= minimum``."""
    if isinstance(value, (bool, str, bytes)) or value is None:
        raise ArgumentTypeError(f"{name} must be an integer, got {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise ArgumentTypeError(f"{name} must be an integer, got {_type_name(value)} "
                                f"{value!r}") from None
    if minimum is not None and n < minimum:
        raise ArgumentError(f"{name} must be >= {minimum}, got {n}")
    return n


def real(value: Any, name: str, low: Optional[float] = None, high: Optional[float] = None,
         low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float within ``[low, high]`` (ends excluded where ``*_open``)."""
    if isinstance(value, (bool, str, bytes)) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a real number, got {_type_name(value)} {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise ArgumentError(f"{name} must be finite, got {x}")
    too_low = low is not None and (x <= low if low_open else x < low)
    too_high = high is not None and (x >= high if high_open else x > high)
    if too_low or too_high:
        lo = "" if low is None else f"{'(' if low_open else '['}{low:g}"
        hi = "" if high is None else f"{high:g}{')' if high_open else ']'}"
        want = (f"in {lo}, {hi}" if low is not None and high is not None
                else f"{'>' if low_open else '>='} {low:g}" if low is not None
                else f"{'<' if high_open else '<='} {high:g}")
        raise ArgumentError(f"{name} must be {want}, got {x:g}")
    return x


def flag(value: Any, name: str) -> bool:
    """``value`` as a bool (True/False or a NumPy bool only)."""
    if isinstance(value, bool) or (type(value).__module__ == "numpy"
                                   and type(value).__name__ in ("bool", "bool_")):
        return bool(value)
    raise ArgumentTypeError(f"{name} must be True or False, got {_type_name(value)} {value!r}")


def choice(value: Any, name: str, options: Iterable[str]) -> str:
    """``value`` if it is one of the string ``options``."""
    options = tuple(options)
    if not isinstance(value, str) or value not in options:
        raise ArgumentError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def int_pair(value: Any, name: str, minimum: int = 1) -> tuple[int, int]:
    """An int or a (height, width) pair of ints, each ``>= minimum``."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ArgumentError(f"{name} must be an int or a pair of ints, got {value!r}")
        return integer(value[0], f"{name}[0]", minimum), integer(value[1], f"{name}[1]", minimum)
    n = integer(value, name, minimum)
    return n, n


def axes(axis: Any, name: str = "axis") -> Any:
    """``None``, an int, or a tuple of distinct ints (not checked against a rank here)."""
    if axis is None:
        return None
    if isinstance(axis, (tuple, list)):
        out = tuple(integer(a, name) for a in axis)
        if len(set(out)) != len(out):
            raise ArgumentError(f"{name} repeats an axis: {axis!r}")
        return out
    return integer(axis, name)


def sizes(values: Any, name: str, minimum: int = 1) -> list[int]:
    """A non-empty sequence of ints, each ``>= minimum``."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ArgumentTypeError(f"{name} must be a list of integers, got {_type_name(values)} "
                                f"{values!r}")
    if not values:
        raise ArgumentError(f"{name} must not be empty")
    return [integer(v, f"{name}[{i}]", minimum) for i, v in enumerate(values)]


def host_memory_bytes() -> int:
    """Physical memory of this machine (0 where unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 0


def fits_in_memory(shape: Sequence[int], itemsize: int, what: str) -> None:
    """Refuse, before allocating, an array larger than this machine's memory."""
    n = 1
    for d in shape:
        n *= int(d)
    limit = host_memory_bytes()
    if limit and n * itemsize > limit:
        raise ArgumentError(f"{what} of shape {tuple(shape)} would need {n * itemsize:.3g} bytes, "
                            f"more than this machine's memory ({limit:.3g} bytes)")


def positive_int(value: Any, name: str) -> int:
    """``value`` as an int > 0 (ints and NumPy integers; not bools, floats or strings).

    The one check of a count or size; ArgumentError naming ``name`` otherwise.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ArgumentError(f"{name} must be an integer > 0, got {value!r}")
    return int(value)

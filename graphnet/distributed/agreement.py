"""What the ranks compare before they exchange parameters, and how a difference is worded."""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Union

import numpy as np

from ..errors import ArgumentTypeError
from ..node import Parameter

Description = list  # [name, shape as a list, dtype name]: JSON-able, compared across ranks


def describe_parameters(params: Union[Mapping[str, Parameter], Iterable[Parameter]]
                        ) -> list[tuple[Description, Parameter]]:
    """Each parameter with its [name, shape, dtype] (a mapping's keys name them; else their own
    names, or their position)."""
    if isinstance(params, Mapping):
        items = list(params.items())
    elif isinstance(params, (str, bytes)) or not isinstance(params, Iterable):
        raise ArgumentTypeError(f"params must be parameters (a mapping of names to Parameters or "
                                f"an iterable of them), got {type(params).__name__} {params!r}")
    else:
        items = [(None, p) for p in params]
    out = []
    for i, (key, p) in enumerate(items):
        if not isinstance(p, Parameter):
            raise ArgumentTypeError(f"params[{key if key is not None else i}] must be a "
                                    f"graphnet Parameter, got {type(p).__name__} {p!r}")
        name = key if key is not None else (p.name or f"#{i}")
        out.append(([str(name), [int(d) for d in p.shape], str(np.dtype(p.dtype))], p))
    return out


def _show(d: Any) -> str:
    return "nothing" if d is None else f"{d[0]!r} {tuple(d[1])} {d[2]}"


def parameter_differences(tables: list[list[Description]]) -> list[str]:
    """For each rank whose descriptions differ from rank 0's: the count, and the first
    differing parameter on each side."""
    ref, lines = tables[0], []
    for r, table in enumerate(tables):
        if table == ref:
            continue
        i = next((k for k, (a, b) in enumerate(zip(ref, table)) if a != b), min(len(ref), len(table)))
        first = (f"first difference at parameter {i}: rank 0 has "
                 f"{_show(ref[i] if i < len(ref) else None)}, rank {r} has "
                 f"{_show(table[i] if i < len(table) else None)}")
        count = "" if len(ref) == len(table) else (f"rank 0 has {len(ref)} parameters, rank {r} "
                                                   f"has {len(table)}; ")
        lines.append(f"rank {r} differs from rank 0: {count}{first}")
    return lines


__all__ = ["describe_parameters", "parameter_differences"]

"""Which graphnet files one training step enters, and its deepest chain of graphnet frames.

The second ``opt.minimize`` of two small networks built from the README's public API
(the first step builds the plans), traced with ``sys.setprofile`` on the calling thread:

* ``mlp``: 784-16-10, ReLU, SGD with momentum, batch 32;
* ``cnn``: conv 4x3x3, ReLU, max-pool 2, two linear layers, Adam, batch 32.

``python -m tools.step_trace`` prints, per network, the files entered (outside
``graphnet/ops/`` and inside), the number of graphnet calls and the deepest chain.
Generated step code counts as a frame of its own (its file name is ``<graphnet step N>``).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

PACKAGE = Path(__file__).resolve().parents[1] / "graphnet"


class Trace(NamedTuple):
    files: list[str]   # graphnet files entered, relative to the package, outside ops/
    op_files: list[str]  # those inside ops/
    calls: int
    depth: int
    chain: list[str]   # the deepest chain, outermost first


def _label(code: Any) -> str | None:
    name = code.co_filename
    if name.startswith("<graphnet step"):
        return "<generated step>"
    try:
        return str(Path(name).resolve().relative_to(PACKAGE))
    except ValueError:
        return None


def trace(step: Callable[[], Any]) -> Trace:
    """Trace one call of ``step``: the graphnet frames it enters."""
    files: set[str] = set()
    calls = 0
    stack: list[str] = []
    deepest: list[str] = []

    def prof(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls, deepest
        if event not in ("call", "return"):
            return
        label = _label(frame.f_code)
        if label is None:
            return
        if event == "call":
            calls += 1
            files.add(label)
            stack.append(f"{label}:{frame.f_code.co_name}")
            if len(stack) > len(deepest):
                deepest = list(stack)
        elif stack:
            stack.pop()

    sys.setprofile(prof)
    try:
        step()
    finally:
        sys.setprofile(None)
    outside = sorted(f for f in files if not f.startswith("ops/") and f != "<generated step>")
    inside = sorted(f for f in files if f.startswith("ops/"))
    return Trace(outside, inside, calls, len(deepest), deepest)


def mlp_step() -> Callable[[], Any]:
    """The second-step closure of a 784-16-10 ReLU MLP trained with SGD + momentum."""
    import graphnet as gn
    from graphnet import nn, optim
    gn.seed(0)
    net = nn.Sequential([nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10)])
    return _step(net, (784,), optim.SGD, dict(lr=0.1, momentum=0.9))


def cnn_step() -> Callable[[], Any]:
    """The second-step closure of a small CNN (conv 4x3x3, ReLU, max-pool, 2 linear) with Adam."""
    import graphnet as gn
    from graphnet import nn, optim
    gn.seed(0)
    net = nn.Sequential([nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 13 * 13, 32), nn.ReLU(), nn.Linear(32, 10)])
    return _step(net, (1, 28, 28), optim.Adam, dict(lr=1e-3))


def _step(net: Any, shape: tuple, opt_cls: Any, kw: dict) -> Callable[[], Any]:
    import graphnet as gn
    x = gn.Input("x", shape=(None, *shape))
    y = gn.Input("y", shape=(None,), dtype="int64")
    logits = net(x)
    graph = gn.Graph([logits], cost=gn.softmax_cross_entropy(logits, y))
    opt = opt_cls(graph.parameters(), **kw)
    rng = np.random.default_rng(0)
    feed = {x: rng.random((32, *shape), dtype=np.float32), y: rng.integers(0, 10, 32)}
    opt.minimize(graph, feed)  # the first step builds the plan
    return lambda: opt.minimize(graph, feed)


def main() -> None:
    for name, make in (("mlp", mlp_step), ("cnn", cnn_step)):
        t = trace(make())
        print(f"{name}: {len(t.files)} graphnet files outside ops/ ({', '.join(t.files)}); "
              f"ops/: {', '.join(t.op_files)}; {t.calls} calls; deepest chain {t.depth} frames:")
        for k, frame in enumerate(t.chain):
            print(f"  {'  ' * k}{frame}")


if __name__ == "__main__":
    main()

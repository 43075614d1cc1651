"""CUDA-graph replay of a training step (opt-in, CuPy backend).

``CapturedStep(graph, optimizer).minimize(feed)`` does what ``optimizer.minimize(graph, feed)``
does, with the same bits. The first step of each feed shape runs as usual, then is captured
(forward and backward into the gradient arrays) as a CUDA graph on a non-default stream;
later steps of that shape copy the feed into the captured input arrays and replay the graph
(one launch instead of a kernel launch per op). The optimizer's update runs after the
replay, outside the graph: its per-step numbers (the learning rate a schedule sets, Adam's
bias correction) stay host scalars and every optimizer works unchanged.

Each shape keeps its own step plan, arrays and memory pool for as long as this object lives
(nothing a replay writes can be freed and reused by others). What cannot be captured is
refused with :class:`CaptureError`: another backend than CuPy, random ops (dropout: their key
would be baked in), ``check_numerics`` or ``plan="reference"``, ops that replace a
parameter's array during the step (batch-norm running statistics), more feed shapes than
``max_shapes``, and a step that synchronises with the host while it is captured.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple

from .checks import integer
from .errors import ArgumentTypeError, GraphnetError
from .graph import Graph
from .graph_checks import resolve_feed
from .hints import Array, Data
from .node import Input
from .optim import Optimizer
from .planner import StepPlanner


class CaptureError(GraphnetError, RuntimeError):
    """A training step cannot be replayed as a CUDA graph (the message says why)."""


class _Replay(NamedTuple):
    """One captured shape: the CUDA graph, its input arrays, its cost array and what it holds."""

    graph: Any
    inputs: dict[int, Any]
    cost: Any
    held: tuple  # the planner (its arrays) and the memory pool the capture allocated from
    values: tuple  # ids of the parameters' arrays the graph reads and writes


class CapturedStep:
    """Training steps of ``graph`` by ``optimizer``, replayed as CUDA graphs (CuPy only).

    ``minimize(feed)`` returns the cost as a device array, like ``Optimizer.minimize``;
    reading it (``float(cost)``) is the only host synchronisation of a step. At most
    ``max_shapes`` feed shapes are captured (each holds a step's arrays).
    """

    def __init__(self, graph: Graph, optimizer: Optimizer, max_shapes: int = 4) -> None:
        if not isinstance(graph, Graph):
            raise ArgumentTypeError(f"CapturedStep graph must be a gn.Graph, got "
                                    f"{type(graph).__name__}")
        if not isinstance(optimizer, Optimizer):
            raise ArgumentTypeError(f"CapturedStep optimizer must be a graphnet Optimizer, got "
                                    f"{type(optimizer).__name__}")
        self.max_shapes = integer(max_shapes, "CapturedStep max_shapes", 1)
        _check_capturable(graph)
        self.graph, self.optimizer = graph, optimizer
        self.params = tuple(p for p in optimizer.params if p in graph)
        if not self.params:
            raise CaptureError("CapturedStep: the optimizer trains none of this graph's "
                               "parameters")
        xp = graph.backend.xp
        self.grads = {p: xp.empty_like(p.value) for p in self.params}
        self._inputs = {n.id: n for n in graph.inputs}
        self._replays: dict[tuple, _Replay] = {}
        self.captures = 0  # how many graphs were captured (a new shape, or replaced arrays)

    def minimize(self, feed: Mapping[Input, Data]) -> Array:
        """One training step on ``feed`` (gradients, then the optimizer's update); the cost."""
        fed = resolve_feed(self.graph.ref, feed)
        key = tuple(sorted((i, v.shape, v.dtype.str) for i, v in fed.items()))
        replay = self._replays.get(key)
        if replay is not None and replay.values != self._values():
            del self._replays[key]  # a parameter's array was replaced (e.g. loaded): capture anew
            replay = None
        if replay is None:
            cost = self._first_step(key, fed)
        else:
            cost = self._replay(replay, fed)
        self.optimizer.step(self.grads)
        return cost

    def _replay(self, replay: _Replay, fed: dict[int, Any]) -> Any:
        xp = self.graph.backend.xp
        for i, v in fed.items():
            xp.copyto(replay.inputs[i], v)
        replay.graph.launch(xp.cuda.get_current_stream())
        return replay.cost.copy()  # the graph writes the same array on every replay

    def _first_step(self, key: tuple, fed: dict[int, Any]) -> Any:
        """This step run as usual (it also allocates the arrays), then captured."""
        if len(self._replays) >= self.max_shapes:
            held = ", ".join(_shapes(k) for k in self._replays)
            raise CaptureError(f"CapturedStep: feed shapes {_shapes(key)} would be capture "
                               f"{len(self._replays) + 1}, over max_shapes={self.max_shapes} "
                               f"(captured: {held}); feed batches of fewer sizes or raise "
                               "max_shapes (each shape holds a step's arrays)")
        planner = StepPlanner(self.graph.ref)
        static = {i: v.copy() for i, v in fed.items()}
        feed = {self._inputs[i]: v for i, v in static.items()}
        before = self._values()
        cost = self._run(planner, feed)
        if self._values() != before:
            moved = [p.name for p in self.graph.parameters(False) if id(p._value) not in before]
            raise CaptureError(f"CapturedStep: the step replaces the arrays of {moved} (e.g. "
                               "batch-norm running statistics) instead of writing into them; "
                               "a replay would keep reading the old arrays. Train it with "
                               "optimizer.minimize")
        graph, cost_array, pool = self._capture(planner, feed)
        self._replays[key] = _Replay(graph, static, cost_array, (planner, pool), before)
        self.captures += 1
        return cost

    def _run(self, planner: StepPlanner, feed: dict) -> Any:
        ref = self.graph.ref
        done = planner.step(feed, self.params, True, self.grads, None)
        if done is None:
            raise CaptureError("CapturedStep: this graph's step is not generated "
                               f"({planner.source(self.params, True).strip()})")
        return done[0][ref.index[ref.cost.id]]

    def _capture(self, planner: StepPlanner, feed: dict) -> tuple:
        xp = self.graph.backend.xp
        stream, pool = xp.cuda.Stream(non_blocking=True), xp.cuda.MemoryPool()
        with xp.cuda.using_allocator(pool.malloc), stream:
            stream.begin_capture()
            try:
                cost = self._run(planner, feed)
            except Exception as exc:
                _end_quietly(stream)
                raise CaptureError(f"CapturedStep: the step could not be captured as a CUDA "
                                   f"graph: {exc} (a host synchronisation or host copy inside "
                                   "the step is not allowed while capturing; train it with "
                                   "optimizer.minimize)") from exc
            try:
                graph = stream.end_capture()
            except Exception as exc:
                raise CaptureError(f"CapturedStep: capturing the step failed: {exc}") from exc
        return graph, cost, pool

    def _values(self) -> tuple:
        return tuple(id(p._value) for p in self.graph.parameters(trainable_only=False))


def _check_capturable(graph: Graph) -> None:
    """CaptureError naming what makes every step of ``graph`` impossible to capture."""
    name = graph.backend.name
    if name != "cupy":
        raise CaptureError(f"CapturedStep needs the cupy backend (CUDA graphs); this graph runs "
                           f"on {name!r}: train it with optimizer.minimize")
    if graph.check_numerics or graph.plan != "step":
        raise CaptureError("CapturedStep needs the generated step: this graph has "
                           f"check_numerics={graph.check_numerics}, plan={graph.plan!r}")
    if graph.cost is None:
        raise CaptureError("CapturedStep needs a graph with a cost: gn.Graph(outputs, cost=loss)")
    random = [f"{n.name!r} ({n.op})" for n in graph.order if getattr(n, "random", False)]
    if random:
        raise CaptureError(f"CapturedStep cannot capture random ops: {', '.join(random)} would "
                           "draw the same numbers on every replay (their key is baked into the "
                           "graph); train this graph with optimizer.minimize")


def _end_quietly(stream: Any) -> None:
    try:
        stream.end_capture()
    except Exception:  # the capture is invalid already; the caller reports the first error
        pass


def _shapes(key: tuple) -> str:
    return "(" + ", ".join(str(tuple(shape)) for _, shape, _ in key) + ")"


__all__ = ["CaptureError", "CapturedStep"]

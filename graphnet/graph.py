"""``Graph``: the public door to running a computational graph.

A graph is ordered once, when it is built, by the reference executor
(:mod:`graphnet.reference`), which also defines what every run computes. ``Graph`` checks
what comes in and chooses how a run goes: a training step through the step planner's
generated code (:mod:`graphnet.planner`, ``plan="step"``, the default) or node by node on
fresh arrays (``plan="reference"``); both give the same bits.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

from .backends import Backend, backend
from .backends.keyed import check_rng_key
from .checks import flag
from .errors import ArgumentError, ArgumentTypeError, GraphError
from .graph_checks import check_nodes, check_targets, output_list, resolve_feed
from .node import Constant, Input, Node, Parameter, RunContext
from .planner import Arena, StepPlanner
from .reference import Leaf, Plan, Reference, Step, topological_order
from .shapes import fmt

PLANS = ("step", "reference")

Outputs = Union[Node, Sequence[Node]]


class Graph:
    """A computational graph from its outputs (and an optional scalar cost).

    ``run(feed)`` returns the outputs' values; ``gradients(feed)`` the cost's
    gradients. The order is computed once, here. With ``plan="step"`` (the default)
    ``gradients`` runs as a Python function generated for the step (``graph.step_source()``
    shows it) and keeps its intermediate arrays for the next call, so a step allocates
    almost nothing; what it returns is never reused. ``run`` and ``values`` fuse pairs of
    nodes as training steps do. ``plan="reference"`` runs every step node by node on fresh
    arrays, as does ``check_numerics=True`` (each node's value is checked on its own). The
    numbers are the same, bit for bit. A graph runs one call at a time: share it between
    threads only with a lock.
    """

    def __init__(self, outputs: Outputs, cost: Optional[Node] = None,
                 check_numerics: bool = False, backend_: Optional[Backend] = None,
                 plan: str = "step") -> None:
        self._single = isinstance(outputs, Node)
        outs = [outputs] if self._single else output_list(outputs)
        if cost is not None and not isinstance(cost, Node):
            raise GraphError(f"Graph cost must be a node (a scalar loss), got "
                             f"{type(cost).__name__} {cost!r}")
        check_numerics = flag(check_numerics, "Graph check_numerics")
        if backend_ is not None and not isinstance(backend_, Backend):
            raise ArgumentTypeError(f"Graph backend_ must be a Backend (gn.get_backend(name)), "
                                    f"got {type(backend_).__name__}")
        if cost is not None and cost.shape is not None and cost.shape != ():
            raise GraphError(f"the cost must be a scalar, but {cost.name!r} has shape {fmt(cost.shape)}"
                             " (reduce it, e.g. with .mean())")
        self.plan = plan
        self.ref = Reference(outs, cost, backend_ or backend(), check_numerics)
        self._planner: Optional[StepPlanner] = None
        self._plans: dict[tuple, Plan] = {}  # the reference's forward plans, by node ids
        self._target_cache: dict[Optional[tuple], tuple] = {}

    # --- what the graph is ------------------------------------------------------------
    outputs = property(lambda self: self.ref.outputs)
    cost = property(lambda self: self.ref.cost)
    backend = property(lambda self: self.ref.backend)
    order = property(lambda self: self.ref.order, doc="every node, inputs before users")
    index = property(lambda self: self.ref.index, doc="{node id: position in order}")
    args = property(lambda self: self.ref.args, doc="per node, its inputs' positions")
    inputs = property(lambda self: self.ref.inputs, doc="the Input nodes, in order")

    @property
    def check_numerics(self) -> bool:
        """Whether every node's value is checked for NaN and inf (runs on the reference)."""
        return self.ref.check_numerics

    @check_numerics.setter
    def check_numerics(self, value: bool) -> None:
        self.ref.check_numerics = flag(value, "Graph check_numerics")

    @property
    def plan(self) -> str:
        """How training steps run: ``"step"`` (generated code) or ``"reference"``."""
        return self._plan

    @plan.setter
    def plan(self, value: str) -> None:
        if value == "loop":
            warnings.warn('Graph plan="loop" is gone (two executors remain): it runs as '
                          'plan="step"', DeprecationWarning, stacklevel=3)
            value = "step"
        if value not in PLANS:
            raise ArgumentError(f"Graph plan must be one of {PLANS}, got {value!r}")
        self._plan = value

    @property
    def planner(self) -> StepPlanner:
        """The step planner: the fast plans, their arrays and their generated code."""
        if self._planner is None:
            self._planner = StepPlanner(self.ref)
        return self._planner

    @property
    def _arena(self) -> Arena:
        return self.planner.arena

    def parameters(self, trainable_only: bool = True) -> list[Parameter]:
        """The parameters the outputs and cost depend on, in graph order."""
        return [p for p in self.ref.params if p.trainable or not trainable_only]

    def __contains__(self, node: Node) -> bool:
        return node.id in self.ref.index

    def step_source(self, wrt: Optional[Iterable[Node]] = None, into: bool = False,
                    on_final: bool = False) -> str:
        """The Python source of the generated training step differentiating ``wrt``
        (default: the parameters), with or without ``into=`` arrays and an ``on_final`` hook."""
        if self.check_numerics or self.plan == "reference":
            return ("# no generated step: this graph's steps run on the reference executor "
                    f"({'check_numerics checks every node on its own' if self.check_numerics else 'plan=reference'})\n")
        return self.planner.source(wrt, into, on_final)

    # --- running ----------------------------------------------------------------------
    def run(self, feed: Mapping[Any, Any], training: bool = False,
            rng_key: Optional[tuple[int, ...]] = None) -> Any:
        """The outputs' values for ``feed`` ({Input or its name: array}).

        ``rng_key`` (a tuple of non-negative ints, e.g. ``(seed, epoch, sample_offset)``)
        makes random ops (dropout) draw from that key and their position in the graph
        only, the same on every backend; None draws from the backend's generator.
        """
        res = self._forward(feed, self.outputs, training, rng_key, "run")
        return res[0] if self._single else res

    def values(self, feed: Mapping[Any, Any], nodes: Sequence[Node], training: bool = False,
               rng_key: Optional[tuple[int, ...]] = None) -> list:
        """Values of any ``nodes`` of this graph (the cost included) for ``feed``.

        ``rng_key``: see :meth:`run`.
        """
        return self._forward(feed, nodes, training, rng_key, "values")

    def _forward(self, feed: Mapping[Any, Any], nodes: Sequence[Node], training: bool,
                 rng_key: Optional[tuple], who: str) -> list:
        training = flag(training, "training")
        rng_key = check_rng_key(rng_key)
        if self.plan == "reference" or self.check_numerics:
            key = self.check_nodes(nodes, who)
            plan = self._plans.get(key)
            if plan is None:
                plan = self._plans[key] = self.ref.plan_for(nodes)
        else:
            plan = self.planner.forward_plan(nodes, who)
        values = self.ref.forward(resolve_feed(self.ref, feed), plan,
                                  RunContext(self.backend, training, rng_key, backward=False))
        return self._detach([values[self.ref.index[n.id]] for n in nodes])

    def check_nodes(self, nodes: Any, who: str) -> tuple:
        """The ids of ``nodes``, a list of this graph's nodes, or an error saying what is not."""
        return check_nodes(self.ref, nodes, who)

    def gradients(self, feed: Mapping[Any, Any], wrt: Optional[Iterable[Node]] = None,
                  training: bool = True, return_cost: bool = False,
                  into: Optional[Mapping[Node, Any]] = None,
                  rng_key: Optional[tuple[int, ...]] = None,
                  on_final: Optional[Callable[[Node], None]] = None) -> Any:
        """``{node: d cost / d node}`` for the parameters (or the nodes in ``wrt``).

        A node the cost does not depend on gets a zero gradient. With
        ``return_cost`` the cost's value comes too: ``(cost, grads)``. With ``into``
        (``{node: array}`` for every node differentiated) the gradients are written
        into those arrays, which come back as the dict; otherwise each is a new array.
        ``rng_key``: see :meth:`run`. ``on_final(node)`` (with ``into``) is called once per
        node as soon as ``into[node]`` holds its final gradient, while backward goes on
        (on the reference executor: at the end, latest nodes first).
        """
        ref = self.ref
        if ref.cost is None:
            raise GraphError("this graph has no cost: build it as gn.Graph(outputs, cost=loss)")
        if type(training) is not bool or type(return_cost) is not bool:  # checked off the step's path
            training, return_cost = flag(training, "training"), flag(return_cost, "return_cost")
        if rng_key is not None:
            rng_key = check_rng_key(rng_key)
        targets = self._targets(wrt)
        if on_final is not None and (into is None or not callable(on_final)):
            raise ArgumentError(f"gradients(on_final=...) takes a callable and needs into=, got "
                                f"on_final={on_final!r} with into={'None' if into is None else '{...}'}")
        done = None
        if self._plan == "step" and not ref.check_numerics:
            done = self.planner.step(feed, targets, training, into, rng_key, on_final)
        if done is None:
            ctx = RunContext(ref.backend, training, rng_key, saved={})
            done = ref.gradients(resolve_feed(ref, feed), targets, ctx, into)
            for t in sorted(targets, key=lambda t: -ref.index[t.id]) if on_final else ():
                on_final(t)
        values, grads = done
        if not return_cost:
            return grads
        cost = values[ref.index[ref.cost.id]]
        if getattr(cost, "base", None) is not None:
            cost = cost.copy()  # a view of an array the next step reuses
        return cost, grads

    # --- small parts ------------------------------------------------------------------
    def _detach(self, results: list) -> list:
        """``results`` with every array that may alias live state (a view, a parameter's or
        constant's own array, an array already handed out) replaced by a copy."""
        live = {id(p._value) for p in self.ref.params}
        arena = self._planner.arena.ids if self._planner is not None else ()
        seen: set[int] = set()
        out = []
        for r in results:
            if hasattr(r, "base") and (r.base is not None or id(r) in live or id(r) in seen
                                       or id(r) in arena or id(r) in self.ref.constants):
                r = r.copy()
            seen.add(id(r))
            out.append(r)
        return out

    def _targets(self, wrt: Optional[Iterable[Node]]) -> tuple:
        """The nodes to differentiate, checked once per distinct ``wrt``."""
        key = None if wrt is None else tuple(wrt)
        hit = self._target_cache.get(key)
        if hit is None:
            hit = self._target_cache[key] = check_targets(self.ref, key)
        return hit


__all__ = ["Arena", "Graph", "Leaf", "Plan", "RunContext", "Step", "topological_order",
           "Constant", "Input"]

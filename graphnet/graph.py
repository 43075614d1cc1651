"""``Graph``: a DAG of nodes ordered once, then run many times: the reference executor.

This module is the engine a reader follows: topological order, a forward pass over the
nodes in order, and a reverse-mode backward pass that gives each node a fresh gradient
array. ``Graph.gradients`` hands training steps to the step planner
(:mod:`graphnet.planner`), which computes the same numbers faster (arrays reused
across steps, gradients written in place, fused nodes); ``Graph(..., plan="reference")``
runs them here instead.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional, Sequence, Union

from .backends import Backend, backend
from .backends.keyed import check_rng_key
from .checks import flag
from .errors import ArgumentError, ArgumentTypeError, FeedError, GraphError, NumericsError, RunError
from .node import Constant, Input, Node, Parameter, RunContext
from .graph_checks import (check_finite, check_into, check_scalar_cost, describe_failure,
                           not_fed, out_of_memory, output_list, resolve_feed, wrong_backend)
from .planner import Arena, StepPlanner
from .shapes import fmt

PLANS = ("step", "loop", "reference")


class Leaf(NamedTuple):
    """A node without inputs in a plan: its value is read, not computed."""

    index: int
    node: Node
    kind: str  # "parameter", "input" (fed) or "constant"


class Step(NamedTuple):
    """One op of a plan: ``node.forward`` on the values at ``args`` (indices in the order)."""

    index: int
    node: Any  # a Node, or a fused step with the same contract
    args: tuple[int, ...]


class Plan(NamedTuple):
    """What some roots need, in graph order: leaves to read, then steps to run."""

    leaves: list[Leaf]
    steps: list[Step]


def topological_order(outputs: Sequence[Node]) -> list[Node]:
    """Every node the outputs depend on, inputs before users, in a stable order.

    Iterative depth-first search (no recursion limit); a cycle raises GraphError.
    """
    order: list[Node] = []
    state: dict[int, int] = {}  # 1 = on the stack, 2 = done
    for root in outputs:
        if state.get(root.id) == 2:
            continue
        stack = [(root, 0)]
        state[root.id] = 1
        while stack:
            node, i = stack[-1]
            if i < len(node.inputs):
                stack[-1] = (node, i + 1)
                child = node.inputs[i]
                s = state.get(child.id)
                if s == 1:
                    raise GraphError(f"the graph has a cycle through {child!r}")
                if s is None:
                    state[child.id] = 1
                    stack.append((child, 0))
            else:
                stack.pop()
                state[node.id] = 2
                order.append(node)
    return order


Outputs = Union[Node, Sequence[Node]]


class Graph:
    """A computational graph from its outputs (and an optional scalar cost).

    ``run(feed)`` returns the outputs' values; ``gradients(feed)`` the cost's
    gradients. The order is computed once, here. With ``plan="step"`` (the default)
    ``gradients`` keeps its intermediate arrays (about one step's activations and their
    gradients) for the next call, so a step allocates almost nothing; what it returns is
    never reused; each plan runs as a Python function generated for it (see
    ``graph.planner.source()``), or with ``plan="loop"`` through the planner's loop.
    ``run`` and ``values`` fuse pairs of nodes as training steps do (fresh arrays each
    call). ``plan="reference"`` runs every step node by node on fresh arrays (the same
    numbers, bit for bit, in all three). A graph runs one call at a time: share it between
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
        if plan not in PLANS:
            raise ArgumentError(f"Graph plan must be one of {PLANS}, got {plan!r}")
        if cost is not None and cost.shape is not None and cost.shape != ():
            raise GraphError(f"the cost must be a scalar, but {cost.name!r} has shape {fmt(cost.shape)}"
                             " (reduce it, e.g. with .mean())")
        self.outputs = outs
        self.cost = cost
        self.check_numerics = check_numerics
        self.plan = plan
        self.backend = backend_ or backend()
        self.order = topological_order(outs + ([cost] if cost is not None else []))
        self.index = {node.id: i for i, node in enumerate(self.order)}
        self.args = [tuple(self.index[x.id] for x in node.inputs) for node in self.order]
        self.inputs = [n for n in self.order if isinstance(n, Input)]
        self._params = [n for n in self.order if isinstance(n, Parameter)]
        self._constants = {id(n.value) for n in self.order if isinstance(n, Constant)}
        self._by_name = {n.name: n for n in self.order if isinstance(n, Input)}
        self._check_names()
        self._plans: dict[tuple, Plan] = {}
        self._target_cache: dict[Optional[tuple], tuple] = {}
        self._run_plan = self.plan_for(outs)
        self._cost_plan = self.plan_for([cost]) if cost is not None else Plan([], [])
        self.planner = StepPlanner(self)

    def plan_for(self, roots: Sequence[Node]) -> Plan:
        """The leaves and steps ``roots`` need, each in graph order."""
        needed = {self.index[r.id] for r in roots}
        for i in range(len(self.order) - 1, -1, -1):
            if i in needed:
                needed.update(self.args[i])
        leaves, steps = [], []
        for i in sorted(needed):
            node = self.order[i]
            if node.inputs:
                steps.append(Step(i, node, self.args[i]))
            else:
                kind = ("parameter" if isinstance(node, Parameter) else
                        "input" if isinstance(node, Input) else "constant")
                leaves.append(Leaf(i, node, kind))
        return Plan(leaves, steps)

    def _check_names(self) -> None:
        seen: dict[str, Input] = {}
        for node in self.inputs:
            if node.name in seen:
                raise GraphError(f"two different inputs are both named {node.name!r}")
            seen[node.name] = node

    # --- public queries ---------------------------------------------------------------
    def parameters(self, trainable_only: bool = True) -> list[Parameter]:
        """The parameters the outputs and cost depend on, in graph order."""
        return [p for p in self._params if p.trainable or not trainable_only]

    def __contains__(self, node: Node) -> bool:
        return node.id in self.index

    @property
    def _arena(self) -> Arena:
        """The step planner's arena (the name it had before the planner existed)."""
        return self.planner.arena

    # --- running ----------------------------------------------------------------------
    def run(self, feed: Mapping[Any, Any], training: bool = False,
            rng_key: Optional[tuple[int, ...]] = None) -> Any:
        """The outputs' values for ``feed`` ({Input or its name: array}).

        ``rng_key`` (a tuple of non-negative ints, e.g. ``(seed, epoch, sample_offset)``)
        makes random ops (dropout) draw from that key and their position in the graph
        only, the same on every backend; None draws from the backend's generator.
        """
        training = flag(training, "training")
        plan = self._run_plan if self.plan == "reference" else self.planner.forward_plan(self.outputs)
        ctx = RunContext(self.backend, training, rng_key, backward=False)
        values = self.forward(feed, plan, ctx)
        res = self._detach([values[self.index[o.id]] for o in self.outputs])
        return res[0] if self._single else res

    def values(self, feed: Mapping[Any, Any], nodes: Sequence[Node], training: bool = False,
               rng_key: Optional[tuple[int, ...]] = None) -> list:
        """Values of any ``nodes`` of this graph (the cost included) for ``feed``.

        ``rng_key``: see :meth:`run`.
        """
        training = flag(training, "training")
        if self.plan == "reference":
            key = self.check_nodes(nodes, "values")
            if key not in self._plans:
                self._plans[key] = self.plan_for(nodes)
            plan = self._plans[key]
        else:
            plan = self.planner.forward_plan(nodes, "values")
        ctx = RunContext(self.backend, training, rng_key, backward=False)
        values = self.forward(feed, plan, ctx)
        return self._detach([values[self.index[n.id]] for n in nodes])

    def check_nodes(self, nodes: Any, who: str) -> tuple:
        """The ids of ``nodes``, a list of this graph's nodes, or an error saying what is not."""
        if not isinstance(nodes, (list, tuple)) or not all(isinstance(n, Node) for n in nodes):
            raise ArgumentTypeError(f"{who}(nodes=...) takes a list of this graph's nodes, got "
                                    f"{nodes!r}")
        for n in nodes:
            if n.id not in self.index:
                raise GraphError(f"{n!r} is not part of this graph")
        return tuple([n.id for n in nodes])

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
        (the reference executor calls it at the end, latest nodes first).
        """
        if self.cost is None:
            raise GraphError("this graph has no cost: build it as gn.Graph(outputs, cost=loss)")
        training, return_cost = flag(training, "training"), flag(return_cost, "return_cost")
        targets = self._targets(wrt)
        if on_final is not None and (into is None or not callable(on_final)):
            raise ArgumentError(f"gradients(on_final=...) takes a callable and needs into=, got "
                                f"on_final={on_final!r} with into={'None' if into is None else '{...}'}")
        if self.plan == "reference":
            values, grads = self._reference_step(feed, targets, training, into, rng_key)
            for t in sorted(targets, key=lambda t: -self.index[t.id]) if on_final else ():
                on_final(t)
        else:
            values, grads = self.planner.step(feed, targets, training, into, rng_key, on_final)
        if not return_cost:
            return grads
        cost = values[self.index[self.cost.id]]
        if getattr(cost, "base", None) is not None:
            cost = cost.copy()  # a view of an array the next step reuses
        return cost, grads

    # --- the reference executor --------------------------------------------------------
    def forward(self, feed: Mapping[Any, Any], plan: Plan, ctx: RunContext) -> list:
        """The values of the nodes in ``plan`` (None elsewhere), each op run with ``ctx``."""
        ctx.rng_key = check_rng_key(ctx.rng_key)
        fed = resolve_feed(self, feed)
        values: list = [None] * len(self.order)
        for i, node, kind in plan.leaves:
            values[i] = self._leaf(node, kind, fed)
        check = self.check_numerics
        node, args = None, ()
        try:
            if check:
                for leaf in plan.leaves:
                    check_finite(self, leaf.node, values, ())
            for i, node, args in plan.steps:
                ctx.key = i
                values[i] = node.forward(ctx, *[values[j] for j in args])
                if check:
                    check_finite(self, node, values, args)
        except (FeedError, NumericsError, GraphError):
            raise
        except Exception as exc:
            if out_of_memory(exc):  # as it is: the caller's advice is about the batch size
                raise
            raise RunError(describe_failure(self, node, values, args, exc)) from exc
        return values

    def _reference_step(self, feed: Mapping[Any, Any], targets: tuple, training: bool,
                        into: Optional[Mapping[Node, Any]],
                        rng_key: Optional[tuple]) -> tuple[list, dict]:
        """Forward, then backward on fresh arrays: ``(values, {target: gradient})``."""
        ci = self.index[self.cost.id]
        ctx = RunContext(self.backend, training, rng_key, saved={})
        values = self.forward(feed, self._cost_plan, ctx)
        check_scalar_cost(self, values[ci])
        if into is not None:
            check_into(self, targets, values, into)
        grads = self._backward(values, ci, {self.index[t.id] for t in targets}, ctx)
        if into is not None:
            return values, self.copy_into(targets, grads, into)
        return values, self.collect(targets, grads, values)

    def _backward(self, values: list, ci: int, wanted: set[int], ctx: RunContext) -> list:
        """Every gradient on the way from the cost to ``wanted``, cost first."""
        needs = [False] * (ci + 1)
        for i in range(ci + 1):
            needs[i] = i in wanted or any(needs[j] for j in self.args[i])
        grads: list = [None] * (ci + 1)
        grads[ci] = self.backend.xp.ones(values[ci].shape, dtype=values[ci].dtype)
        for i in range(ci, -1, -1):
            node, args = self.order[i], self.args[i]
            if grads[i] is None or not node.inputs:
                continue
            ctx.key, ctx.needs = i, tuple(needs[j] for j in args)
            gin = node.backward(ctx, grads[i], tuple(values[j] for j in args), values[i])
            for k, j in enumerate(args):
                if needs[j] and gin[k] is not None:
                    gj = self.keep_dtype(gin[k], values[j])
                    grads[j] = gj if grads[j] is None else grads[j] + gj
        return grads

    @staticmethod
    def keep_dtype(g: Any, value: Any) -> Any:
        """``g`` in its node's floating dtype (no silent float64)."""
        dt = value.dtype
        return g.astype(dt) if g.dtype != dt and dt.kind == "f" else g

    # --- handing results out -----------------------------------------------------------
    def collect(self, targets: tuple, grads: list, values: list, kept: Any = ()) -> dict:
        """The gradients as arrays of their own: no views, no sharing, none in ``kept``."""
        seen: set[int] = set()
        out: dict = {}
        for t in targets:
            g = self.grad_or_zero(t, grads, values)
            if getattr(g, "base", None) is not None or id(g) in seen or id(g) in kept:
                g = g.copy()
            seen.add(id(g))
            out[t] = g
        return out

    def copy_into(self, targets: tuple, grads: list, into: Mapping[Node, Any]) -> dict:
        """The gradients written into the caller's ``into`` arrays."""
        out: dict = {}
        for t in targets:
            g, buf = grads[self.index[t.id]], into[t]
            if g is None:
                buf[...] = 0
            elif g is not buf:
                self.backend.xp.copyto(buf, g)
            out[t] = buf
        return out

    def _detach(self, results: list) -> list:
        """``results`` with every array that may alias live state (a view, a parameter's or
        constant's own array, an array already handed out) replaced by a copy."""
        live = {id(p._value) for p in self._params}
        seen: set[int] = set()
        out = []
        for r in results:
            if hasattr(r, "base") and (r.base is not None or id(r) in live or id(r) in seen
                                       or id(r) in self.planner.arena.ids or id(r) in self._constants):
                r = r.copy()
            seen.add(id(r))
            out.append(r)
        return out

    # --- small parts --------------------------------------------------------------------
    def _targets(self, wrt: Optional[Iterable[Node]]) -> tuple:
        """The nodes to differentiate, checked once per distinct ``wrt``."""
        key = None if wrt is None else tuple(wrt)
        hit = self._target_cache.get(key)
        if hit is not None:
            return hit
        targets = tuple(self.parameters()) if key is None else key
        for t in targets:
            if not isinstance(t, Node) or t.id not in self.index:
                raise GraphError(f"cannot take a gradient with respect to {t!r}: "
                                 "it is not part of this graph")
        self._target_cache[key] = targets
        return targets

    def grad_or_zero(self, node: Node, grads: list, values: list) -> Any:
        i = self.index[node.id]
        g = grads[i] if i < len(grads) else None
        if g is not None:
            return g
        value = values[i] if values[i] is not None else getattr(node, "value", None)
        if hasattr(value, "shape"):
            return self.backend.xp.zeros(value.shape, dtype=value.dtype)
        if node.shape is not None and None not in node.shape and node.dtype is not None:
            return self.backend.xp.zeros(node.shape, dtype=node.dtype)
        raise GraphError(f"the cost {self.cost.name!r} does not depend on {node.name!r}, "
                         f"whose shape {fmt(node.shape)} is not fully known, so it has no "
                         "zero gradient to give")

    def _leaf(self, node: Node, kind: str, fed: dict) -> Any:
        if kind == "parameter":
            if node.backend is not self.backend:
                raise GraphError(wrong_backend(self, node))
            return node._value
        if kind == "input":
            v = fed.get(node.id)
            if v is None:
                raise FeedError(not_fed(node))
            return v
        return node.forward(None)

__all__ = ["Arena", "Graph", "Leaf", "Plan", "RunContext", "Step", "topological_order", "Constant"]

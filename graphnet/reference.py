"""The reference executor: what graphnet computes, with nothing done for speed.

A graph is a DAG of nodes. :class:`Reference` orders it once (inputs before users), runs a
:class:`Plan` forward node by node, and differentiates the cost in reverse order, giving
every gradient a fresh array and summing the gradients of a node read by several ops.
Everything faster (:mod:`graphnet.planner`, :mod:`graphnet.stepgen`) sits above this
module, uses it, and must give the same bits (tests/test_planner.py); nothing here calls up.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional, Sequence

from .backends import Backend
from .errors import FeedError, GraphError, NumericsError, OutOfMemoryError
from .graph_checks import (check_finite, check_into, check_scalar_cost, not_fed, run_failure,
                           wrong_backend)
from .node import Constant, Input, Node, Parameter, RunContext
from .shapes import fmt


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


class Reference:
    """``outputs`` and ``cost`` ordered once; forward and backward run node by node.

    ``order`` lists the nodes, ``index`` maps a node's id to its position, ``args[i]``
    holds the positions of node ``i``'s inputs.
    """

    def __init__(self, outputs: list[Node], cost: Optional[Node], backend: Backend,
                 check_numerics: bool = False) -> None:
        self.outputs, self.cost, self.backend = outputs, cost, backend
        self.check_numerics = check_numerics
        self.order = topological_order(outputs + ([cost] if cost is not None else []))
        self.index = {node.id: i for i, node in enumerate(self.order)}
        self.args = [tuple(self.index[x.id] for x in node.inputs) for node in self.order]
        self.inputs = [n for n in self.order if isinstance(n, Input)]
        self.params = [n for n in self.order if isinstance(n, Parameter)]
        self.constants = {id(n.value) for n in self.order if isinstance(n, Constant)}
        self.by_name: dict[str, Input] = {}
        for node in self.inputs:
            if node.name in self.by_name:
                raise GraphError(f"two different inputs are both named {node.name!r}")
            self.by_name[node.name] = node

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

    # --- forward ------------------------------------------------------------------------
    def forward(self, fed: Mapping[int, Any], plan: Plan, ctx: RunContext) -> list:
        """The values of the nodes in ``plan`` (None elsewhere), each op run with ``ctx``.

        ``fed`` maps an input's id to its (checked) value.
        """
        values: list = [None] * len(self.order)
        for i, node, kind in plan.leaves:
            values[i] = self.leaf(node, kind, fed)
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
        except (FeedError, NumericsError, GraphError, OutOfMemoryError):
            raise
        except Exception as exc:
            raise run_failure(self, node, values, args, exc) from exc
        return values

    def leaf(self, node: Node, kind: str, fed: Mapping[int, Any]) -> Any:
        """A leaf's value: a parameter's array, the fed array, or a constant."""
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

    # --- backward -----------------------------------------------------------------------
    def gradients(self, fed: Mapping[int, Any], targets: tuple, ctx: RunContext,
                  into: Optional[Mapping[Node, Any]] = None) -> tuple[list, dict]:
        """One training step: forward, then backward on fresh arrays.

        Returns ``(values, {target: gradient})``; with ``into`` the gradients are
        written into those arrays.
        """
        ci = self.index[self.cost.id]
        values = self.forward(fed, self.plan_for([self.cost]), ctx)
        check_scalar_cost(self, values[ci])
        if into is not None:
            check_into(self, targets, values, into)
        grads = self.backward(values, ci, {self.index[t.id] for t in targets}, ctx)
        if into is not None:
            return values, self.copy_into(targets, grads, into)
        return values, self.collect(targets, grads, values)

    def backward(self, values: list, ci: int, wanted: set[int], ctx: RunContext) -> list:
        """Every gradient on the way from the cost (node ``ci``) to ``wanted``."""
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
            try:
                gin = node.backward(ctx, grads[i], tuple(values[j] for j in args), values[i])
            except (GraphError, OutOfMemoryError):
                raise
            except Exception as exc:
                raise run_failure(self, node, values, args, exc, "backward") from exc
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

    # --- handing results out ------------------------------------------------------------
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
        """The gradients written into the caller's ``into`` arrays (zero where none)."""
        out: dict = {}
        for t in targets:
            i, buf = self.index[t.id], into[t]
            g = grads[i] if i < len(grads) else None
            if g is None:
                buf[...] = 0
            elif g is not buf:
                self.backend.xp.copyto(buf, g)
            out[t] = buf
        return out

    def grad_or_zero(self, node: Node, grads: list, values: list) -> Any:
        """``node``'s gradient, or zeros of its shape where the cost does not depend on it."""
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


__all__ = ["Leaf", "Plan", "Reference", "Step", "topological_order"]

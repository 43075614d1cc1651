"""``Graph``: a DAG of nodes ordered once, then run many times (forward and reverse mode)."""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from .backends import Backend, backend
from .errors import FeedError, GraphError, NumericsError, RunError
from .node import Constant, Input, Node, Parameter
from .shapes import fmt


class RunContext:
    """What an op sees while it runs: the backend, its namespace and the mode."""

    __slots__ = ("b", "xp", "training", "needs")

    def __init__(self, b: Backend, training: bool) -> None:
        self.b = b
        self.xp = b.xp
        self.training = training
        # In backward: which of the node's inputs need a gradient (None: all).
        self.needs: Optional[tuple] = None


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
    gradients. The order is computed once, here.
    """

    def __init__(self, outputs: Outputs, cost: Optional[Node] = None,
                 check_numerics: bool = False, backend_: Optional[Backend] = None) -> None:
        self._single = isinstance(outputs, Node)
        outs = [outputs] if self._single else list(outputs)
        for o in outs + ([cost] if cost is not None else []):
            if not isinstance(o, Node):
                raise GraphError(f"graph outputs must be nodes, got {type(o).__name__}")
        if cost is not None and cost.shape is not None and cost.shape != ():
            raise GraphError(f"the cost must be a scalar, but {cost.name!r} has shape {fmt(cost.shape)}"
                             " (reduce it, e.g. with .mean())")
        self.outputs = outs
        self.cost = cost
        self.check_numerics = check_numerics
        self.backend = backend_ or backend()
        self.order = topological_order(outs + ([cost] if cost is not None else []))
        self._index = {node.id: i for i, node in enumerate(self.order)}
        self._args = [tuple(self._index[x.id] for x in node.inputs) for node in self.order]
        self.inputs = [n for n in self.order if isinstance(n, Input)]
        self._params = [n for n in self.order if isinstance(n, Parameter)]
        self._plans: dict[tuple, list[int]] = {}
        self._target_cache: dict[Optional[tuple], tuple] = {}
        self._backward_plans: dict[tuple, list[tuple]] = {}
        self._by_name = {n.name: n for n in self.order if isinstance(n, Input)}
        self._run_plan = self._plan(outs)
        self._cost_plan = self._plan([cost]) if cost is not None else []
        self._check_names()

    def _plan(self, roots: Sequence[Node]) -> list[int]:
        """Indices, in order, of the nodes that ``roots`` need."""
        needed = {self._index[r.id] for r in roots}
        for i in range(len(self.order) - 1, -1, -1):
            if i in needed:
                needed.update(self._args[i])
        return sorted(needed)

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
        return node.id in self._index

    # --- running ----------------------------------------------------------------------
    def run(self, feed: Mapping[Any, Any], training: bool = False) -> Any:
        """The outputs' values for ``feed`` ({Input or its name: array})."""
        values = self._forward(feed, training, self._run_plan)
        res = [values[self._index[o.id]] for o in self.outputs]
        return res[0] if self._single else res

    def values(self, feed: Mapping[Any, Any], nodes: Sequence[Node], training: bool = False) -> list:
        """Values of any ``nodes`` of this graph (the cost included) for ``feed``."""
        key = tuple(n.id for n in nodes)
        plan = self._plans.get(key)
        if plan is None:
            for n in nodes:
                if n.id not in self._index:
                    raise GraphError(f"{n!r} is not part of this graph")
            plan = self._plans[key] = self._plan(nodes)
        values = self._forward(feed, training, plan)
        return [values[self._index[n.id]] for n in nodes]

    def gradients(self, feed: Mapping[Any, Any], wrt: Optional[Iterable[Node]] = None,
                  training: bool = True, return_cost: bool = False) -> Any:
        """``{node: d cost / d node}`` for the parameters (or the nodes in ``wrt``).

        A node the cost does not depend on gets a zero gradient. With
        ``return_cost`` the cost's value comes too: ``(cost, grads)``.
        """
        if self.cost is None:
            raise GraphError("this graph has no cost: build it as gn.Graph(outputs, cost=loss)")
        targets = self._targets(wrt)
        ci = self._index[self.cost.id]
        values = self._forward(feed, training, self._cost_plan)
        if tuple(getattr(values[ci], "shape", ())) != ():
            raise GraphError(f"the cost must be a scalar, but {self.cost.name!r} has shape "
                             f"{tuple(values[ci].shape)} at run time "
                             "(reduce it, e.g. with .mean())")
        grads = self._backward(values, ci, targets)
        out: dict = {}
        seen: set[int] = set()
        for t in targets:  # each gradient a writable array of its own (no views, no sharing)
            g = self._grad_or_zero(t, grads, values)
            if getattr(g, "base", None) is not None or id(g) in seen:
                g = g.copy()
            seen.add(id(g))
            out[t] = g
        return (values[ci], out) if return_cost else out

    def _targets(self, wrt: Optional[Iterable[Node]]) -> tuple:
        """The nodes to differentiate, checked once per distinct ``wrt``."""
        key = None if wrt is None else tuple(wrt)
        hit = self._target_cache.get(key)
        if hit is not None:
            return hit
        targets = tuple(self.parameters()) if key is None else key
        for t in targets:
            if not isinstance(t, Node) or t.id not in self._index:
                raise GraphError(f"cannot take a gradient with respect to {t!r}: "
                                 "it is not part of this graph")
        self._target_cache[key] = targets
        return targets

    def _grad_or_zero(self, node: Node, grads: list, values: list) -> Any:
        i = self._index[node.id]
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

    # --- internals --------------------------------------------------------------------
    def _resolve_feed(self, feed: Mapping[Any, Any]) -> dict[int, Any]:
        b = self.backend
        by_name = self._by_name
        fed: dict[int, Any] = {}
        for key, value in feed.items():
            node = by_name.get(key) if isinstance(key, str) else key
            if not isinstance(node, Input) or node.id not in self._index:
                label = key if isinstance(key, str) else getattr(key, "name", repr(key))
                other = " (a different Input of the same name)" if label in by_name else ""
                raise FeedError(f"feed names {label!r}{other}, which is not an input of this graph "
                                f"(inputs: {', '.join(repr(n.name) for n in self.inputs)})")
            fed[node.id] = node.check_feed(b, value)
        return fed

    def _forward(self, feed: Mapping[Any, Any], training: bool, plan: list[int]) -> list:
        fed = self._resolve_feed(feed)
        ctx = RunContext(self.backend, training)
        values: list = [None] * len(self.order)
        order, args = self.order, self._args
        i = 0
        try:
            for i in plan:
                node = order[i]
                if node.inputs:
                    values[i] = node.forward(ctx, *[values[j] for j in args[i]])
                elif node.id in fed:
                    values[i] = fed[node.id]
                else:
                    values[i] = self._leaf(node)
                if self.check_numerics:
                    self._check_finite(order[i], values, args[i])
        except (FeedError, NumericsError, GraphError):
            raise
        except Exception as exc:
            raise RunError(self._describe_failure(order[i], values, args[i], exc)) from exc
        return values

    def _leaf(self, node: Node) -> Any:
        if isinstance(node, Input):
            raise FeedError(f"input {node.name!r} was not fed (pass it in the feed "
                            "dict: graph.run({input: array}))")
        if isinstance(node, Parameter) and node.backend is not self.backend:
            raise GraphError(f"parameter {node.name!r} lives on the {node.backend.name!r} backend "
                             f"but this graph runs on {self.backend.name!r}: move the model first")
        return node.forward(None)

    def _backward(self, values: list, ci: int, targets: tuple) -> list:
        key = tuple(t.id for t in targets)
        plan = self._backward_plans.get(key)
        if plan is None:
            plan = self._backward_plans[key] = self._backward_plan(
                ci, {self._index[t.id] for t in targets})
        grads: list = [None] * (ci + 1)
        cost = values[ci]
        grads[ci] = self.backend.xp.ones(cost.shape, dtype=cost.dtype)
        ctx = RunContext(self.backend, True)
        for i, node, args, needs in plan:
            g = grads[i]
            if g is None:
                continue
            ctx.needs = needs
            gin = node.backward(ctx, g, tuple(values[j] for j in args), values[i])
            for j, need, gj in zip(args, needs, gin):
                if gj is None or not need:
                    continue
                dt = values[j].dtype
                if gj.dtype != dt and dt.kind == "f":
                    gj = gj.astype(dt)  # a gradient keeps its node's dtype (no silent float64)
                grads[j] = gj if grads[j] is None else grads[j] + gj
        return grads

    def _backward_plan(self, ci: int, wanted: set[int]) -> list[tuple]:
        """(index, node, input indices, which inputs need a gradient), cost first."""
        needs = self._needs_grad(ci, wanted)
        return [(i, self.order[i], self._args[i], tuple(needs[j] for j in self._args[i]))
                for i in range(ci, -1, -1) if needs[i] and self.order[i].inputs]

    def _needs_grad(self, ci: int, wanted: set[int]) -> list[bool]:
        needs = [False] * (ci + 1)
        for i in range(ci + 1):
            needs[i] = i in wanted or any(needs[j] for j in self._args[i])
        return needs

    def _check_finite(self, node: Node, values: list, arg_idx: tuple) -> None:
        xp = self.backend.xp
        y = values[self._index[node.id]]
        if y is None or not hasattr(y, "dtype") or y.dtype.kind != "f":
            return
        if bool(xp.isfinite(y).all()):
            return
        where = "input" if isinstance(node, Input) else f"op {node.op!r}"
        raise NumericsError(f"node {node.name!r} ({where}) produced non-finite values"
                            + self._ranges(values, arg_idx))

    def _ranges(self, values: list, arg_idx: tuple) -> str:
        parts = []
        for j in arg_idx:
            v = values[j]
            name = self.order[j].name
            if hasattr(v, "shape") and getattr(v, "size", 0):
                parts.append(f"{name!r} {tuple(v.shape)} range [{float(v.min()):.4g}, {float(v.max()):.4g}]")
            else:
                parts.append(f"{name!r} = {v!r}")
        return "; inputs: " + ", ".join(parts) if parts else ""

    def _describe_failure(self, node: Node, values: list, arg_idx: tuple, exc: Exception) -> str:
        shapes = ", ".join(f"{self.order[j].name!r} {tuple(getattr(values[j], 'shape', ()))}"
                           for j in arg_idx)
        return f"op {node.op!r} at node {node.name!r} failed on inputs [{shapes}]: {exc}"


__all__ = ["Graph", "RunContext", "topological_order", "Constant"]

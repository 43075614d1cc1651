"""``Graph``: a DAG of nodes ordered once, then run many times (forward and reverse mode)."""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from .backends import Backend, backend
from .checks import flag
from .errors import ArgumentTypeError, FeedError, GraphError, NumericsError, RunError
from .backends.host import is_floating
from .backends.keyed import check_rng_key
from .node import Constant, Input, Node, Parameter
from .ops.fused import LinearActivation
from .ops.matrix import Linear
from .ops.unary import Activation
from .shapes import fmt


class RunContext:
    """What an op sees while it runs: the backend, its namespace and the mode.

    In a training step (``Graph.gradients``) an op may ask for its output array with
    :meth:`empty` and gets the same array back every step, and it may write the gradient
    of input ``k`` into :meth:`grad_out` ``(k)`` (with ``out=``) instead of a new array.
    What an op's backward needs from its forward goes through :meth:`save` and
    :meth:`saved`: it belongs to this run, not to the node (nodes are shared by graphs).
    ``rng_key`` is the run's key for random ops (None: the backend's own generator);
    ``key`` is the running node's position in the graph's order.
    """

    __slots__ = ("b", "xp", "training", "needs", "dests", "arena", "key", "rng_key", "_saved")

    def __init__(self, b: Backend, training: bool, arena: Optional["Arena"] = None,
                 rng_key: Optional[tuple] = None, saved: Optional[dict] = None) -> None:
        self.b = b
        self.xp = b.xp
        self.training = training
        self.rng_key = rng_key
        self._saved = {} if saved is None else saved
        # In backward: which of the node's inputs need a gradient (None: all).
        self.needs: Optional[tuple] = None
        # In backward: per input, an array to write its gradient into, or None.
        self.dests: Optional[tuple] = None
        self.arena = arena
        self.key = 0

    def empty(self, shape: tuple, dtype: Any, slot: int = 0) -> Any:
        """An uninitialised array for the running node's output (reused across steps)."""
        if self.arena is None:
            return self.xp.empty(shape, dtype)
        return self.arena.get((self.key, slot), shape, dtype)

    def save(self, value: Any) -> None:
        """Keep ``value`` for the running node's backward in this run."""
        self._saved[self.key] = value

    def saved(self) -> Any:
        """What the running node's forward kept with :meth:`save` in this run (or None)."""
        return self._saved.get(self.key)

    def grad_out(self, k: int, dtype: Any) -> Any:
        """The array to write input ``k``'s gradient (of ``dtype``) into, or None for a new one."""
        d = self.dests
        if d is None:
            return None
        d = d[k]
        return d if d is not None and d.dtype == dtype else None


class Arena:
    """Arrays a graph keeps from one training step to the next, one per (node, slot).

    Reusing them spares the allocator: fresh arrays of more than a few hundred KiB
    come back from the OS zeroed page by page on every step. It holds about one step's
    activations and gradients; a new batch size replaces the arrays it changes.
    """

    def __init__(self, xp: Any) -> None:
        self.xp = xp
        self._bufs: dict[Any, Any] = {}
        self.ids: set[int] = set()

    def get(self, key: Any, shape: tuple, dtype: Any) -> Any:
        buf = self._bufs.get(key)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            if buf is not None:
                self.ids.discard(id(buf))
            buf = self._bufs[key] = self.xp.empty(shape, dtype)
            self.ids.add(id(buf))
        return buf

    def nbytes(self) -> int:
        """Bytes held."""
        return sum(int(b.nbytes) for b in self._bufs.values())


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


def _output_list(outputs: Any) -> list[Node]:
    """``outputs`` (a sequence of nodes) as a list, or GraphError naming what is not a node."""
    if isinstance(outputs, (str, bytes, Mapping)) or not isinstance(outputs, Iterable):
        raise GraphError(f"Graph outputs must be a node or a list of nodes, got "
                         f"{type(outputs).__name__} {outputs!r}")
    outs = list(outputs)
    for k, o in enumerate(outs):
        if not isinstance(o, Node):
            raise GraphError(f"Graph outputs[{k}] must be a node, got {type(o).__name__} {o!r}")
    return outs


class Graph:
    """A computational graph from its outputs (and an optional scalar cost).

    ``run(feed)`` returns the outputs' values; ``gradients(feed)`` the cost's
    gradients. The order is computed once, here. ``gradients`` keeps its
    intermediate arrays (about one step's activations and their gradients) for the
    next call, so a step allocates almost nothing; what it returns is never reused.
    A graph runs one call at a time: share it between threads only with a lock.
    """

    def __init__(self, outputs: Outputs, cost: Optional[Node] = None,
                 check_numerics: bool = False, backend_: Optional[Backend] = None) -> None:
        self._single = isinstance(outputs, Node)
        outs = [outputs] if self._single else _output_list(outputs)
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
        self.outputs = outs
        self.cost = cost
        self.check_numerics = check_numerics
        self.backend = backend_ or backend()
        self.order = topological_order(outs + ([cost] if cost is not None else []))
        self._index = {node.id: i for i, node in enumerate(self.order)}
        self._args = [tuple(self._index[x.id] for x in node.inputs) for node in self.order]
        self.inputs = [n for n in self.order if isinstance(n, Input)]
        self._params = [n for n in self.order if isinstance(n, Parameter)]
        self._constants = {id(n.value) for n in self.order if isinstance(n, Constant)}
        self._plans: dict[tuple, tuple[list, list]] = {}
        self._target_cache: dict[Optional[tuple], tuple] = {}
        self._by_name = {n.name: n for n in self.order if isinstance(n, Input)}
        self._arena = Arena(self.backend.xp)
        self._into_checked: tuple = ()
        self._uses = [0] * len(self.order)
        for args in self._args:
            for j in args:
                self._uses[j] += 1
        self._held = {self._index[n.id] for n in outs + ([cost] if cost is not None else [])}
        self._step_plans: dict[tuple, tuple] = {}
        self._run_plan = self._plan(outs)
        self._cost_plan = self._plan([cost]) if cost is not None else ([], [])
        self._check_names()

    def _plan(self, roots: Sequence[Node]) -> tuple[list, list]:
        """What ``roots`` need: ``(leaves, ops)``, each in graph order.

        leaves: ``(index, kind, node)``, kind 1 a parameter, 2 an input, 3 another leaf
        (a constant); ops: ``(index, node, input indices)``.
        """
        needed = {self._index[r.id] for r in roots}
        for i in range(len(self.order) - 1, -1, -1):
            if i in needed:
                needed.update(self._args[i])
        leaves, ops = [], []
        for i in sorted(needed):
            node = self.order[i]
            if node.inputs:
                ops.append((i, node, self._args[i]))
            else:
                kind = 1 if isinstance(node, Parameter) else 2 if isinstance(node, Input) else 3
                leaves.append((i, kind, node))
        return leaves, ops

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
    def run(self, feed: Mapping[Any, Any], training: bool = False,
            rng_key: Optional[tuple[int, ...]] = None) -> Any:
        """The outputs' values for ``feed`` ({Input or its name: array}).

        ``rng_key`` (a tuple of non-negative ints, e.g. ``(seed, epoch, sample_offset)``)
        makes random ops (dropout) draw from that key and their position in the graph
        only, the same on every backend; None draws from the backend's generator.
        """
        values = self._forward(feed, training, self._run_plan, rng_key=rng_key)
        res = self._detach([values[self._index[o.id]] for o in self.outputs])
        return res[0] if self._single else res

    def values(self, feed: Mapping[Any, Any], nodes: Sequence[Node], training: bool = False,
               rng_key: Optional[tuple[int, ...]] = None) -> list:
        """Values of any ``nodes`` of this graph (the cost included) for ``feed``.

        ``rng_key``: see :meth:`run`.
        """
        key = tuple(n.id for n in nodes)
        plan = self._plans.get(key)
        if plan is None:
            for n in nodes:
                if n.id not in self._index:
                    raise GraphError(f"{n!r} is not part of this graph")
            plan = self._plans[key] = self._plan(nodes)
        values = self._forward(feed, training, plan, rng_key=rng_key)
        return self._detach([values[self._index[n.id]] for n in nodes])

    def _detach(self, results: list) -> list:
        """``results`` with every array that may alias live state (a view, a parameter's or
        constant's own array, an array already handed out) replaced by a copy."""
        live = {id(p._value) for p in self._params}
        seen: set[int] = set()
        out = []
        for r in results:
            if hasattr(r, "base") and (r.base is not None or id(r) in live or id(r) in seen
                                       or id(r) in self._arena.ids or id(r) in self._constants):
                r = r.copy()
            seen.add(id(r))
            out.append(r)
        return out

    def gradients(self, feed: Mapping[Any, Any], wrt: Optional[Iterable[Node]] = None,
                  training: bool = True, return_cost: bool = False,
                  into: Optional[Mapping[Node, Any]] = None,
                  rng_key: Optional[tuple[int, ...]] = None) -> Any:
        """``{node: d cost / d node}`` for the parameters (or the nodes in ``wrt``).

        A node the cost does not depend on gets a zero gradient. With
        ``return_cost`` the cost's value comes too: ``(cost, grads)``. With ``into``
        (``{node: array}`` for every node differentiated) the gradients are written
        into those arrays, which come back as the dict; otherwise each is a new array.
        ``rng_key``: see :meth:`run`.
        """
        if self.cost is None:
            raise GraphError("this graph has no cost: build it as gn.Graph(outputs, cost=loss)")
        targets = self._targets(wrt)
        ci = self._index[self.cost.id]
        arena = self._arena
        key = (targets, self.check_numerics)  # checking numerics runs every node on its own
        plans = self._step_plans.get(key)
        if plans is None:
            plans = self._step_plans[key] = self._step_plan(ci, targets)
        saved: dict = {}
        values = self._forward(feed, training, plans[0], arena, ci, rng_key, saved)
        if tuple(getattr(values[ci], "shape", ())) != ():
            raise GraphError(f"the cost must be a scalar, but {self.cost.name!r} has shape "
                             f"{tuple(values[ci].shape)} at run time "
                             "(reduce it, e.g. with .mean())")
        if into is not None:
            seen = (id(into), targets, tuple([id(into.get(t)) for t in targets]))
            if seen != self._into_checked:  # checked once while the same arrays come back
                self._check_into(targets, values, into)
                self._into_checked = seen
        grads = self._backward(values, ci, plans[1], arena, into, saved)
        out = self._collect(targets, grads, values, into)
        if not return_cost:
            return out
        cost = values[ci]
        if getattr(cost, "base", None) is not None:
            cost = cost.copy()  # a view of an array the next step reuses
        return cost, out

    def _collect(self, targets: tuple, grads: list, values: list,
                 into: Optional[Mapping[Node, Any]]) -> dict:
        """The gradients to hand out: each in its ``into`` array or a new array of its own."""
        out: dict = {}
        if into is not None:
            for t in targets:
                g, buf = grads[self._index[t.id]], into[t]
                if g is None:
                    buf[...] = 0
                elif g is not buf:
                    self.backend.xp.copyto(buf, g)
                out[t] = buf
            return out
        kept = self._arena.ids
        seen: set[int] = set()
        for t in targets:  # no views, no sharing, nothing the next step overwrites
            g = self._grad_or_zero(t, grads, values)
            if getattr(g, "base", None) is not None or id(g) in seen or id(g) in kept:
                g = g.copy()
            seen.add(id(g))
            out[t] = g
        return out

    def _check_into(self, targets: tuple, values: list, into: Mapping[Node, Any]) -> None:
        for t in targets:
            buf = into.get(t)
            if buf is None:
                raise GraphError(f"gradients(into=...) has no array for {t.name!r}")
            v = values[self._index[t.id]]
            if v is None:  # not on the cost's path: its gradient is zero
                v = getattr(t, "value", None)
            shape = tuple(v.shape) if v is not None else t.shape
            dtype = v.dtype if v is not None else t.dtype
            if not self.backend.is_array(buf) or tuple(buf.shape) != shape or buf.dtype != dtype:
                raise GraphError(f"gradients(into=...): the array for {t.name!r} must be a "
                                 f"{self.backend.name} array of shape {shape} and dtype {dtype}, "
                                 f"got {type(buf).__name__} {tuple(getattr(buf, 'shape', ()))} "
                                 f"{getattr(buf, 'dtype', '')}")

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
        if type(feed) is not dict and not isinstance(feed, Mapping):
            raise FeedError(f"the feed must be a dict {{input or its name: array}}, got "
                            f"{type(feed).__name__}")
        fed: dict[int, Any] = {}
        for key, value in feed.items():
            node = by_name.get(key) if isinstance(key, str) else key
            if not isinstance(node, Input) or node.id not in self._index:
                label = key if isinstance(key, str) else getattr(key, "name", repr(key))
                other = " (a different Input of the same name)" if label in by_name else ""
                raise FeedError(f"feed names {label!r}{other}, which is not an input of this graph "
                                f"(inputs: {', '.join(repr(n.name) for n in self.inputs)})")
            if node.id in fed:
                raise FeedError(f"input {node.name!r} is fed twice (once by the node, once by "
                                "its name): give it once")
            fed[node.id] = node.check_feed(b, value)
        return fed

    def _forward(self, feed: Mapping[Any, Any], training: bool, plan: tuple[list, list],
                 arena: Optional[Arena] = None, escape: int = -1,
                 rng_key: Optional[tuple] = None, saved: Optional[dict] = None) -> list:
        """Values of the nodes in ``plan``; with an arena, all but node ``escape`` may reuse it.

        What ops keep for their backward goes into ``saved``.
        """
        rng_key = check_rng_key(rng_key)
        fed = self._resolve_feed(feed)
        values: list = [None] * len(self.order)
        leaves, ops = plan
        for i, kind, node in leaves:
            values[i] = self._leaf(kind, node, fed)
        check = self.check_numerics
        ctx = RunContext(self.backend, training, None if check else arena, rng_key, saved)
        i, args = 0, ()
        try:
            if check:
                for i, _, node in leaves:
                    self._check_finite(node, values, ())
            for i, node, args in ops:
                if i == escape:
                    ctx.arena = None  # the value handed out must not be overwritten later
                ctx.key = i
                values[i] = node.forward(ctx, *[values[j] for j in args])
                if check:
                    self._check_finite(node, values, args)
        except (FeedError, NumericsError, GraphError):
            raise
        except Exception as exc:
            if _out_of_memory(exc):  # as it is: the caller's advice is about the batch size
                raise
            raise RunError(self._describe_failure(node, values, args, exc)) from exc
        return values

    def _leaf(self, kind: int, node: Node, fed: dict) -> Any:
        if kind == 1:
            if node.backend is not self.backend:
                raise GraphError(self._wrong_backend(node))
            return node._value
        if kind == 2:
            v = fed.get(node.id)
            if v is None:
                raise FeedError(f"input {node.name!r} was not fed (pass it in the feed "
                                "dict: graph.run({input: array}))")
            return v
        return node.forward(None)

    def _wrong_backend(self, node: Parameter) -> str:
        return (f"parameter {node.name!r} lives on the {node.backend.name!r} backend "
                f"but this graph runs on {self.backend.name!r}: move the model first")

    def _backward(self, values: list, ci: int, plan: list, arena: Optional[Arena] = None,
                  into: Optional[Mapping[Node, Any]] = None, saved: Optional[dict] = None) -> list:
        grads: list = [None] * (ci + 1)
        owned = [False] * (ci + 1)  # grads[j] is an array of j's own, safe to add into
        cost = values[ci]
        grads[ci] = self.backend.xp.ones(cost.shape, dtype=cost.dtype)
        ctx = RunContext(self.backend, True, arena, saved=saved)
        offer = arena is not None or into is not None
        order = self.order
        for i, node, args, needs, wanted, slots in plan:
            g = grads[i]
            if g is None:
                continue
            ctx.needs = needs
            ctx.key = i
            dests = None
            if slots and offer:
                dests = [None] * len(args)
                for k, j, kind in slots:
                    if grads[j] is None:
                        if kind == 1:
                            if arena is not None:
                                v = values[j]
                                dests[k] = arena.get(~j, v.shape, v.dtype)
                        elif into is not None:
                            dests[k] = into[order[j]]
            ctx.dests = dests
            gin = node.backward(ctx, g, tuple([values[j] for j in args]), values[i])
            for k, j in wanted:
                gj = gin[k]
                if gj is None:
                    continue
                if dests is not None and gj is dests[k]:
                    grads[j] = gj  # written where it was offered: j's own array
                    owned[j] = True
                    continue
                dt = values[j].dtype
                if gj.dtype != dt and dt.kind == "f":
                    gj = gj.astype(dt)  # a gradient keeps its node's dtype (no silent float64)
                if grads[j] is None:
                    grads[j] = gj
                elif owned[j]:
                    grads[j] += gj
                else:
                    grads[j] = grads[j] + gj
                    owned[j] = True
        return grads

    def _step_plan(self, ci: int, targets: tuple) -> tuple[tuple, list]:
        """The forward and backward plans of a training step for ``targets``.

        Where a linear node feeds an activation and nothing else, and its value and
        gradient are not asked for, the two run as one fused step (not when checking
        numerics, which names each node's values).
        """
        wanted = {self._index[t.id] for t in targets}
        fused = {} if self.check_numerics else self._fusions(wanted)
        leaves, ops = self._cost_plan
        if fused:
            inner = set(fused.values())
            ops = [(i, LinearActivation(self.order[fused[i]], node), self._args[fused[i]])
                   if i in fused else (i, node, args)
                   for i, node, args in ops if i not in inner]
        return (leaves, ops), self._backward_plan(ci, wanted, fused)

    def _fusions(self, wanted: set[int]) -> dict[int, int]:
        """``{activation index: linear index}`` for the pairs a step may fuse."""
        pairs = {}
        for i, node in enumerate(self.order):
            if not isinstance(node, Activation):
                continue
            j = self._args[i][0]
            lin = self.order[j]
            if (isinstance(lin, Linear) and self._uses[j] == 1 and j not in self._held
                    and j not in wanted and lin.dtype is not None and is_floating(lin.dtype)):
                pairs[i] = j
        return pairs

    def _backward_plan(self, ci: int, wanted: set[int],
                       fused: Optional[dict[int, int]] = None) -> list[tuple]:
        """``(index, node, input indices, which need a gradient, (k, j) of those, slots)``.

        Cost first.

        ``slots``: ``(k, j, kind)`` for the inputs whose gradient may be written into an
        array offered to the op: kind 1 an arena array (an intermediate node's gradient,
        never handed out), 2 the caller's ``into`` array (a node differentiated). An
        input that appears twice is offered one only the first time.
        """
        needs = self._needs_grad(ci, wanted)
        fused = fused or {}
        inner = set(fused.values())
        plan = []
        for i in range(ci, -1, -1):
            node = self.order[i]
            if not (needs[i] and node.inputs) or i in inner:
                continue
            args = self._args[i]
            if i in fused:
                node, args = LinearActivation(self.order[fused[i]], node), self._args[fused[i]]
            slots = []
            for k, j in enumerate(args):
                if not needs[j] or j in args[:k]:
                    continue
                if j in wanted:
                    slots.append((k, j, 2))
                elif self._arena_ok(self.order[j]):
                    slots.append((k, j, 1))
            wanted_args = tuple((k, j) for k, j in enumerate(args) if needs[j])
            plan.append((i, node, args, tuple(needs[j] for j in args), wanted_args, tuple(slots)))
        return plan

    @staticmethod
    def _arena_ok(node: Node) -> bool:
        # Shape known to have rank >= 1: 0-d results are NumPy scalars, not writable arrays.
        return node.shape is not None and len(node.shape) >= 1

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


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the host's MemoryError or an array library's out-of-memory error."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"


__all__ = ["Arena", "Graph", "RunContext", "topological_order", "Constant"]

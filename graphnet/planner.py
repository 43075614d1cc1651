"""The step planner: how ``Graph.gradients`` runs a training step fast.

Everything here is for speed only; the results are bit-identical to the reference
executor in :mod:`graphnet.graph` (tests/test_planner.py runs both). A step plan
adds three things to the reference run:

- an :class:`Arena`: the arrays of one step's activations and gradients, reused by
  the next step (ops ask for them with ``ctx.empty`` and ``ctx.grad_out``);
- gradient destinations: an op may write an input's gradient into an offered array
  (an arena array, or the caller's ``into=`` array for a node differentiated);
- fusion: rewrite rules, registered by ops with :func:`register_fusion`, that run two
  nodes as one step (``ops/fused.py`` registers linear followed by an activation, and
  conv2d followed by an activation or a max-pool). Forward passes (``Graph.run``,
  ``Graph.values``) use the rules too: :meth:`StepPlanner.forward_plan`.

A plan runs through a straight-line function generated for it (:mod:`graphnet.stepgen`),
or, with ``Graph(..., plan="loop")`` and where the generator does not apply, through the
loop in :meth:`StepPlanner._backward`; each node's kernels are resolved once per backend
(:func:`graphnet.kernels.implementations`).

This module imports no concrete op.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple, Optional, Sequence

from .backends.keyed import check_rng_key
from .checks import flag
from .errors import GraphError
from .graph_checks import check_into, check_scalar_cost, resolve_feed
from .kernels import KernelTable, implementations
from .node import Node, RunContext
from .stepgen import GeneratedStep, NotGenerated, generate

if TYPE_CHECKING:
    from .graph import Graph, Plan, Step


class Arena:
    """Arrays a graph keeps from one training step to the next, one per key.

    Reusing them spares the allocator: fresh arrays of more than a few hundred KiB
    come back from the OS zeroed page by page on every step. It holds about one step's
    activations and gradients; a new batch size replaces the arrays it changes.
    """

    def __init__(self, xp: Any) -> None:
        self.xp = xp
        self._bufs: dict[Any, Any] = {}
        self.ids: set[int] = set()

    def get(self, key: Any, shape: tuple, dtype: Any) -> Any:
        """The array kept under ``key``, replaced if its shape or dtype changed."""
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


class StepContext(RunContext):
    """A :class:`RunContext` whose ``empty`` and ``grad_out`` hand out reusable arrays."""

    __slots__ = ("arena", "escape", "dests")

    def __init__(self, b: Any, training: bool, arena: Optional[Arena], escape: int = -1,
                 rng_key: Optional[tuple] = None, saved: Optional[dict] = None,
                 kernels: Optional[KernelTable] = None) -> None:
        super().__init__(b, training, rng_key, saved, kernels)
        self.arena = arena
        self.escape = escape  # the node whose value is handed out: never an arena array
        self.dests: Optional[list] = None

    def empty(self, shape: tuple, dtype: Any, slot: int = 0) -> Any:
        if self.arena is None or self.key == self.escape:
            return self.xp.empty(shape, dtype)
        return self.arena.get((self.key, slot), shape, dtype)

    def grad_out(self, k: int, dtype: Any) -> Any:
        d = self.dests
        if d is None:
            return None
        d = d[k]
        return d if d is not None and d.dtype == dtype else None


# --- fusion rules ---------------------------------------------------------------------
class FusionRule(NamedTuple):
    """Run ``producer`` and its only consumer as one step: ``build(producer, consumer)``.

    The consumer's first input must be the producer; ``when(producer)`` says whether this
    producer qualifies (e.g. a floating dtype, for in-place arithmetic).
    """

    producer: type
    consumer: type
    build: Callable[[Any, Any], Any]
    when: Callable[[Any], bool]


_RULES: list[FusionRule] = []


def register_fusion(producer: type, consumer: type, build: Callable[[Any, Any], Any],
                    when: Callable[[Any], bool] = lambda node: True) -> None:
    """Let steps and forward passes run ``consumer(producer(...))`` as ``build(producer, consumer)``.

    The built step has the producer's inputs, the consumer's place in the graph and the
    op contract of a node (``forward(ctx, *xs)``, ``backward(ctx, g, xs, y)``). It is used
    only where nothing else needs the producer's value or gradient.
    """
    rule = FusionRule(producer, consumer, build, when)
    if rule not in _RULES:
        _RULES.append(rule)


def _rule_for(producer: Node, consumer: Node) -> Optional[FusionRule]:
    for rule in _RULES:
        if isinstance(consumer, rule.consumer) and isinstance(producer, rule.producer) \
                and rule.when(producer):
            return rule
    return None


def _fuse(plan: "Plan", fused: dict[int, tuple[int, "Step"]]) -> "Plan":
    """``plan`` with each fused pair's two steps replaced by the fused one."""
    if not fused:
        return plan
    inner = {j for j, _ in fused.values()}
    return plan._replace(steps=[fused[s.index][1] if s.index in fused else s
                                for s in plan.steps if s.index not in inner])


# --- plans ----------------------------------------------------------------------------
class Offer(NamedTuple):
    """Input ``k`` (node ``j``) may get its gradient written into an offered array."""

    k: int
    j: int
    into: bool  # True: the caller's ``into=`` array; False: an arena array


class BackwardStep(NamedTuple):
    """One node's backward in a step plan."""

    index: int
    node: Any
    args: tuple[int, ...]
    needs: tuple[bool, ...]          # per input: does it need a gradient
    wanted: tuple[tuple[int, int], ...]  # (k, j) for the inputs that do
    offers: tuple[Offer, ...]


class StepPlan(NamedTuple):
    forward: "Plan"
    backward: list[BackwardStep]
    finals: Sequence[tuple[int, ...]] = ()  # per backward step: targets whose gradient it completes


class StepPlanner:
    """Runs ``graph``'s training steps with reused arrays, offered destinations and fusion;
    plans its forward passes with fusion."""

    def __init__(self, graph: "Graph") -> None:
        self.graph = graph
        self.arena = Arena(graph.backend.xp)
        self.kernels = implementations(graph.backend.name)  # the backend never changes
        self._plans: dict[tuple, StepPlan] = {}
        self._forward_plans: dict[tuple, "Plan"] = {}
        self._code: dict[tuple, GeneratedStep] = {}
        self._into_checked: tuple = ()
        self._uses = [0] * len(graph.order)
        for args in graph.args:
            for j in args:
                self._uses[j] += 1
        roots = graph.outputs + ([graph.cost] if graph.cost is not None else [])
        self._held = {graph.index[n.id] for n in roots}

    def plan(self, targets: tuple) -> StepPlan:
        """The (cached) plan of a step differentiating ``targets``."""
        g = self.graph
        key = (targets, g.check_numerics)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._build(targets, g.check_numerics)
        return plan

    def generated(self, targets: tuple, into: bool, final: bool) -> GeneratedStep:
        """The (cached) generated step of the plan for ``targets``: ``run`` is None where
        the loop runs instead. ``into``, ``final``: whether ``into=`` and ``on_final`` are given."""
        g = self.graph
        key = (targets, g.check_numerics, into, final)
        code = self._code.get(key)
        if code is None:
            try:
                code = generate(g, self.plan(targets), targets, g.check_numerics, into, final,
                                self._after_forward, self.arena.get)
            except NotGenerated as why:
                code = GeneratedStep(f"# no generated step: {why}; it runs through the "
                                     "planner's loop\n", None)
            self._code[key] = code
        return code

    def source(self, wrt: Optional[Any] = None, into: bool = False, on_final: bool = False) -> str:
        """The Python source of the generated training step differentiating ``wrt`` (default:
        the parameters), with or without ``into=`` arrays and an ``on_final`` hook."""
        g = self.graph
        if g.cost is None:
            raise GraphError("this graph has no cost, so no training step: build it as "
                             "gn.Graph(outputs, cost=loss)")
        into, on_final = flag(into, "source into"), flag(on_final, "source on_final")
        return self.generated(g._targets(wrt), into, on_final).source

    def step(self, feed: Mapping[Any, Any], targets: tuple, training: bool,
             into: Optional[Mapping[Node, Any]], rng_key: Optional[tuple],
             on_final: Optional[Callable[[Node], None]] = None) -> tuple[list, dict]:
        """One step: ``(values, {target: gradient})``.

        ``on_final(target)`` (needs ``into``) is called as soon as ``into[target]`` holds
        the target's final gradient, once per target, while backward goes on.
        """
        g = self.graph
        if g.plan == "step":
            run = self.generated(targets, into is not None, on_final is not None).run
            if run is not None:
                return self._run_generated(run, feed, targets, training, into, rng_key, on_final)
        ci = g.index[g.cost.id]
        plan = self.plan(targets)
        saved: dict = {}
        # Checking numerics names each node's values: they must not be overwritten.
        arena = None if g.check_numerics else self.arena
        ctx = StepContext(g.backend, training, arena, ci, rng_key, saved, self.kernels)
        values = g.forward(feed, plan.forward, ctx)
        self._after_forward(values, targets, into)
        final = None if on_final is None else _Finaliser(g, grads_into=into, on_final=on_final)
        grads = self._backward(values, ci, plan, into, saved, final)
        if final is not None:
            return values, final.finish(targets, grads)
        if into is not None:
            return values, g.copy_into(targets, grads, into)
        return values, g.collect(targets, grads, values, kept=self.arena.ids)

    def _run_generated(self, run: Callable[..., tuple], feed: Mapping[Any, Any], targets: tuple,
                       training: bool, into: Optional[Mapping[Node, Any]],
                       rng_key: Optional[tuple], on_final: Optional[Callable[[Node], None]]
                       ) -> tuple[list, dict]:
        g = self.graph
        saved: dict = {}
        ctx = StepContext(g.backend, training, self.arena, g.index[g.cost.id],
                          check_rng_key(rng_key), saved, self.kernels)
        fed = resolve_feed(g, feed)
        bctx = StepContext(g.backend, True, self.arena, saved=saved, kernels=self.kernels)
        values, out = run(fed, ctx, bctx, into, on_final)
        if into is None:
            out = g.collect(targets, out, values, kept=self.arena.ids)
        return values, out

    def _after_forward(self, values: list, targets: tuple,
                       into: Optional[Mapping[Node, Any]]) -> None:
        """The checks between forward and backward: a scalar cost, fitting ``into`` arrays."""
        g = self.graph
        check_scalar_cost(g, values[g.index[g.cost.id]])
        if into is not None:
            seen = (id(into), targets, tuple([id(into.get(t)) for t in targets]))
            if seen != self._into_checked:  # checked once while the same arrays come back
                check_into(g, targets, values, into)
                self._into_checked = seen

    def fused_ops(self, targets: tuple) -> list[str]:
        """The ops of the fused steps the last plan for ``targets`` runs (for tests)."""
        plan = self._plans.get((targets, self.graph.check_numerics))
        if plan is None:
            return []
        return [s.node.op for s in plan.forward.steps if s.node is not self.graph.order[s.index]]

    # --- building plans ----------------------------------------------------------------
    def _build(self, targets: tuple, check: bool) -> StepPlan:
        g = self.graph
        ci = g.index[g.cost.id]
        wanted = {g.index[t.id] for t in targets}
        forward = g.plan_for([g.cost])
        fused = {} if check else self._fusions(wanted, forward.steps)  # checking: every node alone
        backward = self._backward_plan(ci, wanted, fused)
        return StepPlan(_fuse(forward, fused), backward, _final_writes(backward, wanted))

    def forward_plan(self, nodes: Sequence[Node], who: str = "forward_plan") -> "Plan":
        """The (cached) plan of a forward pass that gives ``nodes``' values (``Graph.run``,
        ``Graph.values``): ``graph.plan_for(nodes)`` with the fused steps whose producer's
        value nothing else needs. Fused steps give the same bits as the two nodes.
        ``who`` names the caller in the error for nodes that are not this graph's."""
        g = self.graph
        key: Optional[tuple] = None  # a Node iterates forever (x[0], x[1], ...): lists only
        if isinstance(nodes, (list, tuple)) and all(isinstance(n, Node) for n in nodes):
            key = (tuple([n.id for n in nodes]), g.check_numerics)
        plan = self._forward_plans.get(key)
        if plan is None:
            key = (g.check_nodes(nodes, who), g.check_numerics)
            plan = g.plan_for(nodes)
            if not g.check_numerics:
                plan = _fuse(plan, self._fusions({g.index[n.id] for n in nodes}, plan.steps))
            self._forward_plans[key] = plan
        return plan

    def _fusions(self, wanted: set[int], steps: Sequence["Step"]) -> dict[int, tuple[int, "Step"]]:
        """``{consumer index: (producer index, fused step)}`` for the pairs among ``steps``
        that may fuse: the producer's value is used once and not ``wanted`` (nor an output)."""
        if not _RULES:
            return {}
        g = self.graph
        pairs = {}
        for step in steps:
            i, node = step.index, step.node
            j = step.args[0]
            if self._uses[j] != 1 or j in self._held or j in wanted:
                continue
            producer = g.order[j]
            rule = _rule_for(producer, node)
            if rule is not None:
                pairs[i] = (j, step._replace(node=rule.build(producer, node), args=g.args[j]))
        return pairs

    def _backward_plan(self, ci: int, wanted: set[int], fused: dict) -> list[BackwardStep]:
        """Cost first. An input that appears twice is offered an array only the first time."""
        g = self.graph
        needs = [False] * (ci + 1)
        for i in range(ci + 1):
            needs[i] = i in wanted or any(needs[j] for j in g.args[i])
        inner = {j for j, _ in fused.values()}
        plan = []
        for i in range(ci, -1, -1):
            node, args = g.order[i], g.args[i]
            if not (needs[i] and node.inputs) or i in inner:
                continue
            if i in fused:
                node, args = fused[i][1].node, fused[i][1].args
            offers = tuple(Offer(k, j, j in wanted) for k, j in enumerate(args)
                           if needs[j] and j not in args[:k]
                           and (j in wanted or _rank_known(g.order[j])))
            plan.append(BackwardStep(i, node, args, tuple(needs[j] for j in args),
                                     tuple((k, j) for k, j in enumerate(args) if needs[j]),
                                     offers))
        return plan

    # --- running ------------------------------------------------------------------------
    def _backward(self, values: list, ci: int, step_plan: StepPlan,
                  into: Optional[Mapping[Node, Any]], saved: dict,
                  final: Optional["_Finaliser"] = None) -> list:
        g = self.graph
        grads: list = [None] * (ci + 1)
        owned = [False] * (ci + 1)  # grads[j] is an array of j's own, safe to add into
        cost = values[ci]
        grads[ci] = g.backend.xp.ones(cost.shape, dtype=cost.dtype)
        ctx = StepContext(g.backend, True, self.arena, saved=saved, kernels=self.kernels)
        order = g.order
        finals = step_plan.finals if final is not None else ()
        for s, (i, node, args, needs, wanted, offers) in enumerate(step_plan.backward):
            if finals and s and finals[s - 1]:
                final.emit(finals[s - 1], grads)
            gi = grads[i]
            if gi is None:
                continue
            ctx.needs = needs
            ctx.key = i
            dests = None
            if offers:
                dests = [None] * len(args)
                for k, j, to_into in offers:
                    if grads[j] is None:
                        if not to_into:
                            v = values[j]
                            dests[k] = self.arena.get(("grad", j), v.shape, v.dtype)
                        elif into is not None:
                            dests[k] = into[order[j]]
            ctx.dests = dests
            gin = node.backward(ctx, gi, tuple([values[j] for j in args]), values[i])
            for k, j in wanted:
                gj = gin[k]
                if gj is None:
                    continue
                if dests is not None and gj is dests[k]:
                    grads[j] = gj  # written where it was offered: j's own array
                    owned[j] = True
                    continue
                gj = g.keep_dtype(gj, values[j])
                if grads[j] is None:
                    grads[j] = gj
                elif owned[j]:
                    grads[j] += gj
                else:
                    grads[j] = grads[j] + gj
                    owned[j] = True
        if finals and finals[-1]:
            final.emit(finals[-1], grads)
        return grads


def _final_writes(plan: list[BackwardStep], wanted: set[int]) -> list[tuple[int, ...]]:
    """Per backward step, the differentiated nodes whose gradient it writes for the last time."""
    last: dict[int, int] = {}
    for s, step in enumerate(plan):
        for _, j in step.wanted:
            if j in wanted:
                last[j] = s
    finals: list[list[int]] = [[] for _ in plan]
    for j, s in last.items():
        finals[s].append(j)
    return [tuple(sorted(f, reverse=True)) for f in finals]


class _Finaliser:
    """Writes each target's gradient into its ``into`` array once it is final, then reports it."""

    def __init__(self, graph: "Graph", grads_into: Mapping[Node, Any],
                 on_final: Callable[[Node], None]) -> None:
        self.graph, self.into, self.on_final = graph, grads_into, on_final
        self.done: set[int] = set()

    def emit(self, js: tuple[int, ...], grads: list) -> None:
        order = self.graph.order
        for j in js:
            node = order[j]
            self.graph.copy_into((node,), grads, self.into)
            self.done.add(j)
            self.on_final(node)

    def finish(self, targets: tuple, grads: list) -> dict:
        """The rest (those backward never wrote: zero), then ``{target: into[target]}``."""
        index = self.graph.index
        rest = tuple(sorted({index[t.id] for t in targets} - self.done, reverse=True))
        self.emit(rest, grads)
        return {t: self.into[t] for t in targets}


def _rank_known(node: Node) -> bool:
    # Shape known to have rank >= 1: 0-d results are NumPy scalars, not writable arrays.
    return node.shape is not None and len(node.shape) >= 1


__all__ = ["Arena", "BackwardStep", "FusionRule", "Offer", "StepContext", "StepPlan",
           "StepPlanner", "register_fusion"]

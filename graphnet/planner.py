"""The step planner: how ``Graph.gradients`` runs a training step fast.

Everything here is for speed only; the results are bit-identical to the reference
executor (:mod:`graphnet.reference`, which this module uses and never changes). A step
plan adds three things to the reference run:

- an :class:`Arena`: the arrays of one step's activations and gradients, reused by
  the next step (ops ask for them with ``ctx.empty`` and ``ctx.grad_out``);
- gradient destinations: an op may write an input's gradient into an offered array
  (an arena array, or the caller's ``into=`` array for a node differentiated);
- fusion: rewrite rules, registered by ops with :func:`register_fusion`, that run two
  nodes as one step (:func:`fusion_rules` lists them). Forward passes (``Graph.run``,
  ``Graph.values``) use the rules too: :meth:`StepPlanner.forward_plan`.

A step plan runs as a straight-line function generated for it (:mod:`graphnet.stepgen`);
a plan the generator does not handle runs on the reference executor instead
(:meth:`StepPlanner.step` returns None and ``Graph`` falls back). Each node's kernels are
resolved once per backend (:func:`graphnet.kernels.implementations`).

This module imports no concrete op.
"""
from __future__ import annotations

from contextlib import ExitStack, nullcontext
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

from .checks import flag
from .errors import GraphError
from .graph_checks import check_into, check_nodes, check_scalar_cost, check_targets, resolve_feed
from .kernels import KernelTable, implementations
from .node import Node, RunContext
from .reference import Plan, Reference, Step
from .stepgen import GeneratedStep, NotGenerated, generate


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


def _fuse(plan: Plan, fused: dict[int, tuple[int, Step]]) -> Plan:
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
    forward: Plan
    backward: list[BackwardStep]
    finals: Sequence[tuple[int, ...]] = ()  # per backward step: targets whose gradient it completes


class StepPlanner:
    """Runs the training steps of the graph ``ref`` orders with reused arrays, offered
    destinations and fusion, through generated code; plans its forward passes with fusion."""

    def __init__(self, ref: Reference) -> None:
        self.ref = ref
        self.arena = Arena(ref.backend.xp)
        self.kernels = implementations(ref.backend.name)  # the backend never changes
        self._plans: dict[tuple, StepPlan] = {}
        self._forward_plans: dict[tuple, Plan] = {}
        self._code: dict[tuple, GeneratedStep] = {}
        self._into_checked: tuple = ()
        self._uses = [0] * len(ref.order)
        for args in ref.args:
            for j in args:
                self._uses[j] += 1
        roots = ref.outputs + ([ref.cost] if ref.cost is not None else [])
        self._held = {ref.index[n.id] for n in roots}
        # What a step of this graph must run inside (e.g. the BLAS held at one thread while
        # a convolution's chunks run on worker threads): each op class may name one.
        self._scopes = list({type(n).step_scope: None for n in ref.order
                             if getattr(type(n), "step_scope", None) is not None})

    def plan(self, targets: tuple) -> StepPlan:
        """The (cached) plan of a step differentiating ``targets``."""
        plan = self._plans.get(targets)
        if plan is None:
            plan = self._plans[targets] = self._build(targets)
        return plan

    def generated(self, targets: tuple, into: bool, final: bool) -> GeneratedStep:
        """The (cached) generated step of the plan for ``targets``: ``run`` is None where
        the reference executor runs instead. ``into``, ``final``: whether ``into=`` and
        ``on_final`` are given."""
        key = (targets, into, final)
        code = self._code.get(key)
        if code is None:
            try:
                code = generate(self.ref, self.plan(targets), targets, into, final,
                                self._after_forward, self.arena.get)
            except NotGenerated as why:
                code = GeneratedStep(f"# no generated step: {why}; it runs on the reference "
                                     "executor\n", None)
            self._code[key] = code
        return code

    def source(self, wrt: Optional[Any] = None, into: bool = False, on_final: bool = False) -> str:
        """The Python source of the generated training step differentiating ``wrt`` (default:
        the parameters), with or without ``into=`` arrays and an ``on_final`` hook."""
        if self.ref.cost is None:
            raise GraphError("this graph has no cost, so no training step: build it as "
                             "gn.Graph(outputs, cost=loss)")
        into, on_final = flag(into, "source into"), flag(on_final, "source on_final")
        return self.generated(check_targets(self.ref, wrt), into, on_final).source

    def step(self, feed: Mapping[Any, Any], targets: tuple, training: bool,
             into: Optional[Mapping[Node, Any]], rng_key: Optional[tuple],
             on_final: Optional[Callable[[Node], None]] = None) -> Optional[tuple[list, dict]]:
        """One step: ``(values, {target: gradient})``, or None where no step is generated.

        ``on_final(target)`` (needs ``into``) is called as soon as ``into[target]`` holds
        the target's final gradient, once per target, while backward goes on.
        """
        run = self.generated(targets, into is not None, on_final is not None).run
        if run is None:
            return None
        ref, saved = self.ref, {}
        ctx = StepContext(ref.backend, training, self.arena, ref.index[ref.cost.id], rng_key,
                          saved, self.kernels)
        bctx = StepContext(ref.backend, training, self.arena, saved=saved, kernels=self.kernels)
        fed = resolve_feed(ref, feed)
        with self._scope():
            values, out = run(fed, ctx, bctx, into, on_final)
        if into is None:
            out = ref.collect(targets, out, values, kept=self.arena.ids)
        return values, out

    def _scope(self) -> Any:
        """What this graph's step runs inside: its ops' ``step_scope``s, entered in turn."""
        scopes = self._scopes
        if not scopes:
            return nullcontext()
        if len(scopes) == 1:
            return scopes[0](self.ref.backend)
        stack = ExitStack()
        for scope in scopes:
            stack.enter_context(scope(self.ref.backend))
        return stack

    def _after_forward(self, values: list, targets: tuple,
                       into: Optional[Mapping[Node, Any]]) -> None:
        """The checks between forward and backward: a scalar cost, fitting ``into`` arrays."""
        ref = self.ref
        check_scalar_cost(ref, values[ref.index[ref.cost.id]])
        if into is not None:
            seen = (id(into), targets, tuple([id(into.get(t)) for t in targets]))
            if seen != self._into_checked:  # checked once while the same arrays come back
                check_into(ref, targets, values, into)
                self._into_checked = seen

    def fused_ops(self, targets: tuple) -> list[str]:
        """The ops of the fused steps the plan for ``targets`` runs (for tests); none while
        ``check_numerics`` sends the graph's steps to the reference executor."""
        plan = self._plans.get(targets)
        if plan is None or self.ref.check_numerics:
            return []
        return [s.node.op for s in plan.forward.steps if s.node is not self.ref.order[s.index]]

    # --- building plans ----------------------------------------------------------------
    def _build(self, targets: tuple) -> StepPlan:
        ref = self.ref
        ci = ref.index[ref.cost.id]
        wanted = {ref.index[t.id] for t in targets}
        forward = ref.plan_for([ref.cost])
        fused = self._fusions(wanted, forward.steps)
        backward = self._backward_plan(ci, wanted, fused)
        return StepPlan(_fuse(forward, fused), backward, _final_writes(backward, wanted))

    def forward_plan(self, nodes: Sequence[Node], who: str = "forward_plan") -> Plan:
        """The (cached) plan of a forward pass that gives ``nodes``' values (``Graph.run``,
        ``Graph.values``): ``ref.plan_for(nodes)`` with the fused steps whose producer's
        value nothing else needs. Fused steps give the same bits as the two nodes.
        ``who`` names the caller in the error for nodes that are not this graph's."""
        ref = self.ref
        key: Optional[tuple] = None  # a Node iterates forever (x[0], x[1], ...): lists only
        if isinstance(nodes, (list, tuple)) and all(isinstance(n, Node) for n in nodes):
            key = (tuple([n.id for n in nodes]), ref.check_numerics)
        plan = self._forward_plans.get(key)
        if plan is None:
            key = (check_nodes(ref, nodes, who), ref.check_numerics)
            plan = ref.plan_for(nodes)
            if not ref.check_numerics:  # checking: every node alone, named in the error
                plan = _fuse(plan, self._fusions({ref.index[n.id] for n in nodes}, plan.steps))
            self._forward_plans[key] = plan
        return plan

    def _fusions(self, wanted: set[int], steps: Sequence[Step]) -> dict[int, tuple[int, Step]]:
        """``{consumer index: (producer index, fused step)}`` for the pairs among ``steps``
        that may fuse: the producer's value is used once and not ``wanted`` (nor an output)."""
        if not _RULES:
            return {}
        ref = self.ref
        pairs = {}
        for step in steps:
            i, node = step.index, step.node
            j = step.args[0]
            if self._uses[j] != 1 or j in self._held or j in wanted:
                continue
            producer = ref.order[j]
            rule = _rule_for(producer, node)
            if rule is not None:
                pairs[i] = (j, step._replace(node=rule.build(producer, node), args=ref.args[j]))
        return pairs

    def _backward_plan(self, ci: int, wanted: set[int], fused: dict) -> list[BackwardStep]:
        """Cost first. An input that appears twice is offered an array only the first time."""
        ref = self.ref
        needs = [False] * (ci + 1)
        for i in range(ci + 1):
            needs[i] = i in wanted or any(needs[j] for j in ref.args[i])
        inner = {j for j, _ in fused.values()}
        plan = []
        for i in range(ci, -1, -1):
            node, args = ref.order[i], ref.args[i]
            if not (needs[i] and node.inputs) or i in inner:
                continue
            if i in fused:
                node, args = fused[i][1].node, fused[i][1].args
            offers = tuple(Offer(k, j, j in wanted) for k, j in enumerate(args)
                           if needs[j] and j not in args[:k]
                           and (j in wanted or _rank_known(ref.order[j])))
            plan.append(BackwardStep(i, node, args, tuple(needs[j] for j in args),
                                     tuple((k, j) for k, j in enumerate(args) if needs[j]),
                                     offers))
        return plan


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


def _rank_known(node: Node) -> bool:
    # Shape known to have rank >= 1: 0-d results are NumPy scalars, not writable arrays.
    return node.shape is not None and len(node.shape) >= 1


def fusion_rules() -> list[FusionRule]:
    """The fusion rules registered so far (ops register theirs when ``graphnet.ops`` loads)."""
    return list(_RULES)


__all__ = ["Arena", "BackwardStep", "FusionRule", "Offer", "StepContext", "StepPlan",
           "StepPlanner", "fusion_rules", "register_fusion"]

"""Generated step code: one straight-line Python function per step plan.

A step plan never changes once built (define-then-run), so rather than walk its entries on
every step, the planner runs a function written for that plan alone: each node's value and
gradient a local variable, each op's ``forward`` and ``backward`` a bound call, the offered
arrays and the gradient sums spelled out. It computes what the reference executor
(:mod:`graphnet.reference`) computes, in the same order, so the results are bit-identical.

``print(graph.step_source())`` shows the code of a graph's training step.
"""
from __future__ import annotations

import itertools
import linecache
import weakref
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional

from .errors import FeedError, GraphError, NumericsError, OutOfMemoryError
from .graph_checks import not_fed, run_failure, wrong_backend

if TYPE_CHECKING:
    from .planner import BackwardStep, StepPlan
    from .reference import Reference as Graph, Step

#: Plans with more steps than this run on the reference executor: compiling grows with the plan.
MAX_STEPS = 4000

_names = itertools.count()


class GeneratedStep(NamedTuple):
    """A plan's step function and its source; ``run`` is None where the reference executor
    runs instead (the source then says why)."""

    source: str
    run: Optional[Callable[..., tuple]]


class NotGenerated(Exception):
    """The generator does not handle this plan (the message says why)."""


class _Writer:
    """Lines of Python at an indentation depth."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 1

    def __call__(self, line: str) -> None:
        self.lines.append("    " * self.depth + line)


def generate(graph: "Graph", plan: "StepPlan", targets: tuple, into: bool,
             final: bool, after_forward: Callable[..., None], arena_get: Callable[..., Any]
             ) -> GeneratedStep:
    """The step function of ``plan``: ``step(fed, ctx, bctx, into, final) -> (values, out)``.

    ``fed`` is the resolved feed, ``ctx``/``bctx`` the forward and backward contexts;
    ``out`` is ``{target: into[target]}`` with ``into``, else the gradient list for
    ``Graph.collect``. The variant is fixed by whether ``into`` and ``final`` (the
    ``on_final`` hook) are given. Raises :class:`NotGenerated` for what it does not handle.
    """
    n = len(plan.forward.steps) + len(plan.backward)
    if n > MAX_STEPS:
        raise NotGenerated(f"the plan has {n} steps, more than stepgen.MAX_STEPS = {MAX_STEPS}")
    ns: dict[str, Any] = {
        "B": graph.backend, "ones": graph.backend.xp.ones, "copyto": graph.backend.xp.copyto,
        "keep": graph.keep_dtype, "arena_get": arena_get, "after_forward": after_forward,
        "TARGETS": targets, "missing": _missing, "wrong": _wrong_backend(graph),
        "failed": _failure(graph, plan),
    }
    w = _Writer()
    _leaves(w, ns, plan.forward.leaves)
    _forward(w, ns, plan.forward.steps)
    _values(w, graph, plan)
    w("after_forward(values, TARGETS, into)")
    _Backward(w, ns, graph, plan, targets, into, final).write()
    source = "def step(fed, ctx, bctx, into, final):\n" + "\n".join(w.lines) + "\n"
    return GeneratedStep(source, _compile(source, ns))


def _compile(source: str, ns: dict) -> Callable[..., tuple]:
    filename = f"<graphnet step {next(_names)}>"
    try:
        exec(compile(source, filename, "exec"), ns)
    except (SyntaxError, RecursionError, MemoryError, ValueError) as exc:
        raise NotGenerated(f"Python could not compile it: {exc!r}") from exc
    fn = ns["step"]
    # Tracebacks through the step show its lines; they go when the function does.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    weakref.finalize(fn, linecache.cache.pop, filename, None)
    return fn


# --- forward -------------------------------------------------------------------------------
def _leaves(w: _Writer, ns: dict, leaves: list) -> None:
    for i, node, kind in leaves:
        ns[f"N{i}"] = node
        if kind == "parameter":
            w(f"if N{i}.backend is not B:")
            w(f"    wrong(N{i})")
            w(f"v{i} = N{i}._value")
        elif kind == "input":
            w(f"v{i} = fed.get({node.id})")
            w(f"if v{i} is None:")
            w(f"    missing(N{i})")
        else:
            ns[f"c{i}"] = node.forward
            w(f"v{i} = c{i}(None)")


def _forward(w: _Writer, ns: dict, steps: list) -> None:
    if not steps:
        return
    w("try:")
    w.depth += 1
    for i, node, args in steps:
        ns[f"f{i}"] = node.forward
        w(f"ctx.key = {i}")
        w(f"v{i} = f{i}(ctx{''.join(f', v{j}' for j in args)})  # {node.op!r} {node.name!r}")
    w.depth -= 1
    w("except Exception as exc:")
    w("    err = failed(exc, ctx.key, locals())")
    w("    if err is None:")
    w("        raise")
    w("    raise err from exc")


def _values(w: _Writer, graph: "Graph", plan: "StepPlan") -> None:
    """``values``: the graph's value list (None for nodes the plan does not compute)."""
    have = {leaf.index for leaf in plan.forward.leaves} | {s.index for s in plan.forward.steps}
    items = [f"v{i}" if i in have else "None" for i in range(len(graph.order))]
    rows = [", ".join(items[k:k + 12]) for k in range(0, len(items), 12)]
    w("values = [" + (",\n" + "    " * w.depth + "          ").join(rows) + "]")


def _missing(node: Any) -> None:
    raise FeedError(not_fed(node))


def _wrong_backend(graph: "Graph") -> Callable[[Any], None]:
    def wrong(node: Any) -> None:
        raise GraphError(wrong_backend(graph, node))
    return wrong


# The errors a step raises as they are, per phase, as the reference executor does.
_AS_THEY_ARE = {"forward": (FeedError, NumericsError, GraphError, OutOfMemoryError),
                "backward": (GraphError, OutOfMemoryError)}


def _failure(graph: "Graph", plan: "StepPlan") -> Callable[..., Optional[Exception]]:
    """What the reference executor raises when step ``key`` fails with ``exc`` in ``phase``
    (None: ``exc`` as it is)."""
    steps = {"forward": {s.index: s for s in plan.forward.steps},
             "backward": {s.index: s for s in plan.backward}}

    def failed(exc: Exception, key: int, local: dict, phase: str = "forward") -> Optional[Exception]:
        if isinstance(exc, _AS_THEY_ARE[phase]):
            return None
        step = steps[phase][key]
        values = [local.get(f"v{i}") for i in range(len(graph.order))]
        return run_failure(graph, step.node, values, step.args, exc, phase)
    return failed


# --- backward ------------------------------------------------------------------------------
class _Backward:
    """Writes the backward steps, then the hand-out of the gradients."""

    def __init__(self, w: _Writer, ns: dict, graph: "Graph", plan: "StepPlan", targets: tuple,
                 into: bool, final: bool) -> None:
        self.w, self.ns, self.graph, self.plan = w, ns, graph, plan
        self.into, self.final = into, final
        self.ci = graph.index[graph.cost.id]
        self.targets = [graph.index[t.id] for t in targets]
        writes = Counter(j for step in plan.backward for _, j in step.wanted)
        # every gradient read or written (a step whose gradient nobody writes reads None)
        self.declared = {self.ci, *writes, *(step.index for step in plan.backward)}
        self.shared = {j for j, n in writes.items() if n > 1}  # may be summed into: owned flags
        self.maybe = {self.ci}  # gradients some earlier line may have set (not surely None)

    def write(self) -> None:
        w, ci = self.w, self.ci
        w(f"g{ci} = ones(v{ci}.shape, dtype=v{ci}.dtype)")
        rest = sorted(self.declared - {ci}, reverse=True)
        if rest:
            w(" = ".join(f"g{j}" for j in rest) + " = None")
        if self.shared:
            w(" = ".join(f"o{j}" for j in sorted(self.shared, reverse=True)) + " = False")
        finals = self.plan.finals
        for s, step in enumerate(self.plan.backward):
            self._step(step)
            if self.final:
                for j in finals[s]:
                    self._hand_out(j, report=True)
        self._finish()

    def _step(self, step: "BackwardStep") -> None:
        w, i = self.w, step.index
        self.ns[f"b{i}"] = step.node.backward
        w(f"# backward {i}: {step.node.op!r} {step.node.name!r}")
        if i != self.ci:  # the cost's gradient is never None
            w(f"if g{i} is not None:")
            w.depth += 1
        w(f"bctx.needs = {step.needs!r}")
        w(f"bctx.key = {i}")
        offered = self._offers(step)
        xs = ", ".join(f"v{j}" for j in step.args) + ("," if len(step.args) == 1 else "")
        w("try:")
        w(f"    gin = b{i}(bctx, g{i}, ({xs}), v{i})")
        w("except Exception as exc:")
        w(f"    err = failed(exc, {i}, locals(), 'backward')")
        w("    if err is None:")
        w("        raise")
        w("    raise err from exc")
        for k, j in step.wanted:
            self._add(k, j, k in offered)
            self.maybe.add(j)
        if i != self.ci:
            w.depth -= 1

    def _offers(self, step: "BackwardStep") -> set[int]:
        """Writes ``bctx.dests``; the input positions given an array."""
        w, offered = self.w, set()
        for k, j, to_into in step.offers:
            if to_into and not self.into:
                continue  # no array to offer
            if to_into:
                self.ns[f"N{j}"] = self.graph.order[j]
                src = f"into[N{j}]"
            else:
                src = f'arena_get(("grad", {j}), v{j}.shape, v{j}.dtype)'
            w(f"d{k} = {src} if g{j} is None else None" if j in self.maybe else f"d{k} = {src}")
            offered.add(k)
        if offered:
            w("bctx.dests = [" + ", ".join(f"d{k}" if k in offered else "None"
                                          for k in range(len(step.args))) + "]")
        else:
            w("bctx.dests = None")
        return offered

    def _add(self, k: int, j: int, offered: bool) -> None:
        """Input ``k``'s gradient into ``g{j}``: kept where it was offered, else summed."""
        w = self.w
        w(f"t = gin[{k}]")
        w("if t is not None:")
        w.depth += 1
        if offered:
            w(f"if t is d{k}:  # written where it was offered: its own array")
            w(f"    g{j} = t" + (f"; o{j} = True" if j in self.shared else ""))
            w("else:")
            w.depth += 1
        if j not in self.maybe:
            w(f"g{j} = keep(t, v{j})")
        else:
            w(f"t = keep(t, v{j})")
            w(f"if g{j} is None:")
            w(f"    g{j} = t")
            w(f"elif o{j}:")
            w(f"    g{j} += t")
            w("else:")
            w(f"    g{j} = g{j} + t; o{j} = True")
        w.depth -= 2 if offered else 1

    def _hand_out(self, j: int, report: bool) -> None:
        """``into[node j]`` gets j's gradient (zero where there is none); ``final(node)``."""
        w = self.w
        self.ns[f"N{j}"] = self.graph.order[j]
        if j in self.declared:
            w(f"buf = into[N{j}]")
            w(f"if g{j} is None:")
            w("    buf[...] = 0")
            w(f"elif g{j} is not buf:")
            w(f"    copyto(buf, g{j})")
        else:
            w(f"into[N{j}][...] = 0")
        if report:
            w(f"final(N{j})")

    def _finish(self) -> None:
        w = self.w
        if not self.into:
            grads = [f"g{j}" if j in self.declared else "None" for j in range(self.ci + 1)]
            w("return values, [" + ", ".join(grads) + "]")
            return
        if self.final:
            done = {j for js in self.plan.finals for j in js}
            for j in sorted(set(self.targets) - done, reverse=True):
                self._hand_out(j, report=True)
        else:
            for j in self.targets:
                self._hand_out(j, report=False)
        items = [f"N{j}: into[N{j}]" for j in self.targets]
        rows = [", ".join(items[k:k + 4]) for k in range(0, len(items), 4)]
        w("return values, {" + (",\n" + "    " * w.depth + "               ").join(rows) + "}")


__all__ = ["GeneratedStep", "MAX_STEPS", "NotGenerated", "generate"]

"""The step planner against the reference executor: the same numbers, bit for bit.

``Graph(..., plan="reference")`` runs every node on its own with fresh arrays; the
default step plan reuses arrays, writes gradients in place and fuses nodes, and runs
through code generated for it (``graphnet/stepgen.py``). Every op of tests/test_ops.py's
table, the spatial ops and the MNIST networks run both ways.
"""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from graphnet import nn, ops, optim
from graphnet.errors import ArgumentError
from graphnet.planner import register_fusion

from test_ops import CASES, IDS, _with_extra


def _same(a, b, what: str) -> None:
    a, b = gn.to_numpy(a), gn.to_numpy(b)
    assert a.dtype == b.dtype and a.shape == b.shape, what
    np.testing.assert_array_equal(a, b, err_msg=what)  # NaNs in the same places count as equal


PLANS = ("step", "reference")  # the reference last: the step is compared with it


def _all(out, cost, *extra_outputs):
    outs = [out, *extra_outputs]
    return tuple(gn.Graph(outs, cost=cost, plan=plan) for plan in PLANS)


def _ran_generated(graph, wrt, into, on_final=False):
    """Whether ``graph``'s steps for ``wrt`` ran through generated code (not the reference)."""
    code = graph.planner._code.get((graph._targets(wrt), into, on_final))
    return code is not None and code.run is not None


def _compare_steps(graphs, feeds, wrt, into=None):
    """Run each feed through every graph (a second step reuses the arena) and compare
    each with the reference (the last)."""
    *fast, ref = graphs
    for n, feed in enumerate(feeds):
        c2, g2 = ref.gradients(feed, wrt=wrt, return_cost=True,
                               into=into[-1] if into else None, rng_key=(1, n))
        for m, graph in enumerate(fast):
            c1, g1 = graph.gradients(feed, wrt=wrt, return_cost=True,
                                     into=into[m] if into else None, rng_key=(1, n))
            what = f"plan {graph.plan!r} step {n}"
            _same(c1, c2, f"{what} cost")
            for k, node in enumerate(wrt):
                _same(g1[node], g2[node], f"{what} gradient {k} ({node.name})")
            for a, b in zip(graph.run(feed), ref.run(feed)):
                _same(a, b, f"{what} outputs")
    assert _ran_generated(graphs[0], wrt, into is not None)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_op_matches_the_reference(backend, case):
    rng = np.random.default_rng(sum(map(ord, case.id)) + 2)
    nodes = [gn.Input(f"x{i}", shape=s) for i, s in enumerate(case.shapes)]
    extra = {k: gn.Input(f"n{k}", shape=v.shape,
                         dtype=v.dtype if v.dtype.kind in "iu" else "float32")
             for k, v in case.nondiff.items()}
    out = case.build(*_with_extra(nodes, extra))
    shape = np.shape(case.ref(*case.args(case.inputs(np.random.default_rng(0)))))
    r_node = gn.Input("r", shape=shape)
    # tanh of the op's output: the cost passes through an activation, as in a network
    cost = gn.sum(gn.tanh(out) * r_node)
    feeds = []
    for seed in range(2):
        fed = [x.astype(np.float32) for x in case.inputs(np.random.default_rng(seed))]
        feed = {n: backend.asarray(x) for n, x in zip(nodes, fed)}
        feed.update({node: backend.asarray(case.nondiff[k]) for k, node in extra.items()})
        feed[r_node] = backend.asarray(np.asarray(rng.standard_normal(shape), np.float32))
        feeds.append(feed)
    _compare_steps(_all(out, cost), feeds, nodes)
    into = [{n: backend.xp.empty(n.shape, np.float32) for n in nodes} for _ in PLANS]
    _compare_steps(_all(out, cost), feeds, nodes, into)


SPATIAL = {
    "conv2d": lambda x, w, b: ops.conv2d(x, w, b, stride=1, padding=1),
    "conv2d_stride": lambda x, w, b: ops.conv2d(x, w, b, stride=2),
    "max_pool2d": lambda x, w, b: ops.max_pool2d(ops.conv2d(x, w, b), 2),
    "avg_pool2d": lambda x, w, b: ops.avg_pool2d(ops.conv2d(x, w, b), 2),
    "batch_norm": lambda x, w, b: ops.batch_norm(ops.conv2d(x, w), b, b * 2 + 1),
}


@pytest.mark.parametrize("name", list(SPATIAL))
def test_spatial_ops_match_the_reference(backend, name):
    x, w, b = gn.Input("x", (None, 2, 6, 6)), gn.Input("w", (3, 2, 3, 3)), gn.Input("b", (3,))
    out = gn.relu(SPATIAL[name](x, w, b))
    cost = gn.mean(out * out)
    rng = np.random.default_rng(3)
    feeds = [{x: backend.asarray(rng.standard_normal((n, 2, 6, 6)).astype(np.float32)),
              w: backend.asarray(rng.standard_normal((3, 2, 3, 3)).astype(np.float32)),
              b: backend.asarray(rng.standard_normal(3).astype(np.float32))} for n in (4, 4, 3)]
    _compare_steps(_all(out, cost), feeds, [x, w, b])


# --- the MNIST networks, trained a few steps each way -------------------------------------
def _mlp(layers, activation):
    return lambda: nn.Classifier(nn.MLP(layers, 784, activation), (784,))


def _small_cnn():
    net = nn.Sequential([
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Flatten(), nn.Linear(4 * 13 * 13, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 10),
    ])
    return nn.Classifier(net, (1, 28, 28))


NETWORKS = {
    "mlp_128_64_10_tanh": (_mlp([128, 64, 10], "tanh"), lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9)),
    "mlp_512_256_10_relu": (_mlp([512, 256, 10], "relu"), lambda ps: optim.Adam(ps, lr=1e-3)),
    "cnn_bn_dropout": (_small_cnn, lambda ps: optim.Adam(ps, lr=1e-3)),
}


@pytest.mark.parametrize("name", list(NETWORKS))
def test_mnist_networks_train_identically(backend, name):
    build, make_opt = NETWORKS[name]
    runs = []
    for plan in PLANS:
        gn.seed(0)
        model = build()
        model.train_graph.plan = plan
        opt = make_opt(model.parameters())
        rng = np.random.default_rng(7)
        costs, grads = [], None
        for step in range(4):
            n = 16 if step < 3 else 9  # a new batch size replaces arena arrays
            feed = {model.images: rng.integers(0, 256, (n, *model.input_shape)).astype(np.float32),
                    model.labels: rng.integers(0, 10, n)}
            costs.append(gn.to_numpy(opt.minimize(model.train_graph, feed, rng_key=(5, step))))
        grads = model.train_graph.gradients(feed, rng_key=(5, 9))
        params = model.train_graph.parameters(trainable_only=False)
        values = model.train_graph.values(feed, [model.logits], training=True, rng_key=(5, 9))
        runs.append((costs, [gn.to_numpy(p.value) for p in params],
                     [gn.to_numpy(grads[p]) for p in model.train_graph.parameters()], values))
        if plan == "step":
            targets = tuple(opt.params)
            assert _ran_generated(model.train_graph, targets, True)
            assert _ran_generated(model.train_graph, None, False)
    *fast, (c2, p2, g2, v2) = runs
    for plan, (c1, p1, g1, v1) in zip(PLANS, fast):
        for k, (a, b) in enumerate(zip(c1, c2)):
            _same(a, b, f"{plan}: cost of step {k}")
        for k, (a, b) in enumerate(zip(p1, p2)):
            _same(a, b, f"{plan}: parameter {k} after the steps")
        for k, (a, b) in enumerate(zip(g1, g2)):
            _same(a, b, f"{plan}: gradient {k}")
        _same(v1[0], v2[0], f"{plan}: logits")


def test_the_step_plan_fuses_and_the_reference_does_not(numpy_backend):
    model = _mlp([16, 10], "relu")()
    feed = {model.images: np.zeros((2, 784), np.float32), model.labels: np.array([1, 2])}
    graph = model.train_graph
    graph.gradients(feed)
    assert graph.planner.fused_ops(graph._targets(None)) == ["linear+relu"]
    assert graph.planner.arena.nbytes() > 0
    ref = gn.Graph(graph.outputs, cost=graph.cost, plan="reference")
    ref.gradients(feed)
    assert ref.planner.fused_ops(ref._targets(None)) == [] and ref.planner.arena.nbytes() == 0


def test_fusion_rules_come_from_ops_and_register_once():
    from graphnet import planner
    from graphnet.ops.fused import LinearActivation
    from graphnet.ops.matrix import Linear
    from graphnet.ops.unary import Activation
    rules = [r for r in planner._RULES if r.build is LinearActivation]
    assert len(rules) == 1 and rules[0].producer is Linear and rules[0].consumer is Activation
    register_fusion(rules[0].producer, rules[0].consumer, rules[0].build, rules[0].when)
    assert len([r for r in planner._RULES if r.build is LinearActivation]) == 1


def test_plan_is_validated():
    x = gn.Input("x", (2,))
    with pytest.raises(ArgumentError, match="plan.*'reference'.*'fast'"):
        gn.Graph(x * 2, plan="fast")
    with pytest.warns(DeprecationWarning, match='plan="loop" is gone'):
        assert gn.Graph(x * 2, plan="loop").plan == "step"


def test_gradients_summed_over_several_consumers_match(backend):
    """A node read by three ops: its gradient is written in place once, then added to."""
    x, w, b = gn.Input("x", (None, 5)), gn.Input("w", (5, 4)), gn.Input("b", (4,))
    z = gn.linear(x, w, b)
    h = gn.tanh(z) * gn.relu(z) + gn.sigmoid(z)
    out = gn.linear(h, w.T)
    cost = gn.mean(out * out)
    rng = np.random.default_rng(4)
    feeds = [{x: backend.asarray(rng.standard_normal((n, 5)).astype(np.float32)),
              w: backend.asarray(rng.standard_normal((5, 4)).astype(np.float32)),
              b: backend.asarray(rng.standard_normal(4).astype(np.float32))} for n in (6, 6)]
    _compare_steps(_all(out, cost), feeds, [x, w, b])


def test_the_engine_and_the_planner_import_no_op():
    """Fusion comes from rules the ops register: neither module names a concrete op."""
    import ast
    from pathlib import Path
    from cupy_emulation.catalog import package_source
    root = package_source()
    for name in ("graph.py", "reference.py", "planner.py", "stepgen.py", "graph_checks.py"):
        tree = ast.parse((root / name).read_text())
        modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in modules if m == "ops" or m.startswith("ops.") or ".ops" in m], name


def test_on_final_reports_the_same_gradients_in_the_same_order(backend):
    """The generated step and the reference report each gradient as it becomes final, alike."""
    reports = {}
    for plan in ("step", "reference"):
        gn.seed(0)
        model = _mlp([12, 8, 10], "tanh")()
        graph = model.train_graph
        graph.plan = plan
        params = graph.parameters()
        rng = np.random.default_rng(5)
        into = {p: backend.xp.full(p.shape, np.nan, dtype=p.dtype) for p in params}
        seen = []
        for n in (6, 6, 4):
            feed = {model.images: rng.standard_normal((n, 784)).astype(np.float32),
                    model.labels: rng.integers(0, 10, n)}
            graph.gradients(feed, wrt=params, into=into, on_final=lambda node: seen.append(
                (params.index(node), gn.to_numpy(into[node]).copy())))
        reports[plan] = seen
        if plan == "step":
            assert _ran_generated(graph, params, True, on_final=True)
    assert [k for k, _ in reports["step"]] == [k for k, _ in reports["reference"]]
    assert len(reports["step"]) == 3 * len(params)
    for (k, a), (_, b) in zip(reports["step"], reports["reference"]):
        _same(a, b, f"gradient of parameter {k} when reported")


class _Scoped(gn.Node):
    """The identity, whose class names a step scope that records when it is entered."""

    op = "scoped"
    entered: list = []

    def __init__(self, x):
        super().__init__((x,), shape=x.shape)

    @staticmethod
    def step_scope(backend):
        from contextlib import contextmanager

        @contextmanager
        def scope():
            _Scoped.entered.append(("enter", backend.name))
            yield
            _Scoped.entered.append("exit")
        return scope()

    def forward(self, ctx, x):
        _Scoped.entered.append("forward")
        return x

    def backward(self, ctx, g, xs, y):
        _Scoped.entered.append("backward")
        return (g,)


def test_a_step_runs_inside_its_ops_step_scopes(backend):
    """An op class's step_scope wraps each generated training step (the convolution holds the
    BLAS at one thread so); graphs without such ops enter none."""
    x = gn.Input("x", (None, 3))
    cost = gn.sum(_Scoped(gn.tanh(x)))
    _Scoped.entered.clear()
    graph = gn.Graph(cost, cost=cost)
    for _ in range(2):
        graph.gradients({x: np.ones((2, 3), np.float32)}, wrt=[x])
    assert _Scoped.entered == [("enter", backend.name), "forward", "backward", "exit"] * 2
    plain = gn.Graph(gn.sum(gn.tanh(x)), cost=gn.sum(gn.tanh(x)))
    assert plain.planner._scopes == []
    from graphnet.ops.conv import Conv2d, threads
    assert Conv2d.step_scope is threads.blas_held

"""The training doors never train silently wrong: labels checked when fed, a step with a
non-finite cost never updating, an optimizer that trains nothing refused (issue 23)."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from graphnet import optim

import capture_models as models
from cupy_emulation import _counters
from conftest import cupy_mode


def _snapshot(params: list, opt: optim.Optimizer) -> list[np.ndarray]:
    """Host copies of the parameters and every optimizer slot that exists."""
    slots = [v for vs in opt.state.values() for v in vs if v is not None]
    return [gn.to_numpy(a).copy() for a in [p.value for p in params] + slots]


def _assert_same(before: list, after: list) -> None:
    assert len(before) == len(after)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


OPTIMIZERS = {"sgd-momentum": models.sgd, "adam": models.adam,
              "sgd-plain-decay": lambda ps: optim.SGD(ps, lr=0.1, weight_decay=0.01)}


# --- (a) labels fed from the host are checked when fed ---------------------------------------
@pytest.mark.parametrize("bad, pos", [(10, 3), (-1, 0), (2**40, 7)])
def test_a_host_label_out_of_range_is_refused_when_fed(backend, bad, pos):
    graph, params, x, labels = models.mlp(dropout=0.0)
    opt = models.sgd(params)
    feed = models.feeds(x, labels, batch=8, steps=1)[0]
    feed[labels][pos] = bad
    before = _snapshot(params, opt)
    with pytest.raises(gn.FeedError, match=rf"'labels'.*class index {bad} at position {pos} "
                                           r"is outside \[0, 10\)"):
        opt.minimize(graph, feed)
    _assert_same(before, _snapshot(params, opt))
    feed[labels][pos] = 9  # the boundary class is fine
    opt.minimize(graph, feed)


def test_labels_as_a_list_are_checked_too(numpy_backend):
    graph, params, x, labels = models.mlp(dropout=0.0)
    feed = {x: np.zeros((3, 20), np.float32), labels: [0, 11, 2]}
    with pytest.raises(gn.FeedError, match="class index 11 at position 1"):
        models.sgd(params).minimize(graph, feed)


def test_soft_targets_are_not_range_checked(numpy_backend):
    z = gn.Input("z", shape=(None, 3))
    t = gn.Input("t", shape=(None, 3))
    graph = gn.Graph(z, cost=gn.softmax_cross_entropy(z, t))
    assert t.classes is None
    cost, _ = graph.gradients({z: np.zeros((2, 3)), t: np.full((2, 3), 1 / 3)}, wrt=[z],
                              return_cost=True)
    assert np.isfinite(gn.to_numpy(cost))


# --- (b) a non-finite cost never changes the weights or the optimizer's state -----------------
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_numpy_refuses_a_step_whose_cost_is_not_finite(numpy_backend, name):
    graph, params, x, labels = models.mlp(dropout=0.0)
    opt = OPTIMIZERS[name](params)
    good, bad = models.feeds(x, labels, batch=8, steps=2)
    opt.minimize(graph, good)  # the slots exist now
    bad[x][2, 5] = np.inf
    before, steps = _snapshot(params, opt), opt.steps
    with pytest.raises(gn.NumericsError, match=r"cost 'softmax_cross_entropy\w*' is nan at step 2"
                                               r".*left unchanged.*input 'x' holds inf at flat "
                                               r"position 45"):
        opt.minimize(graph, bad)
    _assert_same(before, _snapshot(params, opt))
    assert opt.steps == steps


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_cupy_masks_the_update_on_the_device(name):
    """On the device: no error and no host sync; the bad step leaves weights and slots as
    they were, and the following steps train as if it had never been taken (SGD)."""
    if cupy_mode()[0] != "emulated":
        pytest.skip("host synchronisations are counted by the CuPy emulation only")
    with gn.use_backend("cupy"):
        graph, params, x, labels = models.mlp(dropout=0.0)
        opt = OPTIMIZERS[name](params)
        feeds = models.feeds(x, labels, batch=8, steps=3)
        opt.minimize(graph, feeds[0])
        before = _snapshot(params, opt)
        bad = dict(feeds[1])
        bad[labels] = gn.asarray(np.array([0, 1, 2, 3, 10, 5, 6, 7]))  # on the device: unchecked
        with _counters.counting() as c:
            cost = opt.minimize(graph, bad)
        assert c.host_syncs() == []
        assert np.isnan(gn.to_numpy(cost))
        _assert_same(before, _snapshot(params, opt))
        xb = dict(feeds[1])
        xb[x] = xb[x].copy()
        xb[x][0, 0] = np.nan
        assert np.isnan(gn.to_numpy(opt.minimize(graph, xb)))
        _assert_same(before, _snapshot(params, opt))
        assert np.isfinite(gn.to_numpy(opt.minimize(graph, feeds[2])))
        after_good = _snapshot(params, opt)
        assert any((a != b).any() for a, b in zip(before, after_good))
    if name.startswith("sgd"):  # no step count in the update: same bits as never stepping
        with gn.use_backend("cupy"):
            graph, params, x, labels = models.mlp(dropout=0.0)
            clean = OPTIMIZERS[name](params)
            same = models.feeds(x, labels, batch=8, steps=3)  # the same data, these Inputs
            for f in (same[0], same[2]):
                clean.minimize(graph, f)
            _assert_same(after_good, _snapshot(params, clean))


@pytest.mark.parametrize("kernel_case", ["sgd", "sgd-momentum", "sgd-nesterov", "adam"])
def test_update_kernels_skip_everything_on_a_non_finite_flag(backend, kernel_case):
    """Each implementation of the update kernels (reference, NumPy, CUDA) honours ``finite``."""
    from graphnet.kernels import implementations
    from graphnet.optim_kernels import adam_update, sgd_update
    rng = np.random.default_rng(0)
    host = [np.abs(rng.standard_normal((3, 4))).astype(np.float32) for _ in range(4)]
    for impl in ("generic", "active"):
        for flag, changes in ((np.nan, False), (np.inf, False), (1.5, True)):
            p, g, m, v = (backend.asarray(a.copy()) for a in host)
            finite = backend.asarray(np.array([flag], np.float32))
            k = sgd_update if kernel_case.startswith("sgd") else adam_update
            fn = k.generic if impl == "generic" else implementations(backend.name)[k]
            if kernel_case == "adam":
                fn(backend, p, g, m, v, 0.1, 0.9, 0.999, 1e-8, 1, 0.01, finite)
            else:
                fn(backend, p, g, None if kernel_case == "sgd" else v, 0.1, 0.9,
                   kernel_case == "sgd-nesterov", 0.01, False, finite)
            got = [gn.to_numpy(a) for a in (p, m, v)]
            same = all((a == b).all() for a, b in zip(got, [host[0], host[2], host[3]]))
            assert same != changes, f"{impl} {kernel_case} finite={flag}"


# --- an optimizer that trains nothing --------------------------------------------------------
def test_an_optimizer_with_no_parameter_in_the_graph_is_refused(numpy_backend):
    graph, params, x, labels = models.mlp(dropout=0.0)
    other, *_ = models.mlp(dropout=0.0, seed=1)
    stranger = optim.SGD(other.parameters(), lr=0.1)
    feed = models.feeds(x, labels, batch=4, steps=1)[0]
    with pytest.raises(gn.ArgumentError, match=r"none of the optimizer's 4 parameters \('w1', "
                                               r"'b1', 'w2', 'b2'\) is in the graph of cost"):
        stranger.minimize(graph, feed)
    partial = optim.SGD(params[2:] + other.parameters()[:1], lr=0.1)  # legitimate
    before = gn.to_numpy(params[0].value).copy()
    partial.minimize(graph, feed)
    np.testing.assert_array_equal(before, gn.to_numpy(params[0].value))


def test_minimize_refuses_what_is_not_a_graph(numpy_backend):
    _, params, *_ = models.mlp(dropout=0.0)
    with pytest.raises(gn.ArgumentTypeError, match="takes a gn.Graph, got dict"):
        models.sgd(params).minimize({}, {})

"""A training step on CuPy never waits for the device: no device-to-host copy, no synchronisation.

EMULATED: the CPU emulation of CuPy counts every way CuPy would synchronise or copy to the
host (``tests/cupy_emulation/_counters.py``); a real GPU run cannot count them this way, so
these tests skip there. Host-to-device copies of the feed are the data boundary: counted
apart, and bounded by the number of inputs fed.
"""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from graphnet import optim

import capture_models as models
from cupy_emulation import _counters
from conftest import cupy_mode

pytestmark = pytest.mark.gpu


@pytest.fixture
def emulated_cupy():
    """The emulated CuPy backend, active (the autouse fixture installed the emulation)."""
    if cupy_mode()[0] != "emulated":
        pytest.skip("host synchronisations are counted by the CuPy emulation only")
    with gn.use_backend("cupy") as b:
        gn.seed(0)
        yield b


def per_step(step, feeds: list) -> _counters.Counts:
    """The events of ``step(feed)`` over ``feeds[1:]``, after a first (plan-building) step."""
    step(feeds[0])
    with _counters.counting() as c:
        for f in feeds[1:]:
            step(f)
    return c


CASES = {
    "mlp-dropout-sgd": (lambda: models.mlp(dropout=0.5), models.sgd, None),
    "mlp-dropout-keyed-sgd": (lambda: models.mlp(dropout=0.5), models.sgd, (7, 0)),
    "cnn-adam": (models.cnn, models.adam, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_minimize_never_synchronises_with_the_host(emulated_cupy, case):
    build, make_opt, key = CASES[case]
    graph, params, x, labels = build()
    opt = make_opt(params)
    feeds = models.feeds(x, labels, batch=8, steps=4)
    c = per_step(lambda f: opt.minimize(graph, f, rng_key=key), feeds)
    assert c.host_syncs() == [], f"{case}: host synchronisations in a training step: {c.host_syncs()}"
    # The feed's two host arrays are the only copies to the device.
    assert c.h2d == 2 * (len(feeds) - 1), c.log


def test_a_planted_float_of_the_cost_is_caught(emulated_cupy, monkeypatch):
    graph, params, x, labels = models.mlp(dropout=0.5)
    opt = models.sgd(params)
    minimize = optim.Optimizer.minimize

    def reads_the_cost(self, graph, feed, rng_key=None):  # the planted bug
        cost = minimize(self, graph, feed, rng_key)
        float(cost)
        return cost
    monkeypatch.setattr(optim.Optimizer, "minimize", reads_the_cost)
    c = per_step(lambda f: opt.minimize(graph, f), models.feeds(x, labels, 8, 3))
    assert [(kind, what) for kind, what, _ in c.host_syncs()] == [("d2h", "ndarray.__float__")] * 2
    assert "test_host_sync.py" in c.host_syncs()[0][2]  # the caller is named


def test_the_cost_is_read_only_when_asked(emulated_cupy):
    graph, params, x, labels = models.cnn()
    opt = models.adam(params)
    feeds = models.feeds(x, labels, 8, 2)
    opt.minimize(graph, feeds[0])
    with _counters.counting() as c:
        cost = opt.minimize(graph, feeds[1])
        assert c.host_syncs() == []
        value = float(cost)
    assert c.d2h == 1 and np.isfinite(value)


def test_the_counters_see_every_way_to_the_host(emulated_cupy, capsys):
    xp = emulated_cupy.xp
    d = xp.arange(3, dtype=xp.float32)
    s = d.sum()
    reads = {
        "get": lambda: d.get(), "asnumpy": lambda: xp.asnumpy(d), "float": lambda: float(s),
        "int": lambda: int(s), "bool": lambda: bool(s), "complex": lambda: complex(s),
        "item": lambda: s.item(), "tolist": lambda: d.tolist(), "repr": lambda: repr(d),
        "str": lambda: str(d), "format": lambda: f"{s:.2f}", "print": lambda: print(d),
        "to_numpy": lambda: gn.to_numpy(d),
    }
    for name, read in reads.items():
        with _counters.counting() as c:
            read()
        assert (c.d2h, c.sync) == (1, 0), f"{name}: {c.log}"
    with _counters.counting() as c:
        with pytest.raises(TypeError):
            np.asarray(d)  # refused, as CuPy refuses it, but counted as an attempt
    assert c.d2h == 1
    syncs = {"stream": lambda: xp.cuda.get_current_stream().synchronize(),
             "device": lambda: xp.cuda.Device().synchronize(),
             "runtime": lambda: xp.cuda.runtime.deviceSynchronize(),
             "backend": emulated_cupy.synchronize}
    for name, sync in syncs.items():
        with _counters.counting() as c:
            sync()
        assert (c.d2h, c.sync) == (0, 1), f"{name}: {c.log}"
    host = np.ones(3, np.float32)
    for name, copy in {"asarray": lambda: xp.asarray(host), "array": lambda: xp.array(host),
                       "set": lambda: d.set(host), "setitem": lambda: d.__setitem__(
                           slice(None), host), "backend": lambda: emulated_cupy.asarray(host)
                       }.items():
        with _counters.counting() as c:
            copy()
        assert (c.h2d, len(c.host_syncs())) == (1, 0), f"{name}: {c.log}"
    with _counters.counting() as c:
        xp.asarray(d)  # a device array: no copy
        d * 2
    assert c.log == []


def test_fit_reads_the_device_per_epoch_not_per_batch(emulated_cupy):
    """The data path (batches gathered on the device) and the steps of ``fit`` add no host
    read per batch: twice the batches, the same reads (the loss check, the epoch's sums)."""
    from graphnet import nn
    from graphnet.train import fit
    rng = np.random.default_rng(0)
    syncs = []
    for n in (320, 640):
        x = rng.integers(0, 256, (n, 784)).astype(np.float32)
        y = rng.integers(0, 10, n)
        model = nn.Classifier(nn.MLP([16, 10], 784, "relu", dropout=0.3), (784,))
        with _counters.counting() as c:
            fit(model, optim.SGD(model.parameters(), lr=0.1, momentum=0.9), x, y, epochs=1,
                batch_size=32, progress=False)
        syncs.append(len(c.host_syncs()))
    assert syncs[0] == syncs[1] and syncs[0] <= 10, syncs

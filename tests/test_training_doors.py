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
    assert t.host_checks == {}
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
    from graphnet.optim import adam_update, sgd_update
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


# --- the Trainer's arguments -------------------------------------------------------------------
def _trainer(**kw):
    from graphnet.training import Trainer
    from helpers import blobs, tiny_model
    x, y = blobs(64)
    model = tiny_model()
    model.fit_preprocessing(x)
    kw.setdefault("progress", False)
    return Trainer(model, optim.SGD(model.parameters(), lr=0.1), **kw), x, y


@pytest.mark.parametrize("kw, message", [
    ({"eval_every": 0}, "eval_every must be an integer > 0, got 0"),
    ({"eval_every": 1.5}, "eval_every must be an integer > 0, got 1.5"),
    ({"eval_subset": -1}, "eval_subset must be an integer > 0, got -1"),
    ({"eval_subset": float("nan")}, "eval_subset must be an integer > 0, got nan"),
    ({"divergence_check_every": float("nan")}, "divergence_check_every must be an integer > 0"),
    ({"divergence_check_every": "5"}, "divergence_check_every must be an integer > 0, got '5'"),
    ({"progress": "yes"}, "progress must be True or False, got str 'yes'"),
    ({"checkpoint_dir": 123}, "checkpoint_dir: expected a file path, got int 123"),
    ({"checkpoint_dir": "a" * 300}, "checkpoint_dir: .* has a component of 300 bytes"),
    ({"on_epoch_end": 5}, "on_epoch_end: expected a function or None, got int 5"),
    ({"augment": "shift"}, "augment: expected a function or None, got str 'shift'"),
    ({"schedule": "cosine"}, "schedule: expected a graphnet.optim.Schedule .* got str 'cosine'"),
])
def test_trainer_arguments_are_checked_when_given(numpy_backend, kw, message):
    with pytest.raises(gn.GraphnetError, match=message):
        _trainer(**kw)


def test_trainer_refuses_what_is_not_an_optimizer(numpy_backend):
    from graphnet.training import Trainer
    from helpers import tiny_model
    with pytest.raises(gn.ArgumentTypeError, match="optimizer: expected a graphnet.optim.Optimizer"
                                                   ".*got str 'sgd'"):
        Trainer(tiny_model(), "sgd")


@pytest.mark.parametrize("which", ["x_train", "x_test"])
def test_fit_refuses_no_images_before_any_step(numpy_backend, which):
    trainer, x, y = _trainer()
    before = _snapshot(trainer.model.parameters(), trainer.optimizer)
    data = [x[:0], y[:0], x, y] if which == "x_train" else [x, y, x[:0], y[:0]]
    with pytest.raises(gn.ArgumentError, match=rf"{which}: no images \(shape \(0, 784\)\)"):
        trainer.fit(*data, epochs=1)
    assert trainer.optimizer.steps == 0 and trainer.state.epoch == 0
    _assert_same(before, _snapshot(trainer.model.parameters(), trainer.optimizer))


def test_a_batch_size_above_the_data_allocates_only_the_data(numpy_backend):
    trainer, x, y = _trainer(batch_size=10**12)
    trainer.fit(x, y, epochs=1)
    assert trainer._buffers[0].shape[0] == x.shape[0]


def test_a_host_diverging_step_is_a_divergence_error_naming_the_batch(numpy_backend):
    from graphnet.training import DivergenceError

    def poison_second_batch(xb, calls=[0]):
        calls[0] += 1
        return xb * np.inf if calls[0] == 2 else xb
    trainer, x, y = _trainer(batch_size=16, augment=poison_second_batch)
    with pytest.raises(DivergenceError, match=r"loss became nan at epoch 1, batch 2 \(samples "
                                              r"16-31\)") as info:
        trainer.fit(x, y, epochs=1)
    assert isinstance(info.value.__cause__, gn.NumericsError)
    assert trainer.optimizer.steps == 1  # the poisoned step was refused before its update


# --- Classifier inference: memory bounded by the batch -----------------------------------------
@pytest.mark.parametrize("method", ["predict", "predict_proba", "deep_features", "evaluate"])
def test_inference_memory_is_bounded_by_the_batch(numpy_backend, method):
    import tracemalloc
    from helpers import tiny_model
    model = tiny_model()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(20000, 784), dtype=np.uint8)   # 15.7 MB as uint8
    labels = rng.integers(0, 10, size=20000)
    model.fit_preprocessing(images[:100])
    call = {"predict": lambda bs: model.predict(images, batch_size=bs),
            "predict_proba": lambda bs: model.predict_proba(images, batch_size=bs),
            "deep_features": lambda bs: model.deep_features(images, batch_size=bs),
            "evaluate": lambda bs: model.evaluate(images, labels, batch_size=bs)}[method]
    x = model.prepare(images)  # the whole input converted at once: the reference route
    runs = [model.eval_graph.run({model.images: x[i:i + 256]}) for i in range(0, 20000, 256)]
    probs = np.concatenate([gn.to_numpy(r[0]) for r in runs])
    feats = np.concatenate([gn.to_numpy(r[1]).reshape(len(r[1]), -1) for r in runs])
    want = {"predict": [probs.argmax(1)], "predict_proba": [probs],
            "deep_features": [probs, feats],
            "evaluate": model.evaluate(x, labels, batch_size=256, prepared=True)}[method]
    del x, runs
    call(256)
    tracemalloc.start()
    got = call(256)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    float_copy = images.size * 4  # what converting the whole input takes (62.7 MB)
    outputs = 20000 * (10 + 16) * 4 * 3  # the results, their pieces and one concatenation
    assert peak < outputs + 256 * 784 * 4 * 4 < float_copy, f"peak {peak / 1e6:.1f} MB"
    if method == "evaluate":
        assert got == want
    else:
        for a, b in zip(got if isinstance(got, tuple) else [got], want):
            np.testing.assert_array_equal(gn.to_numpy(a), b)


# --- found by the hostile sweep ----------------------------------------------------------------
@pytest.mark.parametrize("value, error", [(float("nan"), "SGD lr must be finite, got nan"),
                                          (-1, "SGD lr must be > 0, got -1"),
                                          ("0.1", "SGD lr must be a real number, got str")])
def test_setting_a_bad_learning_rate_is_refused(numpy_backend, value, error):
    graph, params, x, labels = models.mlp(dropout=0.0)
    opt = optim.SGD(params, lr=0.1)
    with pytest.raises(gn.GraphnetError, match=error):
        opt.lr = value
    assert opt.lr == 0.1
    before = _snapshot(params, opt)
    opt.minimize(graph, models.feeds(x, labels, batch=4, steps=1)[0])
    assert all(np.isfinite(a).all() for a in _snapshot(params, opt))
    assert any((a != b).any() for a, b in zip(before, _snapshot(params, opt)))


def test_schedules_take_a_fractional_or_refuse_a_bad_epoch_count():
    """On --resume part-way through an epoch the remaining epochs are fractional."""
    step = optim.make_schedule("step", 4.5)
    assert step.step_size == 1 and step(1.0) == pytest.approx(0.1)
    for bad in (-3, 0, float("nan")):
        with pytest.raises(gn.ArgumentError, match="make_schedule epochs must be"):
            optim.make_schedule("cosine", bad)


def test_a_fractional_class_count_is_refused(numpy_backend):
    from graphnet import nn
    with pytest.raises(gn.ArgumentError, match="num_classes must be an integer > 0, got 1.5"):
        nn.Classifier(nn.MLP([8, 10], 784, "tanh"), (784,), num_classes=1.5)


@pytest.mark.parametrize("section, key, value, message", [
    ("state", "epoch", 1.5, "epoch must be an integer, got float 1.5"),
    ("state", "epoch", -5, "epoch must be >= 0, got -5"),
    ("state", "loss_sum", float("nan"), "loss_sum must be finite, got nan"),
    ("state", "batches_seen", "x", "batches_seen must be an integer"),
    ("run", "base_lr", -1.0, "base_lr must be > 0, got -1"),
    ("run", "schedule_from", float("inf"), "schedule_from must be finite"),
])
def test_a_checkpoints_position_and_settings_are_checked(numpy_backend, tmp_path, section, key,
                                                         value, message):
    """Saved numbers are never truncated or taken when NaN: 1.5 epochs is not 1."""
    import json
    from graphnet.io import CheckpointError
    from graphnet.training import CHECKPOINT, checkpoint_position
    trainer, x, y = _trainer(checkpoint_dir=tmp_path)
    trainer.fit(x, y, epochs=1)
    arrays = dict(np.load(tmp_path / CHECKPOINT))
    meta = json.loads(bytes(arrays["__meta__"]).decode())
    meta[section][key] = value
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(CheckpointError, match=message):
        _trainer()[0].load_checkpoint(tmp_path / "bad.npz")
    if section == "state":
        with pytest.raises(CheckpointError, match=message):
            checkpoint_position(tmp_path / "bad.npz")


def test_replan_refuses_what_is_not_a_schedule(numpy_backend):
    trainer, _, _ = _trainer()
    with pytest.raises(gn.ArgumentTypeError, match="schedule: expected a graphnet.optim.Schedule"):
        trainer.replan(schedule="cosine")
    assert trainer.schedule.config() == {"type": "constant"}


def test_model_files_and_preprocessing_doors(numpy_backend, tmp_path):
    from graphnet import nn
    from graphnet.io import CheckpointError
    model = nn.Classifier(nn.MLP([10], 784), (784,))
    with pytest.raises(gn.ArgumentError, match="path: .* is a folder; give a file name"):
        model.save(tmp_path)
    with pytest.raises(gn.ArgumentError, match="has a component of 300 bytes"):
        model.save(tmp_path / ("m" * 300))
    with pytest.raises(CheckpointError, match="path: expected a file path, got int 5"):
        nn.load(5)
    mean = gn.to_numpy(model.mean.value).copy()
    with pytest.raises(gn.FeedError, match=r"images: no images \(shape \(0, 784\)\) to learn"):
        model.fit_preprocessing(np.zeros((0, 784), np.uint8))
    np.testing.assert_array_equal(mean, gn.to_numpy(model.mean.value))


def test_numpy_names_the_label_the_loss_could_not_check_when_fed(numpy_backend):
    """Logits of unknown width at build time: the feed cannot check the labels, the refused
    step names the culprit (found by running the logits on the error path only)."""
    x = gn.Input("x", shape=(None, None))
    y = gn.Input("y", shape=(None,), dtype="int64")
    w = gn.Parameter(np.ones(1), name="w")
    graph = gn.Graph(x, cost=gn.softmax_cross_entropy(x * w, y))  # logits (None, None)
    opt = optim.SGD([w], lr=0.1)
    before = gn.to_numpy(w.value).copy()
    with pytest.raises(gn.NumericsError, match=r"is nan at step 1 .*left unchanged: input 'y': "
                                               r"class index 7 at position 1 is outside \[0, 3\)"):
        opt.minimize(graph, {x: np.ones((2, 3)), y: np.array([0, 7])})
    np.testing.assert_array_equal(before, gn.to_numpy(w.value))

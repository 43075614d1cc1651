"""Layers, optimizers, the training loop, and agreement of training across backends."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from graphnet import nn, optim
from graphnet.testing import assert_close
from graphnet.training import Trainer, fit

import numpy_reference as ref
from helpers import blobs, tiny_model


def test_mlp_learns_blobs(backend):
    x, y = blobs(600)
    model = tiny_model()
    model.fit_preprocessing(x)
    before = model.evaluate(x, y)["accuracy"]
    hist = fit(model, optim.SGD(model.parameters(), lr=0.1), x, y, x, y, epochs=3,
               batch_size=32, progress=False)
    assert hist.test_accuracy[-1] > 0.95 > before
    assert all(isinstance(v, float) for v in hist.train_loss + hist.test_accuracy)
    assert hist.train_loss[-1] < hist.train_loss[0]


def test_fit_follows_the_gradient_descent_trajectory(backend):
    """Full-batch ``fit`` takes exactly the steps of independent NumPy gradient descent: a
    broken optimizer (wrong sign, lr ignored, no update) cannot reach the same parameters."""
    x, y = blobs(120, pixels=64, seed=4)
    model = tiny_model(layers=(12, 10), pixels=64, seed=2)
    model.fit_preprocessing(x)
    params = [gn.to_numpy(p.value).astype(np.float64) for p in model.parameters()]
    fit(model, optim.SGD(model.parameters(), lr=0.3), x, y, epochs=5, batch_size=120,
        progress=False)
    xr = x.reshape(len(x), -1).astype(np.float64) / 255
    xr -= xr.mean(axis=0)
    losses = []
    for _ in range(5):  # one full batch per epoch: the order of the rows changes nothing
        loss, grads = ref.mlp_loss_and_grads(params, xr, y)
        for p, g in zip(params, grads):
            p -= 0.3 * g
        losses.append(loss)
    assert losses[-1] < 0.8 * losses[0]  # the reference itself really learns
    for i, (p, r) in enumerate(zip(model.parameters(), params)):
        assert_close(p.value, r, rtol=1e-3, atol=1e-5, what=f"parameter {i}")


def test_mlp_structure_matches_reference():
    net = nn.MLP([128, 64, 10], activation="tanh")
    kinds = [type(l).__name__ for l in net.layers]
    assert kinds == ["Linear", "Tanh", "Linear", "Tanh", "Linear"]
    assert [p.shape for p in net.parameters()] == [(784, 128), (128,), (128, 64), (64,), (64, 10), (10,)]
    with pytest.raises(ValueError, match="activation"):
        nn.MLP([10], activation="swish")


def test_features_are_last_hidden_layer():
    model = tiny_model(layers=(8, 6, 10))
    assert model.features is model.network.taps[3]  # Linear, Tanh, Linear, Tanh <- here, Linear


def test_predict_takes_raw_images_and_checks_shape():
    x, y = blobs(50)
    model = tiny_model()
    pred = gn.to_numpy(model.predict(x))
    assert pred.shape == (50,) and pred.dtype.kind == "i"
    with pytest.raises(ValueError, match="784 pixels"):
        model.predict(np.zeros((3, 27, 27), dtype=np.uint8))


def test_dropout_off_at_evaluation():
    x, _ = blobs(20)
    model = tiny_model(layers=(32, 10), dropout=0.5)
    assert any(isinstance(layer, nn.Dropout) for layer in model.network.layers)  # else vacuous
    a = gn.to_numpy(model.deep_features(x)[0])
    b = gn.to_numpy(model.deep_features(x)[0])
    np.testing.assert_array_equal(a, b)


# Hyper-parameters are written here and handed to both graphnet and the reference: the
# reference never reads them back from the optimizer under test.
OPTIMIZER_CASES = {
    "sgd": ("sgd", dict(lr=0.1)),
    "momentum": ("sgd", dict(lr=0.1, momentum=0.9)),
    "nesterov-wd": ("sgd", dict(lr=0.1, momentum=0.8, nesterov=True, weight_decay=1e-2)),
    "momentum-wd": ("sgd", dict(lr=0.05, momentum=0.5, weight_decay=0.1)),
    "adam": ("adam", dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6)),
    "adamw": ("adam", dict(lr=0.01, betas=(0.85, 0.99), eps=1e-7, weight_decay=0.05)),
}


def _grads_per_step(steps: int) -> list:
    """A different gradient at every step: a constant one hides Adam's betas (m/(1-b^t) = g)."""
    rng = np.random.default_rng(7)
    return [[rng.normal(size=(2, 2)) * (t + 1), rng.normal(size=2)] for t in range(steps)]


def _run_graphnet(opt_cls, kw, steps: int = 4):
    with gn.default_dtype("float64"):
        w = gn.Parameter(np.array([[1.0, -2.0], [0.5, 3.0]]))
        b = gn.Parameter(np.array([0.1, -0.1]))
    opt = opt_cls([w, b], **kw)
    for g in _grads_per_step(steps):
        opt.step({w: g[0], b: g[1]})
    return gn.to_numpy(w.value), gn.to_numpy(b.value)


def _run_reference(kind: str, kw: dict, steps: int = 4):
    params = [np.array([[1.0, -2.0], [0.5, 3.0]]), np.array([0.1, -0.1])]
    slots = [[np.zeros_like(p), np.zeros_like(p)] for p in params]
    lr, wd = kw["lr"], kw.get("weight_decay", 0.0)
    for t, grads in enumerate(_grads_per_step(steps), start=1):
        for p, g, (m, v) in zip(params, grads, slots):
            decay = wd if p.ndim >= 2 else 0.0  # biases are never decayed
            if kind == "adam":
                beta1, beta2 = kw.get("betas", (ref.ADAM_BETA1, ref.ADAM_BETA2))
                ref.adam_step(p, g, m, v, t, lr, beta1, beta2, kw.get("eps", ref.ADAM_EPS), decay)
            else:
                ref.sgd_step(p, g, m, lr, kw.get("momentum", 0.0), kw.get("nesterov", False), decay)
    return params


@pytest.mark.parametrize("case", list(OPTIMIZER_CASES))
def test_optimizers_match_hand_written_updates(case, numpy_backend):
    """Four steps of each optimizer against the textbook formulas in float64."""
    kind, kw = OPTIMIZER_CASES[case]
    w, b = _run_graphnet(optim.Adam if kind == "adam" else optim.SGD, kw)
    want = _run_reference(kind, kw)
    assert_close(w, want[0], rtol=1e-12, atol=1e-12, what="weight")
    assert_close(b, want[1], rtol=1e-12, atol=1e-12, what="bias")


def test_adam_defaults_are_the_published_ones(numpy_backend):
    """``optim.Adam(params)`` steps exactly as Adam with lr 1e-3, betas (0.9, 0.999), eps 1e-8."""
    w, b = _run_graphnet(optim.Adam, {})
    want = _run_reference("adam", dict(lr=ref.ADAM_LR))
    assert_close(w, want[0], rtol=1e-12, atol=1e-12, what="weight")
    assert_close(b, want[1], rtol=1e-12, atol=1e-12, what="bias")


@pytest.mark.parametrize("bad", [dict(lr=0), dict(lr=-1), dict(lr=0.1, momentum=1.5),
                                 dict(lr=0.1, weight_decay=-1), dict(lr=0.1, nesterov=True)])
def test_optimizer_rejects_bad_settings(bad):
    p = gn.Parameter(np.ones((2, 2)))
    with pytest.raises(ValueError):
        optim.SGD([p], **bad)


def test_schedules():
    cos = optim.CosineLR(10)
    assert cos(0) == pytest.approx(1) and cos(5) == pytest.approx(0.5) and cos(10) == pytest.approx(0)
    step = optim.StepLR(3, 0.1)
    assert step(2.9) == 1 and step(3) == pytest.approx(0.1) and step(6.5) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="schedule"):
        optim.make_schedule("linear", 5)


def _train_steps(steps: int = 50):
    """An MLP trained by graphnet for ``steps`` SGD-momentum steps on fixed batches, and the
    same training done by the independent float64 NumPy reference from the same start."""
    x, y = blobs(steps * 16, pixels=64, seed=1)
    model = tiny_model(layers=(32, 16, 10), pixels=64, seed=3)
    model.fit_preprocessing(x)
    start = [gn.to_numpy(p.value).astype(np.float64) for p in model.parameters()]
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    X, Y = model.prepare(x), gn.asarray(y)
    losses = []
    for i in range(steps):
        feed = {model.images: X[i * 16:(i + 1) * 16], model.labels: Y[i * 16:(i + 1) * 16]}
        loss, grads = model.train_graph.gradients(feed, return_cost=True)
        opt.step(grads)
        losses.append(float(loss))
    # the reference: its own preprocessing, forward, backward and update, in float64
    xr = x.reshape(len(x), -1).astype(np.float64) / 255
    xr -= xr.mean(axis=0)
    params, vel, ref_losses = [p.copy() for p in start], [np.zeros_like(p) for p in start], []
    for i in range(steps):
        loss, grads = ref.mlp_loss_and_grads(params, xr[i * 16:(i + 1) * 16], y[i * 16:(i + 1) * 16])
        for p, g, v in zip(params, grads, vel):
            ref.sgd_step(p, g, v, 0.05, 0.9)
        ref_losses.append(loss)
    got = [gn.to_numpy(p.value) for p in model.parameters()]
    return np.array(losses), got, np.array(ref_losses), params


def test_training_agrees_with_float64_numpy_reference(backend):
    """50 steps on each backend in float32 match an independent NumPy float64 implementation."""
    losses, params, ref_losses, ref_params = _train_steps()
    assert_close(losses, ref_losses, rtol=1e-3, atol=1e-4, what="losses")
    for i, (p, r) in enumerate(zip(params, ref_params)):
        assert p.dtype == np.float32
        assert_close(p, r, rtol=1e-3, atol=1e-4, what=f"parameter {i}")


def test_trainer_validates_inputs():
    model = tiny_model()
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(model, optim.SGD(model.parameters()), batch_size=0)
    x, y = blobs(10)
    with pytest.raises(ValueError, match="labels"):
        fit(model, optim.SGD(model.parameters()), x, y[:5], epochs=1, progress=False)
    with pytest.raises(ValueError, match="integers"):
        fit(model, optim.SGD(model.parameters()), x, y.astype(float), epochs=1, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        fit(model, optim.SGD(model.parameters()), x, y, epochs=-1, progress=False)


def test_learning_curve_recorded_every_n_batches():
    x, y = blobs(256)
    model = tiny_model()
    model.fit_preprocessing(x)
    hist = fit(model, optim.SGD(model.parameters(), lr=0.1), x, y, x, y, epochs=2, batch_size=32,
               eval_every=4, progress=False)
    assert hist.curve_batches == list(range(4, 17, 4))
    assert len(hist.curve_test_accuracy) == len(hist.curve_train_loss) == 4


def test_learning_curve_points_evaluate_curve_subset_images():
    x, y = blobs(256)
    model = tiny_model()
    model.fit_preprocessing(x)
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.1), batch_size=32, eval_every=4,
                      curve_subset=40, eval_subset=100, progress=False)
    sizes, evaluate = [], model.evaluate
    model.evaluate = lambda xs, ys, **kw: sizes.append(len(xs)) or evaluate(xs, ys, **kw)
    hist = trainer.fit(x, y, x[:200], y[:200], epochs=1)
    assert hist.curve_batches == [4, 8]
    assert sizes == [40, 40, 40, 40, 100, 200]  # two curve points (train, test), then the epoch's


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "100"])
def test_curve_subset_must_be_a_positive_integer(bad):
    model = tiny_model()
    with pytest.raises(ValueError, match=f"curve_subset must be an integer > 0, got {bad!r}"):
        Trainer(model, optim.SGD(model.parameters()), curve_subset=bad)


def test_random_shift_moves_flat_and_nchw_images(backend):
    from graphnet.augment import random_shift
    img = np.zeros((28, 28), dtype=np.float32)
    img[10:14, 10:14] = 1
    for shape in [(3, 784), (3, 1, 28, 28)]:
        x = gn.asarray(np.broadcast_to(img, (3, 28, 28)).reshape(shape).copy())
        out = gn.to_numpy(random_shift(x, max_shift=2, image_shape=(28, 28)))
        assert out.shape == shape
        moved = out.reshape(3, 28, 28)
        assert (moved.sum(axis=(1, 2)) == 16).all()  # a 2-pixel shift keeps the square inside
        ys, xs = np.nonzero(moved[0])
        assert 8 <= ys.min() <= 12 and 8 <= xs.min() <= 12


@pytest.mark.parametrize("bad, message", [
    ("mpi", r"strategy: expected a Strategy .* got str, which lacks writes, attach, sampler"),
    (object(), r"got object, which lacks writes, attach, sampler, step, evaluate, end_epoch"),
])
def test_trainer_names_what_a_strategy_lacks(bad, message):
    from graphnet.errors import ArgumentTypeError
    model = nn.Classifier(nn.MLP([3], in_features=4), (4,))
    with pytest.raises(ArgumentTypeError, match=message):
        Trainer(model, optim.SGD(model.parameters(), lr=0.1), strategy=bad)
    with pytest.warns(DeprecationWarning), pytest.raises(ArgumentTypeError,
                                                         match="distributed: expected a graphnet"):
        Trainer(model, optim.SGD(model.parameters(), lr=0.1), distributed=bad)

"""Layers, optimizers, the training loop, and agreement of training across backends."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from graphnet import nn, optim
from graphnet.testing import assert_close
from graphnet.train import Trainer, fit

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
    a = gn.to_numpy(model.deep_features(x)[0])
    b = gn.to_numpy(model.deep_features(x)[0])
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("make", [
    lambda ps: optim.SGD(ps, lr=0.1),
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda ps: optim.Adam(ps, lr=0.01),
    lambda ps: optim.Adam(ps, lr=0.01, weight_decay=0.01),
], ids=["sgd", "momentum", "nesterov-wd", "adam", "adamw"])
def test_optimizers_match_hand_written_updates(make, numpy_backend):
    """Two steps of each optimizer against the textbook formulas in float64."""
    with gn.default_dtype("float64"):
        w = gn.Parameter(np.array([[1.0, -2.0], [0.5, 3.0]]))
        b = gn.Parameter(np.array([0.1, -0.1]))
    opt = make([w, b])
    grads = [np.array([[0.3, -0.2], [0.1, 0.4]]), np.array([0.5, -0.5])]
    ref = _reference_steps(opt, [w.value.copy(), b.value.copy()], grads, steps=2)
    for _ in range(2):
        opt.step({w: grads[0], b: grads[1]})
    assert_close(w.value, ref[0], rtol=1e-12, atol=1e-12, what="weight")
    assert_close(b.value, ref[1], rtol=1e-12, atol=1e-12, what="bias")


def _reference_steps(opt, params, grads, steps):
    lr, wd = opt.lr, opt.weight_decay
    state = [dict(v=np.zeros_like(p), m=np.zeros_like(p)) for p in params]
    for t in range(1, steps + 1):
        for p, g, s in zip(params, grads, state):
            decay = wd if p.ndim >= 2 else 0.0
            p *= 1 - lr * decay
            if isinstance(opt, optim.Adam):
                s["m"] = opt.beta1 * s["m"] + (1 - opt.beta1) * g
                s["v"] = opt.beta2 * s["v"] + (1 - opt.beta2) * g * g
                mh = s["m"] / (1 - opt.beta1 ** t)
                vh = s["v"] / (1 - opt.beta2 ** t)
                p -= lr * mh / (np.sqrt(vh) + opt.eps)
            elif opt.momentum:
                s["v"] = opt.momentum * s["v"] + g
                p -= lr * (g + opt.momentum * s["v"] if opt.nesterov else s["v"])
            else:
                p -= lr * g
    return params


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


def _train_steps(dtype: str, steps: int = 50):
    """An MLP trained for ``steps`` steps from a fixed host init on fixed batches."""
    x, y = blobs(steps * 16, pixels=64, seed=1)
    with gn.default_dtype(dtype):
        model = tiny_model(layers=(32, 16, 10), pixels=64, seed=3)
        model.fit_preprocessing(x)
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        X, Y = model.prepare(x), gn.asarray(y)
        losses = []
        for i in range(steps):
            feed = {model.images: X[i * 16:(i + 1) * 16], model.labels: Y[i * 16:(i + 1) * 16]}
            loss, grads = model.train_graph.gradients(feed, return_cost=True)
            opt.step(grads)
            losses.append(float(loss))
    return np.array(losses), [gn.to_numpy(p.value) for p in model.parameters()]


def test_training_agrees_with_float64_numpy_reference(backend):
    """50 steps on each backend in float32 match NumPy float64 within float32 tolerance."""
    losses, params = _train_steps("float32")
    with gn.use_backend("numpy"):
        ref_losses, ref_params = _train_steps("float64")
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

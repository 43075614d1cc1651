"""Classifier doors: one image or a batch, in the trained pixel scale, labels that match."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from graphnet import nn
from graphnet.errors import ArgumentError
from graphnet.nn import ClassifierInputError
from graphnet.testing import assert_close

from helpers import blobs, tiny_model


@pytest.fixture
def fitted(backend):
    x, y = blobs(40)
    model = tiny_model(layers=(12, 10))
    model.fit_preprocessing(x)
    return model, x, y


def test_one_image_or_a_batch_in_any_accepted_shape(fitted):
    model, x, _ = fitted
    batch = gn.to_numpy(model.predict_proba(x))
    assert batch.shape == (40, 10)
    assert_close(batch.sum(axis=1), np.ones(40), rtol=1e-6, atol=1e-6, what="row sums")
    assert_close(model.predict_proba(x.reshape(40, 784)), batch, what="(N, 784)")
    assert_close(model.predict_proba(x[3]), batch[3], what="one (28, 28) image")
    assert_close(model.predict_proba(x[3].reshape(784)), batch[3], what="one (784,) image")
    assert_close(model.predict_proba(x[:1]), batch[:1], what="a batch of one")
    one = model.predict(x[3])
    assert one.shape == () and int(one) == int(batch[3].argmax())
    np.testing.assert_array_equal(gn.to_numpy(model.predict(x)), batch.argmax(axis=1))
    probs, feats = model.deep_features(x[5])
    assert probs.shape == (10,) and feats.shape == (12,)
    all_probs, all_feats = model.deep_features(x)
    assert_close(feats, all_feats[5], what="features of one image")
    assert model.predict_proba(x[:0]).shape == (0, 10)


def test_image_shapes_follow_the_models_input_size():
    model = tiny_model(layers=(5, 10), pixels=16)
    assert model.image_shapes() == [(16,), (4, 4)]
    imgs = np.arange(48, dtype=np.uint8).reshape(3, 4, 4)
    assert gn.to_numpy(model.predict(imgs)).shape == (3,)
    assert gn.to_numpy(model.predict_proba(imgs[0])).shape == (10,)
    with pytest.raises(ClassifierInputError, match=r"16 pixels.*\(4, 4\).*got shape \(28, 28\)"):
        model.predict(np.zeros((28, 28), np.uint8))


def test_channel_first_models_take_plain_images():
    gn.seed(0)
    net = nn.Sequential([nn.Flatten(), nn.Linear(784, 10)])
    model = nn.Classifier(net, input_shape=(1, 28, 28))
    x, _ = blobs(6)
    want = gn.to_numpy(model.predict_proba(x[:, None]))
    assert_close(model.predict_proba(x), want, what="(N, 28, 28)")
    assert_close(model.predict_proba(x.reshape(6, 784)), want, what="(N, 784)")
    assert_close(model.predict_proba(x[2]), want[2], what="one (28, 28) image")


@pytest.mark.parametrize("shape", [(3, 27, 27), (27, 27), (3, 392, 2), (783,), (2, 28, 28, 3), ()])
def test_wrong_shapes_are_refused_naming_what_fits(fitted, shape):
    model, _, _ = fitted
    with pytest.raises(ClassifierInputError, match=r"images: .*784 pixels.*\(28, 28\).*got shape"):
        model.predict(np.zeros(shape, dtype=np.uint8))


@pytest.mark.parametrize("transform, pattern", [
    (lambda x: x / 255.0, r"as if already scaled to \[0, 1\].*multiply them by 255"),
    (lambda x: x.astype(np.float32) / 255, r"as if already scaled to \[0, 1\]"),
    (lambda x: x - 128.0, r"range over \[-128, .*expected raw pixel values in \[0, 255\]"),
    (lambda x: x.astype(np.int64) * 2, r"range over \[0, 510\]"),
    (lambda x: np.where(np.arange(784).reshape(28, 28) == 7, np.nan, x),
     r"NaN or infinite.*\[0, 255\]"),
    (lambda x: np.where(np.arange(784).reshape(28, 28) == 7, np.inf, x), r"NaN or infinite"),
])
def test_images_in_another_scale_are_refused(fitted, transform, pattern):
    model, x, y = fitted
    bad = transform(x)
    for call in (model.predict, model.predict_proba, model.deep_features, model.prepare,
                 lambda images: model.evaluate(images, y)):
        with pytest.raises(ClassifierInputError, match=pattern):
            call(bad)
    with pytest.raises(ClassifierInputError, match=pattern):
        model.predict(bad[0])


def test_float_images_in_the_trained_scale_are_taken(fitted):
    model, x, _ = fitted
    want = gn.to_numpy(model.predict_proba(x))
    assert_close(model.predict_proba(x.astype(np.float64)), want, what="float 0..255")
    blurred = np.clip(x.astype(np.float32) + 0.5, 0, 255)  # fractional but 0..255
    assert gn.to_numpy(model.predict(blurred)).shape == (40,)
    assert gn.to_numpy(model.predict(np.zeros((2, 784)))).shape == (2,)  # blank, not "scaled"
    assert gn.to_numpy(model.predict(np.ones((2, 784), np.float32))).shape == (2,)


@pytest.mark.parametrize("bad", [[[1, 2], [3]], np.array(["a"] * 784), np.ones((2, 784), bool),
                                 np.ones((2, 784), complex)])
def test_non_numeric_images_are_refused(fitted, bad):
    model, _, _ = fitted
    with pytest.raises(ClassifierInputError, match="images: "):
        model.predict(bad)


@pytest.mark.parametrize("labels, pattern", [
    (lambda y: y[:1], r"labels: expected one label per image, shape \(100,\); got shape \(1,\)"),
    (lambda y: y[:99], r"shape \(100,\); got shape \(99,\)"),
    (lambda y: y[:, None], r"got shape \(100, 1\)"),
    (lambda y: y.astype(np.float64), "integer class indices"),
    (lambda y: np.where(np.arange(100) == 3, 10, y), r"in \[0, 9\], got values in \[\d, 10\]"),
    (lambda y: np.where(np.arange(100) == 3, -1, y), r"got values in \[-1, "),
])
def test_evaluate_refuses_labels_that_do_not_match(backend, labels, pattern):
    x, y = blobs(100)
    model = tiny_model()
    model.fit_preprocessing(x)
    with pytest.raises(ClassifierInputError, match=pattern):
        model.evaluate(x, labels(y))
    with pytest.raises(ClassifierInputError, match=pattern):
        model.evaluate(model.prepare(x), labels(y), prepared=True)
    assert 0 <= model.evaluate(x, y)["accuracy"] <= 1


def test_evaluate_refuses_no_images(fitted):
    model, x, y = fitted
    with pytest.raises(ClassifierInputError, match="no images"):
        model.evaluate(x[:0], y[:0])


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, "8", True, None])
def test_batch_size_must_be_a_positive_integer(fitted, batch_size):
    model, x, y = fitted
    for call in (model.predict, model.predict_proba, model.deep_features,
                 lambda images, batch_size: model.evaluate(images, y, batch_size)):
        with pytest.raises(ArgumentError, match=r"batch_size must be an integer > 0, got "):
            call(x, batch_size=batch_size)


def test_small_batches_give_the_same_answer(fitted):
    model, x, y = fitted
    assert_close(model.predict_proba(x, batch_size=7), model.predict_proba(x), rtol=1e-6,
                 atol=1e-7, what="batch_size=7")
    assert model.evaluate(x, y, batch_size=np.int64(3))["accuracy"] == \
        model.evaluate(x, y)["accuracy"]


@pytest.mark.parametrize("scale", [0, -1 / 255, float("nan"), float("inf")])
def test_pixel_scale_must_be_positive(scale):
    with pytest.raises(ValueError, match="pixel_scale must be a positive number"):
        nn.Classifier(nn.MLP([10], 784), (784,), pixel_scale=scale)

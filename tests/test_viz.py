"""graphnet.viz: every figure on every backend, PCA against a float64 reference, deep features.

Fast: random tiny images and tiny models, no real MNIST.
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import graphnet as gn  # noqa: E402
from graphnet import nn, viz  # noqa: E402
from graphnet.testing import assert_close  # noqa: E402
from graphnet.train import History  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DPI = 40


def tiny_data(n: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, size=n).astype(np.int64))


def tiny_model(layers=(6, 10), images=None) -> nn.Classifier:
    """A Classifier on flat 784-pixel input with the preprocessing fitted."""
    model = nn.Classifier(nn.MLP(list(layers), 784, "tanh"), input_shape=(784,))
    model.fit_preprocessing(images if images is not None else tiny_data()[0])
    return model


def drawn_colours(path: Path) -> int:
    """How many distinct colours the image file holds (a blank figure has one or two)."""
    from PIL import Image
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
    return len(np.unique(pixels.reshape(-1, 3), axis=0))


def check_png(fig, path: Path, size: tuple[int, int] | None = None) -> None:
    """``fig`` saved to ``path`` decodes to a drawn (not blank) PNG of the promised size;
    what the figures show is checked from their artists in test_promises_viz.py."""
    viz.save(fig, path, dpi=DPI)
    expected = viz.pixel_size(fig, DPI)
    assert viz.png_size(path) == expected
    assert drawn_colours(path) > 8, f"{path.name} is blank"
    if size is not None:
        assert expected == size


def host_pca(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The float64 NumPy reference: centred SVD."""
    x = np.asarray(x, dtype=np.float64)
    xc = x - x.mean(axis=0)
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    return xc @ vt[:k].T, (s[:k] ** 2) / (s ** 2).sum()


def same_up_to_sign(actual: np.ndarray, expected: np.ndarray, **tol) -> None:
    for j in range(expected.shape[1]):
        sign = 1.0 if np.dot(actual[:, j], expected[:, j]) >= 0 else -1.0
        assert_close(sign * actual[:, j], expected[:, j], what=f"component {j}", **tol)


# --- every figure on every backend -------------------------------------------------------
def test_model_figures(backend, tmp_path):
    images, labels = tiny_data()
    model = tiny_model(images=images)
    dev_images, dev_labels = backend.asarray(images), backend.asarray(labels)
    check_png(viz.samples(model, images, labels, figsize=(5, 6)), tmp_path / "s.png",
              (5 * DPI, 6 * DPI))
    check_png(viz.samples(model, dev_images, dev_labels, n=7), tmp_path / "s2.png")
    check_png(viz.first_layer_weights(model, figsize=(4, 3)), tmp_path / "w.png",
              (4 * DPI, 3 * DPI))
    check_png(viz.confusion_matrix(model, dev_images, labels, figsize=(4, 4)),
              tmp_path / "c.png", (4 * DPI, 4 * DPI))
    check_png(viz.confident_mistakes(model, images, dev_labels, n=9, figsize=(4, 5)),
              tmp_path / "m.png", (4 * DPI, 5 * DPI))
    check_png(viz.confident_mistakes(model, dev_images, dev_labels, n=4), tmp_path / "m2.png")
    for dims in (2, 3):
        check_png(viz.deep_features(model, dev_images, labels, dims, figsize=(5, 4)),
                  tmp_path / f"f{dims}.png", (5 * DPI, 4 * DPI))


def test_one_layer_weights_are_titled_digit_templates(backend, tmp_path):
    model = tiny_model(layers=(10,))
    fig = viz.first_layer_weights(model)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [str(k) for k in range(10)]
    check_png(fig, tmp_path / "w.png")
    other = tiny_model(layers=(10,))
    check_png(viz.weight_decay_comparison([model, other], ["a", "b"], figsize=(8, 3)),
              tmp_path / "wd.png", (8 * DPI, 3 * DPI))
    check_png(viz.weight_decay_comparison([model, other], ["a", "b"], shared_scale=True),
              tmp_path / "wd2.png")


def test_first_layer_images_are_columns_and_conv_filters(backend):
    model = tiny_model(layers=(5, 10))
    w = gn.to_numpy(model.network[0].W.value)
    imgs = viz.first_layer_images(model)
    assert imgs.shape == (5, 28, 28)
    assert_close(imgs[3], w[:, 3].reshape(28, 28))
    kernel = gn.Parameter(np.arange(4 * 9, dtype=np.float64).reshape(4, 1, 3, 3))
    cnn = SimpleNamespace(network=SimpleNamespace(named_parameters=lambda: {"0.W": kernel}),
                          input_shape=(1, 28, 28), num_classes=10)
    filters = viz.first_layer_images(cnn)
    assert filters.shape == (4, 3, 3)
    assert_close(filters[2], np.arange(18, 27).reshape(3, 3))


def test_first_layer_weights_of_a_real_cnn(backend, tmp_path):
    conv = getattr(nn, "Conv2d", None)
    if conv is None:
        pytest.skip("this graphnet has no Conv2d")
    net = nn.Sequential([conv(1, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 26 * 26, 10)])
    model = nn.Classifier(net, input_shape=(1, 28, 28))
    assert viz.first_layer_images(model).shape == (6, 3, 3)
    check_png(viz.first_layer_weights(model), tmp_path / "k.png")


def test_pca_and_region_figures(backend, tmp_path):
    rng = np.random.default_rng(1)
    pts = backend.asarray(rng.normal(size=(60, 3)))
    y = rng.integers(0, 4, size=60)
    check_png(viz.pca_scatter(pts[:, :2], y, [0.5, 0.2], title="t", figsize=(5, 4)),
              tmp_path / "p2.png", (5 * DPI, 4 * DPI))
    check_png(viz.pca_scatter(pts, backend.asarray(y), figsize=(5, 5)), tmp_path / "p3.png",
              (5 * DPI, 5 * DPI))
    xp = backend.xp

    def two_class(p):
        p = backend.asarray(p)
        z = 1 / (1 + xp.exp(-(p[:, 0] * p[:, 1])))
        return xp.stack([1 - z, z], axis=1)

    check_png(viz.decision_regions(two_class, pts[:, :2], y % 2, resolution=30,
                                   figsize=(4, 4)), tmp_path / "r2.png", (4 * DPI, 4 * DPI))
    three = lambda p: np.eye(3)[(np.asarray(p)[:, 0] > 0).astype(int) + (np.asarray(p)[:, 1] > 0)]
    check_png(viz.decision_regions(three, pts[:, :2], y % 3, resolution=20), tmp_path / "r3.png")


def test_rotating_gif(backend, tmp_path):
    from PIL import Image
    rng = np.random.default_rng(2)
    path = viz.rotating_gif(backend.asarray(rng.normal(size=(40, 3))), rng.integers(0, 3, 40),
                            tmp_path / "turn.gif", frames=4, figsize=(3, 3), dpi=30)
    with Image.open(path) as im:
        assert im.format == "GIF" and im.n_frames == 4 and im.size == (90, 90)


def test_image_grid_mosaic_and_titles(tmp_path):
    imgs = np.random.default_rng(3).normal(size=(7, 5, 4))
    fig = viz.image_grid(imgs, symmetric=True, colorbar=True, figsize=(3, 3))
    assert len(fig.axes) == 2  # one mosaic + its colourbar, however many images
    check_png(fig, tmp_path / "g1.png", (3 * DPI, 3 * DPI))
    fig = viz.image_grid(imgs, [str(i) for i in range(7)], colors=[None, "red"] * 3 + [None])
    assert viz.grid_shape(7) == (3, 3) and len(fig.axes) == 9
    check_png(fig, tmp_path / "g2.png")
    with pytest.raises(ValueError, match="image_shape"):
        viz.image_grid(np.zeros((2, 10)))


def test_learning_curves_from_history_dict_and_file(tmp_path):
    h = History(epoch=[1, 2], train_loss=[0.5, 0.3], train_accuracy=[0.8, 0.9],
                test_loss=[0.55, 0.35], test_accuracy=[0.78, 0.88],
                curve_batches=[10, 20, 30, 40], curve_train_accuracy=[0.5, 0.7, 0.8, 0.9],
                curve_test_accuracy=[0.5, 0.65, 0.78, 0.88],
                curve_train_loss=[1.5, 0.8, 0.5, 0.3], curve_test_loss=[1.5, 0.9, 0.6, 0.35])
    check_png(viz.learning_curves(h, batches_per_epoch=20, figsize=(8, 3)), tmp_path / "c1.png",
              (8 * DPI, 3 * DPI))
    (tmp_path / "metrics.json").write_text(
        __import__("json").dumps({"test_accuracy": 0.88, "history": h.to_dict()}))
    fig = viz.learning_curves(tmp_path / "metrics.json")
    lines = fig.axes[0].get_lines()
    assert [list(l.get_xdata()) for l in lines[:1]] == [[10, 20, 30, 40]]
    per_epoch = History(epoch=[1, 2, 3], train_loss=[1, 0.5, 0.4], train_accuracy=[0.6, 0.7, 0.8],
                        test_loss=[1, 0.6, 0.5], test_accuracy=[0.6, 0.7, 0.75])
    check_png(viz.learning_curves(per_epoch.to_dict()), tmp_path / "c2.png")


# --- PCA ----------------------------------------------------------------------------------
def test_pca_matches_float64_reference_up_to_sign(backend):
    rng = np.random.default_rng(4)
    rot, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    x = (rng.normal(size=(200, 12)) * np.linspace(6, 0.5, 12)) @ rot + 3.0
    ref, ref_explained = host_pca(x, 3)
    for data in (x, x.astype(np.float32)):
        proj = viz.pca(backend.asarray(data), 3)
        assert isinstance(proj.points, np.ndarray) and proj.points.shape == (200, 3)
        tol = dict(rtol=1e-9, atol=1e-9) if data.dtype == np.float64 else \
            dict(rtol=1e-4, atol=1e-4)
        same_up_to_sign(proj.points, ref, **tol)
        assert_close(proj.explained, ref_explained, **tol)
        assert backend.is_array(proj.components) and backend.is_array(proj.mean)
    proj = viz.pca(backend.asarray(x), 2)
    assert_close(proj.transform(x), proj.points, rtol=1e-9, atol=1e-9)
    back = proj.inverse(proj.points[:5])
    assert backend.is_array(back)
    assert_close(proj.transform(back), proj.points[:5], rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="components"):
        viz.pca(x[:2], 3)


@pytest.mark.gpu  # needs a second backend, which is CuPy
def test_pca_agrees_between_backends():
    names = gn.available_backends()
    if len(names) < 2:
        pytest.skip(f"only {names} available")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 20)) * np.linspace(4, 1, 20)
    results = []
    for name in names:
        with gn.use_backend(name) as b:
            results.append(viz.pca(b.asarray(x.astype(np.float32)), 3).points)
    for other in results[1:]:
        same_up_to_sign(other, results[0], rtol=1e-4, atol=1e-4)


# --- deep features ------------------------------------------------------------------------
def test_deep_features_equal_the_hidden_layer_by_hand(backend):
    images, _ = tiny_data(30)
    model = tiny_model(layers=(7, 10), images=images)
    runs = []
    original = model.eval_graph.run
    model.eval_graph.run = lambda *a, **k: runs.append(1) or original(*a, **k)
    probs, feats = model.deep_features(images)
    assert len(runs) == 1  # probabilities and features from one run of the graph
    W1, b1 = (gn.to_numpy(p.value).astype(np.float64) for p in (model.network[0].W,
                                                                model.network[0].b))
    W2, b2 = (gn.to_numpy(p.value).astype(np.float64) for p in (model.network[2].W,
                                                                model.network[2].b))
    x = images.reshape(30, 784) / 255.0 - gn.to_numpy(model.mean.value)
    hidden = np.tanh(x @ W1 + b1)
    logits = hidden @ W2 + b2
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    assert backend.is_array(feats) and feats.shape == (30, 7)
    assert_close(feats, hidden, rtol=1e-4, atol=1e-5, what="deep features")
    assert_close(probs, expected, rtol=1e-4, atol=1e-6, what="probabilities")
    assert_close(viz.probabilities(model, images), expected, rtol=1e-4, atol=1e-6)


def test_confusion_counts_and_mistakes_on_the_backend(backend):
    images, labels = tiny_data(40)
    model = tiny_model(images=images)
    counts = viz.confusion_counts(model, backend.asarray(images), labels)
    pred = gn.to_numpy(model.predict(images))
    expected = np.zeros((10, 10), dtype=np.int64)
    np.add.at(expected, (labels, pred), 1)
    assert isinstance(counts, np.ndarray)
    np.testing.assert_array_equal(counts, expected)
    probs = viz.probabilities(model, images)  # precomputed probabilities give the same
    np.testing.assert_array_equal(viz.confusion_counts(model, images, labels, probs), expected)
    fig = viz.confident_mistakes(model, images, labels, n=5)
    wrong = int((pred != labels).sum())
    assert f"of {wrong} mistakes" in fig.texts[0].get_text()


# --- the MNIST example's page, on fake data -------------------------------------------------
@pytest.fixture
def visualize_module(monkeypatch):
    yield importlib.import_module("examples.mnist.visualize")


def test_write_all_writes_every_figure_and_the_page(visualize_module, monkeypatch, tmp_path):
    import json
    vis = visualize_module
    x_train, y_train = tiny_data(256, seed=7)
    x_test, y_test = tiny_data(64, seed=8)
    monkeypatch.setattr(vis.mnist, "load", lambda data=None: (x_train, y_train, x_test, y_test))
    with gn.use_backend("numpy"):
        gn.seed(0)
        model = tiny_model(layers=(8, 10), images=x_train)
        model.save(tmp_path / "model.npz")
        h = History(epoch=[1], train_loss=[2.0], train_accuracy=[0.2], test_loss=[2.1],
                    test_accuracy=[0.1], curve_batches=[1, 2], curve_train_accuracy=[0.1, 0.2],
                    curve_test_accuracy=[0.1, 0.1], curve_train_loss=[2.3, 2.2],
                    curve_test_loss=[2.3, 2.3])
        (tmp_path / "metrics.json").write_text(json.dumps(
            {"test_accuracy": 0.1, "config": {"batch_size": 128}, "history": h.to_dict()}))
        index = vis.write_all(tmp_path / "model.npz", tmp_path / "figs", gif=False,
                              verbose=False)
    page = index.read_text()
    for name in ("samples", "weights", "weight_decay", "features_2d", "features_3d", "curves",
                 "confusion", "mistakes"):
        assert drawn_colours(tmp_path / "figs" / f"{name}.png") > 8, name
        assert f'src="{name}.png"' in page
    assert "10.00%" in page  # the test accuracy from metrics.json


def test_write_all_without_hidden_layer_or_metrics(visualize_module, monkeypatch, tmp_path):
    vis = visualize_module
    x, y = tiny_data(32)
    monkeypatch.setattr(vis.mnist, "load", lambda data=None: (x, y, x, y))
    with gn.use_backend("numpy"):
        tiny_model(layers=(10,), images=x).save(tmp_path / "model.npz")
        index = vis.write_all(tmp_path / "model.npz", tmp_path, weight_decay=False,
                              verbose=False)
    page = index.read_text()
    assert "no hidden layer" in page and "no training history" in page
    assert not (tmp_path / "features_2d.png").exists()
    assert drawn_colours(tmp_path / "weights.png") > 8


# --- the toy problems -------------------------------------------------------------------
def test_nonlinear_example_learns_and_writes_both_figures(backend, tmp_path):
    toy = importlib.import_module("examples.nonlinear.train")
    x, y = toy.make_data("disk", 200)
    assert 0.35 < y.mean() < 0.65  # the circle holds about half the square
    gn.seed(0)
    net = toy.Net([8, 3])
    net.fit(backend.asarray(x), backend.asarray(y), steps=300, lr=0.03)
    probs, feats = net.run(x)
    assert backend.is_array(feats) and feats.shape == (200, 3)
    assert float((gn.to_numpy(probs).argmax(axis=1) == y).mean()) > 0.9
    head = gn.to_numpy(net.head_probs(feats))
    assert_close(head, probs, rtol=1e-4, atol=1e-6, what="output layer on the features")
    fig = toy.figure("disk", net, x, y, 1.0)
    check_png(fig, tmp_path / "disk.png", (int(11.5 * DPI), int(5.2 * DPI)))
    assert toy.main(["--out", str(tmp_path / "out"), "--steps", "30", "--points", "60",
                     "--backend", backend.name]) == 0
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"xor.png", "disk.png"}

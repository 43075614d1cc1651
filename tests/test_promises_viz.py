"""Figures checked for what they show, read back from matplotlib's artists: the numbers
plotted, the order of the mistakes, the colour limits of the symmetric weight scale."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import graphnet as gn  # noqa: E402
from graphnet import nn, viz  # noqa: E402
from graphnet.train import History  # noqa: E402


def _model(layers=(6, 10), seed: int = 0) -> nn.Classifier:
    gn.seed(seed)
    model = nn.Classifier(nn.MLP(list(layers), 784, "tanh"), input_shape=(784,))
    model.fit_preprocessing(np.random.default_rng(seed).integers(0, 256, (32, 28, 28)))
    return model


def _images(fig) -> list:
    return [im for ax in fig.axes for im in ax.get_images()]


def _titles(fig) -> list[str]:
    return [ax.get_title() for ax in fig.axes if ax.get_title()]


def test_confident_mistakes_are_the_surest_wrong_ones_most_confident_first():
    model = _model()
    n = 40
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
    labels = rng.integers(0, 10, n)
    probs = rng.dirichlet(np.full(10, 0.3), size=n)  # given, so the truth is known here
    pred, conf = probs.argmax(1), probs.max(1)
    wrong = np.flatnonzero(pred != labels)
    want = wrong[np.argsort(-conf[wrong], kind="stable")][:9]
    fig = viz.confident_mistakes(model, images, labels, n=9, probs=probs)
    titles = _titles(fig)
    assert len(titles) == 9
    shown = [float(t.split("(")[1].split("%")[0]) for t in titles]
    np.testing.assert_allclose(shown, np.round(100 * conf[want]), atol=0.5)
    assert shown == sorted(shown, reverse=True), f"not most confident first: {shown}"
    assert [t.split(" ")[0] for t in titles] == [str(p) for p in pred[want]]
    assert [t.split("true ")[1] for t in titles] == [str(t) for t in labels[want]]
    for k, im in enumerate(_images(fig)):  # each panel shows the mistaken image itself
        np.testing.assert_array_equal(im.get_array(), images[want[k]].astype(np.float64))
    assert f"of {len(wrong)} mistakes" in fig.texts[0].get_text()


def test_first_layer_weights_use_a_truly_symmetric_scale():
    model = _model(layers=(10,))
    w = gn.to_numpy(model.network[0].W.value).astype(np.float64)
    w[3, 4] = 5.0  # one large positive weight: the scale must still be centred on zero
    model.network[0].W.value = w
    fig = viz.first_layer_weights(model)
    panels = _images(fig)
    assert len(panels) == 10
    for k, im in enumerate(panels):
        lo, hi = im.get_clim()
        assert lo == -hi == -5.0, f"panel {k}: colour limits {lo, hi}"
        np.testing.assert_allclose(im.get_array(), w[:, k].reshape(28, 28))
    mosaic = viz.first_layer_weights(_model(layers=(7, 10)))
    (im,) = [i for i in _images(mosaic)]
    lo, hi = im.get_clim()
    assert lo == -hi and hi == pytest.approx(np.nanmax(np.abs(im.get_array())))


def test_shared_scale_is_shared_and_symmetric():
    a, b = _model(layers=(10,), seed=1), _model(layers=(10,), seed=2)
    b.network[0].W.value = gn.to_numpy(b.network[0].W.value) * 3
    fig = viz.weight_decay_comparison([a, b], ["a", "b"], shared_scale=True)
    top = float(np.abs(gn.to_numpy(b.network[0].W.value)).max())
    assert {im.get_clim() for im in _images(fig)} == {(-top, top)}


def test_confusion_matrix_shows_the_counts():
    model = _model()
    rng = np.random.default_rng(3)
    images, labels = rng.integers(0, 256, (60, 28, 28)), rng.integers(0, 10, 60)
    pred = gn.to_numpy(model.predict(images))
    want = np.zeros((10, 10), int)
    np.add.at(want, (labels, pred), 1)
    fig = viz.confusion_matrix(model, images, labels)
    ax = fig.axes[0]
    written = {(round(t.get_position()[1]), round(t.get_position()[0])): int(t.get_text())
               for t in ax.texts}
    assert written == {(int(i), int(j)): int(want[i, j]) for i, j in zip(*np.nonzero(want))}
    (im,) = ax.get_images()
    np.testing.assert_allclose(im.get_array(), want / np.maximum(want.sum(1, keepdims=True), 1))


def test_samples_titles_are_the_predictions_with_mistakes_in_red():
    model = _model()
    rng = np.random.default_rng(4)
    images, labels = rng.integers(0, 256, (12, 28, 28)), rng.integers(0, 10, 12)
    pred = gn.to_numpy(model.predict(images))
    fig = viz.samples(model, images, labels, n=12)
    axes = [ax for ax in fig.axes if ax.get_title()]
    for ax, p, t in zip(axes, pred, labels):
        assert ax.get_title() == (f"{p}" if p == t else f"{p} (true {t})")
        red = ax.title.get_color() == viz.figures.MISTAKE
        assert red == (p != t)


def test_learning_curves_plot_the_history_numbers():
    h = History(epoch=[1, 2], train_loss=[0.5, 0.3], train_accuracy=[0.8, 0.9],
                test_loss=[0.55, 0.35], test_accuracy=[0.78, 0.88],
                curve_batches=[10, 20, 30, 40], curve_train_accuracy=[0.5, 0.7, 0.8, 0.9],
                curve_test_accuracy=[0.5, 0.65, 0.78, 0.88],
                curve_train_loss=[1.5, 0.8, 0.5, 0.3], curve_test_loss=[1.5, 0.9, 0.6, 0.35])
    fig = viz.learning_curves(h, batches_per_epoch=20)
    plotted = [(list(line.get_xdata()), list(line.get_ydata()))
               for ax in fig.axes for line in ax.get_lines()]
    for ys in (h.curve_train_loss, h.curve_test_loss):
        assert (h.curve_batches, ys) in plotted, f"{ys} not plotted against {h.curve_batches}"
    accuracies = [y for _, y in plotted if max(y) <= 100 and y not in (h.curve_train_loss,
                                                                       h.curve_test_loss)]
    for acc in (h.curve_train_accuracy, h.curve_test_accuracy):
        assert any(np.allclose(y, acc) or np.allclose(y, 100 * np.asarray(acc))
                   for y in accuracies), f"accuracy {acc} not plotted"


def test_pca_scatter_plots_the_projected_points():
    rng = np.random.default_rng(5)
    pts = rng.normal(size=(50, 2))
    labels = rng.integers(0, 3, 50)
    fig = viz.pca_scatter(pts, labels)
    drawn = np.concatenate([c.get_offsets() for c in fig.axes[0].collections])
    want = np.concatenate([pts[labels == c] for c in np.unique(labels)])
    np.testing.assert_allclose(drawn, want)

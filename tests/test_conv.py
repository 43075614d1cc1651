"""Convolution, pooling and batch normalisation: gradients, backend agreement, shapes, layers.

The references here are independent plain-NumPy float64 loops on tiny shapes.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import graphnet as gn
from graphnet import nn
from graphnet.ops import conv as conv_mod
from graphnet.ops.conv import engine as conv_engine
from graphnet.testing import assert_close, check_gradients

from examples.mnist.config import mnist_cnn


# --- naive float64 references ---------------------------------------------------------------
def ref_conv2d(x, w, b=None, stride=(1, 1), padding=(0, 0)):
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    n, c, h, wd = x.shape
    co, ci, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    y = np.zeros((n, co, oh, ow))
    for i in range(n):
        for o in range(co):
            for r in range(oh):
                for s in range(ow):
                    patch = xp[i, :, r * sh:r * sh + kh, s * sw:s * sw + kw]
                    y[i, o, r, s] = np.sum(patch * w[o]) + (0.0 if b is None else b[o])
    return y


def ref_conv2d_grads(x, w, g, stride=(1, 1), padding=(0, 0)):
    """d(sum(y * g))/dx, /dw, /db by explicit accumulation loops."""
    x, w, g = (np.asarray(a, np.float64) for a in (x, w, g))
    n, c, h, wd = x.shape
    co, ci, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    gxp = np.zeros_like(xp)
    gw = np.zeros_like(w)
    oh, ow = g.shape[2], g.shape[3]
    for i in range(n):
        for o in range(co):
            for r in range(oh):
                for s in range(ow):
                    gv = g[i, o, r, s]
                    gxp[i, :, r * sh:r * sh + kh, s * sw:s * sw + kw] += gv * w[o]
                    gw[o] += gv * xp[i, :, r * sh:r * sh + kh, s * sw:s * sw + kw]
    return gxp[:, :, ph:ph + h, pw:pw + wd], gw, g.sum(axis=(0, 2, 3))


def ref_pool(x, size, stride, kind):
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw) = size, stride
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    y = np.zeros((n, c, oh, ow))
    for r in range(oh):
        for s in range(ow):
            win = x[:, :, r * sh:r * sh + kh, s * sw:s * sw + kw]
            y[:, :, r, s] = win.max(axis=(2, 3)) if kind == "max" else win.mean(axis=(2, 3))
    return y


def ref_pool_grad(x, g, size, stride, kind):
    x, g = np.asarray(x, np.float64), np.asarray(g, np.float64)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw) = size, stride
    gx = np.zeros_like(x)
    for a in range(n):
        for b in range(c):
            for r in range(g.shape[2]):
                for s in range(g.shape[3]):
                    win = x[a, b, r * sh:r * sh + kh, s * sw:s * sw + kw]
                    if kind == "max":
                        i, j = np.unravel_index(np.argmax(win), win.shape)  # first maximum
                        gx[a, b, r * sh + i, s * sw + j] += g[a, b, r, s]
                    else:
                        gx[a, b, r * sh:r * sh + kh, s * sw:s * sw + kw] += g[a, b, r, s] / (kh * kw)
    return gx


def ref_batch_norm_train(x, gamma, beta, eps):
    x = np.asarray(x, np.float64)
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma.reshape(shape) + beta.reshape(shape)


# --- helpers -----------------------------------------------------------------------------------
def run_with_grads(build, arrays, g, training=True):
    """Forward value and gradients (cost sum(out * g)) on the active backend, float32."""
    b = gn.backend()
    nodes = [gn.Input(f"a{i}", shape=np.shape(a)) for i, a in enumerate(arrays)]
    out = build(*nodes)
    up = gn.Input("up", shape=np.shape(g))
    graph = gn.Graph(out, cost=gn.sum(out * up))
    feed = {n: b.asarray(np.asarray(a, np.float32)) for n, a in zip(nodes, arrays)}
    y = graph.run(feed, training=training)
    grads = graph.gradients({**feed, up: b.asarray(np.asarray(g, np.float32))}, wrt=nodes,
                            training=training)
    return y, [grads[n] for n in nodes]


CONV_CASES = [  # (x shape, w shape, stride, padding, bias)
    ((2, 3, 6, 5), (4, 3, 3, 3), (1, 1), (0, 0), True),
    ((2, 2, 7, 7), (3, 2, 3, 2), (2, 1), (1, 0), True),
    ((1, 1, 5, 5), (2, 1, 5, 5), (1, 1), (0, 0), False),
    ((3, 2, 4, 6), (2, 2, 1, 1), (2, 3), (0, 1), True),
    ((2, 2, 5, 5), (3, 2, 3, 3), (2, 2), (2, 2), False),
    ((2, 2, 5, 4), (3, 2, 3, 2), (1, 1), (1, 2), True),
    ((1, 3, 4, 4), (2, 3, 2, 2), (1, 2), (0, 1), True),
]


# --- conv2d ------------------------------------------------------------------------------------
@pytest.mark.parametrize("xs, ws, stride, padding, bias", CONV_CASES)
def test_conv2d_gradients_float64(numpy_backend, xs, ws, stride, padding, bias):
    rng = np.random.default_rng(1)
    arrays = [rng.normal(size=xs), rng.normal(size=ws)] + ([rng.normal(size=ws[0])] if bias else [])
    check_gradients(lambda *a: gn.conv2d(a[0], a[1], a[2] if bias else None, stride, padding),
                    arrays, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("xs, ws, stride, padding, bias", CONV_CASES)
def test_conv2d_matches_reference(backend, xs, ws, stride, padding, bias):
    rng = np.random.default_rng(2)
    x, w = rng.normal(size=xs), rng.normal(size=ws)
    bvec = rng.normal(size=ws[0]) if bias else None
    want = ref_conv2d(x, w, bvec, stride, padding)
    g = rng.normal(size=want.shape)
    arrays = [x, w] + ([bvec] if bias else [])
    y, grads = run_with_grads(lambda *a: gn.conv2d(a[0], a[1], a[2] if bias else None,
                                                   stride, padding), arrays, g)
    assert_close(y, want, rtol=1e-4, atol=1e-4, what="conv2d forward", check_dtype=np.float32)
    gx, gw, gb = ref_conv2d_grads(x, w, g, stride, padding)
    assert_close(grads[0], gx, rtol=1e-4, atol=1e-4, what="conv2d dx", check_dtype=np.float32)
    assert_close(grads[1], gw, rtol=1e-4, atol=1e-4, what="conv2d dw", check_dtype=np.float32)
    if bias:
        assert_close(grads[2], gb, rtol=1e-4, atol=1e-4, what="conv2d db", check_dtype=np.float32)


def test_conv2d_chunked_batch_matches_whole(backend, monkeypatch):
    """A tiny im2col limit cuts the batch into chunks; results must not change."""
    rng = np.random.default_rng(3)
    x, w, bvec = rng.normal(size=(5, 2, 6, 6)), rng.normal(size=(3, 2, 3, 3)), rng.normal(size=3)
    g = rng.normal(size=(5, 3, 6, 6))
    build = lambda a, b_, c: gn.conv2d(a, b_, c, 1, 1)  # noqa: E731
    whole_y, whole_g = run_with_grads(build, [x, w, bvec], g)
    per_image = 2 * 9 * 36 * 4
    for limit, want in ((2 * per_image, [(0, 2), (2, 4), (4, 5)]),  # 2 images per chunk
                        (1, [(i, i + 1) for i in range(5)])):  # an image over the limit runs alone
        monkeypatch.setattr(conv_engine, "IM2COL_LIMIT_BYTES", limit)
        assert conv_engine.chunks_of(5, per_image, backend) == want
        y, grads = run_with_grads(build, [x, w, bvec], g)
        assert_close(y, whole_y, rtol=1e-5, atol=1e-5, what="chunked forward")
        for a, e in zip(grads, whole_g):
            assert_close(a, e, rtol=1e-5, atol=1e-5, what="chunked gradient")


def test_conv2d_shapes_and_dtype():
    x = gn.Input("img", shape=(None, 3, 28, 28))
    w = gn.Parameter(np.zeros((8, 3, 5, 5)), name="kern")
    y = gn.conv2d(x, w, stride=2, padding=2)
    assert y.shape == (None, 8, 14, 14) and y.dtype == np.float32
    out = gn.Graph(y).run({x: np.zeros((2, 3, 28, 28), np.float32)})
    assert out.shape == (2, 8, 14, 14) and out.dtype == np.float32


def test_conv2d_shape_errors_name_operands():
    x = gn.Input("img", shape=(None, 3, 8, 8))
    with pytest.raises(gn.ShapeError, match=r"'img'.*3 channels.*'kern'.*expects 4"):
        gn.conv2d(x, gn.Parameter(np.zeros((2, 4, 3, 3)), name="kern"))
    with pytest.raises(gn.ShapeError, match=r"kernel height 11.*'big'.*larger.*'img'"):
        gn.conv2d(x, gn.Parameter(np.zeros((2, 3, 11, 3)), name="big"))
    gn.conv2d(x, gn.Parameter(np.zeros((2, 3, 10, 3))), padding=1)  # fits once padded
    with pytest.raises(gn.ShapeError, match="NCHW"):
        gn.conv2d(gn.Input("flat", shape=(None, 784)), gn.Parameter(np.zeros((2, 1, 3, 3))))
    with pytest.raises(gn.ShapeError, match="bias"):
        gn.conv2d(x, gn.Parameter(np.zeros((2, 3, 3, 3))), gn.Parameter(np.zeros(5)))


# --- pooling -----------------------------------------------------------------------------------
POOL_CASES = [((2, 3, 6, 6), (2, 2), (2, 2)), ((1, 2, 7, 5), (3, 2), (2, 1)),
              ((2, 1, 5, 5), (2, 2), (1, 1))]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("xs, size, stride", POOL_CASES)
def test_pool_gradients_float64(numpy_backend, kind, xs, size, stride):
    fn = gn.max_pool2d if kind == "max" else gn.avg_pool2d
    # distinct values well apart, so central differences never cross a tie
    x = np.random.default_rng(4).permutation(np.prod(xs)).reshape(xs) * 0.1
    check_gradients(lambda a: fn(a, size, stride), [x], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("xs, size, stride", POOL_CASES)
def test_pool_matches_reference(backend, kind, xs, size, stride):
    fn = gn.max_pool2d if kind == "max" else gn.avg_pool2d
    rng = np.random.default_rng(5)
    x = rng.normal(size=xs)
    want = ref_pool(x, size, stride, kind)
    g = rng.normal(size=want.shape)
    y, (gx,) = run_with_grads(lambda a: fn(a, size, stride), [x], g)
    assert_close(y, want, rtol=1e-5, atol=1e-6, what=f"{kind} pool forward", check_dtype=np.float32)
    assert_close(gx, ref_pool_grad(x.astype(np.float32), g, size, stride, kind), rtol=1e-5,
                 atol=1e-6, what=f"{kind} pool backward", check_dtype=np.float32)


def test_max_pool_ties_send_gradient_to_first_maximum(backend):
    x = np.zeros((1, 1, 2, 4))
    x[0, 0, :, 2:] = 3.0
    y, (gx,) = run_with_grads(lambda a: gn.max_pool2d(a, 2), [x], np.ones((1, 1, 1, 2)))
    assert_close(y, [[[[0.0, 3.0]]]])
    assert_close(gx, [[[[1, 0, 1, 0], [0, 0, 0, 0]]]])


def test_pool_shapes_and_errors():
    x = gn.Input("maps", shape=(None, 4, 9, 9))
    assert gn.max_pool2d(x, 2).shape == (None, 4, 4, 4)
    assert gn.avg_pool2d(x, 3, 2).shape == (None, 4, 4, 4)
    assert gn.max_pool2d(x, (3, 1), (3, 1)).shape == (None, 4, 3, 9)
    with pytest.raises(gn.ShapeError, match=r"window height 10.*'maps'"):
        gn.max_pool2d(x, 10)
    with pytest.raises(gn.ShapeError, match="NCHW"):
        gn.avg_pool2d(gn.Input("v", shape=(None, 9)), 2)


# --- batch normalisation -------------------------------------------------------------------
def numeric_grad_train(build, arrays, eps=1e-6):
    """float64 check of analytic gradients with the graph in training mode."""
    with gn.use_backend("numpy"), gn.default_dtype("float64"):
        nodes = [gn.Input(f"a{i}", shape=a.shape) for i, a in enumerate(arrays)]
        out = build(*nodes)
        r = np.random.default_rng(9).normal(size=gn.Graph(out).run(
            {n: a for n, a in zip(nodes, arrays)}, training=True).shape)
        graph = gn.Graph(out, cost=gn.sum(out * gn.Constant(r)))
        grads = graph.gradients({n: a for n, a in zip(nodes, arrays)}, wrt=nodes, training=True)
        for node, a in zip(nodes, arrays):
            num = np.zeros_like(a)
            for idx in np.ndindex(a.shape):
                old = a[idx]
                vals = []
                for d in (eps, -eps):
                    a[idx] = old + d
                    vals.append(float(graph.run({n: v for n, v in zip(nodes, arrays)},
                                                training=True).__mul__(r).sum()))
                a[idx] = old
                num[idx] = (vals[0] - vals[1]) / (2 * eps)
            assert_close(grads[node], num, rtol=1e-5, atol=1e-7, what=f"gradient of {node.name}")


@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 3, 2)])
def test_batch_norm_gradients_training_float64(shape):
    rng = np.random.default_rng(6)
    x, gamma, beta = rng.normal(size=shape), rng.normal(size=shape[1]), rng.normal(size=shape[1])
    with gn.use_backend("numpy"), gn.default_dtype("float64"):
        rm = gn.Parameter(np.zeros(shape[1]), trainable=False)
        rv = gn.Parameter(np.ones(shape[1]), trainable=False)
    numeric_grad_train(lambda a, g_, b_: gn.batch_norm(a, g_, b_, rm, rv), [x, gamma, beta])
    numeric_grad_train(lambda a, g_, b_: gn.batch_norm(a, g_, b_), [x, gamma, beta])


def test_batch_norm_gradients_eval_float64(numpy_backend):
    rng = np.random.default_rng(7)
    with gn.default_dtype("float64"):
        rm = gn.Parameter(rng.normal(size=3), trainable=False)
        rv = gn.Parameter(rng.uniform(0.5, 2, size=3), trainable=False)
    check_gradients(lambda a, g_, b_: gn.batch_norm(a, g_, b_, rm, rv),
                    [rng.normal(size=(2, 3, 2, 2)), rng.normal(size=3), rng.normal(size=3)])


def test_batch_norm_train_eval_and_running_stats(backend):
    rng = np.random.default_rng(8)
    x = rng.normal(2.0, 3.0, size=(6, 3, 4, 4))
    gamma, beta = rng.normal(size=3), rng.normal(size=3)
    rm = gn.Parameter(np.zeros(3), name="rm", trainable=False)
    rv = gn.Parameter(np.ones(3), name="rv", trainable=False)
    xin = gn.Input("x", shape=(None, 3, 4, 4))
    y = gn.batch_norm(xin, gn.Constant(gamma.astype(np.float32)),
                      gn.Constant(beta.astype(np.float32)), rm, rv, momentum=0.25, eps=1e-5)
    graph = gn.Graph(y)
    feed = {xin: backend.asarray(x.astype(np.float32))}
    before = graph.run(feed, training=False)  # eval: running stats (0, 1), no update
    assert_close(before, x * gamma.reshape(1, 3, 1, 1) / np.sqrt(1 + 1e-5) + beta.reshape(1, 3, 1, 1),
                 rtol=1e-4, atol=1e-4, what="eval with initial stats")
    assert_close(rm.value, np.zeros(3))
    train = graph.run(feed, training=True)
    assert_close(train, ref_batch_norm_train(x, gamma, beta, 1e-5), rtol=1e-4, atol=1e-4,
                 what="training forward", check_dtype=np.float32)
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3), ddof=1)
    assert_close(rm.value, 0.25 * mean, rtol=1e-4, atol=1e-5, what="running mean")
    assert_close(rv.value, 0.75 + 0.25 * var, rtol=1e-4, atol=1e-4, what="running var")
    after = graph.run(feed, training=False)
    assert not np.allclose(gn.to_numpy(after), gn.to_numpy(train), atol=1e-2)  # modes differ
    want = ((x - 0.25 * mean.reshape(1, 3, 1, 1)) / np.sqrt(0.75 + 0.25 * var + 1e-5).reshape(1, 3, 1, 1)
            * gamma.reshape(1, 3, 1, 1) + beta.reshape(1, 3, 1, 1))
    assert_close(after, want, rtol=1e-4, atol=1e-4, what="eval with updated stats")
    assert_close(rm.value, 0.25 * mean, rtol=1e-4, atol=1e-5, what="eval leaves stats alone")


def test_batch_norm_backward_matches_reference(backend):
    """float32 gradients on each backend vs float64 NumPy (analytic formula by autograd-free loops)."""
    rng = np.random.default_rng(10)
    x, gamma, beta = rng.normal(size=(4, 3, 2, 2)), rng.normal(size=3), rng.normal(size=3)
    g = rng.normal(size=x.shape)
    y, grads = run_with_grads(lambda a, g_, b_: gn.batch_norm(a, g_, b_), [x, gamma, beta], g)
    assert_close(y, ref_batch_norm_train(x, gamma, beta, 1e-5), rtol=1e-4, atol=1e-4)
    # reference gradients by float64 central differences of the NumPy formula
    def f(xx, gg, bb):
        return float((ref_batch_norm_train(xx, gg, bb, 1e-5) * g).sum())
    for k, arr in enumerate((x, gamma, beta)):
        num = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            args = [x.copy(), gamma.copy(), beta.copy()]
            args[k][idx] += 1e-6
            fp = f(*args)
            args[k][idx] -= 2e-6
            num[idx] = (fp - f(*args)) / 2e-6
        assert_close(grads[k], num, rtol=1e-3, atol=1e-3, what=f"batch_norm grad {k}",
                     check_dtype=np.float32)


def test_batch_norm_shape_errors():
    x = gn.Input("feat", shape=(None, 5))
    with pytest.raises(gn.ShapeError, match=r"'gam'.*\(5,\).*'feat'"):
        gn.batch_norm(x, gn.Parameter(np.ones(4), name="gam"), gn.Parameter(np.zeros(5)))
    with pytest.raises(TypeError, match="Parameters"):
        gn.batch_norm(x, gn.Parameter(np.ones(5)), gn.Parameter(np.zeros(5)), np.zeros(5), np.ones(5))


# --- layers, save/load, the MNIST builder -------------------------------------------------
def test_mnist_cnn_first_parameter_is_first_conv_weight():
    net = mnist_cnn({"model": "cnn"})
    names = list(net.named_parameters())
    assert names[0] == "0.W" and net.named_parameters()["0.W"].shape == (32, 1, 3, 3)
    assert isinstance(net[0], nn.Conv2d)
    best = mnist_cnn({"model": "cnn-best"})
    assert list(best.named_parameters())[0] == "0.W"
    assert best.named_parameters()["0.W"].shape == (32, 1, 3, 3)
    with pytest.raises(ValueError, match="unknown"):
        mnist_cnn({"model": "resnet"})


@pytest.mark.parametrize("model", ["cnn", "cnn-pool", "cnn-best"])
def test_cnn_classifier_trains_saves_and_loads(tmp_path, numpy_backend, model):
    gn.seed(0)
    net = mnist_cnn({"model": model})
    clf = nn.Classifier(net, (1, 28, 28))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(16, 28, 28)).astype(np.uint8)
    labels = rng.integers(0, 10, size=16)
    clf.fit_preprocessing(images)
    x = clf.prepare(images)
    loss0, grads = clf.train_graph.gradients({clf.images: x, clf.labels: labels}, return_cost=True)
    assert set(grads) == set(clf.parameters())
    assert all(grads[p].shape == p.shape for p in clf.parameters())
    opt = gn.optim.Adam(clf.parameters(), lr=1e-3)
    for _ in range(5):
        opt.step(clf.train_graph.gradients({clf.images: x, clf.labels: labels}))
    loss1 = clf.train_graph.gradients({clf.images: x, clf.labels: labels}, return_cost=True)[0]
    assert float(loss1) < float(loss0)
    arrays = clf.named_arrays()
    if model == "cnn-best":
        assert "net.1.running_mean" in arrays and not arrays["net.1.running_mean"].trainable
        assert np.any(gn.to_numpy(arrays["net.1.running_mean"].value) != 0)  # updated in training
    path = tmp_path / "m.npz"
    clf.save(path)
    json.dumps(clf.config())
    back = nn.load(path)
    for k, p in back.named_arrays().items():
        assert_close(p.value, arrays[k].value, what=k)
    assert_close(back.eval_graph.run({back.images: x})[0], clf.eval_graph.run({clf.images: x})[0],
                 rtol=1e-5, atol=1e-6, what="reloaded predictions")


def test_conv_layer_lazy_in_channels_and_config_roundtrip():
    layer = nn.Conv2d(None, 4, kernel_size=(3, 1), stride=2, padding=(1, 0))
    y = layer(gn.Input("x", shape=(None, 3, 9, 9)))
    assert layer.W.shape == (4, 3, 3, 1) and y.shape == (None, 4, 5, 5)
    again = nn.from_config({"type": "Conv2d", **layer.config()})
    assert again.W.shape == (4, 3, 3, 1)
    bn = nn.BatchNorm2d()
    bn(gn.Input("m", shape=(None, 6, 2, 2)))
    assert [p.shape for p in bn.named_parameters().values()] == [(6,)] * 4
    assert len(bn.parameters()) == 2
    with pytest.raises(ValueError, match="rank-2"):
        nn.BatchNorm1d(6)(gn.Input("m2", shape=(None, 6, 2, 2)))


def test_max_pool_fast_and_tie_paths_agree(backend):
    """Tiling windows take a whole-row path unless a window has a tie; both match the loops."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(2, 3, 4, 6))
    g = rng.normal(size=(2, 3, 2, 3))
    for tie in (False, True):
        if tie:
            x[1, 2, 2:4, 0:2] = 5.0
        y, (gx,) = run_with_grads(lambda a: gn.max_pool2d(a, 2), [x], g)
        assert_close(y, ref_pool(x.astype(np.float32), (2, 2), (2, 2), "max"))
        assert_close(gx, ref_pool_grad(x.astype(np.float32), g, (2, 2), (2, 2), "max"),
                     what=f"max pool gradient (tie={tie})")


def test_cupy_col2im_kernel_body_matches_numpy_on_host(tmp_path):
    """The CuPy gather kernel's C body, compiled for the host, agrees with NumPy's col2im.

    (The kernel itself runs only on a GPU; this checks its index arithmetic anywhere.)
    """
    import ctypes
    import shutil
    import subprocess

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to check the CuPy kernel body on the host")
    src = tmp_path / "col2im.c"
    src.write_text(
        "#include <stddef.h>\ntypedef double T;\n"
        "void col2im(const T *cols, T *outp, ptrdiff_t size, int n_img, int height, int width,"
        " int k_h, int k_w, int s_h, int s_w, int o_h, int o_w, int q_w) {\n"
        "  for (ptrdiff_t i = 0; i < size; ++i) {\n#define out (outp[i])\n"
        + conv_mod.COL2IM_BODY + "\n#undef out\n  }\n}\n")
    lib_path = tmp_path / "col2im.so"
    subprocess.run([cc, "-O1", "-shared", "-fPIC", "-o", str(lib_path), str(src)], check=True)
    lib = ctypes.CDLL(str(lib_path))
    dp = ctypes.POINTER(ctypes.c_double)
    ref = gn.get_backend("numpy")
    rng = np.random.default_rng(12)
    for (c, n, h, w), (kh, kw), stride in [((2, 3, 6, 5), (3, 3), (1, 1)), ((3, 2, 7, 6), (3, 2), (2, 1)),
                                            ((1, 2, 5, 5), (2, 2), (2, 2)), ((2, 1, 4, 4), (1, 1), (1, 3))]:
        oh, ow = (h - kh) // stride[0] + 1, (w - kw) // stride[1] + 1
        q = conv_mod.conv_row_width(stride, w, ow)
        if stride == (1, 1):
            oh -= 1  # full-width rows keep a spare image row
        cols = rng.normal(size=(c * kh * kw, n * oh * q))
        if q > ow:
            cols.reshape(-1, n, oh, q)[..., ow:] = 0  # junk columns are zero in col2im's input
        want = rng.normal(size=(c, n, h, w))
        got = want.copy()
        conv_mod.col2im(ref, cols, want, (kh, kw), stride, (oh, ow))
        lib.col2im(cols.ctypes.data_as(dp), got.ctypes.data_as(dp), ctypes.c_ssize_t(got.size),
                   *[ctypes.c_int(v) for v in (n, h, w, kh, kw, stride[0], stride[1], oh, ow, q)])
        assert_close(got, want, rtol=1e-12, atol=1e-12, what=f"col2im kernel {kh}x{kw} s{stride}")

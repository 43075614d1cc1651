"""One behaviour on every backend: out-of-memory errors, labels, NaN/inf in gradients,
max-pool backward without host synchronisation, keyed randomness (rng_key) and resume.

The ``backend`` cases run on NumPy here, on CuPy where there is a GPU (or its emulation);
the CuPy kernel bodies are also compiled with the host C compiler and checked against
NumPy (not GPU evidence: the same C, run on the CPU).
"""
from __future__ import annotations

import ctypes
import types
import shutil
import subprocess

import numpy as np
import pytest

import graphnet as gn
from graphnet import nn, optim
from graphnet.backends.base import Backend
from graphnet.backends.cupy_backend import CupyBackend
from graphnet.backends.keyed import PHILOX_BODY, keep_threshold, philox_key, random_bits
from graphnet.ops import conv, losses, unary
from graphnet.ops.conv import MAX_POOL_BW_BODY
from graphnet.ops.losses import check_class_labels
from graphnet.ops.matrix import Linear
from graphnet.testing import assert_close
from graphnet.train import OutOfMemory, Trainer
from helpers import blobs, tiny_model


# --- out of memory ------------------------------------------------------------------------
class OutOfMemoryError(MemoryError):
    """Named like CuPy's (cupy.cuda.memory.OutOfMemoryError, a MemoryError)."""


class NamedOutOfMemoryError(Exception):
    pass


NamedOutOfMemoryError.__name__ = "OutOfMemoryError"  # an unrelated class of that name


def _raise(exc_type):
    def forward(self, ctx, *xs):
        raise exc_type("out of memory allocating 4 GiB")
    return forward


def _mlp():
    x = gn.Input("x", shape=(None, 6))
    y = gn.Input("y", shape=(None,), dtype="int64")
    w = gn.Parameter(np.random.default_rng(1).normal(size=(6, 3)))
    logits = gn.relu(gn.linear(x, w))
    graph = gn.Graph(logits, cost=gn.softmax_cross_entropy(logits, y))
    feed = {x: np.ones((4, 6), gn.get_default_dtype()), y: np.array([0, 1, 2, 0])}
    return graph, logits, feed


@pytest.mark.parametrize("exc_type", [OutOfMemoryError, NamedOutOfMemoryError, MemoryError])
def test_out_of_memory_inside_an_op_is_a_memory_error_naming_the_node(backend, monkeypatch,
                                                                        exc_type):
    """Not a RunError: a MemoryError (gn.OutOfMemoryError) naming the node and the batch,
    with the library's own error as its cause (issue 23: it used to pass through raw)."""
    graph, logits, feed = _mlp()
    monkeypatch.setattr(Linear, "forward", _raise(exc_type))
    for call in (lambda: graph.run(feed), lambda: graph.values(feed, [logits]),
                 lambda: graph.gradients(feed)):
        with pytest.raises(gn.OutOfMemoryError, match=r"op 'linear(\+relu)?' at node .*batch of 4") as info:
            call()
        assert isinstance(info.value, MemoryError) and not isinstance(info.value, gn.RunError)
        assert type(info.value.__cause__) is exc_type


def test_other_op_errors_are_still_wrapped(backend, monkeypatch):
    graph, _, feed = _mlp()
    monkeypatch.setattr(Linear, "forward", _raise(ZeroDivisionError))
    with pytest.raises(gn.RunError, match="linear"):
        graph.run(feed)


def test_trainer_reports_out_of_memory_with_the_batch_size(backend, monkeypatch):
    x, y = blobs(64, pixels=16)
    model = tiny_model((8, 10), pixels=16)
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.1), batch_size=32,
                               progress=False)
    monkeypatch.setattr(Linear, "forward", _raise(OutOfMemoryError))
    with pytest.raises(OutOfMemory, match="batch size 32"):
        trainer.fit(x.reshape(64, 16), y, epochs=1)


# --- labels -------------------------------------------------------------------------------
def _ce_graph(classes: int = 4, known: bool = True):
    """``known=False``: the class count is not in the logits' declared shape, so labels fed
    from the host cannot be checked when fed (the device rule, NaN, applies)."""
    z = gn.Input("z", shape=(None, classes if known else None))
    y = gn.Input("y", shape=(None,), dtype="int64")
    return gn.Graph(z, cost=gn.softmax_cross_entropy(z, y)), z, y


@pytest.mark.parametrize("bad", [-1, 4, 7, -4])
def test_out_of_range_labels_give_nan_never_another_class(backend, bad):
    graph, z, y = _ce_graph(known=False)
    logits = np.random.default_rng(0).normal(size=(5, 4))
    labels = np.array([0, 3, bad, 1, 2])
    cost, grads = graph.gradients({z: logits, y: labels}, wrt=[z], return_cost=True)
    assert np.isnan(gn.to_numpy(cost))
    g = gn.to_numpy(grads[z])
    assert np.isnan(g[2]).all()
    good = np.delete(np.arange(5), 2)  # the other rows keep their exact gradient
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(5), np.clip(labels, 0, 3)] -= 1
    assert_close(g[good], (p / 5)[good], rtol=1e-5, atol=1e-6, what="good rows")
    ok = gn.to_numpy(graph.gradients({z: logits, y: np.array([0, 3, 1, 1, 2])}, wrt=[z])[z])
    assert np.isfinite(ok).all()


def test_check_numerics_shows_the_bad_label(backend):
    z = gn.Input("z", shape=(None, None))  # class count unknown when fed: found by the run
    y = gn.Input("y", shape=(None,), dtype="int64")
    graph = gn.Graph(z, cost=gn.softmax_cross_entropy(z, y), check_numerics=True)
    with pytest.raises(gn.NumericsError, match=r"'y' \(3,\) range \[0, 9\]"):
        graph.gradients({z: np.zeros((3, 4)), y: np.array([0, 9, 1])})


def test_one_label_is_not_broadcast_over_the_batch(backend):
    graph, z, y = _ce_graph()
    with pytest.raises(gn.ShapeError, match="'y' hold 1 class indices for a batch of 5"):
        graph.gradients({z: np.zeros((5, 4)), y: np.array([2])})


def test_width_one_targets_are_not_broadcast(backend):
    z = gn.Input("z", shape=(None, 3))
    t = gn.Input("t", shape=(None, None))
    graph = gn.Graph(z, cost=gn.softmax_cross_entropy(z, t))
    with pytest.raises(gn.ShapeError, match=r"exactly the logits' shape \(5, 3\)"):
        graph.gradients({z: np.zeros((5, 3)), t: np.ones((5, 1))})


def test_mse_targets_match_the_prediction_exactly(backend):
    pred = gn.Input("p", shape=(None, 1))
    with pytest.raises(gn.ShapeError, match="exactly the shape"):
        gn.mse(pred, gn.Input("t", shape=(None,)))
    loose_p, loose_t = gn.Input("lp"), gn.Input("lt")  # shapes known only when run
    graph = gn.Graph(gn.mse(loose_p, loose_t))
    with pytest.raises(gn.ShapeError, match=r"\(5,\) must have exactly the prediction's shape"):
        graph.run({loose_p: np.zeros((5, 1)), loose_t: np.zeros(5)})
    assert float(gn.to_numpy(gn.Graph(gn.mse(pred, 1.0)).run({pred: np.zeros((3, 1))}))) == 1.0


def test_check_class_labels_names_the_culprit(backend):
    check_class_labels(backend.asarray(np.array([0, 9, 3])), 10)
    with pytest.raises(gn.FeedError, match=r"y_train must be class indices in \[0, 10\), got 10"):
        check_class_labels(backend.asarray(np.array([0, 10, 3])), 10, "y_train")
    with pytest.raises(gn.FeedError, match="got -2"):
        check_class_labels(backend.asarray(np.array([-2, 1])), 10)
    with pytest.raises(gn.FeedError, match="integer"):
        check_class_labels(backend.asarray(np.array([0.0, 1.0])), 10)


# --- NaN and inf in activation gradients ------------------------------------------------------
SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 0.5, 3.0])


def _grid(ys):
    y, g = np.meshgrid(np.asarray(ys, np.float64), SPECIAL, indexing="ij")
    return y.ravel(), g.ravel()


ACTIVATIONS = {
    # relu: the select, g where y > 0 and exactly 0 elsewhere (NaN/inf in g included)
    "relu": (unary.relu_backward, [np.nan, 0.0, 2.0, np.inf],
             lambda y, g: np.where(y > 0, g, 0.0)),
    "tanh": (unary.tanh_backward, [np.nan, 0.0, 1.0, -1.0, 0.25],
             lambda y, g: g * (1 - y * y)),
    "sigmoid": (unary.sigmoid_backward, [np.nan, 0.0, 1.0, 0.5],
                lambda y, g: (g * y) * (1 - y)),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("with_out", [False, True])
@pytest.mark.parametrize("version", ["reference", "backend's"])
def test_activation_gradients_treat_nan_and_inf_alike(backend, name, dtype, with_out, version):
    """The kernel's reference and the version this backend runs (its override, if any)."""
    kern, ys, ref = ACTIVATIONS[name]
    fn = kern.generic if version == "reference" else kern.implementation(backend.name)
    y, g = _grid(ys)
    with np.errstate(invalid="ignore"):
        want = ref(y, g)
    yb, gb = backend.asarray(y.astype(dtype)), backend.asarray(g.astype(dtype))
    out = backend.xp.empty(yb.shape, dtype) if with_out else None
    with np.errstate(invalid="ignore"):
        got = gn.to_numpy(fn(backend, yb, gb, out))
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{name}: NaN positions")
    assert_close(got, want, rtol=1e-6, atol=0, what=f"{name} backward")


def test_relu_gradient_of_a_dead_unit_is_zero_in_a_graph(backend):
    """Through a real training step (fused linear+relu): inf upstream, dead unit, 0 gradient."""
    x = gn.Input("x", shape=(None, 2))
    w = gn.Parameter(np.array([[1.0, -1.0], [1.0, -1.0]]))
    h = gn.relu(gn.linear(x, w))  # column 0 alive, column 1 dead
    cost = (h * gn.Constant(np.array([1.0, np.inf]))).sum()
    with np.errstate(invalid="ignore"):
        grads = gn.Graph(h, cost=cost).gradients({x: np.array([[1.0, 1.0]])})
    assert_close(grads[w], np.array([[1.0, 0.0], [1.0, 0.0]]), what="d cost / d w")


# --- max-pool backward --------------------------------------------------------------------------
def _pool_reference(x, g, size, stride):
    """float64, one window at a time: each window's g to its first maximum (none for NaN)."""
    (kh, kw), (sh, sw) = size, stride
    n, c, h, w = x.shape
    oh, ow = g.shape[2:]
    gx = np.zeros(x.shape)
    for a in range(n):
        for b in range(c):
            for i in range(oh):
                for j in range(ow):
                    win = x[a, b, i * sh:i * sh + kh, j * sw:j * sw + kw]
                    m = win.max()
                    for k in range(kh * kw):
                        p, q = divmod(k, kw)
                        if win[p, q] == m:  # never true for a NaN maximum
                            gx[a, b, i * sh + p, j * sw + q] += g[a, b, i, j]
                            break
    return gx


POOLS = [((2, 2), (2, 2), (2, 3, 6, 8)), ((3, 3), (2, 2), (1, 2, 7, 9)),
         ((2, 3), (1, 2), (2, 1, 5, 8)), ((2, 2), (3, 3), (1, 2, 8, 7))]


def _pool_grad(shape, seed):
    """An upstream gradient with an inf and a NaN: only each window's maximum may get them."""
    g = np.random.default_rng(seed).normal(size=shape)
    g.ravel()[[0, -1]] = [np.inf, np.nan]
    return g


def _pool_data(shape, seed):
    """Values from a small set (many ties), a few NaNs."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, size=shape).astype(np.float64)
    x.ravel()[rng.choice(x.size, 3, replace=False)] = np.nan
    return x


@pytest.mark.parametrize("size,stride,shape", POOLS)
def test_max_pool_gradient_matches_a_float64_reference(backend, size, stride, shape):
    x = _pool_data(shape, 1)
    xn = gn.Input("x", shape=(None,) + shape[1:])
    y = gn.max_pool2d(xn, size, stride)
    g = _pool_grad((shape[0],) + y.shape[1:], 2)
    cost = (y * gn.Constant(g)).sum()
    graph = gn.Graph(y, cost=cost)
    with np.errstate(invalid="ignore"):
        gx = graph.gradients({xn: x}, wrt=[xn])[xn]
        want = _pool_reference(x, g, size, stride)
    assert_close(gx, want, rtol=1e-6, atol=1e-7, what=f"max-pool {size}/{stride} gradient")


class _DeviceOnly(np.ndarray):
    """Like a CuPy array: reductions give 0-d arrays, never host scalars, and turning one
    into a host bool, int or float (a GPU sync) fails the test."""

    def __array_wrap__(self, arr, context=None, return_scalar=False):
        return super().__array_wrap__(arr, context, False)

    def __array_function__(self, func, types, args, kwargs):
        res = super().__array_function__(func, types, args, kwargs)
        return np.asarray(res).view(_DeviceOnly) if np.isscalar(res) else res

    def _sync(self, *args):
        raise AssertionError("host sync: a device value read on the host")

    __bool__ = __int__ = __float__ = item = tolist = _sync


def _device(*arrays):
    return [np.asarray(a).view(_DeviceOnly) for a in arrays]


@pytest.mark.parametrize("size,stride,shape", POOLS)
def test_max_pool_backward_needs_no_host_value(numpy_backend, size, stride, shape):
    """The kernel's reference (what the CuPy kernel computes) reads no device value on the
    host; the NumPy override does (it is free there), which shows the check can fail."""
    x = _pool_data(shape, 3)
    y = gn.Graph(gn.max_pool2d(gn.Constant(x), size, stride)).run({})
    g = _pool_grad(y.shape, 4)
    gx = conv.max_pool_backward.generic(numpy_backend, *_device(x, y, g), size, stride)
    with np.errstate(invalid="ignore"):
        assert_close(np.asarray(gx), _pool_reference(x, g, size, stride), rtol=1e-6, atol=1e-7,
                     what="generic max-pool backward")
    if size == stride and shape[2] % size[0] == 0 and shape[3] % size[1] == 0:
        with pytest.raises(AssertionError, match="host sync"):
            conv.max_pool_backward(numpy_backend, *_device(x, y, g), size, stride)


def test_label_check_needs_no_host_value(numpy_backend):
    logits = np.random.default_rng(0).normal(size=(4, 3))
    labels = np.array([0, 5, 2, -1])
    forward, backward = losses.softmax_ce_forward.generic, losses.softmax_ce_backward.generic
    with np.errstate(invalid="ignore"):
        loss, probs = forward(numpy_backend, *_device(logits, labels))
        grad = backward(numpy_backend, probs, *_device(labels, np.ones(())))
    assert np.isnan(np.asarray(loss)) and np.isnan(np.asarray(grad)[[1, 3]]).all()
    assert np.isfinite(np.asarray(grad)[[0, 2]]).all()
    with pytest.raises(AssertionError, match="host sync"):
        losses.softmax_ce_forward(numpy_backend, *_device(logits, labels))


def _compile(tmp_path, name, source):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to check the CuPy kernel body on the host")
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    lib = tmp_path / f"{name}.so"
    subprocess.run([cc, "-O1", "-std=c99", "-shared", "-fPIC", "-o", str(lib), str(src)],
                   check=True)
    return ctypes.CDLL(str(lib))


@pytest.mark.parametrize("size,stride,shape", POOLS)
def test_max_pool_kernel_body_matches_the_reference(tmp_path, size, stride, shape):
    lib = _compile(tmp_path, "maxpool", (
        "#include <stddef.h>\ntypedef double T;\ntypedef double X;\n"
        "void bw(const X *xs, const X *ys, const T *gs, T *outp, ptrdiff_t size, int height,"
        " int width, int k_h, int k_w, int s_h, int s_w, int o_h, int o_w) {\n"
        "  for (ptrdiff_t i = 0; i < size; ++i) {\n#define out (outp[i])\n"
        + MAX_POOL_BW_BODY + "\n#undef out\n  }\n}\n"))
    x = _pool_data(shape, 5)
    (kh, kw), (sh, sw) = size, stride
    oh, ow = (shape[2] - kh) // sh + 1, (shape[3] - kw) // sw + 1
    windows = [[x[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw] for j in range(ow)]
               for i in range(oh)]
    y = np.stack([np.stack([w.max(axis=(2, 3)) for w in row], -1) for row in windows], -2)
    g = _pool_grad(y.shape, 6)
    got = np.empty_like(x)
    dp = ctypes.POINTER(ctypes.c_double)
    lib.bw(*[np.ascontiguousarray(a).ctypes.data_as(dp) for a in (x, y, g, got)],
           ctypes.c_ssize_t(got.size), *[ctypes.c_int(v) for v in
                                         (shape[2], shape[3], kh, kw, sh, sw, oh, ow)])
    with np.errstate(invalid="ignore"):
        assert_close(got, _pool_reference(x, g, size, stride), rtol=1e-12, atol=1e-12,
                     what="max-pool kernel body")


# --- keyed randomness ---------------------------------------------------------------------------
def test_philox_kernel_body_gives_numpys_philox_stream(tmp_path):
    lib = _compile(tmp_path, "philox", (
        "#include <stddef.h>\n"
        "void philox(unsigned long long k0, unsigned long long k1, unsigned long long *outp,"
        " ptrdiff_t size) {\n"
        "  for (ptrdiff_t i = 0; i < size; ++i) {\n#define out (outp[i])\n"
        + PHILOX_BODY + "\n#undef out\n  }\n}\n"))
    for key in [(0, 0), (123, 456), philox_key((7, 2, 1024), 5), (2**64 - 1, 2**63)]:
        want = random_bits(key, 1001)
        got = np.empty(1001, np.uint64)
        lib.philox(ctypes.c_ulonglong(key[0]), ctypes.c_ulonglong(key[1]),
                   got.ctypes.data_as(ctypes.POINTER(ctypes.c_ulonglong)), ctypes.c_ssize_t(1001))
        np.testing.assert_array_equal(got, want, err_msg=f"key {key}")


def test_keyed_bits_are_the_reference_stream_on_every_backend(backend):
    key = philox_key((3, 1, 4096), 7)
    got = gn.to_numpy(backend.keyed_bits(key, (37, 11)))
    np.testing.assert_array_equal(got, random_bits(key, 37 * 11).reshape(37, 11))


def _dropout_graph(rate=0.5, shape=(64, 50)):
    x = gn.Input("x", shape=(None, shape[1]))
    d1 = gn.dropout(x, rate)
    d2 = gn.dropout(x, rate)  # same input, other position: another mask
    return gn.Graph([d1, d2]), x, np.ones(shape, gn.get_default_dtype())


def test_same_key_same_mask_different_key_or_position_another(backend):
    graph, x, ones = _dropout_graph()
    a1, a2 = (gn.to_numpy(v) for v in graph.run({x: ones}, training=True, rng_key=(1, 0, 0)))
    b1, _ = (gn.to_numpy(v) for v in graph.run({x: ones}, training=True, rng_key=(1, 0, 0)))
    c1, _ = (gn.to_numpy(v) for v in graph.run({x: ones}, training=True, rng_key=(1, 0, 64)))
    np.testing.assert_array_equal(a1, b1)
    assert not np.array_equal(a1, a2) and not np.array_equal(a1, c1)
    assert set(np.unique(a1)) == {0.0, 2.0}
    # the mask is a documented function of (key, position): the host reference
    pos = graph.order.index(graph.outputs[0])
    words = random_bits(philox_key((1, 0, 0), pos), ones.size // 2)
    halves = np.stack([words & 0xFFFFFFFF, words >> 32], -1).reshape(ones.shape)  # low, high
    np.testing.assert_array_equal(a1, np.where(halves >= keep_threshold(0.5), 2.0, 0.0))


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_keyed_dropout_drops_the_rate(backend, rate):
    graph, x, ones = _dropout_graph(rate, (200, 500))
    m = gn.to_numpy(graph.run({x: ones}, training=True, rng_key=(9,))[0])
    dropped = float((m == 0).mean())
    assert abs(dropped - rate) < 0.01, dropped  # 100k draws: sd < 0.0016
    assert_close(m[m != 0], np.full(int((m != 0).sum()), 1 / (1 - rate)), what="kept scale")


def test_unkeyed_dropout_still_draws_from_the_backend_generator(backend):
    graph, x, ones = _dropout_graph()
    a = gn.to_numpy(graph.run({x: ones}, training=True)[0])
    b = gn.to_numpy(graph.run({x: ones}, training=True)[0])
    assert not np.array_equal(a, b)
    gn.seed(5)
    c = gn.to_numpy(graph.run({x: ones}, training=True)[0])
    gn.seed(5)
    np.testing.assert_array_equal(c, gn.to_numpy(graph.run({x: ones}, training=True)[0]))


@pytest.mark.parametrize("bad", [[1, 2], (), (1, -1), (2**64,), (1.5,), (True,), ("1",), 3])
def test_bad_rng_keys_are_refused_by_name(backend, bad):
    graph, x, ones = _dropout_graph()
    with pytest.raises(gn.GraphError, match="rng_key must be"):
        graph.run({x: ones}, training=True, rng_key=bad)


def _check_rng_state(backend):
    backend.seed(3)
    first = gn.to_numpy(backend.uniform((50,), "float32"))
    state = backend.rng_state()
    backend.rng_state()  # reading it again changes nothing
    second = gn.to_numpy(backend.uniform((50,), "float32"))
    backend.seed(3)
    np.testing.assert_array_equal(gn.to_numpy(backend.uniform((50,), "float32")), first)
    np.testing.assert_array_equal(gn.to_numpy(backend.uniform((50,), "float32")), second)
    backend.set_rng_state(state)
    np.testing.assert_array_equal(gn.to_numpy(backend.uniform((50,), "float32")), second)
    perm = gn.to_numpy(backend.permutation(20))
    assert sorted(perm.tolist()) == list(range(20))


def test_rng_state_is_side_effect_free_and_restores(backend):
    _check_rng_state(backend)


def test_cupy_generator_logic_on_numpy_arrays():
    """CupyBackend's own stream (seed, draws) with NumPy standing in for CuPy (keyed words
    from the host reference): reading the state must not reseed it."""
    b = object.__new__(CupyBackend)
    b.xp, b._kernels = np, {}
    b.keyed_bits = types.MethodType(Backend.keyed_bits, b)
    _check_rng_state(b)


def _dropout_model(seed=0):
    gn.seed(seed)
    return nn.Classifier(nn.MLP([24, 4], 16, "relu", dropout=0.3), input_shape=(16,), num_classes=4)


def _keyed_steps(model, opt, x, y, steps, batch=16):
    graph = model.train_graph
    for step in steps:
        rows = slice((step * batch) % len(x), (step * batch) % len(x) + batch)
        opt.minimize(graph, {model.images: x[rows], model.labels: y[rows]},
                     rng_key=(11, step // 4, (step % 4) * batch))


def test_keyed_training_interrupted_and_resumed_equals_uninterrupted(backend):
    x, y = blobs(64, pixels=16)
    x = (x.reshape(64, 16) / 255.0).astype(gn.get_default_dtype())
    y = y % 4
    straight = _dropout_model()
    opt = optim.SGD(straight.parameters(), lr=0.1, momentum=0.9)
    _keyed_steps(straight, opt, x, y, range(10))

    first = _dropout_model()
    opt1 = optim.SGD(first.parameters(), lr=0.1, momentum=0.9)
    _keyed_steps(first, opt1, x, y, range(6))
    params, (arrays, meta) = first.host_arrays(), opt1.host_state()
    backend.seed(12345)  # the backend generator's state plays no part
    backend.uniform((100,), "float32")

    resumed = _dropout_model(seed=99)  # other initial weights, overwritten below
    resumed.load_host_arrays(params)
    opt2 = optim.SGD(resumed.parameters(), lr=0.1, momentum=0.9)
    opt2.load_host_state(arrays, meta)
    _keyed_steps(resumed, opt2, x, y, range(6, 10))
    for (name, a), b in zip(straight.host_arrays().items(), resumed.host_arrays().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    name = next(iter(params))
    assert not np.array_equal(straight.host_arrays()[name], params[name])  # it did train on


def test_dropout_state_belongs_to_the_run_not_the_node(backend):
    """Two graphs sharing a dropout node: a run of one does not change the other's backward."""
    x = gn.Input("x", shape=(None, 8))
    w = gn.Parameter(np.ones((8, 8)))
    d = gn.dropout(gn.linear(x, w), 0.5)
    g1, g2 = gn.Graph(d, cost=d.sum()), gn.Graph(d, cost=(d * 2.0).sum())
    ones = np.ones((4, 8), gn.get_default_dtype())
    want = gn.to_numpy(g1.gradients({x: ones}, rng_key=(1,))[w])
    g2.gradients({x: ones}, rng_key=(2,))
    g2.run({x: ones}, training=True, rng_key=(3,))
    np.testing.assert_array_equal(gn.to_numpy(g1.gradients({x: ones}, rng_key=(1,))[w]), want)
    assert not hasattr(d, "_mask")

"""Hostile inputs at each public door: a correct result or a graphnet error naming the culprit."""
from __future__ import annotations

import io
import json
import math
import os
import sys
import threading
import types
import zipfile

import numpy as np
import pytest

import graphnet as gn
from graphnet import nn, optim
from graphnet.errors import ArgumentError, GraphnetError
from graphnet.io import CheckpointError, atomic_write_npz, read_npz
from graphnet.testing import assert_close

from helpers import tiny_model


# --- a stand-in device backend: its own array type, host arrays not its own ---------------
class DeviceArray(np.ndarray):
    """An array type that is not numpy.ndarray, as a device library's would be."""


class FakeDeviceBackend(gn.get_backend("numpy").__class__):
    """The NumPy backend with a distinct array type, to exercise the host -> device path."""

    name = "fakedevice"

    def __init__(self) -> None:
        super().__init__()
        self.xp = types.SimpleNamespace(ndarray=DeviceArray, __name__="fakedevice")
        self.copies = 0

    def asarray(self, x, dtype=None):
        self.copies += 1
        return np.array(x, dtype=dtype).view(DeviceArray)

    def is_array(self, x) -> bool:
        return isinstance(x, DeviceArray)


class CupyLookalike:
    """What graphnet sees of a CuPy array on a machine without one: its module is cupy."""

    __module__ = "cupy._core.core"
    shape, ndim, dtype = (2, 3), 2, np.dtype("float32")


def _x(shape=(None, 3), dtype=None):
    return gn.Input("x", shape=shape, dtype=dtype)


# --- feeds ---------------------------------------------------------------------------------
def test_host_array_fed_to_a_device_backend_is_copied_once():
    x = _x()
    b = FakeDeviceBackend()
    host = np.arange(6, dtype=np.float64).reshape(2, 3)
    out = x.check_feed(b, host)
    assert isinstance(out, DeviceArray) and out.dtype == np.float32
    assert b.copies == 1
    np.testing.assert_array_equal(np.asarray(out), host.astype(np.float32))
    labels = gn.Input("y", shape=(None,), dtype="int64")
    got = labels.check_feed(b, np.array([1, 2], dtype=np.int32))
    assert isinstance(got, DeviceArray) and got.dtype.kind == "i"  # labels stay integer


def test_other_device_library_still_refused_naming_the_input(backend):
    x = _x()
    with pytest.raises(gn.FeedError, match="'x'.*cupy"):
        if backend.name == "cupy":
            pytest.skip("a CuPy array is this backend's own")
        x.check_feed(backend, CupyLookalike())
    torchish = type("Tensor", (), {"__module__": "torch", "__dlpack__": lambda self: None})()
    with pytest.raises(gn.FeedError, match="'x'"):
        x.check_feed(backend, torchish)


def test_feed_given_twice_is_refused(backend):
    x = _x()
    g = gn.Graph(x * 2)
    a, b = np.ones((2, 3), np.float32), np.zeros((2, 3), np.float32)
    with pytest.raises(gn.FeedError, match="'x' is fed twice"):
        g.run({x: a, "x": b})


@pytest.mark.parametrize("make", [lambda a: np.asmatrix(a), lambda a: np.ma.masked_array(a, mask=a > 2)],
                         ids=["matrix", "masked"])
def test_numpy_subclasses_with_other_semantics_refused(backend, make):
    x = _x()
    g = gn.Graph(x * x)
    with pytest.raises(gn.FeedError, match="input 'x'"):
        g.run({x: make(np.arange(6.0).reshape(2, 3))})


def test_ragged_list_feed_names_the_input(backend):
    x = _x()
    with pytest.raises(gn.FeedError, match="input 'x'.*not a regular array"):
        gn.Graph(x * 2).run({x: [[1.0, 2.0, 3.0], [1.0]]})


@pytest.mark.parametrize("value", [np.ones((2, 3), complex), np.array([["a"] * 3] * 2),
                                   np.array([[object()] * 3] * 2), np.ones((2, 3), bool)],
                         ids=["complex", "str", "object", "bool"])
def test_non_real_feeds_refused_naming_the_input(backend, value):
    x = _x()
    with pytest.raises(gn.FeedError, match="input 'x'"):
        gn.Graph(x * 2).run({x: value})


def test_labels_stay_integer_and_floats_are_refused_for_them(backend):
    y = gn.Input("y", shape=(None,), dtype="int64")
    g = gn.Graph(y)
    out = g.run({y: np.array([1, 2, 3], dtype=np.int32)})
    assert out.dtype.kind == "i"
    with pytest.raises(gn.FeedError, match="input 'y'.*integer"):
        g.run({y: np.array([1.0, 2.0, 3.0])})


def test_feed_that_is_not_a_dict_is_refused(backend):
    x = _x()
    with pytest.raises(gn.FeedError, match="must be a dict"):
        gn.Graph(x * 2).run([np.ones((2, 3))])


# --- Graph(...) -------------------------------------------------------------------------------
def test_graph_arguments_are_checked():
    x = _x()
    with pytest.raises(gn.GraphError, match="outputs must be a node"):
        gn.Graph(None)
    with pytest.raises(gn.GraphError, match=r"outputs\[1\]"):
        gn.Graph([x * 2, 3])
    with pytest.raises(gn.GraphError, match="cost must be a node"):
        gn.Graph([x * 2], cost="loss")
    with pytest.raises(TypeError, match="check_numerics"):
        gn.Graph([x * 2], check_numerics="yes")


def test_run_outputs_never_alias_parameters_or_constants(backend):
    w = gn.Parameter(np.arange(6.0).reshape(2, 3), name="W")
    c = gn.Constant(np.ones((2, 3)))
    g = gn.Graph([w, w.T, w[0], gn.reshape(w, (3, 2)), c, w])
    outs = g.run({})
    for o in outs:
        o[...] = -7
    np.testing.assert_array_equal(gn.to_numpy(w.value), np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(gn.to_numpy(c.value), np.ones((2, 3)))
    single = gn.Graph(w).run({})
    single[0, 0] = 99
    assert float(gn.to_numpy(w.value)[0, 0]) == 0.0


def test_gradients_never_alias_model_state(backend):
    w = gn.Parameter(np.ones((4, 3)), name="W")
    x = _x()
    g = gn.Graph([], cost=(x * w).sum())
    feed = {x: np.full((4, 3), 2.0, np.float32)}
    first = g.gradients(feed)[w]
    first[...] = 123
    second = g.gradients(feed)[w]
    assert_close(second, np.full((4, 3), 2.0))
    np.testing.assert_array_equal(gn.to_numpy(w.value), np.ones((4, 3)))


# --- op arguments -------------------------------------------------------------------------
def _img():
    return gn.Input("img", shape=(None, 1, 8, 8))


@pytest.mark.parametrize("kw, culprit", [({"stride": 1.5}, "stride"), ({"padding": 0.9}, "padding"),
                                         ({"padding": -1}, "padding"), ({"stride": 0}, "stride"),
                                         ({"stride": True}, "stride"), ({"stride": (1, 2, 3)}, "stride")])
def test_conv2d_refuses_non_integer_or_negative_arguments(kw, culprit):
    w = gn.Parameter(np.ones((2, 1, 3, 3)), name="k")
    with pytest.raises(ArgumentError, match=culprit):
        gn.conv2d(_img(), w, **kw)


@pytest.mark.parametrize("op", [gn.max_pool2d, gn.avg_pool2d])
def test_pools_refuse_non_integer_sizes(op):
    with pytest.raises(ArgumentError, match="size"):
        op(_img(), 1.5)
    with pytest.raises(ArgumentError, match="stride"):
        op(_img(), 2, stride=-1)


def test_reduction_axis_checked():
    x = _x((None, 3))
    with pytest.raises(TypeError, match="sum axis.*1.5"):
        x.sum(axis=1.5)
    with pytest.raises(gn.ShapeError, match="axis 2 .*rank 2"):
        x.mean(axis=2)
    with pytest.raises(ArgumentError, match="repeats"):
        x.sum(axis=(1, 1))
    with pytest.raises(TypeError, match="keepdims"):
        x.sum(axis=1, keepdims="no")


def test_shape_op_arguments_checked():
    x = _x((None, 6))
    with pytest.raises(TypeError, match="reshape size 1"):
        gn.reshape(x, (-1, 1.5))
    with pytest.raises(ArgumentError, match="reshape size 1"):
        gn.reshape(x, (-1, -2))
    with pytest.raises(TypeError, match="transpose axis"):
        gn.transpose(x, (0.0, 1.0))
    with pytest.raises(TypeError, match="concat axis"):
        gn.concat([x, x], axis=1.0)
    with pytest.raises(TypeError, match="index"):
        x[:, 1.5]
    with pytest.raises(TypeError, match="index arrays"):
        x[:, np.array([0.5])]
    with pytest.raises(TypeError, match="softmax axis"):
        gn.softmax(x, axis=0.5)
    with pytest.raises(gn.ShapeError, match="softmax axis 3"):
        gn.softmax(x, axis=3)


@pytest.mark.parametrize("rate", [math.nan, -0.1, 1.0, "0.5", None])
def test_dropout_rate_checked(rate):
    with pytest.raises(ArgumentError, match="dropout rate"):
        gn.dropout(_x(), rate)


@pytest.mark.parametrize("p", [math.nan, math.inf, -math.inf, "2", True])
def test_power_exponent_must_be_a_finite_number(p):
    with pytest.raises(ArgumentError, match="exponent"):
        _x() ** p


def test_power_accepts_numpy_integer_exponents(backend):
    x = _x()
    v = np.array([[1.0, 2.0, 3.0]], np.float32)
    assert_close(gn.Graph(x ** np.int64(2)).run({x: v}), v ** 2)


def test_batch_norm_arguments_checked():
    x = gn.Input("bn_in", shape=(None, 2))
    g, b = gn.Parameter(np.ones(2), name="g"), gn.Parameter(np.zeros(2), name="b")
    with pytest.raises(ArgumentError, match="momentum"):
        gn.batch_norm(x, g, b, momentum="0.1")
    with pytest.raises(ArgumentError, match="eps"):
        gn.batch_norm(x, g, b, eps=math.nan)


@pytest.mark.parametrize("build, culprit", [
    (lambda: nn.Linear(784, 1.5), "out_features"),
    (lambda: nn.Linear(7.9, 3), "in_features"),
    (lambda: nn.Linear(4, 3, bias="yes"), "bias"),
    (lambda: nn.Linear(4, 3, init=["he"]), "init"),
    (lambda: nn.MLP([128, "64"]), r"layers\[1\]"),
    (lambda: nn.MLP("128"), "layers"),
    (lambda: nn.MLP([]), "layers"),
    (lambda: nn.MLP([10], activation=["tanh"]), "activation"),
    (lambda: nn.MLP([10], dropout=math.nan), "dropout"),
    (lambda: nn.Conv2d(1, 8, kernel_size=2.5), "kernel_size"),
    (lambda: nn.Conv2d(1, 8, padding=-1), "padding"),
    (lambda: nn.Conv2d(1, 0), "out_channels"),
    (lambda: nn.MaxPool2d(1.5), "size"),
    (lambda: nn.AvgPool2d(2, stride=0), "stride"),
    (lambda: nn.BatchNorm2d(momentum=math.nan), "momentum"),
    (lambda: nn.BatchNorm1d(num_features=2.5), "num_features"),
    (lambda: nn.Dropout("0.5"), "Dropout p"),
    (lambda: nn.Sequential(3), "list of layers"),
])
def test_layer_constructors_check_their_arguments(build, culprit):
    with pytest.raises(ArgumentError, match=culprit):
        build()


def test_huge_layer_refused_before_allocating():
    with pytest.raises(ArgumentError, match="more than this machine's memory"):
        nn.Linear(10**9, 10**9)


# --- Parameter -------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [np.ones(3, complex), np.array(["a", "b"]), np.array([object()]),
                                   [[1.0, 2.0], [3.0]]],
                         ids=["complex", "str", "object", "ragged"])
def test_parameter_refuses_non_real_values(backend, value):
    with pytest.raises(ArgumentError, match="parameter 'P'"):
        gn.Parameter(value, name="P")


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_parameter_refuses_non_finite_initial_values(backend, bad):
    with pytest.raises(ArgumentError, match="parameter 'P'.*NaN or inf"):
        gn.Parameter(np.array([1.0, bad]), name="P")


def test_parameter_refuses_matrix_and_masked(backend):
    with pytest.raises(ArgumentError, match="matrix"):
        gn.Parameter(np.asmatrix(np.ones((2, 2))), name="P")
    with pytest.raises(ArgumentError, match="MaskedArray"):
        gn.Parameter(np.ma.masked_array(np.ones(2), mask=[0, 1]), name="P")
    p = gn.Parameter(np.ones(2), name="P")
    with pytest.raises(ArgumentError, match="complex"):
        p.value = np.ones(2, complex)


def test_parameter_converts_ints_and_bools_to_the_default_float(backend):
    p = gn.Parameter(np.array([True, False]), name="P")
    assert p.dtype == gn.get_default_dtype()
    assert_close(p.value, np.array([1.0, 0.0]))


# --- optimizers and schedules ------------------------------------------------------------------
def _w(shape=(4, 3)):
    return gn.Parameter(np.ones(shape), name="W")


@pytest.mark.parametrize("make, culprit", [
    (lambda w: optim.SGD([w], lr="0.1"), "lr"),
    (lambda w: optim.SGD([w], lr=math.nan), "lr"),
    (lambda w: optim.SGD([w], lr=math.inf), "lr"),
    (lambda w: optim.SGD([w], lr=0), "lr"),
    (lambda w: optim.SGD([w], weight_decay=math.nan), "weight_decay"),
    (lambda w: optim.SGD([w], weight_decay=-1e-4), "weight_decay"),
    (lambda w: optim.SGD([w], momentum=1.0), "momentum"),
    (lambda w: optim.SGD([w], momentum=0.9, nesterov="yes"), "nesterov"),
    (lambda w: optim.Adam([w], betas=(1.0, 0.999)), r"betas\[0\]"),
    (lambda w: optim.Adam([w], betas=(0.9, -0.1)), r"betas\[1\]"),
    (lambda w: optim.Adam([w], betas=(0.9,)), "betas"),
    (lambda w: optim.Adam([w], eps=-1e-8), "eps"),
    (lambda w: optim.Adam([w], eps=0.0), "eps"),
    (lambda w: optim.SGD([w, w]), "twice"),
    (lambda w: optim.SGD([w, gn.Input("x")]), r"params\[1\].*Input"),
    (lambda w: optim.SGD(w), r"list of Parameters.*\[W\]"),
    (lambda w: optim.StepLR(1.5), "step_size"),
    (lambda w: optim.StepLR(2, gamma=math.nan), "gamma"),
    (lambda w: optim.CosineLR(math.nan), "epochs"),
    (lambda w: optim.CosineLR(5, floor=2.0), "floor"),
    (lambda w: optim.CosineLR(5, warmup=6), "warmup"),
])
def test_optimizer_and_schedule_arguments_checked(backend, make, culprit):
    with pytest.raises(ArgumentError, match=culprit):
        make(_w())


@pytest.mark.parametrize("shape", [(1, 3), (3,), (4, 3, 1), (3, 4)])
def test_step_refuses_a_gradient_of_another_shape(backend, shape):
    w = _w()
    opt = optim.SGD([w], lr=0.1)
    g = backend.asarray(np.ones(shape, np.float32))
    with pytest.raises(gn.ShapeError, match=r"'W' has shape .*\(4, 3\)"):
        opt.step({w: g})
    np.testing.assert_array_equal(gn.to_numpy(w.value), np.ones((4, 3)))


def test_step_with_the_right_gradient_still_works(backend):
    w = _w()
    optim.SGD([w], lr=0.5).step({w: backend.asarray(np.ones((4, 3), np.float32))})
    assert_close(w.value, np.full((4, 3), 0.5))


# --- checkpoint reading ----------------------------------------------------------------------
def _meta_bytes(meta) -> np.ndarray:
    return np.frombuffer((meta if isinstance(meta, str) else json.dumps(meta)).encode(), np.uint8)


def _write(path, meta, **arrays):
    with open(path, "wb") as f:
        np.savez(f, __meta__=_meta_bytes(meta), **arrays)
    return path


def _saved_model(tmp_path):
    model = tiny_model(layers=(4, 10))
    model.save(tmp_path / "m.npz")
    return tmp_path / "m.npz", model


def test_npy_renamed_npz_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "x.npz"
    with open(path, "wb") as f:
        np.save(f, np.ones(3))
    with pytest.raises(CheckpointError, match=r"x\.npz.*\.npy"):
        nn.load(path)


@pytest.mark.parametrize("version", ["1", 1.0, None, [1], 2, 0])
def test_version_field_of_wrong_type_or_newer(tmp_path, version):
    path = _write(tmp_path / "v.npz", {"format": "graphnet-checkpoint", "version": version,
                                         "kind": "model", "model": {}})
    with pytest.raises(CheckpointError, match="version"):
        read_npz(path)


def test_deeply_nested_metadata_is_a_checkpoint_error(tmp_path):
    deep = '{"format": "graphnet-checkpoint", "version": 1, "x": ' + "[" * 100000 + "]" * 100000 + "}"
    with pytest.raises(CheckpointError, match="metadata"):
        read_npz(_write(tmp_path / "deep.npz", deep))
    shallow_but_deep = {"format": "graphnet-checkpoint", "version": 1, "x": []}
    cur = shallow_but_deep["x"]
    for _ in range(200):
        cur.append([])
        cur = cur[0]
    with pytest.raises(CheckpointError, match="nested"):
        read_npz(_write(tmp_path / "deep2.npz", shallow_but_deep))


def test_config_asking_for_a_huge_layer_is_refused_before_allocating(tmp_path):
    path, model = _saved_model(tmp_path)
    arrays, meta = read_npz(path)
    meta["model"]["network"]["layers"][0]["in_features"] = 10**9
    meta["model"]["network"]["layers"][0]["out_features"] = 10**9
    atomic_write_npz(tmp_path / "huge.npz", arrays, {k: v for k, v in meta.items()
                                                    if k not in ("format", "version")})
    with pytest.raises(CheckpointError, match="huge.npz.*memory"):
        nn.load(tmp_path / "huge.npz")


@pytest.mark.parametrize("bad, word", [(np.array(["a", "b"]), "strings"),
                                       (np.ones(3, complex), "complex"),
                                       (np.array([1, None], dtype=object), "pickle")],
                         ids=["str", "complex", "object"])
def test_non_real_arrays_in_a_checkpoint_refused(tmp_path, bad, word):
    path = tmp_path / "bad.npz"
    with open(path, "wb") as f:
        np.savez(f, __meta__=_meta_bytes({"format": "graphnet-checkpoint", "version": 1}), a=bad)
    with pytest.raises(CheckpointError, match=rf"bad\.npz.*'a'.*{word}"):
        read_npz(path)


def test_missing_state_in_a_training_checkpoint(tmp_path):
    path = _write(tmp_path / "c.npz", {"format": "graphnet-checkpoint", "version": 1,
                                       "kind": "checkpoint", "model": {}, "optimizer": {}})
    with pytest.raises(CheckpointError, match="'state'"):
        read_npz(path)


def test_forged_array_header_is_refused_before_allocating(tmp_path):
    path, _ = _saved_model(tmp_path)
    forged = tmp_path / "forged.npz"
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f8", "fortran_order": False,
                                                "shape": (10**11,)})
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(forged, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "mean.npy":  # 800 GB claimed, 16 bytes held
                data = head.getvalue() + bytes(16)
            dst.writestr(info, data)
    with pytest.raises(CheckpointError, match="forged.npz.*'mean'.*claims"):
        read_npz(forged)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_named_pipe_does_not_block(tmp_path):
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    result = {}

    def load():
        try:
            nn.load(fifo)
        except CheckpointError as exc:
            result["err"] = exc
    t = threading.Thread(target=load, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():  # unblock the reader so the test process can exit
        with open(fifo, "wb"):
            pass
        pytest.fail("nn.load blocked on a named pipe")
    assert "not a regular file" in str(result["err"])


def test_a_folder_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not a regular file"):
        read_npz(tmp_path)


def test_a_good_checkpoint_still_loads(tmp_path):
    path, model = _saved_model(tmp_path)
    loaded = nn.load(path)
    for k, p in model.named_arrays().items():
        np.testing.assert_array_equal(gn.to_numpy(loaded.named_arrays()[k].value), gn.to_numpy(p.value))


def test_every_checkpoint_error_is_a_graphnet_error():
    assert issubclass(CheckpointError, GraphnetError) and issubclass(CheckpointError, ValueError)
    for cls in (gn.FeedError, gn.GraphError, gn.ShapeError, gn.NumericsError, gn.RunError,
                gn.ArgumentError, gn.ArgumentTypeError, gn.BackendUnavailableError):
        assert issubclass(cls, GraphnetError)


# --- install hints ---------------------------------------------------------------------------
def test_missing_cupy_hint_names_the_right_packages(monkeypatch):
    from graphnet.backends import cupy_backend
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError(name='cupy')
    with pytest.raises(gn.BackendUnavailableError) as info:
        cupy_backend._import_cupy()
    msg = str(info.value)
    assert "pip install cupy-cuda12x" in msg and "cupy-cuda13x" in msg
    assert 'pip install -e ".[cuda12]"' in msg
    assert "pip install graphnet[" not in msg


# --- labels and targets match the batch exactly ----------------------------------------------
def test_labels_are_never_broadcast_over_the_batch(backend):
    x = _x()
    y = gn.Input("y", shape=(None,), dtype="int64")
    w = gn.Parameter(np.ones((3, 3)), name="W")
    g = gn.Graph([], cost=gn.softmax_cross_entropy(x @ w, y))
    with pytest.raises(gn.ShapeError, match=r"labels 'y' hold 1 class indices for a batch of 5 logits \(5, 3\)"):
        g.gradients({x: np.ones((5, 3), np.float32), y: np.array([2])})
    onehot = gn.Input("t", shape=(None, None))
    g1 = gn.Graph(gn.softmax_cross_entropy(x @ w, onehot))
    with pytest.raises(gn.ShapeError, match=r"targets 't' of shape \(4, 1\)"):
        g1.run({x: np.ones((4, 3), np.float32), onehot: np.ones((4, 1), np.float32)})


def test_mse_targets_are_never_broadcast(backend):
    p, t = gn.Input("p", shape=(None, None)), gn.Input("t", shape=(None, None))
    g = gn.Graph(gn.mse(p, t))
    with pytest.raises(gn.ShapeError, match="target 't'"):
        g.run({p: np.ones((4, 3), np.float32), t: np.zeros((1, 3), np.float32)})
    assert float(gn.to_numpy(g.run({p: np.ones((4, 3), np.float32),
                                    t: np.zeros((4, 3), np.float32)}))) == 1.0


def test_input_declarations_checked():
    with pytest.raises(TypeError, match=r"shape\[1\]"):
        gn.Input("x", shape=(None, 1.5))
    with pytest.raises(ArgumentError, match="dtype"):
        gn.Input("x", dtype="complex64")
    with pytest.raises(TypeError, match="not a dtype"):
        gn.Input("x", dtype="nonsense")
    with pytest.raises(TypeError, match="name"):
        gn.Input(3)


def test_constants_must_be_real_regular_arrays():
    x = _x()
    with pytest.raises(ArgumentError, match="complex"):
        x * np.ones(3, complex)
    with pytest.raises(ArgumentError, match="not a regular array"):
        x * [[1.0], [1.0, 2.0]]
    with pytest.raises(ArgumentError, match="matrix"):
        x * np.asmatrix(np.ones((1, 3)))


def test_run_flags_and_values_nodes_are_checked():
    x = gn.Input("x", shape=(None, 3))
    w = gn.Parameter(np.ones((3, 2)), name="W")
    y = x @ w
    g = gn.Graph(y, cost=y.sum())
    feed = {x: np.ones((2, 3), np.float32)}
    ArgumentTypeError = gn.errors.ArgumentTypeError
    with pytest.raises(ArgumentTypeError, match="training must be True or False, got str 'no'"):
        g.run(feed, training="no")
    with pytest.raises(ArgumentTypeError, match="training must be True or False"):
        g.values(feed, [y], training=1)
    with pytest.raises(ArgumentTypeError, match="return_cost must be True or False"):
        g.gradients(feed, return_cost="yes")
    with pytest.raises(ArgumentTypeError, match=r"values\(nodes=...\) takes a list of this graph's nodes"):
        g.values(feed, ["y"])
    with pytest.raises(ArgumentTypeError, match="takes a list"):
        g.values(feed, y)
    assert gn.to_numpy(g.values(feed, [y])[0]).shape == (2, 2)


def test_checkpoint_with_a_huge_input_shape_is_refused_before_allocating(tmp_path):
    model = tiny_model(layers=(4, 10))
    path = tmp_path / "m.npz"
    model.save(path)
    arrays, meta = read_npz(path)
    meta["model"]["input_shape"] = [10**9, 10**9]
    atomic_write_npz(path, arrays, meta)
    with pytest.raises(CheckpointError, match=r"input_shape of shape \(1000000000, 1000000000\)"):
        nn.load(path)
    meta["model"]["input_shape"] = [28, "x"]
    atomic_write_npz(path, arrays, meta)
    with pytest.raises(CheckpointError, match=r"input_shape\[1\]"):
        nn.load(path)

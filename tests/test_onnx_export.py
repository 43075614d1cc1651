"""graphnet -> ONNX: every op-table case, the convolution ops and the MNIST presets'
networks run by ONNX Runtime agree with graphnet (float32, relative 1e-5); errors name the
node; ``import graphnet`` does not import onnx."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import graphnet as gn
from graphnet import nn
from graphnet.testing import assert_close
from onnx_cases import onnx_packages, ort_run
from test_conv import CONV_CASES, POOL_CASES
from test_ops import CASES, IDS, _with_extra

onnx, ort = onnx_packages()
from graphnet import onnx as gx  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from examples.mnist.config import PRESETS, build_network  # noqa: E402

RTOL, ATOL = 1e-5, 1e-6


def _case_graph(case, rng):
    fed = [x.astype(np.float32) for x in case.inputs(rng)]
    nodes = [gn.Input(f"x{i}", shape=x.shape) for i, x in enumerate(fed)]
    extra = {k: gn.Input(f"n{k}", shape=v.shape,
                         dtype=v.dtype if v.dtype.kind in "iu" else "float32")
             for k, v in case.nondiff.items()}
    out = case.build(*_with_extra(nodes, extra))
    feed = {n.name: x for n, x in zip(nodes, fed)}
    for k, node in extra.items():
        v = case.nondiff[k]
        feed[node.name] = v.astype(np.int64 if v.dtype.kind in "iu" else np.float32)
    return out, feed


def _agrees(out, feed, what):
    proto = gx.to_proto(out)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == gx.OPSET == 17
    want = gn.Graph(out).run({k: gn.asarray(v) for k, v in feed.items()})
    got = ort_run(proto, feed)[0]
    assert_close(got, want, rtol=RTOL, atol=ATOL, what=what, check_dtype=np.float32)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_op_table_case_agrees_with_onnx_runtime(backend, case):
    out, feed = _case_graph(case, np.random.default_rng(sum(map(ord, case.id))))
    _agrees(out, feed, case.id)


@pytest.mark.parametrize("xs, ws, stride, padding, bias", CONV_CASES)
def test_conv2d_agrees_with_onnx_runtime(backend, xs, ws, stride, padding, bias):
    rng = np.random.default_rng(1)
    x = gn.Input("x", shape=(None,) + xs[1:])
    w = gn.Parameter(rng.standard_normal(ws), name="w")
    b = gn.Parameter(rng.standard_normal(ws[0]), name="b") if bias else None
    out = gn.conv2d(x, w, b, stride=stride, padding=padding)
    _agrees(out, {"x": rng.standard_normal(xs).astype(np.float32)}, f"conv2d {xs} {ws}")


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("xs, size, stride", POOL_CASES)
def test_pooling_agrees_with_onnx_runtime(backend, kind, xs, size, stride):
    fn = gn.max_pool2d if kind == "max" else gn.avg_pool2d
    x = gn.Input("x", shape=(None,) + xs[1:])
    feed = {"x": np.random.default_rng(2).standard_normal(xs).astype(np.float32)}
    _agrees(fn(x, size, stride), feed, f"{kind} pool {xs}")


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 4, 5)])
def test_batch_norm_in_inference_mode_agrees_with_onnx_runtime(backend, shape):
    rng = np.random.default_rng(3)
    c = shape[1]
    stats = [gn.Parameter(v, trainable=False) for v in (rng.standard_normal(c),
                                                         rng.uniform(0.5, 2, c))]
    x = gn.Input("x", shape=(None,) + shape[1:])
    out = gn.batch_norm(x, gn.Parameter(rng.standard_normal(c)), gn.Parameter(rng.standard_normal(c)),
                        *stats, eps=1e-3)
    _agrees(out, {"x": rng.standard_normal(shape).astype(np.float32)}, f"batch_norm {shape}")


@pytest.mark.parametrize("index", [np.s_[::-1], np.s_[3::-2, 1:-1], np.s_[:, -1], np.s_[..., None, ::2]])
def test_reversed_and_negative_slices_agree_with_onnx_runtime(backend, index):
    x = gn.Input("x", shape=(5, 4))
    feed = {"x": np.random.default_rng(9).standard_normal((5, 4)).astype(np.float32)}
    _agrees(x[index], feed, f"x[{index}]")


def test_the_batch_dimension_is_dynamic(numpy_backend):
    x = gn.Input("x", shape=(None, 3))
    out = gn.softmax(gn.linear(x, gn.Parameter(np.ones((3, 2))), gn.Parameter(np.zeros(2))))
    proto = gx.to_proto(out)
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param == "batch" and not dim.HasField("dim_value")
    for n in (1, 7):
        assert ort_run(proto, {"x": np.ones((n, 3), np.float32)})[0].shape == (n, 2)


def _classifier(preset: str, rng) -> nn.Classifier:
    cfg = {**dict(layers=[512, 256, 10], activation="relu", dropout=0.0), **PRESETS[preset]}
    network, input_shape = build_network(cfg)
    model = nn.Classifier(network, input_shape)
    model.fit_preprocessing(rng.integers(0, 256, (64, 28, 28)).astype(np.uint8))
    if preset == "cnn-best":  # running statistics away from their initial 0 and 1
        for p in model.named_arrays().values():
            if not p.trainable and p is not model.mean:
                p.value = rng.uniform(0.5, 1.5, p.shape) if "var" in p.name else \
                    rng.normal(0, 0.1, p.shape)
    return model


@pytest.mark.parametrize("preset", ["fast", "seed-128-64-10", "cnn", "cnn-best"])
def test_classifier_exports_with_its_preprocessing(backend, tmp_path, preset):
    """Raw pixels in (as predict takes them), probabilities out, as predict_proba."""
    rng = np.random.default_rng(4)
    model = _classifier(preset, rng)
    path = gx.export(model, tmp_path / "model.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["probabilities"]
    images = rng.integers(0, 256, (9, 28, 28)).astype(np.uint8)
    got = ort_run(proto, {"images": images.astype(np.float32)})[0]
    want = model.predict_proba(images)
    assert_close(got, want, rtol=RTOL, atol=ATOL, what=preset)
    assert np.array_equal(got.argmax(1), gn.to_numpy(model.predict(images)))


def test_an_op_without_onnx_counterpart_is_named(numpy_backend):
    class Mystery(gn.Node):
        op = "mystery"

    x = gn.Input("x", shape=(None, 2))
    node = Mystery([gn.tanh(x)], name="the_odd_one", shape=(None, 2))
    with pytest.raises(gx.OnnxError, match="'the_odd_one'.*'mystery'"):
        gx.to_proto(gn.relu(node))


def test_batch_norm_without_running_statistics_is_refused_by_name(numpy_backend):
    x = gn.Input("x", shape=(None, 3))
    out = gn.batch_norm(x, gn.Parameter(np.ones(3)), gn.Parameter(np.zeros(3)))
    with pytest.raises(gx.OnnxError, match=f"{out.name}.*running statistics"):
        gx.to_proto(out)


def test_bad_arguments_are_named(numpy_backend, tmp_path):
    x = gn.Input("x", shape=(None, 2))
    with pytest.raises(TypeError, match="model must be a Graph"):
        gx.export("model.npz", tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="path must be a file path"):
        gx.export(gn.tanh(x), 42)
    with pytest.raises(gx.OnnxError, match="output_names must be 1 distinct"):
        gx.to_proto(gn.tanh(x), output_names=["a", "b"])
    with pytest.raises(gx.OnnxError, match="already taken"):
        gx.to_proto(gn.tanh(x), output_names="x")


def test_output_names_and_graph_outputs(numpy_backend):
    x = gn.Input("x", shape=(None, 2))
    y = gn.Input("y", shape=(None,), dtype="int64")
    h = gn.tanh(x)
    graph = gn.Graph([h, gn.exp(h)], cost=gn.softmax_cross_entropy(h, y))
    proto = gx.to_proto(graph, output_names=["hidden", "expd"])
    assert [o.name for o in proto.graph.output] == ["hidden", "expd"]
    assert [i.name for i in proto.graph.input] == ["x"]  # the cost (and its labels) left out
    a = np.array([[0.5, -1.0]], np.float32)
    assert_close(ort_run(proto, {"x": a})[1], np.exp(np.tanh(a)), what="second output")


def test_import_graphnet_does_not_import_onnx():
    code = ("import sys, graphnet, graphnet.onnx; "
            "assert 'onnx' not in sys.modules and 'onnxruntime' not in sys.modules, "
            "sorted(m for m in sys.modules if 'onnx' in m and 'graphnet' not in m)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr


def test_without_onnx_the_error_says_how_to_install(numpy_backend, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    x = gn.Input("x", shape=(None, 2))
    with pytest.raises(ImportError, match=r'pip install "graphnet\[onnx\]"'):
        gx.to_proto(gn.tanh(x))
    with pytest.raises(gx.OnnxMissingError, match=r'pip install "graphnet\[onnx\]"'):
        gx.load("model.onnx")

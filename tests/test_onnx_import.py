"""ONNX -> graphnet: models built with onnx.helper (the kind other frameworks export) import,
agree with ONNX Runtime on both backends, and train; round trips give the same bits."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from graphnet import optim
from graphnet.testing import assert_close, numerical_gradient
from onnx_cases import helper_cnn, helper_mlp, helper_model, onnx_packages, ort_run
from test_ops import CASES, IDS
from test_onnx_export import _case_graph, _classifier

onnx, ort = onnx_packages()
from graphnet import onnx as gx  # noqa: E402

HELPER_MODELS = {"mlp": (helper_mlp, (6,)), "cnn": (helper_cnn, (1, 8, 8))}


@pytest.mark.parametrize("kind", sorted(HELPER_MODELS))
def test_helper_models_import_and_agree_with_onnx_runtime(backend, kind):
    make, shape = HELPER_MODELS[kind]
    proto = make(onnx, np.random.default_rng(0))
    onnx.checker.check_model(proto, full_check=True)
    model = gx.from_proto(proto)
    x = np.random.default_rng(1).standard_normal((5,) + shape).astype(np.float32)
    got = model.run({"x": backend.asarray(x)})
    assert list(got) == ["probs"] and backend.is_array(got["probs"])
    assert_close(got["probs"], ort_run(proto, {"x": x})[0], rtol=1e-5, atol=1e-6, what=kind,
                 check_dtype=np.float32)


def test_the_imported_model_describes_itself(numpy_backend, tmp_path):
    proto = helper_cnn(onnx, np.random.default_rng(0))
    path = tmp_path / "cnn.onnx"
    path.write_bytes(proto.SerializeToString())
    model = gx.load(path)
    assert list(model.inputs) == ["x"] and model.inputs["x"].shape == (None, 1, 8, 8)
    assert list(model.outputs) == ["probs"] and model.opset == 17
    assert sorted(model.initializers) == ["b", "fc", "w"]  # the shape is a constant
    assert sorted(p.name for p in model.parameters()) == ["b", "fc", "w"]
    assert_close(model.initializers["w"].value,
                 onnx.numpy_helper.to_array(proto.graph.initializer[0]), what="w", rtol=0, atol=0)
    assert "inputs=['x']" in repr(model)
    with pytest.raises(gn.FeedError):
        model.run({"nope": np.zeros((1, 1, 8, 8), np.float32)})
    with pytest.raises(gn.FeedError, match="feed must be a mapping"):
        model.run([np.zeros((1, 1, 8, 8), np.float32)])


@pytest.mark.parametrize("kind", sorted(HELPER_MODELS))
def test_an_imported_model_trains(backend, kind):
    make, shape = HELPER_MODELS[kind]
    model = gx.from_proto(make(onnx, np.random.default_rng(0)))
    rng = np.random.default_rng(2)
    x = backend.asarray(rng.standard_normal((16,) + shape).astype(np.float32))
    classes = model.outputs["probs"].shape[1]
    y = backend.asarray(rng.integers(0, classes, 16))
    one_hot = gn.Constant(np.eye(classes)[gn.to_numpy(y)])
    loss = -gn.sum(gn.log(model.outputs["probs"]) * one_hot) * (1 / 16)
    graph = gn.Graph(list(model.outputs.values()), cost=loss)
    opt = optim.SGD(model.parameters(), lr=0.5)
    first = float(opt.minimize(graph, {"x": x}))
    for _ in range(20):
        last = float(opt.minimize(graph, {"x": x}))
    assert last < 0.8 * first, (first, last)


def test_imported_gradients_equal_float64_central_differences(numpy_backend):
    with gn.default_dtype("float64"):
        model = gx.from_proto(helper_mlp(onnx, np.random.default_rng(0)))
        x = np.random.default_rng(3).standard_normal((4, 6))
        r = gn.Input("r", shape=(None, 4))
        rv = np.random.default_rng(4).standard_normal((4, 4))
        cost = gn.sum(model.outputs["probs"] * r)
        graph = gn.Graph([cost], cost=cost)
        params = model.parameters()
        grads = graph.gradients({"x": x, r: rv}, wrt=params)
        for p in params:
            host = gn.to_numpy(p.value).copy()

            def f(p=p, host=host) -> float:
                p.value = host
                return float(graph.run({"x": x, r: rv})[0])

            numeric = numerical_gradient(f, host)
            p.value = host
            assert_close(grads[p], numeric, rtol=1e-5, atol=1e-8, what=f"d cost / d {p.name}",
                         check_dtype=np.float64)


def test_unsupported_operators_attributes_and_dtypes_are_listed_before_building(numpy_backend,
                                                                              monkeypatch):
    h, tp = onnx.helper, onnx.TensorProto
    nodes = [h.make_node("Celu", ["x"], ["a"]),
             h.make_node("Conv", ["a", "w"], ["b"], group=2),
             h.make_node("Softmax", ["b"], ["c"], axis=1, invented=3)]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", tp.FLOAT16, ["N", 2, 4, 4])],
                         [h.make_tensor_value_info("c", tp.FLOAT, None)],
                         [onnx.numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")])
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])

    def no_allocation(*a, **k):
        raise AssertionError("a Parameter was built before the model was refused")
    monkeypatch.setattr(gn.Parameter, "__init__", no_allocation)
    with pytest.raises(gx.OnnxError) as err:
        gx.from_proto(proto)
    text = str(err.value)
    for part in ("operator 'Celu' is not supported", "attribute group=2",
                 "attribute invented=3", "input 'x' has unsupported dtype FLOAT16"):
        assert part in text, text


# Exported as several ONNX ops (no single counterpart), so they import as several graphnet
# ops: the same values to rounding, not the same bits.
COMPOSITE = {"ce_one_hot", "mse"}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_op_table_round_trip_gives_the_same_bits(backend, case):
    out, feed = _case_graph(case, np.random.default_rng(5))
    model = gx.from_proto(gx.to_proto(out))
    fed = {k: backend.asarray(v) for k, v in feed.items()}
    got = list(model.run(fed).values())[0]
    want = gn.Graph(out).run(fed)
    if case.id in COMPOSITE:
        assert_close(got, want, rtol=1e-6, atol=0, what=case.id, check_dtype=want.dtype)
        return
    assert np.array_equal(gn.to_numpy(got), gn.to_numpy(want)) and got.dtype == want.dtype


@pytest.mark.parametrize("preset", ["fast", "cnn", "cnn-best"])
def test_classifier_round_trip_gives_the_same_bits(backend, tmp_path, preset):
    rng = np.random.default_rng(6)
    model = _classifier(preset, rng)
    back = gx.load(gx.export(model, tmp_path / "m.onnx"))
    images = rng.integers(0, 256, (7, 28, 28)).astype(np.uint8)
    got = back.run({"images": backend.asarray(images.astype(np.float32))})["probabilities"]
    assert np.array_equal(gn.to_numpy(got), gn.to_numpy(model.predict_proba(images)))
    frozen = [n for n, p in back.initializers.items() if not p.trainable]
    assert "mean" in frozen and len(frozen) == 1 + (2 * 5 if preset == "cnn-best" else 0)
    assert [p.shape for p in back.parameters()] == [p.shape for p in model.parameters()]


def test_batch_normalization_momentum_follows_onnx(numpy_backend):
    """ONNX: running = running * momentum + batch * (1 - momentum)."""
    h = onnx.helper
    stats = [("scale", np.ones(2, np.float32)), ("bias", np.zeros(2, np.float32)),
             ("mean", np.full(2, 0.5, np.float32)), ("var", np.ones(2, np.float32))]
    node = h.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["y"],
                       momentum=0.8, epsilon=1e-3)
    model = gx.from_proto(helper_model(onnx, [node], [("x", ["N", 2])], [("y", ["N", 2])], stats))
    x = np.random.default_rng(8).standard_normal((6, 2)).astype(np.float32)
    model.run({"x": x}, training=True)
    assert_close(model.initializers["mean"].value, 0.5 * 0.8 + x.mean(0) * 0.2, rtol=1e-6,
                 what="running mean")

"""Issue 13, points 5 and 6: the library knows nothing of MNIST; one helper for each job."""
from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import graphnet as gn
import graphnet.nn.model as model_module
from graphnet import io, nn, optim
from graphnet.training import Trainer


ROOT = Path(__file__).resolve().parents[1]


def _no_warnings(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn()


def test_sizes_are_given_or_inferred_and_the_classifier_has_no_mnist_default():
    model = _no_warnings(lambda: nn.Classifier(nn.MLP([8, 3], in_features=5)))
    assert model.input_shape == (5,) and model.num_classes == 3
    inferred = _no_warnings(lambda: nn.Classifier(nn.MLP([4, 2], None, "relu"), (6,)))
    assert inferred.network.parameters()[0].shape == (6, 4) and inferred.num_classes == 2
    with pytest.warns(DeprecationWarning, match="MLP in_features"):
        assert nn.MLP([10]).parameters()[0].shape == (784, 10)
    with pytest.raises(gn.ArgumentError, match="Classifier input_shape: not given, and the "
                                               "network does not declare its input size"):
        nn.Classifier(nn.MLP([4, 10], None))


def test_mlp_inferring_its_input_draws_the_same_weights():
    gn.seed(3)
    given = nn.Classifier(nn.MLP([7, 3], 5, "tanh"), (5,))
    gn.seed(3)
    inferred = nn.Classifier(nn.MLP([7, 3], None, "tanh"), (5,))
    for a, b in zip(given.parameters(), inferred.parameters()):
        np.testing.assert_array_equal(gn.to_numpy(a.value), gn.to_numpy(b.value))


def test_mnist_cnn_lives_in_the_example_and_the_old_name_says_where():
    config = importlib.import_module("examples.mnist.config")
    assert callable(config.mnist_cnn)
    with pytest.raises(AttributeError, match="from examples.mnist.config import mnist_cnn"):
        nn.mnist_cnn  # the library imports nothing of the examples
    assert not hasattr(importlib.import_module("graphnet.nn.conv_layers"), "mnist_cnn")


def test_trainer_refuses_what_is_not_a_trainable_model():
    with pytest.raises(TypeError, match="model: expected a TrainableModel"):
        Trainer(object(), optim.SGD([gn.Parameter(np.zeros(2))], lr=0.1))


def test_trainer_names_the_members_a_model_lacks(numpy_backend):
    class Almost:  # a Classifier's members, but evaluate is data and config is missing
        def __init__(self, model):
            for name in model_module.TRAINABLE_MEMBERS:
                if name != "config":
                    setattr(self, name, getattr(model, name))
            self.evaluate = 0.5
    model = nn.Classifier(nn.MLP([10], in_features=4), (4,))
    with pytest.raises(TypeError, match=r"got Almost, which lacks evaluate, config$"):
        Trainer(Almost(model), optim.SGD(model.parameters(), lr=0.1))


def test_trainable_members_are_the_protocol_members():
    """The Trainer's check by name lists exactly the Protocol's members."""
    # names with "ǁ" are mutmut's copies of a method, present in mutation runs only
    declared = {n for n in vars(nn.TrainableModel) if not n.startswith("_") and "ǁ" not in n}
    declared |= set(nn.TrainableModel.__annotations__)
    assert declared == set(model_module.TRAINABLE_MEMBERS)


def test_trainer_trains_a_model_that_is_not_a_classifier(numpy_backend):
    toy = importlib.import_module("examples.nonlinear.train")
    gn.seed(0)
    x, y = toy.make_data("xor", 120)
    net = toy.Net([6])
    assert isinstance(net, nn.TrainableModel) and not isinstance(net, nn.Classifier)
    losses = net.fit(x, y, steps=150, lr=0.05)
    assert losses[-1] < losses[0]
    assert net.evaluate(x, y)["accuracy"] > 0.9


def test_examples_edit_no_import_path_and_load_no_file_by_path():
    for path in (ROOT / "examples").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"sys\.path\.(insert|append)|sys\.path\[", text), path
        assert "spec_from_file_location" not in text, path


def test_the_one_atomic_writer_persists_the_rename(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(io, "_fsync_dir", lambda folder: synced.append(Path(folder)))
    common = importlib.import_module("examples.mnist.common")
    common.write_json(tmp_path / "m.json", {"a": 1})
    assert (tmp_path / "m.json").read_text().startswith("{") and synced == [tmp_path]
    io.atomic_write_npz(tmp_path / "x.npz", {"a": np.ones(2)}, {})
    assert synced == [tmp_path, tmp_path] and sorted(os.listdir(tmp_path)) == ["m.json", "x.npz"]


def test_layers_register_their_own_parameters():
    bn = nn.BatchNorm1d(3)
    assert list(bn.named_parameters()) == ["gamma", "beta", "running_mean", "running_var"]
    assert [p.trainable for p in bn.named_parameters().values()] == [True, True, False, False]
    lin = nn.Linear(None, 2, bias=False)
    assert lin.named_parameters() == {}
    lin(gn.Input("x", shape=(None, 7)))
    assert list(lin.named_parameters()) == ["W"] and lin.W.shape == (7, 2)


def test_random_shift_takes_the_image_shape_from_the_batch(numpy_backend):
    from graphnet.augment import random_shift
    x = numpy_backend.asarray(np.arange(2 * 5 * 7, dtype=np.float32).reshape(2, 5, 7))
    out = _no_warnings(lambda: random_shift(x, 1, rng_key=(1, 2, 3)))
    np.testing.assert_array_equal(gn.to_numpy(out), gn.to_numpy(random_shift(x, 1, (5, 7),
                                                                              rng_key=(1, 2, 3))))
    flat = numpy_backend.asarray(np.zeros((2, 784), np.float32))
    with pytest.warns(DeprecationWarning, match="image_shape"):
        assert random_shift(flat, 1, rng_key=(0, 0, 0)).shape == (2, 784)


@pytest.mark.parametrize("script", ["train", "visualize"])
def test_scripts_run_by_path_with_only_graphnet_importable(tmp_path, script):
    """`python examples/mnist/x.py` from anywhere: the script finds its own package."""
    (tmp_path / "graphnet").symlink_to(ROOT / "graphnet")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "mnist" / f"{script}.py"), "--help"],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert r.returncode == 0 and "usage:" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-m", f"examples.mnist.{script}", "--help"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0 and "usage:" in r.stdout, r.stderr


def test_sequential_takes_layers_as_arguments_or_as_a_list():
    a, b = nn.Linear(3, 4), nn.ReLU()
    for net in (nn.Sequential(a, b), nn.Sequential([a, b]), nn.Sequential((a, b)),
                nn.Sequential(layers=[a, b])):
        assert net.layers == [a, b]
    assert nn.Sequential(a).layers == [a] and len(nn.Sequential()) == 0
    rebuilt = nn.from_config({"type": "Sequential", **nn.Sequential(a, b).config()})
    assert [type(l) for l in rebuilt.layers] == [nn.Linear, nn.ReLU]


@pytest.mark.parametrize("args, message", [
    ((nn.Linear(3, 4), 5), r"Sequential layer 1: expected a Layer .* got int 5"),
    (("relu",), r"Sequential layer 0: expected a Layer .* got str 'relu'"),
    ((3,), r"Sequential takes layers or a list of layers, got int 3"),
    (([nn.ReLU(), None],), r"Sequential layer 1: expected a Layer .* got NoneType None"),
])
def test_sequential_names_what_is_not_a_layer(args, message):
    with pytest.raises(gn.ArgumentTypeError, match=message):
        nn.Sequential(*args)


@pytest.mark.parametrize("bad", [0, -3, 2.0, "8", True, None, np.bool_(True)])
def test_one_positive_integer_check_with_one_error_type(bad, numpy_backend):
    """Trainer, the sampler and the Classifier share checks.positive_int: the same error."""
    from graphnet.checks import positive_int
    from graphnet.distributed import ShardedSampler
    model = nn.Classifier(nn.MLP([3], in_features=4), (4,))
    doors = [lambda: positive_int(bad, "batch_size"),
             lambda: Trainer(model, optim.SGD(model.parameters(), lr=0.1), batch_size=bad),
             lambda: ShardedSampler(bad, 0, 1),
             lambda: model.predict(np.zeros((2, 4)), batch_size=bad)]
    for door in doors:
        with pytest.raises(gn.ArgumentError, match=rf"batch_size must be an integer > 0, got {re.escape(repr(bad))}"):
            door()
    assert positive_int(np.int64(3), "n") == 3 and type(positive_int(np.int64(3), "n")) is int


def test_training_and_evaluation_share_one_label_validator(numpy_backend):
    model = nn.Classifier(nn.MLP([3], in_features=4), (4,))
    x = np.zeros((5, 4), np.uint8)
    bad = np.array([0, 1, 2, 3, 1])
    with pytest.raises(nn.ClassifierInputError) as trained:
        Trainer(model, optim.SGD(model.parameters(), lr=0.1), progress=False).fit(x, bad, epochs=1)
    with pytest.raises(nn.ClassifierInputError) as evaluated:
        model.evaluate(x, bad)
    assert str(trained.value) == str(evaluated.value).replace("labels:", "y_train:", 1)
    assert "labels must be in 0..2, found 3" in str(trained.value)


def test_a_saved_model_without_input_shape_loads_with_the_old_default(tmp_path, numpy_backend):
    """Models saved before the input shape was recorded were flat 28x28 MLPs: the loader,
    not the Classifier, keeps that default."""
    model = nn.Classifier(nn.Sequential(nn.Tanh(), nn.Linear(None, 3)), (784,))  # no size declared
    model.save(tmp_path / "m.npz")
    arrays, meta = io.read_npz(tmp_path / "m.npz")
    del meta["model"]["input_shape"]
    io.atomic_write_npz(tmp_path / "old.npz", arrays, meta)
    old = nn.load(tmp_path / "old.npz")
    assert old.input_shape == (784,) and old.num_classes == 3
    np.testing.assert_array_equal(gn.to_numpy(old.predict_proba(np.zeros((2, 784)))),
                                  gn.to_numpy(model.predict_proba(np.zeros((2, 784)))))

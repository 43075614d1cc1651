"""The MNIST example's training doors (issue 23): a finished run's outputs verified on
--resume, output paths checked before any work, files read through graphnet.io."""
from __future__ import annotations

import json

import pytest

from graphnet import nn
from graphnet.datasets import mnist
from graphnet.training import CHECKPOINT

from test_example_cli import _fake_run, _module, _one_line_usage_error, run

needs_mnist = pytest.mark.skipif(
    any(mnist._find(mnist.default_root(), n) is None for n in mnist.FILES),
    reason="regenerating the outputs evaluates on the cached MNIST files")


@needs_mnist
@pytest.mark.parametrize("damage", ["truncated-model", "corrupt-metrics", "metrics-not-object"])
def test_resume_rewrites_the_broken_outputs_of_a_finished_run(tmp_path, damage):
    _fake_run(tmp_path)
    if damage == "truncated-model":
        data = (tmp_path / "model.npz").read_bytes()
        (tmp_path / "model.npz").write_bytes(data[:len(data) // 2])
    elif damage == "corrupt-metrics":
        (tmp_path / "metrics.json").write_text('{"test_accuracy": 0.91')
    else:
        (tmp_path / "metrics.json").write_text("[0.91]")
    before = (tmp_path / CHECKPOINT).read_bytes()
    res = run("--resume", str(tmp_path), "--no-progress", timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "nothing to do" not in res.stdout
    named = "model.npz" if damage == "truncated-model" else "metrics.json"
    assert f"training is complete, but {tmp_path / named}" in res.stdout
    assert "writing the final model and metrics again from the checkpoint" in res.stdout
    nn.load(tmp_path / "model.npz")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["epochs"] == 1
    assert (tmp_path / CHECKPOINT).read_bytes() == before  # nothing trained
    again = run("--resume", str(tmp_path), timeout=60)
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_broken_outputs_names_each_problem(tmp_path):
    common = _module("common")
    _fake_run(tmp_path)
    assert common.broken_outputs(tmp_path) == []
    (tmp_path / "model.npz").write_bytes(b"PK\x03\x04 not really")
    (tmp_path / "metrics.json").write_text('{"epochs": 1}')
    problems = common.broken_outputs(tmp_path)
    assert len(problems) == 2
    assert "model.npz: not a readable .npz checkpoint" in problems[0]
    assert problems[1] == f"{tmp_path / 'metrics.json'}: holds no test_accuracy"
    (tmp_path / "metrics.json").unlink()
    assert "metrics.json: cannot be read: no such file" in common.broken_outputs(tmp_path)[1]


@pytest.mark.parametrize("name", ["metrics.json", "model.npz", "config.json", CHECKPOINT])
@pytest.mark.parametrize("mode", ["new", "overwrite"])
def test_an_output_that_is_a_folder_is_refused_before_any_work(tmp_path, name, mode):
    (tmp_path / "run" / name).mkdir(parents=True)
    extra = ["--overwrite"] if mode == "overwrite" else []
    res = run("--out", str(tmp_path / "run"), "--data", str(tmp_path / "data"), *extra)
    _one_line_usage_error(res, f"{tmp_path / 'run' / name} is not a regular file (a folder?)")
    assert not (tmp_path / "data").exists()


def test_a_finished_runs_metrics_folder_is_refused_on_resume(tmp_path):
    _fake_run(tmp_path)
    (tmp_path / "metrics.json").unlink()
    (tmp_path / "metrics.json").mkdir()
    res = run("--resume", str(tmp_path), "--data", str(tmp_path / "data"))
    _one_line_usage_error(res, f"{tmp_path / 'metrics.json'} is not a regular file")


@pytest.mark.parametrize("flag", ["--out", "--data", "--resume"])
def test_a_path_too_long_for_the_file_system_is_one_line(tmp_path, flag):
    res = run(flag, str(tmp_path / ("x" * 300)))
    _one_line_usage_error(res, f"{flag}: ")
    assert "has a component of 300 bytes" in res.stderr


def test_a_config_json_that_is_a_folder_is_one_line(tmp_path):
    _fake_run(tmp_path)
    (tmp_path / "config.json").unlink()
    (tmp_path / "config.json").mkdir()
    res = run("--resume", str(tmp_path))
    _one_line_usage_error(res, f"{tmp_path / 'config.json'}: is not a regular file")


def test_visualize_warns_about_a_corrupt_metrics_json(tmp_path, capsys):
    visualize = _module("visualize")
    path = tmp_path / "metrics.json"
    assert visualize.read_metrics(path) == {}
    assert capsys.readouterr().err == ""
    path.write_text('{"test_accuracy": 0.9')
    assert visualize.read_metrics(path) == {}
    assert f"warning: {path}: not valid JSON" in capsys.readouterr().err
    path.write_text('[1, 2]')
    assert visualize.read_metrics(path) == {}
    assert "expected a JSON object, got list" in capsys.readouterr().err
    path.write_text('{"test_accuracy": 0.9}')
    assert visualize.read_metrics(path) == {"test_accuracy": 0.9}


@pytest.mark.parametrize("args, message", [
    (["--features", "0"], "--features must be >= 1, got 0"),
    (["--out", "y" * 300], "--out: "),
])
def test_visualize_flags_are_checked(tmp_path, args, message):
    import subprocess
    import sys
    from test_example_cli import EXAMPLE, ROOT
    res = subprocess.run([sys.executable, str(EXAMPLE / "visualize.py"), "--model", str(tmp_path),
                          *args], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr


def test_the_outputs_checked_are_the_files_a_run_writes():
    assert set(_module("train").OUTPUT_FILES) == set(_module("common").RUN_FILES)

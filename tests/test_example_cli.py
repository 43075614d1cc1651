"""The MNIST example's command line: bad flags fail before any work; real runs are checks."""
from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import graphnet as gn
from graphnet import nn, optim
from graphnet.training import CHECKPOINT, Trainer

from helpers import blobs, needs_cached_mnist

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mnist"
TRAIN = EXAMPLE / "train.py"


def run(*args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, str(TRAIN), *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def _module(name: str):
    """examples/mnist/<name>.py, imported as the package module examples.mnist.<name>."""
    return importlib.import_module(f"examples.mnist.{name}")


def _one_line_usage_error(res: subprocess.CompletedProcess, message: str) -> None:
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert message in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--epochs", "-1", "--schedule", "cosine"], "--epochs must be >= 1"),
    (["--layers", "128,64"], "--layers must end in 10"),
    (["--layers", "0,10"], "--layers must be positive"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--lr", "-0.1"], "--lr must be > 0"),
    (["--lr", "nan"], "--lr must be a finite number, got nan"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--batch-size", "-5"], "--batch-size must be >= 1, got -5"),
    (["--seed", "-1"], "--seed must be in 0..4294967295, got -1"),
    (["--dropout", "1.0"], "--dropout must be in [0, 1)"),
    (["--layers", "12,x,10"], "comma-separated integers"),
    (["--layers", "128,,10"], "got '128,,10' (item 2 is empty)"),
    (["--layers", "128,10,"], "got '128,10,' (item 3 is empty)"),
    (["--layers", ",10"], "(item 1 is empty)"),
    (["--preset", "nope"], "invalid choice"),
    (["--min-accuracy", "150"], "a fraction 0-1 or a percent up to 100"),
    (["--min-accuracy", "-0.5"], "a fraction 0-1 or a percent up to 100"),
    (["--min-accuracy", "high"], "a fraction 0-1 or a percent up to 100"),
    (["--preset", "cnn", "--layers", "128,10"], "--layers applies to MLPs only"),
    (["--preset", "cnn-best", "--dropout", "0.1"], "--dropout applies to MLPs only"),
    (["--optimizer", "adam", "--momentum", "0.9"], "--momentum applies to --optimizer sgd only"),
    (["--momentum", "0"], "--nesterov needs --momentum > 0"),
    (["--eval-every", "-1"], "--eval-every must be >= 0"),
    (["--data", str(TRAIN)], "is a file; give the folder holding the MNIST IDX files"),
    (["--resume", "/nonexistent/run"], "--resume /nonexistent/run: no such folder"),
])
def test_bad_flags_rejected_before_any_work(args, message, tmp_path):
    data = tmp_path / "data"  # loading data here would try a download into it
    if "--data" not in args:
        args = [*args, "--data", str(data)]
    res = run(*args, "--out", str(tmp_path / "out"), timeout=30)
    _one_line_usage_error(res, message)
    assert not (tmp_path / "out").exists() and not data.exists()


def test_out_naming_a_file_is_refused(tmp_path):
    res = run("--out", str(TRAIN), "--data", str(tmp_path / "data"), timeout=30)
    _one_line_usage_error(res, f"--out {TRAIN} is a file, not a folder")


def test_out_in_a_folder_that_cannot_be_written(tmp_path):
    if os.geteuid() == 0:  # root writes through permission bits: use a folder nobody can write
        target = Path("/proc") / "graphnet-run"
    else:
        locked = tmp_path / "ro"
        locked.mkdir()
        locked.chmod(0o555)
        target = locked / "run"
    res = run("--out", str(target), "--data", str(tmp_path / "data"), timeout=30)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert f"--out {target}" in res.stderr and "cannot write" in res.stderr
    assert not (tmp_path / "data").exists()


def test_layers_too_large_for_memory_are_refused_before_allocating(tmp_path):
    res = run("--layers", "100000000,10", "--out", str(tmp_path / "out"),
              "--data", str(tmp_path / "data"), timeout=60)
    _one_line_usage_error(res, "--layers 100000000,10 with --batch-size 128 needs about")
    assert "is free on" in res.stderr and not (tmp_path / "out").exists()


def test_unknown_backend_is_a_clear_error(tmp_path):
    res = run("--backend", "tpu", "--out", str(tmp_path), timeout=30)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "unknown graphnet backend 'tpu'" in res.stderr and "'numpy'" in res.stderr


@pytest.mark.parametrize("text, value", [("0.98", 0.98), ("98", 0.98), ("98%", 0.98),
                                         ("0.5%", 0.005), ("1", 1.0), ("100", 1.0), ("0", 0.0)])
def test_min_accuracy_takes_a_fraction_or_a_percent(text, value):
    assert _module("train")._accuracy(text) == pytest.approx(value)


def test_the_cli_trainer_has_the_cli_curve_settings(tmp_path):
    """--eval-every's default and the curve points' images reach the Trainer (build_trainer,
    which the CLI and benchmarks/bench_cli.py share)."""
    train, common = _module("train"), _module("common")
    cfg = dict(train.DEFAULTS, **train.PRESETS["seed-10"], preset="seed-10")
    args = train.parse_args(["--preset", "seed-10", "--out", str(tmp_path / "run")])
    assert args.eval_every == train.CURVE_EVERY
    _, trainer = common.build_trainer(cfg, blobs(64)[0], None, eval_every=args.eval_every)
    assert (trainer.eval_every, trainer.curve_subset) == (train.CURVE_EVERY, train.CURVE_IMAGES)
    _, trainer = common.build_trainer(cfg, blobs(64)[0], None, eval_every=0)
    assert trainer.eval_every is None


# --- a run folder -----------------------------------------------------------------------
def _fake_run(folder: Path, finished: bool = True) -> dict:
    """A seed-10 run folder (config.json, a one-epoch checkpoint) trained on synthetic data."""
    train = _module("train")
    cfg = dict(train.DEFAULTS, **train.PRESETS["seed-10"], preset="seed-10")
    gn.seed(0)
    model = nn.Classifier(nn.MLP(cfg["layers"], 784, cfg["activation"], 0.0), (784,))
    x, y = blobs(64)
    model.fit_preprocessing(x)
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=cfg["lr"]), batch_size=32,
                      checkpoint_dir=folder, progress=False)
    trainer.fit(x, y, epochs=1)
    (folder / "config.json").write_text(json.dumps(cfg))
    if finished:
        model.save(folder / "model.npz")
        (folder / "metrics.json").write_text(json.dumps({"test_accuracy": 0.9123}))
    return cfg


def test_resuming_a_finished_run_says_so_and_trains_nothing(tmp_path):
    _fake_run(tmp_path)
    before = (tmp_path / CHECKPOINT).stat().st_mtime_ns
    res = run("--resume", str(tmp_path), "--data", str(tmp_path / "data"), timeout=60)
    assert res.returncode == 0, res.stderr
    assert "the run is finished (1 of 1 epochs, test accuracy 0.9123); nothing to do" in res.stdout
    assert "--epochs above 1" in res.stdout
    assert (tmp_path / CHECKPOINT).stat().st_mtime_ns == before
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("flags, message", [
    (["--optimizer", "adam"], "--resume cannot change --optimizer (the run in"),
    (["--layers", "64,10"], "--resume cannot change --layers"),
    (["--seed", "3"], "--resume cannot change --seed"),
    (["--preset", "fast"], "--resume cannot change --preset"),
    (["--overwrite"], "--resume continues a run and --overwrite replaces it"),
])
def test_resume_refuses_flags_it_cannot_honour(tmp_path, flags, message):
    _fake_run(tmp_path)
    res = run("--resume", str(tmp_path), *flags, "--data", str(tmp_path / "data"), timeout=60)
    _one_line_usage_error(res, message)


@pytest.mark.parametrize("text, message", [
    ("{not json", "config.json: not valid JSON"),
    ("[1, 2]", "config.json: expected a JSON object of settings, got list"),
    ('{"lr": "0.1"}', "config.json: 'lr' must be a finite number, got '0.1'"),
    ('{"batchsize": 64}', "config.json: unknown setting 'batchsize'"),
    ('{"layers": [10], "epochs": 0}', "config.json: 'epochs' must be >= 1, got 0"),
    ('{"zoom": 1.5}', "config.json: 'zoom' must be in [0, 1) (a fraction of the size), got 1.5"),
    ('{"zoom": null}', "config.json: 'zoom' must be a finite number, got None"),
    ('{"rotate": -3}', "config.json: 'rotate' must be in [0, 180] degrees, got -3"),
])
def test_resume_with_a_broken_config_json(tmp_path, text, message):
    _fake_run(tmp_path)
    (tmp_path / "config.json").write_text(text)
    res = run("--resume", str(tmp_path), "--data", str(tmp_path / "data"), timeout=60)
    _one_line_usage_error(res, message)


def test_a_folder_holding_a_run_is_not_overwritten_without_overwrite(tmp_path):
    _fake_run(tmp_path)
    res = run("--preset", "seed-10", "--out", str(tmp_path), "--data", str(tmp_path / "data"))
    _one_line_usage_error(res, f"{tmp_path} already holds a run ({CHECKPOINT}, model.npz, "
                               "metrics.json, config.json)")
    assert "--resume" in res.stderr and "--overwrite" in res.stderr


def test_a_second_run_into_one_folder_names_the_first_ones_pid(tmp_path):
    lock = _module("common").RunLock(tmp_path)
    lock.acquire()
    try:
        res = run("--preset", "seed-10", "--out", str(tmp_path), "--data", str(tmp_path / "data"))
    finally:
        lock.release()
    _one_line_usage_error(res, f"is in use by another training run (PID {os.getpid()}")
    assert not (tmp_path / "data").exists() and not (tmp_path / ".lock").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _fake_run(tmp_path)
    (tmp_path / ".lock").write_text(f"{dead.pid}\n")
    res = run("--preset", "seed-10", "--out", str(tmp_path), "--data", str(tmp_path / "data"))
    assert f"left by PID {dead.pid}, which is no longer running" in res.stdout
    _one_line_usage_error(res, "already holds a run")  # got past the lock
    assert not (tmp_path / ".lock").exists()  # removed at exit


# --- real runs (MNIST) -------------------------------------------------------------------
@needs_cached_mnist  # seconds: in the fast suite
def test_seed_10_preset_reproduces_reference_and_writes_outputs(tmp_path):
    res = run("--preset", "seed-10", "--out", str(tmp_path), "--min-accuracy", "91%",
              timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("test_accuracy", "train_accuracy", "epochs", "seconds_per_epoch", "backend",
                "device", "config", "history", "segments"):
        assert key in metrics
    assert abs(metrics["test_accuracy"] - 0.915) <= 0.005
    assert (tmp_path / "model.npz").exists() and not (tmp_path / ".lock").exists()
    # the reused end-of-epoch figures are those of the saved weights
    from graphnet.datasets import mnist
    x_train, y_train, x_test, y_test = mnist.load()
    saved = nn.load(tmp_path / "model.npz")
    assert saved.evaluate(x_test, y_test)["accuracy"] == pytest.approx(metrics["test_accuracy"],
                                                                       abs=1e-12)
    assert metrics["train_images_evaluated"] == 10000
    assert saved.evaluate(x_train[:10000], y_train[:10000])["accuracy"] == pytest.approx(
        metrics["train_accuracy"], abs=1e-12)
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("done in ") and "test accuracy" in last and "model.npz" in last
    assert "it/s" not in res.stderr and "img/s" not in res.stderr  # no progress bar off a terminal


@needs_cached_mnist  # seconds: in the fast suite
def test_min_accuracy_fails_the_run_when_missed(tmp_path):
    res = run("--preset", "seed-10", "--out", str(tmp_path), "--no-progress",
              "--min-accuracy", "99", timeout=600)
    assert res.returncode == 1
    assert "FAIL: test accuracy" in res.stderr and "< --min-accuracy 0.99" in res.stderr


@pytest.mark.slow
def test_ctrl_c_then_resume_with_another_batch_size_and_lr(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(TRAIN), "--preset", "seed-10", "--epochs", "6",
                             "--batch-size", "64", "--out", str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (tmp_path / CHECKPOINT).exists():
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err
    assert f"resume with --resume {tmp_path}" in err and "Traceback" not in err
    res = run("--resume", str(tmp_path), "--batch-size", "256", "--lr", "0.1", timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "on resume: batch size 64 -> 256" in res.stdout
    assert "on resume: learning rate re-planned" in res.stdout and "0.1 x constant" in res.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [(s["batch_size"], s["lr"]) for s in metrics["segments"]] == [(64, 0.5), (256, 0.1)]
    assert metrics["config"]["batch_size"] == 256 and metrics["config"]["lr"] == 0.1
    assert metrics["history"]["epoch"] == [1, 2, 3, 4, 5, 6]
    again = run("--resume", str(tmp_path), timeout=60)
    assert again.returncode == 0 and "nothing to do" in again.stdout


@pytest.mark.slow
def test_default_preset_reaches_98_percent(tmp_path):
    res = run("--out", str(tmp_path), "--no-progress", "--min-accuracy", "0.985", timeout=1200)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]

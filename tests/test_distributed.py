"""Data-parallel training (graphnet.distributed): sharding and transport choice here, and real
``mpiexec -n 2`` runs (marked ``mpi``; skipped with the reason where MPI is not installed)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import graphnet as gn
from graphnet import distributed
from graphnet.distributed import ShardedSampler, choose_transport, shard_bounds
from graphnet.testing import assert_close
from graphnet.training import Trainer
from helpers import blobs, tiny_model
import dist_worker as worker

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "dist_worker.py"
TRAIN = ROOT / "examples" / "mnist" / "train.py"


def _mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"  # the mpich wheel installs it in the venv
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def _mpi_missing() -> str | None:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return f"mpi4py is not installed ({distributed.INSTALL_HINT})"
    if _mpiexec() is None:
        return "no mpiexec on PATH or beside the Python executable"
    return None


needs_mpi = pytest.mark.skipif(_mpi_missing() is not None, reason=str(_mpi_missing()))


def launch(ranks: int, scenario: str, out: Path, timeout: float = 120, **env: str):
    """Run tests/dist_worker.py SCENARIO under ``mpiexec -n ranks`` (ranks=0: one plain process)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1", **env}
    cmd = [sys.executable, str(WORKER), scenario, str(out)]
    if ranks:
        cmd = [_mpiexec(), "-n", str(ranks)] + cmd
    else:
        full_env["ONE_PROCESS"] = "1"
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)


def params(path: Path) -> dict:
    with np.load(path / "params.npz") as f:
        return {k: f[k] for k in f.files}


# --- sharding, transport choice, resume arithmetic (no MPI needed) ------------------------
@pytest.mark.parametrize("n, size", [(0, 2), (7, 2), (8, 2), (5, 3), (2, 4), (100, 7)])
def test_shards_are_disjoint_contiguous_and_cover(n, size):
    bounds = [shard_bounds(n, r, size) for r in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    lengths = [hi - lo for lo, hi in bounds]
    assert max(lengths) - min(lengths) <= 1


@pytest.mark.parametrize("rank, size", [(-1, 2), (2, 2), (0, 0)])
def test_shard_bounds_refuses_a_bad_rank(rank, size):
    with pytest.raises(ValueError, match="rank must be in"):
        shard_bounds(4, rank, size)


@pytest.mark.parametrize("n, batch, size", [(103, 8, 2), (64, 8, 4), (10, 4, 3)])
def test_sharded_epoch_is_the_single_process_order(n, batch, size):
    perm = np.random.default_rng(3).permutation(n)
    one = ShardedSampler(batch * size, 0, 1)
    samplers = [ShardedSampler(batch, r, size) for r in range(size)]
    assert samplers[0].batches(n) == one.batches(n)
    for i in range(one.batches(n)):
        start = i * one.global_batch
        expected, first = one.rows_at(perm, start)
        assert first == start
        parts = [s.rows_at(perm, start) for s in samplers]
        offsets = np.cumsum([start] + [len(p) for p, _ in parts])[:-1]
        assert [o for _, o in parts] == list(offsets)
        np.testing.assert_array_equal(np.concatenate([p for p, _ in parts]), expected)


def test_transport_choice():
    assert choose_transport("numpy", 2, 0, False)[0] == "mpi"
    assert choose_transport("cupy", 2, 2, True)[0] == "nccl"
    shared = choose_transport("cupy", 4, 2, True)
    assert shared[0] == "mpi" and "4 ranks share 2 GPU" in shared[1]
    missing = choose_transport("cupy", 1, 1, False)
    assert missing[0] == "mpi" and "nvidia-nccl" in missing[1]


def resume_batch(batch: int, saved_global_batch: int, global_batch: int, source: str = "checkpoint") -> int:
    """The batch to resume at when a checkpoint taken after ``batch`` global batches of
    ``saved_global_batch`` samples is continued with global batches of ``global_batch``."""
    samples = batch * saved_global_batch
    if samples % global_batch:
        raise ValueError(f"{source}: stopped {samples} samples into the epoch, which is not a whole "
                         f"number of global batches of {global_batch} (per-rank batch x ranks); "
                         f"resume with a global batch dividing {samples}, e.g. the original "
                         f"{saved_global_batch}")
    return samples // global_batch


def test_resume_position_is_kept_in_samples():
    assert resume_batch(6, 16, 32) == 3  # 2 ranks x 16 after 6 batches of 16
    assert resume_batch(3, 32, 16) == 6
    assert resume_batch(0, 16, 48) == 0
    with pytest.raises(ValueError, match="stopped 96 samples into the epoch.*global batches of 64"):
        resume_batch(6, 16, 64)


def test_launcher_detection_and_message(monkeypatch):
    assert distributed.launched_by_mpi({"PMI_RANK": "0", "PMI_SIZE": "2"})
    assert distributed.launched_by_mpi({"OMPI_COMM_WORLD_SIZE": "2"})
    assert not distributed.launched_by_mpi({"PATH": "/bin"})
    for k in distributed.LAUNCHER_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(distributed.world, "_world", None)
    with pytest.raises(distributed.DistributedError, match="mpiexec -n 2 python"):
        distributed.init()


def test_bad_timeout_is_refused(monkeypatch):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(distributed.DistributedError, match="GRAPHNET_DIST_TIMEOUT.*'soon'"):
        distributed.world._timeout_from_env()
    with pytest.raises(ValueError, match="timeout must be"):
        distributed.init(timeout=0)


# --- real runs under mpiexec ---------------------------------------------------------------
@pytest.mark.mpi
@needs_mpi
@pytest.mark.parametrize("bucket_bytes", ["4096", str(25 << 20)])
def test_two_ranks_step_like_one_process(tmp_path, bucket_bytes):
    """Ranks seeded differently, each with half of every global batch: after a few SGD steps
    the parameters equal one process's on the whole batches (to float32 round-off)."""
    r = launch(2, "equivalence", tmp_path, BUCKET_BYTES=bucket_bytes)
    assert r.returncode == 0, r.stderr
    got = params(tmp_path)
    assert len(got["buckets"]) == (2 if bucket_bytes == "4096" else 1)
    with gn.use_backend("numpy"):
        model = tiny_model(layers=(32, 10), activation="relu", seed=0)
        opt = worker.make_optimizer(model)
        x, y = blobs(200, seed=1)
        model.fit_preprocessing(x)
        costs = [float(opt.minimize(model.train_graph, {model.images: model.prepare(xb),
                                                        model.labels: yb.astype(np.int64)}))
                 for xb, yb in worker.global_batches(x, y, worker.STEPS, worker.GLOBAL_BATCH)]
        for k, p in model.named_arrays().items():
            assert_close(got[k], gn.to_numpy(p.value), rtol=1e-5, atol=1e-6)
    assert_close(got["costs"], np.array(costs), rtol=1e-5, atol=1e-6)


@pytest.mark.mpi
@needs_mpi
def test_overlapped_all_reduce_gives_the_same_parameters(tmp_path):
    """Buckets all-reduced while backward goes on: bit for bit the non-overlapped step."""
    runs = {}
    for overlap in ("0", "1"):
        out = tmp_path / overlap
        out.mkdir()
        r = launch(2, "equivalence", out, OVERLAP=overlap)
        assert r.returncode == 0, r.stderr
        runs[overlap] = params(out)
    steps = len(runs["1"]["costs"])
    assert int(runs["0"]["overlapped"]) == 0
    assert int(runs["1"]["overlapped"]) == 2 * steps  # both buckets, every step, began in backward
    for k in runs["0"]:
        if k != "overlapped":
            np.testing.assert_array_equal(runs["1"][k], runs["0"][k], err_msg=k)


@pytest.mark.mpi
@needs_mpi
def test_hung_rank_makes_the_others_exit_with_a_message(tmp_path):
    r = launch(2, "hang", tmp_path, timeout=90, GRAPHNET_DIST_TIMEOUT="3")
    assert r.returncode != 0
    # Usually at "the first step"; on a loaded machine rank 1 can start more than 3 s late
    # and rank 0 then gives up at an earlier collective of init(): the same message.
    assert re.search(r"rank 0 of 2: waited 3 s for [^\n]+: another rank died or hangs", r.stderr), \
        r.stderr


@pytest.mark.mpi
@needs_mpi
def test_dead_rank_does_not_hang_the_others(tmp_path):
    r = launch(2, "die", tmp_path, timeout=90, GRAPHNET_DIST_TIMEOUT="5")
    assert r.returncode != 0, r.stdout + r.stderr


@pytest.mark.mpi
@needs_mpi
def test_a_failing_rank_ends_the_others_at_once(tmp_path):
    r = launch(2, "fail", tmp_path, timeout=60, GRAPHNET_DIST_TIMEOUT="300")  # not the deadline
    assert r.returncode != 0
    assert "ValueError: rank 1 cannot go on" in r.stderr
    assert "rank 1 of 2: ValueError on this rank; aborting all ranks" in r.stderr


@pytest.mark.mpi
@needs_mpi
def test_config_mismatch_is_named(tmp_path):
    r = launch(2, "config", tmp_path)
    assert r.returncode == 2
    msg = "rank 1 differs from rank 0 in batch_size (8 vs 16), lr (0.1 vs 0.2)"
    assert f"rank 0: DistributedError: the ranks disagree on the configuration: {msg}" in r.stdout
    assert f"rank 1: DistributedError: the ranks disagree on the configuration: {msg}" in r.stdout


def _train(ranks: int, out: Path, epochs: int, batch: int, stop_after: int = 0) -> str:
    r = launch(ranks, "train", out, EPOCHS=str(epochs), BATCH=str(batch), STOP_AFTER=str(stop_after))
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def _assert_same_params(got_dir: Path, ref_dir: Path) -> None:
    """The parameters a run left in ``got_dir`` equal those in ``ref_dir`` (to float32 sums)."""
    ref, got = params(ref_dir), params(got_dir)
    for k in ref:
        assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6)


@pytest.mark.mpi
@needs_mpi
def test_trainer_on_two_ranks_resumed_on_one_matches_one_process(tmp_path):
    """Trainer: 2 ranks x batch 8 for an epoch, then resumed by 1 process x batch 16, equals
    1 process x batch 16 throughout; only rank 0 wrote files."""
    one, split = tmp_path / "one", tmp_path / "split"
    _train(0, one, 2, 16)
    _train(2, split, 1, 8)
    assert sorted(p.name for p in split.iterdir()) == ["checkpoint.npz", "params.npz"]
    _train(0, split, 2, 16)
    _assert_same_params(split, one)


@pytest.mark.mpi
@needs_mpi
def test_trainer_resumed_on_more_ranks_matches_one_process(tmp_path):
    one, grow = tmp_path / "one", tmp_path / "grow"
    _train(0, one, 2, 16)
    _train(0, grow, 1, 16)
    _train(2, grow, 2, 8)
    _assert_same_params(grow, one)


@pytest.mark.mpi
@needs_mpi
def test_ctrl_c_on_one_rank_stops_all_and_resumes_mid_epoch_on_other_ranks(tmp_path):
    """Rank 0 alone asks to stop after 4 batches of 2 x 8: both ranks stop there (no hang) and
    rank 0 saves; one process resumes at sample 64 and ends where an uninterrupted one does."""
    one, split = tmp_path / "one", tmp_path / "split"
    _train(0, one, 2, 16)
    out = _train(2, split, 2, 8, stop_after=4)
    for rank in (0, 1):
        assert re.search(f"rank {rank}: interrupted (after|at) epoch 1, (batch 4|sample 64 )", out), out
    with gn.use_backend("numpy"):
        for batch, expected in [(16, 4), (32, 2), (64, 1)]:  # one process's (global) batch
            model = tiny_model(layers=(32, 10), activation="relu")
            t = Trainer(model, worker.make_optimizer(model), batch_size=batch)
            t.load_checkpoint(split / "checkpoint.npz")
            if hasattr(t.state, "sample"):  # a Trainer that counts the position in samples
                assert t.state.sample == 64
            else:
                assert t.state.batch == expected
    _train(0, split, 2, 16)
    _assert_same_params(split, one)


@pytest.mark.mpi
@needs_mpi
@pytest.mark.parametrize("where, stops_at", [("gradients", 64), ("update", 80)])
def test_real_sigint_during_a_step_stops_every_rank_after_the_same_batch(tmp_path, where, stops_at):
    """Issue 23 item 1: SIGINT reaches rank 0 alone while its 4th step (of 2 x 8 samples) runs.
    Before the ranks' vote it counts for that step, after it for the next; either way both
    ranks stop after the same batch, rank 0's checkpoint is there, and each rank exits 130."""
    r = launch(2, "sigint_in_step", tmp_path, SIGNAL_AT="4", SIGNAL_IN=where, BATCH="8")
    assert r.returncode == 130, r.stdout + r.stderr
    for rank in (0, 1):
        assert f"rank {rank}: interrupted at epoch 1, sample {stops_at} of 200" in r.stdout, r.stdout
    assert "finished without stopping" not in r.stdout
    assert r.stderr.count("Ctrl-C: finishing this batch") == 1  # rank 0 alone got the signal
    with gn.use_backend("numpy"):
        model = tiny_model(layers=(32, 10), activation="relu")
        t = Trainer(model, worker.make_optimizer(model), batch_size=16)
        t.load_checkpoint(tmp_path / "checkpoint.npz")
        assert (t.state.epoch, t.state.sample) == (0, stops_at)


def test_sigint_during_a_step_of_one_process_finishes_that_batch(tmp_path):
    """One process: the batch the signal lands in is the last (the behaviour kept from before)."""
    r = launch(0, "sigint_in_step", tmp_path, SIGNAL_AT="4", SIGNAL_IN="gradients", BATCH="16")
    assert r.returncode == 130, r.stdout + r.stderr
    assert "rank 0: interrupted at epoch 1, sample 64 of 200" in r.stdout


# --- the MNIST example --------------------------------------------------------------------
def _example(*args: str, ranks: int = 0, timeout: float = 60, prelude: str = "",
             **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1", **env}
    for k in distributed.LAUNCHER_ENV:
        if k not in env and not ranks:
            full_env.pop(k, None)
    code = f"{prelude}import runpy, sys; sys.argv = {[str(TRAIN), *args]!r}; " \
           f"runpy.run_module('examples.mnist.train', run_name='__main__', alter_sys=True)"
    cmd = [sys.executable, "-c", code]
    if ranks:
        cmd = [_mpiexec(), "-n", str(ranks)] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)


def test_example_distributed_outside_mpiexec_says_how(tmp_path):
    r = _example("--distributed", "--epochs", "1", "--out", str(tmp_path))
    assert r.returncode == 2
    assert "must be started by an MPI launcher, e.g. mpiexec -n 2 python" in r.stderr
    assert "pip install mpi4py mpich" in r.stderr and "graphnet[" not in r.stderr
    assert not any(tmp_path.iterdir())


def test_example_distributed_without_mpi4py_gives_the_install_command(tmp_path):
    r = _example("--epochs", "1", "--out", str(tmp_path), prelude="import sys; sys.modules['mpi4py'] = None; ",
                 PMI_RANK="0", PMI_SIZE="1")  # as if started by mpiexec: --distributed is implied
    assert r.returncode == 2
    assert "distributed training needs mpi4py and an MPI library" in r.stderr
    assert "pip install mpi4py mpich" in r.stderr and "graphnet[" not in r.stderr


@pytest.mark.mpi
@pytest.mark.slow
@needs_mpi
def test_example_on_two_ranks_trains_and_only_rank_0_writes(tmp_path):
    r = _example("--layers", "32,10", "--epochs", "1", "--out", str(tmp_path), "--no-progress",
                 ranks=2, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("data-parallel on 2 ranks: global batch 256 = 128 per rank x 2; mpi:") == 1
    assert r.stdout.count("test accuracy") == 1
    assert r.stdout.count("learning rate 0.05 x 2 ranks = 0.1 (scaled with the global batch") == 1
    assert json.loads((tmp_path / "config.json").read_text())["lr"] == 0.1
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.85
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz", "config.json",
                                                          "metrics.json", "model.npz"]


def test_example_scales_the_preset_lr_with_the_ranks_unless_lr_is_given(tmp_path):
    from examples.mnist import train
    out = ["--out", str(tmp_path / "run")]
    args = train.parse_args(["--preset", "fast", *out])
    assert train.scale_lr_with_ranks(args, 1) == "" and args.config["lr"] == 0.05
    note = train.scale_lr_with_ranks(args, 4)
    assert args.config["lr"] == 0.2 and note.startswith("learning rate 0.05 x 4 ranks = 0.2")
    args = train.parse_args(["--preset", "fast", "--lr", "0.03", *out])
    assert train.scale_lr_with_ranks(args, 4) == "" and args.config["lr"] == 0.03


def test_buckets_hold_every_gradient_as_a_view_later_layers_first():
    with gn.use_backend("numpy"):
        model = tiny_model(layers=(32, 16, 10), activation="relu")
        params = model.parameters()
        sizes = [p.value.nbytes for p in params]
        assert len(distributed._Buckets(params, np, bucket_bytes=1).buffers) == len(params)
        b = distributed._Buckets(params, np, bucket_bytes=max(sizes))  # the first W alone
        assert [int(x.nbytes) for x in b.buffers] == [sum(sizes[1:]), sizes[0]]
        assert b.sizes == [len(params) - 1, 1] and b.stats.shape == (distributed.STATS,)
        assert [b.bucket_of[p] for p in params] == [1] + [0] * (len(params) - 1)
        first = b.buffers[0]
        assert np.shares_memory(b.views[params[-1]], first)  # the last layer's bias leads
        for p in params:
            assert b.views[p].shape == p.shape and b.views[p].dtype == p.dtype
            assert any(np.shares_memory(b.views[p], buf) for buf in b.buffers)
        whole = distributed._Buckets(params, np, bucket_bytes=distributed.BUCKET_BYTES)
        assert len(whole.buffers) == 1


@pytest.mark.mpi
@needs_mpi
def test_one_rank_world_steps_exactly_like_the_plain_optimizer():
    world = distributed.init(require_launcher=False)  # MPI's singleton world: this process
    assert world.size == 1 and world.is_root
    x, y = blobs(40, seed=2)
    results = []
    with gn.use_backend("numpy"):
        for wrap in (False, True):
            model = tiny_model(layers=(16, 10))
            model.fit_preprocessing(x)
            opt = worker.make_optimizer(model)
            if wrap:
                opt = distributed.DistributedOptimizer(opt, world, bucket_bytes=512)
                assert "host" in opt.reason and opt.transport == "mpi"
            feed = {model.images: model.prepare(x), model.labels: y.astype(np.int64)}
            costs = [float(opt.minimize(model.train_graph, feed)) for _ in range(3)]
            results.append((costs, {k: gn.to_numpy(p.value) for k, p in model.named_arrays().items()}))
            if wrap:
                with pytest.raises(distributed.DistributedError, match="no rank had any samples"):
                    opt.minimize(model.train_graph, feed, samples=0)
                with pytest.raises(ValueError, match="samples must be >= 0, got -1"):
                    opt.minimize(model.train_graph, feed, samples=-1)
    (c0, p0), (c1, p1) = results
    assert c0 == c1
    for k in p0:
        np.testing.assert_array_equal(p0[k], p1[k])


def test_poll_until_gives_up_after_the_timeout():
    calls = []
    assert distributed.poll_until(lambda: calls.append(1) or len(calls) == 3, 5.0)
    assert len(calls) == 3
    assert not distributed.poll_until(lambda: False, 0.05)


@pytest.mark.mpi
@needs_mpi
def test_trainer_given_a_world_trains_data_parallel_like_one_process(tmp_path):
    """``Trainer(distributed=world)`` (deprecated, in the README) becomes the DataParallel
    strategy; on a one-rank world it trains like the single-process default (to float32
    rounding: each rank's gradient is weighted by its rows, then divided by their sum)."""
    world = distributed.init(require_launcher=False)
    x, y = blobs(60, seed=3)
    results = []
    with gn.use_backend("numpy"):
        for kind in ("single", "strategy", "keyword"):
            gn.seed(0)
            model = tiny_model(layers=(16, 10), seed=0)
            model.fit_preprocessing(x)
            opt = worker.make_optimizer(model)
            kw = {"strategy": distributed.DataParallel(world)} if kind == "strategy" else {}
            if kind == "keyword":
                with pytest.warns(DeprecationWarning, match="strategy=graphnet.distributed.DataParallel"):
                    t = Trainer(model, opt, batch_size=16, progress=False, distributed=world)
                assert isinstance(t.strategy, distributed.DataParallel)
            else:
                t = Trainer(model, opt, batch_size=16, progress=False, **kw)
            t.fit(x, y, epochs=2)
            assert t.optimizer is opt and opt.steps == 8
            results.append({k: gn.to_numpy(p.value) for k, p in model.named_arrays().items()})
    for k in results[0]:
        np.testing.assert_array_equal(results[2][k], results[1][k])  # keyword == strategy
        assert_close(results[1][k], results[0][k], rtol=1e-5, atol=1e-6)

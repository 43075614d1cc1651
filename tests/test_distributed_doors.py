"""graphnet.distributed as a hostile user meets it (issue 23): ranks whose models, data or
calls differ, a rank that raises or goes non-finite mid-step, an MPI_Abort that returns,
wrong types at every door. The rule: a correct result, or a clear error naming the culprit
on every rank; never a bare traceback, a hang, a silent wrong answer or lost progress.

Real runs go through ``mpiexec -n 2`` (marked ``mpi``) with deadlines of seconds, so a
regression shows as a wrong exit code or message, not as a 600 s wait.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import graphnet as gn
from graphnet import distributed, optim
from graphnet.testing import assert_close
from helpers import blobs, tiny_model
from test_distributed import launch, needs_mpi, params
import dist_worker as worker

FAST = {"GRAPHNET_DIST_TIMEOUT": "20"}  # a hang would end in seconds, with another exit code

MODELS_DIFFER = "the ranks' models differ (before the parameter broadcast): rank 1 differs from rank 0: "


def _both_ranks_say(out: str, message: str) -> None:
    for rank in (0, 1):
        assert f"rank {rank}: {message}" in out, out


# --- defect 1: ranks whose models differ ----------------------------------------------------
@pytest.mark.mpi
@needs_mpi
@pytest.mark.parametrize("mode, difference", [
    ("shape", "first difference at parameter 2: rank 0 has 'layer1.W' (3, 2) float32, "
              "rank 1 has 'layer1.W' (3, 5) float32"),
    ("count", "rank 0 has 3 parameters, rank 1 has 4; first difference at parameter 3: "
              "rank 0 has nothing, rank 1 has 'layer1.b' (2,) float32"),
    ("dtype", "first difference at parameter 1: rank 0 has 'layer0.b' (3,) float32, "
              "rank 1 has 'layer0.b' (3,) float64"),
    ("name", "first difference at parameter 0: rank 0 has 'layer0.W' (4, 3) float32, "
             "rank 1 has 'encoder.W' (4, 3) float32"),
])
def test_broadcast_of_differing_models_stops_every_rank_naming_the_difference(tmp_path, mode,
                                                                              difference):
    r = launch(2, "models_differ", tmp_path, timeout=60, MODE=mode, **FAST)
    assert r.returncode == 2, r.stdout + r.stderr
    _both_ranks_say(r.stdout, f"DistributedError: {MODELS_DIFFER}{difference}")


@pytest.mark.mpi
@needs_mpi
def test_wrapping_the_optimizer_of_differing_models_stops_every_rank(tmp_path):
    r = launch(2, "models_differ", tmp_path, timeout=60, MODE="shape", DOOR="optimizer", **FAST)
    assert r.returncode == 2, r.stdout + r.stderr
    _both_ranks_say(r.stdout, "DistributedError: the ranks' models differ (wrapping the optimizer "
                    "in DistributedOptimizer): rank 1 differs from rank 0: first difference at "
                    "parameter 2: rank 0 has 'layer1.W' (3, 2) float32, rank 1 has 'layer1.W' "
                    "(3, 5) float32")


@pytest.mark.mpi
@needs_mpi
def test_trainer_strategy_on_differing_models_stops_every_rank(tmp_path):
    r = launch(2, "models_differ", tmp_path, timeout=60, MODE="strategy", **FAST)
    assert r.returncode == 2, r.stdout + r.stderr
    _both_ranks_say(r.stdout, "DistributedError: the ranks' models differ (wrapping the optimizer "
                    "in DistributedOptimizer): rank 1 differs from rank 0: first difference at "
                    "parameter 0: rank 0 has 'W784x32' (784, 32) float32, rank 1 has 'W784x16' "
                    "(784, 16) float32")


# --- defect 2: an MPI_Abort that returns -------------------------------------------------
@pytest.mark.mpi
@needs_mpi
def test_an_abort_that_returns_never_hands_back_the_unreduced_buffer(tmp_path):
    r = launch(2, "abort_returns", tmp_path, timeout=60, GRAPHNET_DIST_TIMEOUT="2", RANK1_SLEEP="8")
    out = r.stdout + r.stderr
    assert "rank 0: Abort(3) returned" in r.stdout, out  # the simulated abort did return
    assert "unreduced" not in out
    assert r.returncode == distributed.EXIT_ABORT, out
    assert "rank 0 of 2: waited 2 s for checking the sum rank 1 never joins" in r.stderr


# --- a rank that cannot take a step ----------------------------------------------------------
def _snapshots(path: Path) -> tuple[int, list[dict]]:
    with np.load(path) as f:
        steps, keys = int(f["steps"]), [k for k in f.files if "@" in k]
        snaps = [{k.split("@")[0]: f[k] for k in keys if k.endswith(f"@{i}")} for i in range(3)]
    return steps, snaps


def _assert_step_2_taken_nowhere(tmp_path: Path) -> None:
    """Both ranks: step 2 left the parameters as step 1 did, step 3 moved them, ranks agree."""
    (steps0, snaps0), (steps1, snaps1) = (_snapshots(tmp_path / f"rank{r}.npz") for r in (0, 1))
    assert steps0 == steps1 == 2
    for snaps in (snaps0, snaps1):
        for k in snaps[0]:
            np.testing.assert_array_equal(snaps[1][k], snaps[0][k], err_msg=k)
        assert any(not np.array_equal(snaps[2][k], snaps[1][k]) for k in snaps[0])
    for k in snaps0[2]:
        np.testing.assert_array_equal(snaps1[2][k], snaps0[2][k], err_msg=k)


@pytest.mark.mpi
@needs_mpi
@pytest.mark.parametrize("where, error", [("before", "this rank's batch 2 is broken"),
                                          ("backward", "backward failed on batch 2")])
def test_a_rank_raising_mid_step_stops_that_step_on_every_rank(tmp_path, where, error):
    """Rank 1 raises in step 2 (before backward, or inside it after a bucket's sum began):
    rank 1 gets its own error, rank 0 one naming rank 1's; no rank takes step 2; step 3 works."""
    r = launch(2, "step_fails", tmp_path, timeout=60, FAIL="raise", WHERE=where, **FAST)
    assert r.returncode == 0, r.stdout + r.stderr
    said = "step 2 (taken on no rank: the parameters are unchanged) failed: rank 1: ValueError: " + error
    assert f"rank 0: step 2: DistributedError: {said} | notes []" in r.stdout, r.stdout
    notes = [f"graphnet.distributed: {said}"]
    assert f"rank 1: step 2: ValueError: {error} | notes {notes}" in r.stdout, r.stdout
    _both_ranks_say(r.stdout, "step 3 done")
    _assert_step_2_taken_nowhere(tmp_path)


@pytest.mark.mpi
@needs_mpi
def test_non_finite_gradients_on_one_rank_are_named_and_taken_nowhere(tmp_path):
    r = launch(2, "step_fails", tmp_path, timeout=60, FAIL="nan", **FAST)
    assert r.returncode == 0, r.stdout + r.stderr
    _both_ranks_say(r.stdout, "step 2: NonFiniteGradientsError: step 2 (taken on no rank: the "
                    "parameters are unchanged) failed: rank 1: non-finite cost or gradients")
    _assert_step_2_taken_nowhere(tmp_path)


# --- ranks that call a collective differently ------------------------------------------------
@pytest.mark.mpi
@needs_mpi
@pytest.mark.parametrize("mode, message", [
    ("metrics", "DistributedError: reduce_mean: the ranks reduce different names: "
                "rank 0 ['accuracy', 'loss'], rank 1 ['acc', 'loss']"),
    ("array", "DistributedError: broadcast_array(the mean): the ranks' arrays differ in shape or "
              "dtype: rank 0 (3,) float32, rank 1 (4,) float32"),
    ("sum", "DistributedError: the counts: the ranks' arrays differ in shape or dtype: "
            "rank 0 (2,) int64, rank 1 (2,) float64"),
    ("config", "DistributedError: the ranks disagree on the configuration: rank 1 differs from "
               "rank 0 in batch_size (8 vs 16)"),
])
def test_collectives_called_differently_are_refused_on_every_rank(tmp_path, mode, message):
    r = launch(2, "collectives_differ", tmp_path, timeout=60, MODE=mode, **FAST)
    assert r.returncode == 2, r.stdout + r.stderr
    _both_ranks_say(r.stdout, message)


@pytest.mark.mpi
@needs_mpi
def test_ranks_given_different_data_stop_at_the_first_batch(tmp_path):
    r = launch(2, "epochs_differ", tmp_path, timeout=60, **FAST)
    assert r.returncode == 2, r.stdout + r.stderr
    _both_ranks_say(r.stdout, "DistributedError: the ranks' epochs differ (each rank must be given "
                    "the same training data and batch size): rank 0: batch_size 4, from sample 0, "
                    "samples 40; rank 1: batch_size 4, from sample 0, samples 32")


@pytest.mark.mpi
@needs_mpi
def test_more_ranks_than_rows_trains_and_evaluates_like_one_process(tmp_path):
    """3 samples, 1 per rank: the second global batch leaves rank 1 without rows; evaluation
    on 1 sample leaves rank 1 without rows too. Same as one process with batch 2."""
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        d.mkdir()
    for ranks, batch, out in ((0, "2", one), (2, "1", two)):
        r = launch(ranks, "uneven", out, timeout=60, BATCH=batch, **FAST)
        assert r.returncode == 0, r.stdout + r.stderr
    ref, got = params(one), params(two)
    assert int(got["steps"]) == int(ref["steps"]) == 4
    for k in ref:
        assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6)


# --- the doors, in this process (MPI's one-rank world) ----------------------------------------
@pytest.fixture
def world():
    w = distributed.init(require_launcher=False)
    timeout = w.timeout
    yield w
    w.timeout = timeout


@pytest.fixture
def trained(world, backend):
    model = tiny_model(layers=(16, 10))
    x, y = blobs(8, seed=5)
    model.fit_preprocessing(x)
    feed = {model.images: model.prepare(x), model.labels: backend.asarray(y.astype(np.int64))}
    return model, worker.make_optimizer(model), feed


def _doors(world, model, opt, feed):
    """(call, error type, message) for each wrong argument at a public door."""
    dopt = lambda: distributed.DistributedOptimizer(opt, world)  # noqa: E731
    return [
        (lambda: distributed.DistributedOptimizer("sgd", world), TypeError,
         "optimizer must be a graphnet optimizer .* got str 'sgd'"),
        (lambda: distributed.DistributedOptimizer(opt, "world"), TypeError,
         "world must be a graphnet.distributed.World .* got str 'world'"),
        (lambda: distributed.DistributedOptimizer(opt, world, bucket_bytes="1"), ValueError,
         "bucket_bytes must be an integer > 0, got '1'"),
        (lambda: distributed.DistributedOptimizer(opt, world, overlap=1), TypeError,
         "overlap must be True or False, got int 1"),
        (lambda: distributed.DataParallel(None), TypeError, "world must be .* got NoneType None"),
        (lambda: distributed.DataParallel(world, bucket_bytes=0), ValueError,
         "bucket_bytes must be an integer > 0, got 0"),
        (lambda: dopt().minimize(model.train_graph, feed, samples=1.5), TypeError,
         "samples must be an integer, got float 1.5"),
        (lambda: dopt().minimize(model.train_graph, feed, samples=True), TypeError,
         "samples must be an integer, got True"),
        (lambda: world.broadcast_parameters(5), TypeError, "params must be parameters .* got int 5"),
        (lambda: world.broadcast_parameters([model.parameters()[0], np.zeros(3)]), TypeError,
         r"params\[1\] must be a graphnet Parameter, got ndarray"),
        (lambda: world.reduce_mean([1.0]), TypeError, "values must be a mapping .* got list"),
        (lambda: world.reduce_mean({"loss": "low"}), TypeError,
         "reduce_mean value 'loss' must be a real number, got str 'low'"),
        (lambda: world.reduce_mean({"loss": 1.0}, weight=-1), ValueError,
         "reduce_mean weight must be >= 0, got -1"),
        (lambda: distributed.init(timeout="soon"), TypeError, "timeout must be a real number, got str"),
        (lambda: distributed.init(require_launcher="no"), TypeError,
         "require_launcher must be True or False, got str 'no'"),
        (lambda: distributed.shard_bounds(7.5, 0, 2), TypeError, "n must be an integer, got float 7.5"),
        (lambda: distributed.ShardedSampler(2, "0", 2), TypeError, "rank must be an integer, got '0'"),
        (lambda: distributed.World(world.MPI, "comm"), TypeError,
         "comm must be an MPI communicator .* got str 'comm'"),
        (lambda: world.allreduce_(np.zeros((4, 4))[:, 0], "a column"), TypeError,
         "a column: the buffer must be a writable C-contiguous NumPy array, got ndarray"),
        (lambda: world.broadcast_([1.0], "a list"), TypeError,
         "a list: the buffer must be a writable C-contiguous NumPy array, got list"),
        (lambda: world.broadcast_(np.zeros(2), "counts", root=1), ValueError,
         r"root must be a rank in \[0, 1\), got 1"),
        (lambda: distributed.poll_until(True, 1.0), TypeError, "done must be a callable, got bool"),
        (lambda: distributed.poll_until(lambda: True, "1"), TypeError,
         "timeout must be a real number, got str '1'"),
    ]


DOORS = 23


@pytest.mark.mpi
@needs_mpi
@pytest.mark.parametrize("door", range(DOORS))
def test_every_door_names_the_wrong_argument(world, trained, door):
    doors = _doors(world, *trained)
    assert len(doors) == DOORS
    call, kind, message = doors[door]
    with pytest.raises(kind, match=message):
        call()


@pytest.mark.mpi
@needs_mpi
def test_init_twice_gives_the_same_world_with_the_new_deadline(world):
    again = distributed.init(timeout=7, require_launcher=False)
    assert again is world and world.timeout == 7.0
    assert distributed.init(require_launcher=False).timeout == 7.0  # None keeps it


@pytest.mark.mpi
@needs_mpi
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the planted inf
def test_non_finite_gradients_on_a_one_rank_world_leave_the_parameters(world, trained):
    model, opt, feed = trained
    dopt = distributed.DistributedOptimizer(opt, world)
    dopt.minimize(model.train_graph, feed)
    before = {k: gn.to_numpy(p.value).copy() for k, p in model.named_arrays().items()}
    bad = dict(feed)
    bad[model.images] = feed[model.images].copy()
    bad[model.images][0, 0] = np.inf
    with pytest.raises(distributed.NonFiniteGradientsError,
                       match="step 2 .* failed: rank 0: non-finite cost or gradients") as info:
        dopt.minimize(model.train_graph, bad)
    assert isinstance(info.value, gn.NumericsError)  # the example's "training failed" path
    assert dopt.steps == 1
    for k, p in model.named_arrays().items():
        np.testing.assert_array_equal(gn.to_numpy(p.value), before[k], err_msg=k)
    dopt.minimize(model.train_graph, feed)
    assert dopt.steps == 2


@pytest.mark.mpi
@needs_mpi
def test_a_graph_error_on_a_one_rank_world_is_the_graph_error(world, trained):
    model, opt, feed = trained
    dopt = distributed.DistributedOptimizer(opt, world)
    bad = {model.images: feed[model.images]}  # the labels are missing
    with pytest.raises(gn.FeedError) as info:
        dopt.minimize(model.train_graph, bad)
    assert any("step 1 (taken on no rank" in n for n in getattr(info.value, "__notes__", []))
    assert dopt.steps == 0


@pytest.mark.mpi
@needs_mpi
def test_evaluate_of_a_failing_model_is_its_own_error(world, trained):
    model, _, feed = trained

    class Broken:
        def evaluate(self, x, y, prepared=True):
            raise ValueError("cannot evaluate")

    with pytest.raises(ValueError, match="cannot evaluate") as info:
        world.evaluate(Broken(), feed[model.images], feed[model.labels])
    assert any("evaluating failed: rank 0: ValueError: cannot evaluate" in n
               for n in info.value.__notes__)
    with pytest.raises(distributed.DistributedError, match="the weights sum to 0"):
        world.evaluate(model, feed[model.images][:0], feed[model.labels][:0])


def test_the_example_launch_helpers_name_a_wrong_argument():
    from examples.mnist import launch as example_launch
    with pytest.raises(TypeError, match="flag must be True, False or None, got str 'yes'"):
        example_launch.from_flag("yes")
    with pytest.raises(TypeError, match="world must be a graphnet.distributed.World, got NoneType"):
        example_launch.failure_ends_all(None)

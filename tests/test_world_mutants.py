"""graphnet.distributed.world and .agreement on two to four ranks in this process (issue 25).

The ranks are threads of ``tests/fake_mpi.py``, so what the mpiexec tests check through a child
process is checked here where the mutation run sees it: each collective's result on every
rank, the errors naming the ranks that differ, and ``init``'s choices. The deadlines and the
abort are in ``test_world_deadlines.py``.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

import graphnet as gn
from graphnet import distributed
from graphnet.distributed import world as world_mod
from graphnet.testing import assert_close
from fake_mpi import FakeMPI, run_ranks


def _ok(results: list) -> list:
    for r, res in enumerate(results):
        if isinstance(res, BaseException):
            raise AssertionError(f"rank {r} raised {type(res).__name__}: {res}") from res
    return results


def _errors(results: list, kind: type = distributed.DistributedError) -> list[str]:
    for r, res in enumerate(results):
        assert isinstance(res, kind), f"rank {r}: {res!r}"
    return [str(res) for res in results]


# --- the world's place ---------------------------------------------------------------------------
def test_each_rank_knows_its_rank_and_its_place_on_its_host():
    mpi = FakeMPI(4, ranks_per_host=2, host="node7")
    worlds = [distributed.World(mpi, c, 0.5) for c in mpi.comms]
    assert [(w.rank, w.size, w.local_rank, w.local_size) for w in worlds] == \
        [(0, 4, 0, 2), (1, 4, 1, 2), (2, 4, 0, 2), (3, 4, 1, 2)]
    assert [w.is_root for w in worlds] == [True, False, False, False]
    assert all(w.host == "node7" and w.device is None and w.timeout == 0.5 for w in worlds)
    assert worlds[3].MPI is mpi and worlds[3].comm is mpi.comms[3]
    assert worlds[3].describe() == "rank 3 of 4 (local 1 of 2 on node7)"
    worlds[3].device = 1
    assert worlds[3].describe() == "rank 3 of 4 (local 1 of 2 on node7, GPU 1)"


@pytest.mark.parametrize("timeout, kind, message", [
    (0, ValueError, "timeout must be > 0, got 0"),
    (-1.5, ValueError, "timeout must be > 0, got -1.5"),
    ("10", TypeError, "timeout must be a real number, got str '10'"),
])
def test_a_world_refuses_a_deadline_that_is_not_positive(timeout, kind, message):
    mpi = FakeMPI()
    with pytest.raises(kind, match=message):
        distributed.World(mpi, mpi.COMM_WORLD, timeout)


# --- init --------------------------------------------------------------------------------------
@pytest.fixture
def fresh(monkeypatch):
    """No world yet; ``init`` gets a fake one-rank MPI (no launcher, no backend choice, no limit)."""
    monkeypatch.setattr(world_mod, "_world", None)
    mpi = FakeMPI()
    monkeypatch.setattr(world_mod, "_import_mpi", lambda: mpi)
    for k in distributed.LAUNCHER_ENV + (distributed.TIMEOUT_ENV, "GRAPHNET_BACKEND"):
        monkeypatch.delenv(k, raising=False)
    return mpi


def test_init_builds_the_world_of_mpi_comm_world_with_the_deadline_given(fresh):
    w = distributed.init(timeout=0.5, require_launcher=False)
    assert isinstance(w, distributed.World) and w.comm is fresh.COMM_WORLD and w.MPI is fresh
    assert w.timeout == 0.5 and w.device is None
    assert distributed.init(require_launcher=False) is w


@pytest.mark.parametrize("env, expected", [(None, 600.0), ("0.5", 0.5), ("45", 45.0)])
def test_init_takes_the_deadline_from_the_environment_unless_given(fresh, monkeypatch, env, expected):
    if env is not None:
        monkeypatch.setenv(distributed.TIMEOUT_ENV, env)
    assert distributed.init(require_launcher=False).timeout == expected


@pytest.mark.parametrize("env", ["0", "-3", "nan", "soon"])
def test_a_deadline_in_the_environment_must_be_positive(monkeypatch, env):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, env)
    with pytest.raises(distributed.DistributedError,
                       match=f"GRAPHNET_DIST_TIMEOUT must be a number of seconds > 0, got '{env}'"):
        world_mod._timeout_from_env()


def test_init_under_a_launcher_needs_no_flag(fresh, monkeypatch):
    monkeypatch.setenv("PMI_RANK", "0")
    assert distributed.init().comm is fresh.COMM_WORLD


def test_init_outside_a_launcher_says_how_to_start_and_install(fresh):
    with pytest.raises(distributed.DistributedError) as info:
        distributed.init()
    assert str(info.value).startswith(
        "distributed training must be started by an MPI launcher, e.g. mpiexec -n 2 python "
        "examples/mnist/train.py --distributed (found none of PMI_RANK, PMI_SIZE, "
        "OMPI_COMM_WORLD_SIZE, PMIX_RANK in the environment); to install MPI: pip install mpi4py")


def test_without_mpi4py_the_error_gives_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(distributed.DistributedError,
                       match=r"distributed training needs mpi4py and an MPI library \(.*\); install "
                             r"them with: pip install mpi4py mpich"):
        world_mod._import_mpi()


@pytest.mark.parametrize("choice, picks", [(" CuPy ", True), ("cupy", True), ("numpy", False),
                                           (None, False)])
def test_init_picks_a_gpu_by_local_rank_only_for_the_cupy_backend(fresh, monkeypatch, choice, picks):
    fresh.COMM_WORLD = FakeMPI(4, ranks_per_host=4).comms[3]  # this process: local rank 3
    asked = []
    monkeypatch.setattr(world_mod, "_select_gpu", lambda local: asked.append(local) or 1)
    if choice is not None:
        monkeypatch.setenv("GRAPHNET_BACKEND", choice)
    w = distributed.init(require_launcher=False)
    assert (asked, w.device) == (([3], 1) if picks else ([], None))


def _fake_cupy(monkeypatch, count):
    used = []

    def device_count():
        if isinstance(count, Exception):
            raise count
        return count

    cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=device_count),
                                 Device=lambda d: types.SimpleNamespace(use=lambda: used.append(d)))
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=cuda))
    return used


@pytest.mark.parametrize("local_rank, count, device", [(5, 2, 1), (4, 2, 0), (3, 1, 0), (2, 4, 2),
                                                       (1, 0, None), (0, RuntimeError("no driver"), None)])
def test_a_rank_takes_gpu_local_rank_modulo_the_gpus(monkeypatch, local_rank, count, device):
    used = _fake_cupy(monkeypatch, count)
    assert world_mod._select_gpu(local_rank) == device
    assert used == ([] if device is None else [device])


# --- host collectives ------------------------------------------------------------------------------
@pytest.mark.parametrize("op, expected", [(None, [3.0, 6.0]), ("MAX", [2.0, 3.0]), ("MIN", [0.0, 3.0])])
def test_allreduce_sums_or_applies_op_on_every_rank(op, expected):
    def step(w):
        buf = np.array([w.rank, 3.0 if op else 2.0])
        out = w.allreduce_(buf, "sums", op=getattr(w.MPI, op) if op else None)
        assert out is buf
        return buf.tolist()

    assert _ok(run_ranks(3, step)) == [expected] * 3


@pytest.mark.parametrize("root", [0, 2, np.int64(1)])
def test_broadcast_gives_every_rank_the_roots_array(root):
    def step(w):
        buf = np.full(3, 10.0 * w.rank)
        assert w.broadcast_(buf, "counts", root=root) is buf
        return buf.tolist()

    assert _ok(run_ranks(3, step)) == [[10.0 * int(root)] * 3] * 3


@pytest.mark.parametrize("root", [True, 1.0, "1", -1, 3])
def test_broadcast_refuses_a_root_that_is_not_a_rank(root):
    res = run_ranks(3, lambda w: w.broadcast_(np.zeros(2), "counts", root=root))
    for r in res:
        assert isinstance(r, gn.ArgumentError) and str(r) == f"root must be a rank in [0, 3), got {root!r}"


@pytest.mark.parametrize("call", ["allreduce_", "broadcast_"])
@pytest.mark.parametrize("mode, sides", [
    ("shape", "rank 0 (2,) float64, rank 1 (3,) float64, rank 2 (2,) float64"),
    ("dtype", "rank 0 (2,) float64, rank 1 (2,) float32, rank 2 (2,) float64"),
])
def test_arrays_that_differ_between_ranks_are_named_not_reduced(call, mode, sides):
    def step(w):
        odd = w.rank == 1
        buf = np.ones(3 if odd and mode == "shape" else 2, np.float32 if odd and mode == "dtype" else None)
        try:
            getattr(w, call)(buf, "the counts")
        finally:
            assert (buf == 1).all()

    msg = f"the counts: the ranks' arrays differ in shape or dtype: {sides}"
    assert _errors(run_ranks(3, step)) == [msg] * 3


@pytest.mark.parametrize("texts", [["a", "", "ünïcode ✓"], ["x" * 300, "y", "zz"]])
def test_allgather_text_gives_every_rank_all_texts_in_rank_order(texts):
    assert _ok(run_ranks(3, lambda w: w.allgather_text(texts[w.rank], "names"))) == [texts] * 3


def test_any_is_true_on_every_rank_when_one_rank_says_so():
    for flags in ([False, True, False], [False, False, False], [True, True, True]):
        assert _ok(run_ranks(3, lambda w: w.any(flags[w.rank]))) == [any(flags)] * 3


def _names_and_values(rank: int) -> dict:
    return {"data": Path("/data") / str(rank % 1), "lr": 0.1, "seed": 1, "resume": None}


def test_equal_configs_agree_whatever_their_key_order_or_types():
    def step(w):
        cfg = _names_and_values(w.rank)
        cfg = dict(reversed(list(cfg.items()))) if w.rank == 1 else cfg  # the same, other order
        return w.check_config(cfg)

    assert _ok(run_ranks(3, step)) == [None] * 3


@pytest.mark.parametrize("config2, differs", [
    ({"data": "/data/0", "lr": 0.2, "resume": None}, "lr (0.1 vs 0.2), seed (1 vs '<missing>')"),
    ({"data": Path("/other"), "lr": 0.1, "seed": 1, "extra": None},
     "data ('/data/0' vs '/other'), extra ('<missing>' vs None), resume (None vs '<missing>')"),
    ([1, 2], "the whole configuration ({'data': '/data/0', 'lr': 0.1, 'resume': None, 'seed': 1} "
             "vs [1, 2])"),
])
def test_a_rank_whose_config_differs_is_named_with_the_keys_on_every_rank(config2, differs):
    def step(w):
        w.check_config(config2 if w.rank == 2 else _names_and_values(w.rank))

    msg = f"the ranks disagree on the configuration: rank 2 differs from rank 0 in {differs}"
    assert _errors(run_ranks(3, step)) == [msg] * 3


def test_every_differing_rank_is_named_against_rank_0():
    configs = [{"lr": 1}, {"lr": 2}, {"lr": 1}, {"lr": 3}]
    msg = ("the ranks disagree on the configuration: rank 1 differs from rank 0 in lr (1 vs 2); "
           "rank 3 differs from rank 0 in lr (1 vs 3)")
    assert _errors(run_ranks(4, lambda w: w.check_config(configs[w.rank]))) == [msg] * 4
    assert world_mod._differences([1], {"a": 1}) == "the whole configuration ([1] vs {'a': 1})"


# --- reduce_mean and evaluate ----------------------------------------------------------------------
def test_reduce_mean_weighs_each_rank_by_its_weight():
    values = [{"loss": 1.0, "acc": 0.5}, {"loss": 4.0, "acc": 1.0}, {"loss": 100.0, "acc": 0.0}]
    weights = [None, 3, 0]  # rank 0 the default weight 1, rank 2 no samples

    def step(w):
        kw = {} if weights[w.rank] is None else {"weight": weights[w.rank]}
        return w.reduce_mean(values[w.rank] if w.rank < 2 else {}, **kw)

    for res in _ok(run_ranks(3, step)):
        assert res == pytest.approx({"loss": (1 + 12) / 4, "acc": (0.5 + 3) / 4}, rel=1e-15)
        assert list(res) == ["acc", "loss"]


def test_reduce_mean_of_one_weighted_rank_is_its_values():
    values = [{"a": 2.0, "b": -1.0}, {}]
    res = _ok(run_ranks(2, lambda w: w.reduce_mean(values[w.rank], weight=1 - w.rank)))
    assert res == [{"a": 2.0, "b": -1.0}] * 2
    mpi = FakeMPI()
    one = distributed.World(mpi, mpi.COMM_WORLD)
    assert one.reduce_mean({"x": float("inf"), "y": 0.25}) == {"x": float("inf"), "y": 0.25}


@pytest.mark.parametrize("weights", [(1, 1), (1, 2), (0.5, 0)])
def test_ranks_that_reduce_different_names_are_refused(weights):
    names = [{"loss": 1.0}, {"acc": 1.0}]
    res = run_ranks(2, lambda w: w.reduce_mean(names[w.rank], weight=weights[w.rank]))
    if weights[1] == 0:  # a rank without samples takes the others' names
        assert _ok(res) == [{"loss": 1.0}] * 2
        return
    msg = "reduce_mean: the ranks reduce different names: rank 0 ['loss'], rank 1 ['acc']"
    assert _errors(res) == [msg] * 2


@pytest.mark.parametrize("value", [True, "low", b"1", None, 1j])
def test_reduce_mean_refuses_a_value_that_is_not_a_real_number(value):
    mpi = FakeMPI()
    with pytest.raises(TypeError, match=f"reduce_mean value 'loss' must be a real number, got "
                                        f"{type(value).__name__} "):
        distributed.World(mpi, mpi.COMM_WORLD).reduce_mean({"loss": value, "acc": 1.0})


def test_reduce_mean_with_no_weight_anywhere_is_an_error():
    res = run_ranks(2, lambda w: w.reduce_mean({"loss": 1.0}, weight=0))
    assert _errors(res) == ["reduce_mean: the weights sum to 0.0 over the ranks"] * 2


class _MeanModel:
    """``evaluate`` gives the mean of the rows it is handed, as a model's metrics are."""

    def evaluate(self, x, y, prepared=True):
        assert prepared is self.prepared
        return {"mean": float(np.mean(x)), "labels": float(np.mean(y))}


@pytest.mark.parametrize("size, n", [(3, 10), (2, 7), (4, 3)])
def test_evaluate_over_the_ranks_is_the_mean_over_all_rows(size, n):
    x, y = np.arange(n, dtype=np.float64) ** 2, np.arange(n, dtype=np.float64) % 3
    model = _MeanModel()
    model.prepared = False
    for res in _ok(run_ranks(size, lambda w: w.evaluate(model, x, y, prepared=False))):
        assert_close(np.array([res["mean"], res["labels"]]), np.array([x.mean(), y.mean()]),
                     rtol=1e-12, atol=0)


def test_a_rank_whose_evaluate_fails_raises_its_error_and_the_others_name_it():
    class Failing(_MeanModel):
        def evaluate(self, x, y, prepared=True):
            if 2 in x:
                raise ValueError("no memory")
            return super().evaluate(x, y, prepared)

    model = Failing()
    model.prepared = True
    res = run_ranks(3, lambda w: w.evaluate(model, np.arange(6.0), np.zeros(6)))
    msg = "evaluating failed: rank 1: ValueError: no memory"
    assert _errors(res[::2]) == [msg] * 2
    assert isinstance(res[1], ValueError) and res[1].__notes__ == [f"graphnet.distributed: {msg}"]


def test_fail_together_names_every_failed_rank_and_what_it_said():
    failures = [None, KeyError("w"), None, OSError("disk")]
    res = run_ranks(4, lambda w: w.fail_together(failures[w.rank], "saving"))
    msg = "saving failed: rank 1: KeyError: 'w'; rank 3: OSError: disk"
    assert _errors(res[::2]) == [msg] * 2
    assert res[1] is failures[1] and res[3] is failures[3]
    said = ["", "", "a reason", ""]
    res = run_ranks(4, lambda w: w.fail_together(None, "stepping", text=said[w.rank], error=KeyError))
    assert all(isinstance(r, KeyError) and r.args == ("stepping failed: rank 2: a reason",) for r in res)


# --- parameters: agreement, broadcast, average --------------------------------------------------------
SHAPES = {"layer0.W": (4, 3), "layer0.b": (3,), "layer1.W": (3, 2), "scale": ()}


def _params(rank: int, mode: str = "same") -> list:
    """The parameters of rank ``rank``'s model: values ``rank`` + position; rank 1 differs by ``mode``."""
    shapes = dict(SHAPES)
    odd = rank == 1
    if odd and mode == "shape":
        shapes["layer1.W"] = (3, 5)
    if odd and mode == "count":
        shapes["layer1.b"] = (2,)
    if odd and mode == "name":
        shapes = {("encoder.W" if k == "layer0.W" else k): s for k, s in shapes.items()}
    out = []
    for i, (name, shape) in enumerate(shapes.items()):
        dtype = np.float64 if (odd and mode == "dtype" and name == "layer0.b") or name == "scale" \
            else np.float32
        with gn.default_dtype(dtype):  # as a rank whose default dtype was set otherwise
            out.append(gn.Parameter(np.full(shape, 10.0 * rank + i), name=name))
    return out


@pytest.mark.parametrize("mode, difference", [
    ("shape", "first difference at parameter 2: rank 0 has 'layer1.W' (3, 2) float32, "
              "rank 1 has 'layer1.W' (3, 5) float32"),
    ("count", "rank 0 has 4 parameters, rank 1 has 5; first difference at parameter 4: "
              "rank 0 has nothing, rank 1 has 'layer1.b' (2,) float32"),
    ("dtype", "first difference at parameter 1: rank 0 has 'layer0.b' (3,) float32, "
              "rank 1 has 'layer0.b' (3,) float64"),
    ("name", "first difference at parameter 0: rank 0 has 'layer0.W' (4, 3) float32, "
             "rank 1 has 'encoder.W' (4, 3) float32"),
])
@pytest.mark.parametrize("door", ["broadcast_parameters", "average_", "check_parameters"])
def test_ranks_whose_models_differ_are_named_and_nothing_is_exchanged(mode, difference, door):
    params = [_params(r, mode) for r in range(3)]
    res = run_ranks(3, lambda w: getattr(w, door)(params[w.rank], **({"what": "at the start"}
                                                                     if door != "broadcast_parameters" else {})))
    what = "before the parameter broadcast" if door == "broadcast_parameters" else "at the start"
    msg = f"the ranks' models differ ({what}): rank 1 differs from rank 0: {difference}"
    assert _errors(res) == [msg] * 3
    for r in range(3):
        assert [float(gn.to_numpy(p.value).flat[0]) for p in params[r]] == \
            [10.0 * r + i for i in range(len(params[r]))]


def test_a_shorter_model_and_every_differing_rank_are_named():
    params = [_params(0), _params(0)[:2], _params(0), _params(1, "dtype")]
    msg = ("the ranks' models differ (checking the parameters): rank 1 differs from rank 0: rank 0 has 4 "
           "parameters, rank 1 has 2; first difference at parameter 2: rank 0 has 'layer1.W' (3, 2) "
           "float32, rank 1 has nothing; rank 3 differs from rank 0: first difference at parameter 1: "
           "rank 0 has 'layer0.b' (3,) float32, rank 3 has 'layer0.b' (3,) float64")
    assert _errors(run_ranks(4, lambda w: w.check_parameters(params[w.rank]))) == [msg] * 4


def test_parameters_are_named_by_mapping_key_else_their_own_name():
    p = [gn.Parameter(np.zeros((2, 1), np.float32), name="w"), gn.Parameter(np.zeros(3, np.float32))]
    assert [d for d, _ in distributed.agreement.describe_parameters(p)] == \
        [["w", [2, 1], "float32"], [p[1].name, [3], "float32"]]  # an unnamed one: its own name
    named = distributed.agreement.describe_parameters({"enc": p[0], "dec": p[1]})
    assert [(d[0], q) for d, q in named] == [("enc", p[0]), ("dec", p[1])]
    with pytest.raises(TypeError, match=r"params\[dec\] must be a graphnet Parameter, got ndarray"):
        distributed.agreement.describe_parameters({"enc": p[0], "dec": np.zeros(3)})
    mpi = FakeMPI()
    assert distributed.World(mpi, mpi.COMM_WORLD).check_parameters({"enc": p[0]}) == [p[0]]


def test_a_broadcast_gives_every_rank_rank_0s_values_in_their_shapes_and_dtypes(backend):
    params = [_params(r) for r in range(3)]
    expected = [(gn.to_numpy(p.value).copy(), p.dtype) for p in params[0]]
    assert _ok(run_ranks(3, lambda w: w.broadcast_parameters(params[w.rank]))) == [None] * 3
    for r in range(3):
        for p, (value, dtype) in zip(params[r], expected):
            assert p.dtype == dtype and p.value.shape == value.shape
            assert_close(p.value, value, rtol=0, atol=0, what=f"rank {r} {p.name}")


def test_average_sets_each_parameter_to_its_mean_over_the_ranks(backend):
    params = [_params(r) for r in range(3)]
    assert _ok(run_ranks(3, lambda w: w.average_(params[w.rank]))) == [None] * 3
    for r in range(3):
        for i, p in enumerate(params[r]):
            assert p.dtype == params[0][i].dtype
            assert_close(p.value, np.full(SHAPES[p.name], 10.0 + i), rtol=1e-6, what=p.name)


def test_broadcast_array_gives_every_rank_a_host_copy_of_rank_0s(backend):
    xs = [backend.asarray(np.arange(6, dtype=np.float32).reshape(2, 3) * (r + 1)) for r in range(3)]
    for r, out in enumerate(_ok(run_ranks(3, lambda w: w.broadcast_array(xs[w.rank])))):
        assert isinstance(out, np.ndarray) and out.dtype == np.float32
        np.testing.assert_array_equal(out, np.arange(6, dtype=np.float32).reshape(2, 3))
        assert_close(xs[r], np.arange(6, dtype=np.float32).reshape(2, 3) * (r + 1), what="the input")

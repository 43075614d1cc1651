"""tools.mutation: which files mutmut rewrites and which mutants it runs (no mutmut run here)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools import mutation

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def mutmut_config(monkeypatch):
    """mutmut's configuration as read from this checkout's setup.cfg; afterwards the one in use
    before is back (under mutmut this test runs inside the mutmut process itself)."""
    configuration = pytest.importorskip("mutmut.configuration")
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(configuration, "_config", None)
    return configuration.config()


def test_only_the_chosen_files_are_rewritten(mutmut_config):
    """The other modules stay unmutated in mutmut's copy (tests reading the source meet them)."""
    assert mutmut_config.should_mutate("graphnet/io.py")  # setup.cfg alone: the whole package
    mutation._mutate_only(["graphnet/checks.py"])
    assert mutmut_config.should_mutate("graphnet/checks.py")
    assert not mutmut_config.should_mutate("graphnet/io.py")
    assert not mutmut_config.should_mutate("graphnet/ops/conv.py")
    assert mutmut_config.source_paths == [Path("graphnet")]


def test_a_file_outside_the_package_joins_the_source_paths(mutmut_config):
    mutation._mutate_only(["examples/mnist/digits.py"])
    assert Path("examples") in mutmut_config.source_paths
    assert mutmut_config.resolved_mutated_source_paths[-1] == ROOT / "mutants" / "examples"
    assert mutmut_config.should_mutate("examples/mnist/digits.py")
    assert not mutmut_config.should_mutate("examples/mnist/train.py")
    assert not mutmut_config.should_mutate("graphnet/checks.py")


@pytest.mark.parametrize("argv, named", [(["graphnet/nothing.py"], "'graphnet/nothing.py'"),
                                         (["README.md"], "'README.md'"),
                                         (["graphnet/checks.py", "--jobs", "0"], "--jobs"),])
def test_bad_arguments_are_refused_by_name(monkeypatch, capsys, argv, named):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as info:
        mutation.main(argv)
    assert info.value.code == 2
    assert named in capsys.readouterr().err


FORK_SCRIPT = """
import os, signal, sys, time
import graphnet as gn
from graphnet import parallel
from tools import mutation
be = gn.get_backend("numpy")
parallel.set_workers(parallel.GROUPS)
if parallel.workers(be, parallel.GROUPS) < 2:
    print("no chunk workers here"); sys.exit(0)
# every worker thread of the pool started (each chunk busy while the next is handed out)
parallel.for_each_chunk(be, parallel.GROUPS, lambda scratch, c: time.sleep(0.2), lambda: None)
pid = os.fork()
if pid == 0:
    signal.alarm(30)  # a child waiting on the parent's threads ends here
    parallel.for_each_chunk(be, parallel.GROUPS, lambda scratch, c: None, lambda: None)
    os._exit(0)
_, status = os.waitpid(pid, 0)
print("child exit", os.waitstatus_to_exitcode(status))
"""


def test_a_forked_process_can_use_the_chunk_workers():
    """A process forked after the chunk pool started (mutmut forks each mutant's tests so;
    so may a user's multiprocessing) runs chunked kernels on a pool of its own."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", FORK_SCRIPT], capture_output=True, text=True,
                         env=env, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    if "no chunk workers here" in res.stdout:
        pytest.skip("graphnet.parallel runs one worker here (no controllable BLAS)")
    assert "child exit 0" in res.stdout, res.stdout + res.stderr[-2000:]


OPENMP_SCRIPT = """
import os, signal
os.environ.pop("OMP_NUM_THREADS", None)
from tools import mutation
mutation._fresh_chunk_pool_after_fork()
import torch
a, b = torch.zeros(4_000_000), torch.ones(4_000_000)
a.copy_(b)  # an OpenMP parallel region in the parent, when it has a team
pid = os.fork()
if pid == 0:
    signal.alarm(30)
    a.copy_(b)
    os._exit(0)
_, status = os.waitpid(pid, 0)
print("child exit", os.waitstatus_to_exitcode(status))
"""


def test_a_forked_mutant_run_can_use_pytorch_after_the_parent_did():
    """test_gpu_check runs PyTorch in mutmut's process; GNU OpenMP hangs in a forked child."""
    import os
    import subprocess
    import sys
    pytest.importorskip("torch")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", OPENMP_SCRIPT], capture_output=True, text=True,
                         env=env, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "child exit 0" in res.stdout, res.stdout + res.stderr[-2000:]


def test_a_plain_copy_left_by_an_earlier_run_is_replaced_by_mutants(tmp_path):
    """mutmut keeps a copy newer than its source as that file's mutants: none would run."""
    (tmp_path / "graphnet").mkdir()
    plain, mutated = tmp_path / "graphnet" / "io.py", tmp_path / "graphnet" / "checks.py"
    plain.write_text("def f():\n    return 1\n")
    mutated.write_text("mutants_x_f__mutmut: MutantDict = {}\n")
    stats = tmp_path / "mutmut-stats.json"
    stats.write_text("{}")
    mutation._forget_plain_copies(["graphnet/checks.py", "graphnet/new.py"], root=tmp_path)
    assert plain.exists() and mutated.exists() and stats.exists()
    mutation._forget_plain_copies(["graphnet/io.py", "graphnet/checks.py", "graphnet/new.py"],
                                  root=tmp_path)
    assert not plain.exists() and mutated.exists()
    assert not stats.exists()  # io.py was never traced: the suite is traced again


@pytest.mark.parametrize("unchecked, replayed", [(False, ["m.f__mutmut_1", "m.f__mutmut_4"]),
                                                 (True, ["m.f__mutmut_1", "m.f__mutmut_3",
                                                         "m.f__mutmut_4"])])
def test_replay_writes_each_recorded_mutant_in_turn_and_restores_the_file(
        tmp_path, monkeypatch, capsys, unchecked, replayed):
    """Survivors and untested mutants are replayed (with --unchecked also the ones an
    interrupted run never reached); killed ones are not; the source is restored."""
    import json
    import subprocess
    from tools import replay_survivors as replay
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.py").write_text("def f():\n    return 1\n")
    (tmp_path / "mutants").mkdir()
    codes = {"m.f__mutmut_1": 0, "m.f__mutmut_2": 1, "m.f__mutmut_3": None, "m.f__mutmut_4": 33}
    (tmp_path / "mutants" / "m.py.meta").write_text(json.dumps({"exit_code_by_key": codes}))
    monkeypatch.setattr(replay, "mutant_diff", lambda name: ("def f():\n    return 1",
                                                             "def f():\n    return 2"))
    seen = []

    def fake_pytest(cmd, **kwargs):
        seen.append((tmp_path / "m.py").read_text())
        return subprocess.CompletedProcess(cmd, 1 if len(seen) == 1 else 0)
    monkeypatch.setattr(replay.subprocess, "run", fake_pytest)
    replay.main((["--unchecked"] if unchecked else []) + ["m.py", "tests/x.py"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == replayed
    assert [line.split("\t")[1] for line in lines] == ["killed"] + ["SURVIVES"] * (len(replayed) - 1)
    assert seen == ["def f():\n    return 2\n"] * len(replayed)
    assert (tmp_path / "m.py").read_text() == "def f():\n    return 1\n"


def test_the_wrapper_limits_openmp_but_not_openblas(monkeypatch):
    """OMP_NUM_THREADS=1 (for PyTorch's OpenMP) must not leave OpenBLAS on one thread too."""
    import os
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    mutation._fresh_chunk_pool_after_fork()
    assert os.environ["OMP_NUM_THREADS"] == "1"
    assert os.environ["OPENBLAS_NUM_THREADS"] == str(os.cpu_count() or 1)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    mutation._fresh_chunk_pool_after_fork()
    assert os.environ["OPENBLAS_NUM_THREADS"] == "3"  # a user's own choice stays


def test_scores_count_each_verdict_of_package_and_example_modules(tmp_path):
    verdicts = {"m.f__mutmut_1": 1, "m.f__mutmut_2": 0, "m.f__mutmut_3": 33, "m.f__mutmut_4": 36,
                "m.f__mutmut_5": None, "m.f__mutmut_6": -11}
    for rel in ("graphnet/a.py.meta", "examples/mnist/b.py.meta"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(json.dumps({"exit_code_by_key": verdicts}))
    table = mutation.scores(tmp_path).splitlines()
    # killed 2 (exit 1 and a crash), survived 1, no tests 1, timeout 1, not run 1: 2 / 4
    assert table[2:] == ["| examples/mnist/b.py | 6 | 2 | 1 | 1 | 1 | 1 | 50% |",
                         "| graphnet/a.py | 6 | 2 | 1 | 1 | 1 | 1 | 50% |"]


def test_replay_mutants_chooses_by_verdict_and_name():
    from tools import replay_mutants
    meta = {"m.f__mutmut_1": 1, "m.f__mutmut_2": 0, "m.f__mutmut_3": None, "m.g__mutmut_1": 33}
    assert replay_mutants.chosen(meta, False, False, None) == ["m.f__mutmut_2", "m.f__mutmut_3",
                                                               "m.g__mutmut_1"]
    assert replay_mutants.chosen(meta, False, True, None) == ["m.f__mutmut_2", "m.g__mutmut_1"]
    assert replay_mutants.chosen(meta, True, False, {"f__mutmut_1"}) == ["m.f__mutmut_1"]


def test_replay_mutants_refuses_a_module_without_verdicts(tmp_path, capsys):
    from tools import replay_mutants
    with pytest.raises(SystemExit):
        replay_mutants.main(["graphnet/io.py", "tests/test_io_mutants.py", "--copy", str(tmp_path)])
    assert "no verdicts at" in capsys.readouterr().err

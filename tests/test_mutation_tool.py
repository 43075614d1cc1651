"""tools.mutation: which files mutmut rewrites and which mutants it runs (no mutmut run here)."""
from __future__ import annotations

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

"""graphnet.distributed.world's deadlines in this process (issue 25): ``poll_until``'s schedule,
each collective's abort message naming what it waited for, and the abort itself.

A peer that stops answering is ``fake_mpi.FakeMPI(stall_after=n)``; MPI_Abort is the fake's
``Abort`` (raising ``Aborted``, or returning, as MPICH's can); the grace wait is recorded, not slept.
"""
from __future__ import annotations

import os
import time
import types

import numpy as np
import pytest

from graphnet import distributed
from graphnet.distributed import world as world_mod
from fake_mpi import Aborted, FakeMPI, run_ranks
from test_world_mutants import _params

LIMIT = 0.01
TAIL = "aborting all ranks (limit: GRAPHNET_DIST_TIMEOUT or init(timeout=...))\n"


@pytest.fixture
def slept(monkeypatch):
    """The seconds each ``time.sleep`` was asked for (at most 1 ms of each is slept)."""
    real, log = time.sleep, []

    def sleep(seconds):
        log.append(seconds)
        real(min(seconds, 1e-3))

    monkeypatch.setattr(time, "sleep", sleep)
    return log


# --- poll_until ------------------------------------------------------------------------------------
class _Clock:
    """A virtual monotonic clock: each yield or sleep takes one tick (exact in binary)."""

    tick = 2.0 ** -11

    def __init__(self) -> None:
        self.now, self.yields, self.sleeps = 0.0, 0, []

    def monotonic(self) -> float:
        assert len(self.sleeps) + self.yields < 1000, "poll_until never returned"
        return self.now

    def sched_yield(self) -> None:
        self.yields += 1
        self.now += self.tick

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += self.tick


@pytest.fixture
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr(world_mod, "time", types.SimpleNamespace(monotonic=c.monotonic, sleep=c.sleep))
    monkeypatch.setattr(world_mod, "os", types.SimpleNamespace(sched_yield=c.sched_yield))
    monkeypatch.setattr(world_mod, "SPIN_SECONDS", 4 * c.tick)
    return c


def test_poll_until_yields_for_the_spin_time_then_sleeps_doubling_until_the_deadline(clock):
    assert distributed.poll_until(lambda: False, 10 * clock.tick) is False
    assert clock.yields == 4  # at 0, 1, 2 and 3 ticks: the spin ends at 4
    assert clock.sleeps == [5e-5, 1e-4, 2e-4, 4e-4, 8e-4, 1e-3, 1e-3]  # at 4 .. 10 ticks
    assert clock.now == 11 * clock.tick


@pytest.mark.parametrize("calls, yields, sleeps", [(1, 0, 0), (3, 2, 0), (7, 4, 2)])
def test_poll_until_returns_true_as_soon_as_done(clock, calls, yields, sleeps):
    seen = []
    assert distributed.poll_until(lambda: seen.append(1) or len(seen) == calls, 100.0) is True
    assert (len(seen), clock.yields, len(clock.sleeps)) == (calls, yields, sleeps)


def test_poll_until_with_no_time_left_polls_once_after_the_spin(clock):
    assert distributed.poll_until(lambda: False, 0) is False
    assert (clock.yields, clock.sleeps) == (4, [])


def test_poll_until_refuses_a_negative_timeout():
    with pytest.raises(ValueError, match="timeout must be >= 0, got -1"):
        distributed.poll_until(lambda: True, -1)


# --- each collective's deadline names what it waited for ------------------------------------------
PARAMS = _params(0)


class _Model:
    def evaluate(self, x, y, prepared=True):
        return {"loss": 1.0}


STALLS = [  # (collectives that complete, the call, what its abort message says it waited for)
    (0, lambda w: w.barrier(), "a barrier"),
    (0, lambda w: w.barrier("the end of the epoch"), "the end of the epoch"),
    (0, lambda w: w.allreduce_(np.zeros(2), "grads"), "checking grads"),
    (1, lambda w: w.allreduce_(np.zeros(2), "grads"), "grads"),
    (1, lambda w: w.broadcast_(np.zeros(2), "counts"), "counts"),
    (0, lambda w: w.any(True), "a vote"),
    (0, lambda w: w.any(True, "stopping"), "stopping"),
    (1, lambda w: w.broadcast_array(np.zeros(2)), "broadcast_array(an array)"),
    (0, lambda w: w.broadcast_array(np.zeros(2), "w"), "checking broadcast_array(w)"),
    (0, lambda w: w.check_parameters(PARAMS), "checking the parameters"),
    (0, lambda w: w.broadcast_parameters(PARAMS), "before the parameter broadcast"),
    (1, lambda w: w.broadcast_parameters(PARAMS), "the parameter broadcast (3 float32 arrays)"),
    (2, lambda w: w.broadcast_parameters(PARAMS), "the parameter broadcast (1 float64 arrays)"),
    (0, lambda w: w.average_(PARAMS), "averaging statistics"),
    (1, lambda w: w.average_(PARAMS, "the BatchNorm statistics"), "the BatchNorm statistics"),
    (0, lambda w: w.reduce_mean({"loss": 1.0}), "comparing the names of the metrics to reduce"),
    (1, lambda w: w.reduce_mean({"loss": 1.0}), "reducing metrics ['loss']"),
    (0, lambda w: w.check_config({"lr": 1}), "comparing configurations"),
    (0, lambda w: w.evaluate(_Model(), np.zeros(2), np.zeros(2)),
     "checking that every rank evaluated its part"),
    (0, lambda w: w.allgather_text("x", "names"), "names"),
    (1, lambda w: w.allgather_text("x", "names"), "names"),
    (0, lambda w: w.fail_together(None, "saving"), "naming the ranks that failed saving"),
]


@pytest.mark.parametrize("done, call, what", STALLS)
def test_a_collective_past_its_deadline_aborts_naming_what_it_waited_for(capsys, slept, done, call,
                                                                         what):
    mpi = FakeMPI(stall_after=done)
    w = distributed.World(mpi, mpi.COMM_WORLD, LIMIT)
    with pytest.raises(Aborted):
        call(w)
    assert capsys.readouterr().err == (f"graphnet.distributed: rank 0 of 1: waited {LIMIT:g} s for "
                                       f"{what}: another rank died or hangs; {TAIL}")
    assert mpi.COMM_WORLD.aborted == [distributed.EXIT_ABORT]
    assert slept[-1] == world_mod.ABORT_GRACE_SECONDS


@pytest.mark.parametrize("done", [1, 2])
def test_ranks_that_disagree_and_then_stall_abort_naming_the_comparison(capsys, slept, done):
    res = run_ranks(2, lambda w: w.check_config({"lr": w.rank}), timeout=LIMIT, stall_after=done)
    assert all(isinstance(r, Aborted) for r in res), res
    err = capsys.readouterr().err
    for r in (0, 1):
        assert (f"graphnet.distributed: rank {r} of 2: waited {LIMIT:g} s for comparing "
                f"configurations: another rank died or hangs; {TAIL}") in err


def test_an_abort_that_returns_ends_the_process_with_exit_abort(capsys, slept, monkeypatch):
    exits = []

    def _exit(code):
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(os, "_exit", _exit)
    mpi = FakeMPI(abort_returns=True)
    w = distributed.World(mpi, mpi.COMM_WORLD, LIMIT)
    aborted_after = []
    real_abort = mpi.COMM_WORLD.Abort
    mpi.COMM_WORLD.Abort = lambda code: aborted_after.append(list(slept)) or real_abort(code)
    with pytest.raises(SystemExit):
        w.abort("the data ran out")
    assert exits == [distributed.EXIT_ABORT] and mpi.COMM_WORLD.aborted == [distributed.EXIT_ABORT]
    assert aborted_after == [[world_mod.ABORT_GRACE_SECONDS]]  # the grace wait came first
    assert capsys.readouterr().err == (
        f"graphnet.distributed: rank 0 of 1: the data ran out; {TAIL}"
        "graphnet.distributed: rank 0: MPI_Abort returned; exiting\n")

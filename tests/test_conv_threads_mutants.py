"""graphnet.ops.conv.threads directly: the cases its mutation run (docs/testing.md) showed untested.

The mutation run had one BLAS thread (OMP_NUM_THREADS=1), so "the BLAS count is restored"
and "workers follow the BLAS count" held by accident. These tests set the BLAS's thread
count themselves (restored afterwards) and check what users rely on: the worker count,
the BLAS held at one thread while workers run and restored after, a kernel inside a
worker running serially, each worker's own scratch, the NumPy BLAS picked among several,
and a forked child getting a pool of its own.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

import graphnet as gn
from graphnet.errors import ArgumentError, ArgumentTypeError
from graphnet.ops.conv import threads


@pytest.fixture
def blas(numpy_backend):
    """NumPy's BLAS controller; its thread count and the worker setting are restored after."""
    ctl = threads._blas_controller()
    if ctl is None:
        pytest.skip("threadpoolctl cannot drive this BLAS: chunks always run on one thread")
    before, forced = ctl.get_num_threads(), threads.set_workers(None)
    yield ctl
    threads.set_workers(forced)
    ctl.set_num_threads(before)


def _record(n_chunks: int, pause: float = 0.0) -> tuple[list, list]:
    """Run ``n_chunks`` chunks on the NumPy backend; (chunk records, scratches made)."""
    made, seen = [], []

    def make_scratch():
        made.append([])
        return made[-1]

    def work(scratch, c):
        scratch.append(c)
        seen.append((c, threading.get_ident(), id(scratch)))
        time.sleep(pause)

    threads.for_each_chunk(gn.get_backend("numpy"), n_chunks, work, make_scratch)
    return seen, made


# --- the worker count -------------------------------------------------------------------------
def test_workers_are_the_blas_threads_capped_by_the_chunks_and_groups(blas, numpy_backend):
    blas.set_num_threads(2)
    assert threads.workers(numpy_backend, 2) == 2  # two chunks are enough to share
    assert threads.workers(numpy_backend, 1) == 1
    blas.set_num_threads(threads.GROUPS)
    assert threads.workers(numpy_backend, 3) == 3  # never more workers than chunks
    assert threads.workers(numpy_backend, 64) == threads.GROUPS


def test_a_backend_without_host_threads_runs_on_one(blas, backend):
    blas.set_num_threads(2)
    expected = 2 if getattr(backend, "host_parallel", False) else 1  # cupy: the device's work
    assert threads.workers(backend, 64) == expected
    device = type("Device", (), {"host_parallel": False})()
    assert threads.workers(device, 64) == 1
    assert threads.workers(object(), 64) == 1  # a backend that does not say: one thread


def test_set_workers_accepts_up_to_groups_and_names_the_argument(blas, numpy_backend):
    blas.set_num_threads(1)
    assert threads.set_workers(threads.GROUPS) is None
    assert threads.workers(numpy_backend, 64) == threads.GROUPS  # overrides the BLAS's count
    assert threads.set_workers(2) == threads.GROUPS  # the previous setting
    with pytest.raises(ArgumentTypeError, match="^" + re.escape("workers must be an integer, got '2'")):
        threads.set_workers("2")
    with pytest.raises(ArgumentError, match="^" + re.escape("workers must be >= 1, got 0")):
        threads.set_workers(0)
    with pytest.raises(ArgumentError, match="^workers must be at most 4, got 5"):
        threads.set_workers(threads.GROUPS + 1)
    assert threads.workers(numpy_backend, 64) == 2  # refused counts left the setting alone


# --- running the chunks ---------------------------------------------------------------------
def test_one_worker_runs_every_chunk_in_order_on_the_callers_thread(blas):
    threads.set_workers(1)
    seen, made = _record(7)
    assert [c for c, _, _ in seen] == list(range(7))
    assert {t for _, t, _ in seen} == {threading.get_ident()}
    assert len(made) == 1 and made[0] == list(range(7))  # the one scratch, given to every chunk


def test_several_workers_share_the_groups_each_with_its_own_scratch(blas):
    threads.set_workers(2)
    seen, made = _record(11, pause=0.002)
    assert sorted(c for c, _, _ in seen) == list(range(11))
    assert threading.get_ident() not in {t for _, t, _ in seen}  # the caller only waits
    assert len(made) == 2
    # worker w runs the groups g with g % 2 == w, each group's chunks in increasing order
    assert sorted(made) == [[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9]]


def test_a_kernel_inside_a_worker_runs_its_chunks_serially(blas, numpy_backend):
    threads.set_workers(2)
    made = []

    def work(scratch, c):
        me = threading.get_ident()
        scratch.append(threads.workers(numpy_backend, 8))
        threads.for_each_chunk(numpy_backend, 3,
                               lambda s, k: scratch.append(threading.get_ident() == me), list)

    threads.for_each_chunk(numpy_backend, 4, work, lambda: made.append([]) or made[-1])
    # each worker: two chunks, each seeing one worker and running its own chunks itself
    assert made == [[1, True, True, True] * 2] * 2
    assert threads.workers(numpy_backend, 8) == 2  # the caller's thread is not marked busy


# --- the BLAS held at one thread ------------------------------------------------------------
def test_workers_run_with_the_blas_at_one_thread_and_restore_it(blas):
    blas.set_num_threads(2)
    threads.set_workers(2)
    during = []
    threads.for_each_chunk(gn.get_backend("numpy"), 6,
                           lambda s, c: during.append(blas.get_num_threads()), lambda: None)
    assert during == [1] * 6
    assert blas.get_num_threads() == 2

    def fail(scratch, c):
        if c == 3:
            raise RuntimeError("chunk 3 failed")

    with pytest.raises(RuntimeError, match="chunk 3 failed"):
        threads.for_each_chunk(gn.get_backend("numpy"), 6, fail, lambda: None)
    assert blas.get_num_threads() == 2
    blas.set_num_threads(3)  # a later change is what the next run restores
    threads.for_each_chunk(gn.get_backend("numpy"), 4, lambda s, c: None, lambda: None)
    assert blas.get_num_threads() == 3


def test_a_held_step_keeps_the_blas_at_one_thread_and_its_workers(blas, numpy_backend):
    blas.set_num_threads(2)
    with threads.blas_held(numpy_backend):
        assert blas.get_num_threads() == 1
        assert threads.workers(numpy_backend, 64) == 2  # the BLAS's own count, not the held 1
        _record(5)  # chunks on workers within the step
        assert blas.get_num_threads() == 1  # still held for the rest of the step
        _record(5)
        assert blas.get_num_threads() == 1
    assert blas.get_num_threads() == 2
    blas.set_num_threads(1)  # one core: one worker, nothing to hold
    with threads.blas_held(numpy_backend):
        assert blas.get_num_threads() == 1
    assert blas.get_num_threads() == 1


def test_a_training_step_restores_the_blas_threads(blas):
    from graphnet import nn, optim
    blas.set_num_threads(2)
    gn.seed(1)
    net = nn.Sequential([nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)])
    x = gn.Input("x", shape=(None, 1, 8, 8))
    y = gn.Input("y", shape=(None,), dtype="int64")
    logits = net(x)
    graph = gn.Graph(logits, cost=gn.softmax_cross_entropy(logits, y))
    feed = {x: np.ones((4, 1, 8, 8), dtype=np.float32), y: np.arange(4) % 3}
    optim.SGD(net.parameters(), lr=0.1).minimize(graph, feed)
    assert blas.get_num_threads() == 2
    with threads.run_scope(graph):
        assert blas.get_num_threads() == 1
    assert blas.get_num_threads() == 2


# --- finding NumPy's BLAS -------------------------------------------------------------------
NUMPY_BLAS = "/site-packages/numpy.libs/libscipy_openblas64_.so"
OTHER_BLAS = "/site-packages/torch/lib/libmkl_rt.so"


def _fake_threadpoolctl(monkeypatch, *paths: str) -> None:
    """threadpoolctl reporting these BLAS libraries (and one OpenMP runtime) in the process."""
    import threadpoolctl
    libs = [SimpleNamespace(user_api="blas", filepath=p, get_num_threads=lambda: 2) for p in paths]
    libs.append(SimpleNamespace(user_api="openmp", filepath="/usr/lib/libgomp.so"))

    class Controller:
        def select(self, user_api):
            return SimpleNamespace(lib_controllers=[lib for lib in libs if lib.user_api == user_api])

    monkeypatch.setattr(threadpoolctl, "ThreadpoolController", Controller)
    monkeypatch.setattr(threads, "_blas", False)  # not looked up yet


def test_the_blas_is_looked_up_once_and_is_the_one_threadpoolctl_reports(monkeypatch):
    from threadpoolctl import ThreadpoolController
    libs = ThreadpoolController().select(user_api="blas").lib_controllers
    if len(libs) != 1:
        pytest.skip(f"{len(libs)} BLAS libraries in this process")
    monkeypatch.setattr(threads, "_blas", False)
    got = threads._blas_controller()
    assert got is not None and got is not False and got.filepath == libs[0].filepath
    assert threads._blas_controller() is got


@pytest.mark.parametrize("paths, picked", [
    ((OTHER_BLAS, NUMPY_BLAS), NUMPY_BLAS),  # PyTorch's beside NumPy's: NumPy's
    ((NUMPY_BLAS, OTHER_BLAS), NUMPY_BLAS),
    (("/usr/lib/x86_64-linux-gnu/libopenblas.so.0",), "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"),
    ((OTHER_BLAS, "/usr/lib/libopenblas.so"), None),  # two, neither NumPy's: cannot tell
    ((), None),
], ids=["numpy-second", "numpy-first", "one-system-blas", "two-foreign", "none"])
def test_numpys_blas_is_picked_among_those_loaded(monkeypatch, numpy_backend, paths, picked):
    _fake_threadpoolctl(monkeypatch, *paths)
    got = threads._blas_controller()
    assert (got.filepath if got is not None else None) == picked
    monkeypatch.setattr(threads, "_forced", None)
    assert threads.workers(numpy_backend, 64) == (1 if picked is None else 2)


def test_without_threadpoolctl_chunks_run_on_the_callers_thread(monkeypatch, numpy_backend):
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import fails
    monkeypatch.setattr(threads, "_blas", False)
    monkeypatch.setattr(threads, "_forced", None)
    assert threads._blas_controller() is None
    assert threads.workers(numpy_backend, 64) == 1
    seen, made = _record(5)
    assert {t for _, t, _ in seen} == {threading.get_ident()} and len(made) == 1


# --- after a fork ---------------------------------------------------------------------------
def test_the_fork_hook_gives_a_fresh_pool_and_lock(blas, monkeypatch):
    threads.set_workers(2)
    _record(4)  # the pool has started
    monkeypatch.setattr(threads, "_pool", threads._pool)  # the parent's, restored after
    monkeypatch.setattr(threads, "_lock", threads._lock)
    old_pool, old_lock = threads._pool, threads._lock
    threads._after_fork_in_child()
    assert threads._pool is None and threads._lock is not old_lock
    seen, made = _record(4)
    fresh = threads._pool
    try:
        assert fresh is not None and fresh is not old_pool and len(made) == 2
    finally:
        fresh.shutdown(wait=True)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork here")
def test_a_forked_child_runs_chunks_on_workers(blas):
    threads.set_workers(2)
    _record(4, pause=0.01)  # the parent's pool threads are running
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if its chunks ran on workers of its own
        signal.alarm(20)
        try:
            seen, made = _record(4)
            os._exit(0 if len(made) == 2 and len(seen) == 4 else 3)
        finally:
            os._exit(4)
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung on the parent's chunk pool")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0

"""graphnet.distributed.transport in this process (issue 25): the transport chosen and why, the MPI
reducer's sums (host and device buffers), and the NCCL reducer on a stand-in for CuPy's NCCL.

The ranks are threads of ``tests/fake_mpi.py``. ``_FakeNccl`` sums device buffers across them
the way ``cupy.cuda.nccl`` does (in place, by pointer, on the current stream), and refuses a
call that NCCL would misread: a wrong count, element type, operation or stream.
"""
from __future__ import annotations

import random
import sys
import types

import numpy as np
import pytest

from graphnet.distributed import transport
from graphnet.testing import assert_close
from fake_mpi import Aborted, FakeMPI, run_ranks

LIMIT = 0.01


# --- which transport, and the reason printed at start --------------------------------------------
@pytest.mark.parametrize("args, choice, reason", [
    (("numpy", 4, 4, True), "mpi", "numpy arrays live on the host: MPI all-reduce"),
    (("cupy", 2, 2, False), "mpi", "NCCL is not available to CuPy (pip install nvidia-nccl-cu12): "
                                   "MPI all-reduce through host copies"),
    (("cupy", 3, 2, True), "mpi", "3 ranks share 2 GPU(s) on this host: MPI all-reduce through "
                                  "host copies"),
    (("cupy", 2, 3, True), "nccl", "NCCL all-reduce on the GPUs (2 rank(s) per host, one GPU each)"),
    (("cupy", 2, 2, True), "nccl", "NCCL all-reduce on the GPUs (2 rank(s) per host, one GPU each)"),
])
def test_the_transport_and_its_reason(args, choice, reason):
    assert transport.choose_transport(*args) == (choice, reason)


class _FakeDevice:
    """A CuPy array as the NCCL reducer meets it: ``data.ptr``, ``size``, ``dtype``."""

    live: dict = {}

    def __init__(self, host: np.ndarray) -> None:
        self.host, self.size, self.dtype = host, host.size, host.dtype
        self.data = types.SimpleNamespace(ptr=id(self))
        _FakeDevice.live[id(self)] = self


class _FakeNccl:
    """``cupy.cuda.nccl`` and the parts of ``cupy.cuda`` the reducer uses, over a FakeMPI."""

    NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = "f16", "f32", "f64", "sum"
    CODES = {np.dtype(np.float16): "f16", np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}

    def __init__(self, mpi: FakeMPI, hangs: bool = False) -> None:
        self.mpi, self.hangs = mpi, hangs
        self.ids, self.comms, self.aborted = [], [], []
        self.stream = types.SimpleNamespace(ptr=4096)

    def get_unique_id(self) -> tuple:
        self.ids.append(tuple(random.randint(-128, 127) for _ in range(128)))
        return self.ids[-1]

    def NcclCommunicator(self, size: int, uid: tuple, rank: int) -> "_FakeNccl":  # noqa: N802
        self.comms.append((rank, size, uid))
        comm = types.SimpleNamespace(rank=rank, abort=lambda: self.aborted.append(rank))
        comm.allReduce = lambda *a: self._all_reduce(rank, *a)
        return comm

    def _all_reduce(self, rank, send, recv, count, code, op, stream) -> None:
        buf = _FakeDevice.live[send]
        assert (recv, count, code, op, stream) == (send, buf.size, self.CODES[buf.dtype], "sum",
                                                   self.stream.ptr), "not NCCL's in-place sum"
        values = self.mpi.comms[rank]._exchange(buf.host.copy())
        buf.host[...] = sum(values)

    def get_current_stream(self):
        return self.stream

    def Event(self, disable_timing: bool = False):  # noqa: N802
        event = types.SimpleNamespace(done=False)
        event.record = lambda stream: setattr(event, "done", stream is self.stream and not self.hangs)
        return event

    def install(self, monkeypatch) -> None:
        cuda = types.SimpleNamespace(nccl=self, get_current_stream=self.get_current_stream,
                                     Event=self.Event)
        monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=cuda))
        monkeypatch.setitem(sys.modules, "cupy.cuda", cuda)
        monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", self)


def _buckets(rank: int) -> list:
    return [_FakeDevice(np.arange(5, dtype=t) + 10 * rank) for t in (np.float32, np.float16, np.float64)]


def test_nccl_sums_each_bucket_in_place_on_every_rank(monkeypatch):
    mpi = FakeMPI(3)
    nccl = _FakeNccl(mpi)
    nccl.install(monkeypatch)
    buckets = [_buckets(r) for r in range(3)]

    def step(w):
        reducer = transport._NcclReducer(w)
        for _ in range(2):  # the reducer serves every step
            for b in buckets[w.rank]:
                reducer.start(b)
            reducer.finish("the gradient sum")

    assert run_ranks(3, step, stall_after=None) == [None] * 3
    for r in range(3):
        for b in buckets[r]:
            assert b.host.dtype == b.dtype
            np.testing.assert_array_equal(b.host, 3 * (3 * np.arange(5) + 30))
    assert len(nccl.ids) == 1  # rank 0 makes the id, the others receive it
    assert sorted(nccl.comms) == [(r, 3, nccl.ids[0]) for r in range(3)]
    assert nccl.aborted == []


def test_nccl_setup_past_its_deadline_aborts_naming_the_unique_id(monkeypatch, capsys):
    mpi = FakeMPI(stall_after=0)
    _FakeNccl(mpi).install(monkeypatch)
    monkeypatch.setattr("graphnet.distributed.world.ABORT_GRACE_SECONDS", 0)
    w = transport.World(mpi, mpi.COMM_WORLD, LIMIT)
    with pytest.raises(Aborted):
        transport._NcclReducer(w)
    assert f"waited {LIMIT:g} s for the NCCL unique id: another rank died" in capsys.readouterr().err


def test_nccl_sum_past_its_deadline_aborts_nccl_and_every_rank(monkeypatch, capsys):
    mpi = FakeMPI()
    nccl = _FakeNccl(mpi, hangs=True)
    nccl.install(monkeypatch)
    monkeypatch.setattr("graphnet.distributed.world.ABORT_GRACE_SECONDS", 0)
    reducer = transport._NcclReducer(transport.World(mpi, mpi.COMM_WORLD, LIMIT))
    reducer.start(_buckets(0)[0])
    with pytest.raises(Aborted):
        reducer.finish("the gradient sum")
    assert nccl.aborted == [0] and mpi.COMM_WORLD.aborted == [3]
    assert capsys.readouterr().err == (
        f"graphnet.distributed: rank 0 of 1: waited {LIMIT:g} s for the gradient sum over NCCL: "
        "another rank died or hangs; aborting all ranks (limit: GRAPHNET_DIST_TIMEOUT or "
        "init(timeout=...))\n")


# --- whether NCCL and GPUs are there --------------------------------------------------------------
@pytest.mark.parametrize("available, expected", [(True, True), (False, False), ("absent", True),
                                                 ("no module", False)])
def test_nccl_is_available_when_cupy_has_it_and_says_so(monkeypatch, available, expected):
    nccl = _FakeNccl(FakeMPI())
    nccl.install(monkeypatch)
    if available == "no module":
        monkeypatch.setitem(sys.modules, "cupy.cuda", None)
    elif available != "absent":
        nccl.available = available
    assert transport._nccl_available() is expected


@pytest.mark.parametrize("count, expected", [(3, 3), (0, 0), (RuntimeError("no driver"), 0)])
def test_the_gpu_count_is_cupys_or_zero(monkeypatch, count, expected):
    def device_count():
        if isinstance(count, Exception):
            raise count
        return count

    cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=device_count))
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=cuda))
    assert transport._gpu_count() == expected
    monkeypatch.setitem(sys.modules, "cupy", None)
    assert transport._gpu_count() == 0


# --- the MPI reducer ----------------------------------------------------------------------------------
def test_mpi_sums_each_bucket_on_every_rank_step_after_step(backend):
    shapes = [(4,), (2, 3)]
    buckets = [[backend.asarray(np.full(s, r + 1.0, np.float32)) for s in shapes] for r in range(3)]

    def step(w):
        reducer = transport._MpiReducer(w)
        for _ in range(2):
            for b in buckets[w.rank]:
                reducer.start(b)
            reducer.finish("the gradient sum")

    assert run_ranks(3, step) == [None] * 3
    for r in range(3):
        for b, s in zip(buckets[r], shapes):
            assert_close(b, np.full(s, 18.0, np.float32), rtol=0, atol=0, check_dtype=np.float32)


def test_mpi_sums_in_the_bucket_itself_or_in_one_host_copy_kept_for_every_step(backend):
    """NumPy buckets are summed where they are; CuPy ones through a host array made once."""
    mpi = FakeMPI()
    reducer = transport._MpiReducer(transport.World(mpi, mpi.COMM_WORLD))
    buckets = [backend.asarray(np.ones(s, np.float32)) for s in (3, 5)]
    for _ in range(3):
        for b in buckets:
            reducer.start(b)
        reducer.finish("the gradient sum")
    first, *later = [mpi.COMM_WORLD.reduced[i:i + 2] for i in (0, 2, 4)]
    assert all(a is b for step in later for a, b in zip(step, first)), "a new host array per step"
    assert all(isinstance(h, np.ndarray) and h.dtype == np.float32 for h in first)
    if isinstance(buckets[0], np.ndarray):
        assert first[0] is buckets[0] and first[1] is buckets[1]


def test_mpi_sum_past_its_deadline_names_the_buffer(capsys, monkeypatch):
    monkeypatch.setattr("graphnet.distributed.world.ABORT_GRACE_SECONDS", 0)
    mpi = FakeMPI(stall_after=1)
    reducer = transport._MpiReducer(transport.World(mpi, mpi.COMM_WORLD, LIMIT))
    for _ in range(2):
        reducer.start(np.zeros(3))
    with pytest.raises(Aborted):
        reducer.finish("the gradient sum")
    assert f"waited {LIMIT:g} s for the gradient sum (buffer 2 of 2): another rank" in \
        capsys.readouterr().err

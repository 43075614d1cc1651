"""An in-process stand-in for mpi4py with two or more ranks: each rank a thread.

``FakeMPI(size)`` looks to :class:`graphnet.distributed.World` like the ``mpi4py.MPI`` module:
its communicators (one per rank, ``mpi.comms[r]``) implement the non-blocking collectives the
library uses (Ibarrier, Iallreduce, Ibcast, Iallgather, Iallgatherv) by exchanging copies
through a table per call (the n-th collective of every rank meets in row n), so each call
completes once all ranks have made it and returns a finished request. ``run_ranks(size, fn)`` runs ``fn(world)`` on one thread per rank and returns
each rank's result or raised exception, in rank order.

Not MPI: no messages, no progress engine; a rank calling a collective the others never call
fails with ``PeerGone`` (at once if another rank raised, else after ``FakeMPI.patience`` s).
``stall_after=n`` stands for a peer that stops answering: every rank's collectives after its
first ``n`` still exchange their data but their requests never complete, so ``World.wait``
reaches its deadline.
"""
from __future__ import annotations

import functools
import threading
from typing import Any, Callable, Optional, Sequence

import numpy as np

from graphnet.distributed import World


class Request:
    """A non-blocking call's handle; ``done`` False stands for a peer that never answers."""

    def __init__(self, done: bool = True) -> None:
        self.done = done

    @staticmethod
    def Testall(requests: Sequence["Request"]) -> bool:
        return all(r.done for r in requests)


_MISSING = object()


class PeerGone(Exception):
    """A rank waited at a collective that another rank never reached."""


class Aborted(Exception):
    """Raised by ``Comm.Abort`` (with ``returns=False``): MPI_Abort ending the job."""


class Comm:
    """One rank's communicator (also the node-local one that ``Split_type`` returns)."""

    def __init__(self, mpi: "FakeMPI", rank: int, size: int) -> None:
        self.mpi, self.rank, self.size = mpi, rank, size
        self.calls = 0
        self.reduced: list[np.ndarray] = []
        self.aborted: list[int] = []
        self.freed = False

    def Get_rank(self) -> int:
        return self.rank

    def Get_size(self) -> int:
        return self.size

    def Split_type(self, kind: Any, key: int) -> "Comm":
        assert kind is FakeMPI.COMM_TYPE_SHARED and key == self.rank
        per_host = self.mpi.ranks_per_host
        return Comm(self.mpi, self.rank % per_host, min(per_host, self.size - self.rank // per_host * per_host))

    def Free(self) -> None:
        self.freed = True

    def _exchange(self, value: Any) -> list[Any]:
        self.calls += 1
        return self.mpi._exchange(self.rank, self.calls, value)

    def _request(self) -> Request:
        stall = self.mpi.stall_after
        return Request(done=stall is None or self.calls <= stall)

    def Ibarrier(self) -> Request:
        self._exchange(None)
        return self._request()

    def Iallreduce(self, sendbuf: Any, recvbuf: np.ndarray, op: Callable) -> Request:
        assert sendbuf is FakeMPI.IN_PLACE
        self.reduced.append(recvbuf)  # kept: a test may ask which arrays were summed
        values = self._exchange(recvbuf.copy())
        _same([v.shape for v in values] + [v.dtype for v in values], "Iallreduce")
        recvbuf[...] = functools.reduce(op, values)
        return self._request()

    def Ibcast(self, buf: np.ndarray, root: int = 0) -> Request:
        values = self._exchange(buf.copy())
        _same([v.shape for v in values] + [v.dtype for v in values], "Ibcast")
        buf[...] = values[root]
        return self._request()

    def Iallgather(self, sendbuf: np.ndarray, recvbuf: np.ndarray) -> Request:
        values = self._exchange(np.array(sendbuf, copy=True))
        assert all(v.dtype == recvbuf.dtype for v in values), "MPI type signatures differ"
        recvbuf[...] = np.stack(values).reshape(recvbuf.shape)
        return self._request()

    def Iallgatherv(self, sendbuf: np.ndarray, recv: Sequence[Any]) -> Request:
        table, counts = recv
        values = self._exchange(np.array(sendbuf, copy=True))
        assert all(v.dtype == table.dtype for v in values), "MPI type signatures differ"
        assert [v.size for v in values] == [int(c) for c in counts], "counts differ from the sizes"
        table[...] = np.concatenate(values)
        return self._request()

    def Abort(self, code: int) -> None:
        self.aborted.append(code)
        if not self.mpi.abort_returns:
            raise Aborted(code)


class FakeMPI:
    """The parts of ``mpi4py.MPI`` that graphnet.distributed uses, for ``size`` thread ranks."""

    Comm = Comm
    Request = Request
    IN_PLACE = object()
    COMM_TYPE_SHARED = object()
    SUM = staticmethod(np.add)
    MAX = staticmethod(np.maximum)
    MIN = staticmethod(np.minimum)
    patience = 5.0  # seconds a rank waits for the others at a collective

    def __init__(self, size: int = 1, ranks_per_host: Optional[int] = None, host: str = "node0",
                 abort_returns: bool = False, stall_after: Optional[int] = None) -> None:
        self.size, self.host, self.abort_returns = size, host, abort_returns
        self.ranks_per_host, self.stall_after = ranks_per_host or size, stall_after
        self.comms = [Comm(self, r, size) for r in range(size)]
        self.COMM_WORLD = self.comms[0]  # what init() takes: this process's communicator
        self._cond = threading.Condition()
        self._rounds: dict[int, list[Any]] = {}
        self.failed = False

    def Get_processor_name(self) -> str:
        return self.host

    def _exchange(self, rank: int, call: int, value: Any) -> list[Any]:
        """Every rank's ``value`` at its ``call``-th collective, once all have given theirs."""
        with self._cond:
            row = self._rounds.setdefault(call, [_MISSING] * self.size)
            row[rank] = value
            self._cond.notify_all()
            complete = lambda: all(v is not _MISSING for v in row)  # noqa: E731
            self._cond.wait_for(lambda: complete() or self.failed, self.patience)
            if not complete():
                raise PeerGone(f"rank {rank}: a rank never joined collective {call} "
                               f"({'it raised' if self.failed else 'timed out'})")
            return list(row)

    def fail(self) -> None:
        """A rank raised: the others stop waiting for it at their next collective."""
        with self._cond:
            self.failed = True
            self._cond.notify_all()


def _same(items: list[Any], what: str) -> None:
    """MPI needs every rank's buffer alike: a mismatch is the caller's bug, never reduced."""
    half = len(items) // 2
    assert len(set(items[:half])) == 1 and len(set(items[half:])) == 1, f"{what}: buffers differ"


def run_ranks(size: int, fn: Callable[[World], Any], timeout: float = 5.0, **mpi_kw: Any) -> list[Any]:
    """``fn(world)`` on ``size`` thread ranks: each rank's return value, or its exception."""
    mpi = FakeMPI(size, **mpi_kw)
    results: list[Any] = [None] * size

    def rank_main(r: int) -> None:
        try:
            results[r] = fn(World(mpi, mpi.comms[r], timeout))
        except BaseException as exc:  # noqa: BLE001 - handed to the test to assert on
            results[r] = exc
            mpi.fail()

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(FakeMPI.patience * 3)
    assert not any(t.is_alive() for t in threads), "a fake rank hangs"
    return results

"""Ranks as threads of this process, for data-parallel tests that need two ranks in-process.

:class:`ThreadWorld` is a graphnet ``World`` whose collectives meet at a shared barrier instead
of MPI; :class:`ThreadReducer` stands in for the MPI bucket reducer. Each rank sums what the
buffer held when its all-reduce *started*, as MPI does, so a bucket sent too early shows.
"""
from __future__ import annotations

import json
import threading
from typing import Any, Callable, Optional

import numpy as np

from graphnet.backends.host import to_numpy
from graphnet.distributed import World


class RankAborted(Exception):
    """What ``World.abort`` (MPI_Abort of every rank) becomes here: the message, raised."""


class _Hub:
    def __init__(self, size: int, timeout: float) -> None:
        self.barrier = threading.Barrier(size, timeout=timeout)
        self.slots: list[Any] = [None] * size


class ThreadWorld(World):
    """One rank of a world of threads; ``whats`` lists what each of its collectives was for."""

    def __init__(self, hub: _Hub, rank: int, size: int, local_size: Optional[int] = None) -> None:
        # No communicator: World.__init__ would ask MPI for one.
        self.hub, self.rank, self.size = hub, rank, size
        self.local_rank, self.local_size = rank, size if local_size is None else local_size
        self.timeout, self.host, self.device = hub.barrier._timeout, "threads", None
        self.MPI = self.comm = None
        self.whats: list[str] = []

    def gather(self, value: Any, what: str) -> list[Any]:
        """Every rank's ``value`` in rank order (abort if a rank does not come in time)."""
        self.whats.append(what)
        try:
            self.hub.slots[self.rank] = value
            self.hub.barrier.wait()
            out = list(self.hub.slots)
            self.hub.barrier.wait()
        except threading.BrokenBarrierError:
            self.abort(f"waited {self.timeout:g} s for {what}: another rank died or hangs")
        return out

    def abort(self, message: str) -> Any:
        raise RankAborted(message)

    def _allreduce(self, buf: np.ndarray, what: str, op: Any = None) -> np.ndarray:
        buf[...] = np.sum(self.gather(buf.copy(), what), axis=0)
        return buf

    def _broadcast(self, buf: np.ndarray, what: str, root: int = 0) -> np.ndarray:
        buf[...] = self.gather(buf.copy(), what)[root]
        return buf

    def allgather_text(self, text: str, what: str) -> list[str]:
        return self.gather(text, what)

    def disagreement(self, value: Any, what: str) -> Optional[list[Any]]:
        texts = self.gather(json.dumps(value, sort_keys=True, default=str), what)
        return None if len(set(texts)) == 1 else [json.loads(t) for t in texts]

    def any(self, flag: bool, what: str = "a vote") -> bool:
        return any(self.gather(bool(flag), what))


class ThreadReducer:
    """The bucket reducer's interface (start, finish) over a :class:`ThreadWorld`."""

    def __init__(self, world: ThreadWorld) -> None:
        self.world = world
        self.pending: list[tuple[Any, np.ndarray]] = []
        self.summed = 0  # buffers this reducer has summed

    def start(self, buf: Any) -> None:
        self.pending.append((buf, to_numpy(buf).copy()))  # MPI reads the buffer from here on

    def finish(self, what: str) -> None:
        pending, self.pending = self.pending, []
        for k, (buf, sent) in enumerate(pending):
            total = np.sum(self.world.gather(sent, f"{what} (buffer {k + 1} of {len(pending)})"),
                           axis=0)
            if isinstance(buf, np.ndarray):
                buf[...] = total
            else:
                buf.set(total.astype(sent.dtype))
            self.summed += 1


def run_ranks(body: Callable[[ThreadWorld], Any], size: int = 2, timeout: float = 5.0,
              local_size: Optional[int] = None) -> tuple[list[Any], list[Optional[BaseException]]]:
    """Run ``body(world)`` on ``size`` thread ranks: (each rank's result, each rank's error)."""
    hub = _Hub(size, timeout)
    results: list[Any] = [None] * size
    errors: list[Optional[BaseException]] = [None] * size

    def rank(r: int) -> None:
        try:
            results[r] = body(ThreadWorld(hub, r, size, local_size))
        except BaseException as exc:  # noqa: B036 - handed to the test
            errors[r] = exc

    threads = [threading.Thread(target=rank, args=(r,), name=f"rank{r}") for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors

"""Host threads for chunked kernels: a convolution's chunks on several CPU cores.

(Formerly ``graphnet.parallel``, which still re-exports these names.)

NumPy runs one thread per call except inside BLAS, and a convolution's many memory-bound
passes (im2col, col2im, transposes, pooling) leave the second core idle. Chunks of a batch
are independent, so :func:`for_each_chunk` gives them to up to :data:`GROUPS` worker
threads (NumPy releases the GIL in copies, ufuncs and products), with BLAS limited to one
thread while they run so the workers do not oversubscribe the cores.

Results never depend on the number of workers: chunk ``c`` belongs to group
``c % GROUPS``, a group's chunks run in order on one worker, and whatever chunks sum
(a weight gradient) is summed per group, then over the groups in a fixed order.

Used where the backend says so (``Backend.host_parallel``: NumPy) and threadpoolctl can
set the BLAS's threads; otherwise one worker, the caller's thread. The worker count is
the BLAS's own thread count (``OPENBLAS_NUM_THREADS=1`` means one core, one worker);
:func:`set_workers` overrides it.

A training step of a graph with chunked ops (:func:`run_scope`, used by
``Optimizer.minimize``) holds the BLAS at one thread throughout: a multi-threaded BLAS
call leaves its threads spinning for a while after it returns, and they would take the
cores from the chunk workers that follow (the MNIST CNN's step: 134-149 ms without,
116-119 ms with, 2 cores; sharing the dense layers' products among the workers as well
gained nothing measurable).
"""
from __future__ import annotations

import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

from ...checks import integer
from ...errors import ArgumentError, ArgumentTypeError

GROUPS = 4  #: accumulation groups, and the most workers a chunked kernel uses

_lock = threading.Lock()
_pool: Optional[ThreadPoolExecutor] = None
_blas: Any = False  # False: not looked up yet; None: no controllable BLAS
_forced: Optional[int] = None
_busy = threading.local()
_limited = 0  # parallel regions running; the first limits BLAS to one thread, the last restores
_blas_threads = 0
_chunked: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()


def set_workers(n: Optional[int]) -> Optional[int]:
    """Use ``n`` worker threads for chunked kernels (``None``: the BLAS's thread count).

    Returns the previous setting.
    """
    global _forced
    if n is not None:
        n = integer(n, "workers", 1)
        if n > GROUPS:
            raise ArgumentError(f"workers must be at most {GROUPS}, got {n}")
    old, _forced = _forced, n
    return old


def _blas_controller() -> Any:
    global _blas
    if _blas is False:
        with _lock:
            if _blas is False:
                try:
                    from threadpoolctl import ThreadpoolController
                    libs = ThreadpoolController().select(user_api="blas").lib_controllers
                    # NumPy's own BLAS (wheels bundle it under numpy.libs or numpy/.dylibs)
                    mine = [lib for lib in libs if "numpy" in str(lib.filepath)]
                    _blas = (mine or libs)[0] if len(mine) == 1 or len(libs) == 1 else None
                except Exception:  # no threadpoolctl, or a BLAS it cannot drive
                    _blas = None
    return _blas


def workers(be: Any, n_chunks: int) -> int:
    """How many threads ``n_chunks`` chunks run on for backend ``be``."""
    if n_chunks < 2 or not getattr(be, "host_parallel", False) or getattr(_busy, "on", False):
        return 1
    blas = _blas_controller()
    if blas is None:
        return 1
    n = _forced
    if n is None:
        n = _blas_threads if _limited else blas.get_num_threads()
    return max(1, min(n, GROUPS, n_chunks))


def for_each_chunk(be: Any, n_chunks: int, work: Callable[[Any, int], None],
                   make_scratch: Callable[[], Any]) -> None:
    """Call ``work(scratch, c)`` for every chunk ``c`` in ``range(n_chunks)``.

    Each worker gets its own ``make_scratch()``; a chunk's group (``c % GROUPS``) always
    runs on one worker, in increasing ``c``. Exceptions from a worker are raised here.
    """
    n = workers(be, n_chunks)
    if n == 1:
        scratch = make_scratch()
        for c in range(n_chunks):
            work(scratch, c)
        return
    on_workers(n, n_chunks, work, make_scratch)


def on_workers(n: int, n_chunks: int, work: Callable[[Any, int], None],
               make_scratch: Callable[[], Any]) -> None:
    """:func:`for_each_chunk` on ``n`` >= 2 worker threads (``n`` from :func:`workers`),
    the BLAS held at one thread meanwhile; the caller's thread waits."""
    blas = _blas_controller()

    def run(w: int) -> None:
        _busy.on = True  # a kernel inside a worker runs its own chunks serially
        try:
            scratch = make_scratch()
            for c in range(n_chunks):
                if (c % GROUPS) % n == w:
                    work(scratch, c)
        finally:
            _busy.on = False

    _limit_blas(blas, True)
    try:
        futures = [_executor().submit(run, w) for w in range(n)]
        try:
            for f in futures:
                f.result()
        finally:
            wait(futures)  # never leave a worker writing into arrays after we return
    finally:
        _limit_blas(blas, False)


@contextmanager
def blas_held(be: Any) -> Iterator[None]:
    """Hold the BLAS at one thread while a training step runs chunks on several workers of
    ``be`` (a convolution's ``step_scope``: the planner enters it around each step)."""
    if workers(be, GROUPS) < 2:
        yield
        return
    blas = _blas_controller()
    _limit_blas(blas, True)
    try:
        yield
    finally:
        _limit_blas(blas, False)


@contextmanager
def run_scope(graph: Any) -> Iterator[None]:
    """Hold the BLAS at one thread for a training step of ``graph`` if it has chunked ops
    that run on several workers (see the module docstring); otherwise do nothing.
    Training steps enter :func:`blas_held` by themselves (the ops' ``step_scope``).

    (Evaluation passes gained nothing from it: 10000 test images through the MNIST CNN
    took 4.2-5.2 s with it and 3.7-4.2 s without.)"""
    be, order = getattr(graph, "backend", None), getattr(graph, "order", None)
    if be is None or order is None:
        raise ArgumentTypeError(f"run_scope needs a graphnet Graph, got {type(graph).__name__}")
    chunked = _chunked.get(graph)
    if chunked is None:
        chunked = _chunked[graph] = any(getattr(n, "host_chunks", False) for n in graph.order)
    if not chunked:
        yield
        return
    with blas_held(be):
        yield


def _limit_blas(blas: Any, enter: bool) -> None:
    global _limited, _blas_threads
    with _lock:
        if enter:
            if _limited == 0:
                _blas_threads = blas.get_num_threads()
                blas.set_num_threads(1)
            _limited += 1
        else:
            _limited -= 1
            if _limited == 0:
                blas.set_num_threads(_blas_threads)


def _after_fork_in_child() -> None:
    # A forked child inherits the pool object but none of its threads (nor a usable lock):
    # its first chunked kernel would wait for ever. It starts a pool of its own instead.
    global _pool, _lock
    _pool, _lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        with _lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(GROUPS, thread_name_prefix="graphnet-chunks")
    return _pool

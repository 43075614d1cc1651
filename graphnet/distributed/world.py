"""This process's place among the MPI ranks and the collectives between them, each with a deadline.

Every collective gives up after ``timeout`` seconds and aborts all ranks with a message,
rather than leaving them hanging on a dead peer.
"""
from __future__ import annotations

import hashlib
import json
import numbers
import os
import sys
import time
from typing import Any, Callable, Iterable, Mapping, NoReturn, Optional, Sequence, Union

import numpy as np

from ..backends.host import to_numpy
from ..checks import flag, real
from ..errors import ArgumentError, ArgumentTypeError, NumericsError
from ..node import Parameter
from .agreement import describe_parameters, parameter_differences
from .sampler import shard_bounds

INSTALL_HINT = ('pip install mpi4py mpich  (or pip install -e ".[mpi]" from a graphnet checkout; '
                'an mpi4py built against a system MPI works too)')
LAUNCH_HINT = "mpiexec -n 2 python examples/mnist/train.py --distributed"
TIMEOUT_ENV = "GRAPHNET_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 600.0
EXIT_ABORT = 3
# MPI_Abort can end the launcher before it has forwarded what this rank last wrote (seen with
# MPICH's Hydra under load: the whole stderr lost); waiting this long first lets it arrive.
ABORT_GRACE_SECONDS = 1.0
SPIN_SECONDS = 2e-3  # poll (yielding the core) this long before sleeping between polls
# Variables the common launchers set in every rank's environment (MPICH/Hydra, Open MPI, PMIx).
LAUNCHER_ENV = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")



class DistributedError(RuntimeError):
    """MPI is missing, the process was not started by mpiexec, or the ranks disagree."""


class NonFiniteGradientsError(DistributedError, NumericsError):
    """A rank's cost or gradients were NaN or inf: the step was taken on no rank."""


def launched_by_mpi(env: Optional[Mapping[str, str]] = None) -> bool:
    """Whether this process was started by an MPI launcher (mpiexec/mpirun)."""
    env = os.environ if env is None else env
    return any(k in env for k in LAUNCHER_ENV)


def _import_mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise DistributedError(f"distributed training needs mpi4py and an MPI library ({exc}); "
                               f"install them with: {INSTALL_HINT}") from None
    return MPI


def _timeout_from_env() -> float:
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise DistributedError(f"{TIMEOUT_ENV} must be a number of seconds > 0, got {text!r}")
    return value


_world: Optional["World"] = None


def init(timeout: Optional[float] = None, require_launcher: bool = True) -> "World":
    """The world of ranks this process belongs to (created on the first call).

    ``timeout`` (seconds, default ``$GRAPHNET_DIST_TIMEOUT`` or 600) bounds every
    collective; given again on a later call, it becomes the world's new limit. With the
    CuPy backend selected (``GRAPHNET_BACKEND=cupy``) the rank takes GPU
    ``local_rank % devices``: call this before the backend is first used.
    """
    global _world
    if timeout is not None:
        timeout = real(timeout, "timeout", low=0, low_open=True)
    flag(require_launcher, "require_launcher")
    if _world is not None:
        if timeout is not None:
            _world.timeout = timeout
        return _world
    if require_launcher and not launched_by_mpi():
        raise DistributedError("distributed training must be started by an MPI launcher, "
                               f"e.g. {LAUNCH_HINT} (found none of {', '.join(LAUNCHER_ENV)} "
                               f"in the environment); to install MPI: {INSTALL_HINT}")
    MPI = _import_mpi()
    _world = World(MPI, MPI.COMM_WORLD, timeout if timeout is not None else _timeout_from_env())
    if os.environ.get("GRAPHNET_BACKEND", "").strip().lower() == "cupy":
        _world.device = _select_gpu(_world.local_rank)
    return _world


def _select_gpu(local_rank: int) -> Optional[int]:
    try:
        import cupy
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # no CuPy or no driver: the backend reports that itself when created
        return None
    if count <= 0:
        return None
    device = local_rank % count
    cupy.cuda.Device(device).use()
    return device


def poll_until(done: Callable[[], bool], timeout: float) -> bool:
    """Call ``done()`` until it is true (True) or ``timeout`` seconds have passed (False).

    For ``SPIN_SECONDS`` it polls giving the core away between calls (``sched_yield``:
    no sleep latency when the peers are there, no core stolen when they wait for it),
    then sleeps between polls, 50 us doubling to 1 ms.
    """
    if not callable(done):
        raise ArgumentTypeError(f"done must be a callable, got {type(done).__name__} {done!r}")
    timeout = real(timeout, "timeout", low=0)
    start = time.monotonic()
    spin_until, deadline, pause = start + SPIN_SECONDS, start + timeout, 5e-5
    while not done():
        now = time.monotonic()
        if now < spin_until:
            os.sched_yield()
            continue
        if now > deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 1e-3)
    return True


class World:
    """This process's place among the ranks, and collectives that give up after ``timeout``."""

    def __init__(self, MPI: Any, comm: Any, timeout: float = DEFAULT_TIMEOUT) -> None:
        if not isinstance(comm, MPI.Comm):
            raise ArgumentTypeError(f"comm must be an MPI communicator (mpi4py MPI.Comm), "
                                    f"got {type(comm).__name__} {comm!r}")
        self.MPI, self.comm = MPI, comm
        self.timeout = real(timeout, "timeout", low=0, low_open=True)
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self.host = MPI.Get_processor_name()
        self.device: Optional[int] = None

    @property
    def is_root(self) -> bool:
        """Rank 0: the one that prints and writes files."""
        return self.rank == 0

    def describe(self) -> str:
        gpu = "" if self.device is None else f", GPU {self.device}"
        return (f"rank {self.rank} of {self.size} (local {self.local_rank} of {self.local_size} "
                f"on {self.host}{gpu})")

    # --- waiting with a deadline ----------------------------------------------------
    def wait(self, requests: Sequence[Any], what: str) -> None:
        """Complete MPI requests, or abort every rank after ``timeout`` seconds."""
        requests = list(requests)
        test = self.MPI.Request.Testall
        if not poll_until(lambda: test(requests), self.timeout):
            self.abort(f"waited {self.timeout:g} s for {what}: another rank died or hangs")

    def abort(self, message: str) -> NoReturn:
        """Print why on stderr and end every rank (MPI_Abort): a dead peer never hangs the rest.

        Never returns: if MPI_Abort does (MPICH can), this process exits at once, so no
        caller goes on with a collective's unfinished buffer.
        """
        sys.stderr.write(f"graphnet.distributed: rank {self.rank} of {self.size}: {message}; "
                         f"aborting all ranks (limit: {TIMEOUT_ENV} or init(timeout=...))\n")
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_SECONDS)
        self.comm.Abort(EXIT_ABORT)
        sys.stderr.write(f"graphnet.distributed: rank {self.rank}: MPI_Abort returned; exiting\n")
        sys.stderr.flush()
        os._exit(EXIT_ABORT)

    # --- host collectives -----------------------------------------------------------
    def barrier(self, what: str = "a barrier") -> None:
        self.wait([self.comm.Ibarrier()], what)

    def allreduce_(self, buf: np.ndarray, what: str, op: Any = None) -> np.ndarray:
        """Sum (or ``op``) a host array across ranks, in place (every rank's shape and dtype
        checked first: DistributedError naming each rank's otherwise)."""
        self._same_buffers(buf, what)
        return self._allreduce(buf, what, op)

    def broadcast_(self, buf: np.ndarray, what: str, root: int = 0) -> np.ndarray:
        """Overwrite a contiguous host array with rank ``root``'s, in place (shapes and dtypes
        checked first, as for :meth:`allreduce_`)."""
        if isinstance(root, bool) or not isinstance(root, numbers.Integral) \
                or not 0 <= root < self.size:
            raise ArgumentError(f"root must be a rank in [0, {self.size}), got {root!r}")
        self._same_buffers(buf, what)
        return self._broadcast(buf, what, int(root))

    def _allreduce(self, buf: np.ndarray, what: str, op: Any = None) -> np.ndarray:
        op = self.MPI.SUM if op is None else op
        self.wait([self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=op)], what)
        return buf

    def _broadcast(self, buf: np.ndarray, what: str, root: int = 0) -> np.ndarray:
        self.wait([self.comm.Ibcast(buf, root=root)], what)
        return buf

    def _same_buffers(self, buf: Any, what: str) -> None:
        """Refuse a buffer MPI cannot write in place, or one whose shape or dtype differ between ranks."""
        if not (isinstance(buf, np.ndarray) and buf.flags.c_contiguous and buf.flags.writeable):
            raise ArgumentTypeError(f"{what}: the buffer must be a writable C-contiguous NumPy "
                                    f"array, got {type(buf).__name__}")
        values = self.disagreement([list(buf.shape), str(buf.dtype)], f"checking {what}")
        if values is not None:
            sides = ", ".join(f"rank {r} {tuple(v[0])} {v[1]}" for r, v in enumerate(values))
            raise DistributedError(f"{what}: the ranks' arrays differ in shape or dtype: {sides}")

    def allgather_text(self, text: str, what: str) -> list[str]:
        """Every rank's ``text``, in rank order (lengths, then the bytes; both with the deadline)."""
        data = np.frombuffer(text.encode(), np.uint8)
        lengths = np.empty(self.size, np.int64)
        self.wait([self.comm.Iallgather(np.array([data.size], np.int64), lengths)], what)
        table = np.empty(int(lengths.sum()), np.uint8)
        self.wait([self.comm.Iallgatherv(data, [table, lengths])], what)
        ends = np.cumsum(lengths)
        return [table[e - n:e].tobytes().decode() for n, e in zip(lengths, ends)]

    def disagreement(self, value: Any, what: str) -> Optional[list[Any]]:
        """None when every rank holds an equal JSON-able ``value``; else every rank's value.

        One small collective (a digest) when they agree; the values travel only when not.
        """
        text = json.dumps(value, sort_keys=True, default=str)
        digest = np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint8)
        table = np.empty((self.size, digest.size), np.uint8)
        self.wait([self.comm.Iallgather(digest, table)], what)
        if all(np.array_equal(table[r], table[0]) for r in range(self.size)):
            return None
        return [json.loads(t) for t in self.allgather_text(text, what)]

    def broadcast_array(self, x: Any, what: str = "an array") -> np.ndarray:
        """Rank 0's host copy of ``x`` (any backend's array; every rank's shape and dtype must agree)."""
        return self.broadcast_(np.ascontiguousarray(to_numpy(x)).copy(), f"broadcast_array({what})")

    def check_parameters(self, params: Union[Mapping[str, Parameter], Iterable[Parameter]],
                         what: str = "checking the parameters") -> list[Parameter]:
        """The parameters as a list, once every rank has the same count, names, shapes and dtypes.

        Otherwise DistributedError on every rank, naming each side's first differing parameter.
        """
        named = describe_parameters(params)
        values = self.disagreement([d for d, _ in named], what)
        if values is not None:
            raise DistributedError(f"the ranks' models differ ({what}): "
                                   + "; ".join(parameter_differences(values)))
        return [p for _, p in named]

    def broadcast_parameters(self, params: Union[Mapping[str, Parameter], Iterable[Parameter]]
                             ) -> None:
        """Give every rank rank 0's parameter values (packed, one broadcast per dtype), after
        checking that every rank has the same parameters (:meth:`check_parameters`)."""
        params = self.check_parameters(params, "before the parameter broadcast")
        for dtype, group in _group_by_dtype(params).items():
            flat = np.concatenate([to_numpy(p.value).ravel() for p in group])
            self._broadcast(flat, f"the parameter broadcast ({len(group)} {dtype} arrays)")
            if not self.is_root:
                _unpack(flat, group)

    def average_(self, params: Iterable[Parameter], what: str = "averaging statistics") -> None:
        """Set each (non-trainable) parameter to its mean over the ranks, e.g. BatchNorm statistics."""
        params = [p for p in self.check_parameters(params, what) if np.dtype(p.dtype).kind == "f"]
        for dtype, group in _group_by_dtype(params).items():
            flat = np.concatenate([to_numpy(p.value).ravel() for p in group])
            self._allreduce(flat, what)
            flat /= self.size
            _unpack(flat, group)

    def reduce_mean(self, values: Mapping[str, float], weight: float = 1.0) -> dict[str, float]:
        """Weighted mean of each named scalar over the ranks (weight: e.g. the rank's sample count)."""
        if not isinstance(values, Mapping):
            raise ArgumentTypeError(f"reduce_mean: values must be a mapping of names to numbers, "
                                    f"got {type(values).__name__} {values!r}")
        weight = real(weight, "reduce_mean weight", low=0)
        keys = sorted(values)
        nums = [_number(values[k], f"reduce_mean value {k!r}") for k in keys]
        keys, nums = self._agreed_names(keys, nums, weight)
        buf = np.array([v * weight for v in nums] + [weight], np.float64)
        self._allreduce(buf, f"reducing metrics {keys}")
        if buf[-1] <= 0:
            raise DistributedError(f"reduce_mean: the weights sum to {buf[-1]} over the ranks")
        return {k: float(buf[i] / buf[-1]) for i, k in enumerate(keys)}

    def _agreed_names(self, keys: list[str], nums: list[float], weight: float
                      ) -> tuple[list[str], list[float]]:
        """The names every rank with weight reduces (a rank without weight adopts them)."""
        differ = self.disagreement(keys if weight > 0 else None,
                                   "comparing the names of the metrics to reduce")
        if differ is None:
            return keys, nums
        named = [(r, v) for r, v in enumerate(differ) if v is not None]
        if any(v != named[0][1] for _, v in named):
            sides = ", ".join(f"rank {r} {v}" for r, v in named)
            raise DistributedError(f"reduce_mean: the ranks reduce different names: {sides}")
        return (keys, nums) if weight > 0 or not named else (named[0][1], [0.0] * len(named[0][1]))

    def fail_together(self, failure: Optional[BaseException], what: str,
                      text: Optional[str] = None, error: type = DistributedError) -> NoReturn:
        """Raise on every rank once a vote found that some rank failed at ``what``: the ranks
        that failed re-raise their own error, the others ``error`` naming them all (each rank
        says ``text``, by default its error; "" for none)."""
        if text is None:
            text = "" if failure is None else f"{type(failure).__name__}: {failure}"
        said = self.allgather_text(text, f"naming the ranks that failed {what}")
        message = f"{what} failed: " + "; ".join(f"rank {r}: {t}" for r, t in enumerate(said) if t)
        if failure is not None:
            failure.add_note(f"graphnet.distributed: {message}")
            raise failure
        raise error(message)

    def any(self, flag: bool, what: str = "a vote") -> bool:
        """Whether ``flag`` is true on any rank."""
        buf = np.array([1 if flag else 0], np.int32)
        return bool(self._allreduce(buf, what, self.MPI.MAX)[0])

    def check_config(self, config: Mapping[str, Any]) -> None:
        """Raise DistributedError naming the ranks and keys that differ from rank 0's config."""
        configs = self.disagreement(config, "comparing configurations")
        if configs is None:
            return
        lines = [f"rank {r} differs from rank 0 in {_differences(configs[0], c)}"
                 for r, c in enumerate(configs) if c != configs[0]]
        raise DistributedError("the ranks disagree on the configuration: " + "; ".join(lines))

    def evaluate(self, model: Any, x: Any, y: Any, prepared: bool = True) -> dict[str, float]:
        """``model.evaluate`` over all of ``x``, each rank taking a contiguous part."""
        lo, hi = shard_bounds(int(x.shape[0]), self.rank, self.size)
        part: dict[str, float] = {}
        failure: Optional[BaseException] = None
        try:
            if hi > lo:
                part = model.evaluate(x[lo:hi], y[lo:hi], prepared=prepared)
        except Exception as exc:  # noqa: BLE001 - the other ranks must hear of it, not wait
            failure = exc
        if self.any(failure is not None, "checking that every rank evaluated its part"):
            self.fail_together(failure, "evaluating")
        return self.reduce_mean(part, weight=hi - lo)


def _number(value: Any, name: str) -> float:
    """``value`` as a float (NaN and inf kept: a metric may be either)."""
    if isinstance(value, (bool, str, bytes)) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    return float(value)


def _differences(a: Any, b: Any) -> str:
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return f"the whole configuration ({a!r} vs {b!r})"
    keys = sorted(set(a) | set(b))
    diffs = [f"{k} ({a.get(k, '<missing>')!r} vs {b.get(k, '<missing>')!r})"
             for k in keys if a.get(k, "<missing>") != b.get(k, "<missing>")]
    return ", ".join(diffs)


def _group_by_dtype(params: Sequence[Parameter]) -> dict[str, list[Parameter]]:
    groups: dict[str, list[Parameter]] = {}
    for p in params:
        groups.setdefault(str(np.dtype(p.dtype)), []).append(p)
    return groups


def _unpack(flat: np.ndarray, params: Sequence[Parameter]) -> None:
    offset = 0
    for p in params:
        n = int(np.prod(p.shape, dtype=np.int64))
        p.value = flat[offset:offset + n].reshape(p.shape).copy()
        offset += n

"""Runs over several processes, GPUs and nodes under ``torchrun`` (torch.distributed).

``torchrun --nproc-per-node N -m tipsomaly eval|predict ...`` starts N copies of the command;
torchrun tells each its place through the environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``). :func:`init_if_needed`
reads it and joins the process group; without ``WORLD_SIZE`` > 1 it does nothing, and every
helper here is then a no-op for one process (``barrier`` returns, ``broadcast`` returns its
argument), so the runners call them unconditionally. This is the only module that calls
``torch.distributed``.

What each process does:

* **Device.** Each process its own GPU, or its share of the CPU cores (:func:`init_if_needed`;
  torchrun's own default is 1 thread).
* **Backend.** Only small Python objects travel between processes (plans, rows, outcomes); the
  predictions themselves go through the shared output folder. So the group is ``gloo`` on the
  CPU and ``cpu:gloo,cuda:nccl`` with GPUs (NCCL, created lazily, carries CUDA tensors; our
  objects and barriers take gloo, whose timeouts raise in Python). ``TIPSOMALY_DIST_BACKEND``
  overrides the choice.
* **Timeout.** Every wait for the other processes (joining, barriers, object collectives)
  gives up after ``TIPSOMALY_DIST_TIMEOUT`` seconds (default :data:`DEFAULT_TIMEOUT_S`) and a
  process that died closes its connections, so the others stop at their next wait with a
  :class:`DistributedError` saying so, instead of hanging. (torchrun itself also stops every
  process of the job once one exits with an error.)
* **Output folder.** Rank 0 alone holds ``--out``'s :class:`~.lock.OutputLock` for the whole
  job, and every rank checks that it is the same folder (:func:`output_lock`).
* **Logs.** Rank 0 shows progress bars and INFO messages; the others only warnings and errors.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
import os
import pickle
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import InvalidOptionError, TipsomalyError
from ..validation import env_seconds
from .lock import OutputLock

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: seconds to wait for the other processes at any collective (env ``TIPSOMALY_DIST_TIMEOUT``)
DEFAULT_TIMEOUT_S = 600.0
TIMEOUT_ENV = "TIPSOMALY_DIST_TIMEOUT"
BACKEND_ENV = "TIPSOMALY_DIST_BACKEND"
THREADS_ENV = "TIPSOMALY_NUM_THREADS"

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DistInfo",
    "DistributedError",
    "current",
    "init_if_needed",
    "launched",
    "output_lock",
    "shutdown",
    "timeout_s",
]


class DistributedError(TipsomalyError, RuntimeError):
    """The processes of a ``torchrun`` job lost each other (one died, hangs or disagrees)."""


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise InvalidOptionError(f"{name}={value!r} is not an integer (set by torchrun)") from None


def launched() -> bool:
    """True when this process is one of several of a ``torchrun`` job (``WORLD_SIZE`` > 1)."""
    return _env_int("WORLD_SIZE", 1) > 1


def timeout_s() -> float:
    """The wait limit for collectives: ``TIPSOMALY_DIST_TIMEOUT`` seconds, else the default.

    Raises:
        InvalidOptionError: the variable is not a positive number.
    """
    return env_seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` of
    ``local_world_size`` on its node. The default is a single process (every collective a
    no-op)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def active(self) -> bool:
        """Several processes (the collectives below really communicate)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: locks the output folder, merges, computes metrics, writes results."""
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistInfo:
        """Read torchrun's variables (no process group is joined)."""
        world = _env_int("WORLD_SIZE", 1)
        rank = _env_int("RANK", 0)
        local_world = _env_int("LOCAL_WORLD_SIZE", world)
        local_rank = _env_int("LOCAL_RANK", rank % max(local_world, 1))
        if world < 1 or not 0 <= rank < world or not 0 <= local_rank < max(local_world, 1):
            raise InvalidOptionError(
                f"inconsistent torchrun variables: RANK={rank}, WORLD_SIZE={world}, "
                f"LOCAL_RANK={local_rank}, LOCAL_WORLD_SIZE={local_world}"
            )
        return cls(rank, world, local_rank, max(local_world, 1))

    # -- sharding ---------------------------------------------------------------------------
    def owns(self, position: int, offset: int = 0) -> bool:
        """Whether item ``position`` of a work list is this rank's: item ``j`` belongs to rank
        ``(offset + j) % world_size`` (interleaved, so every class spreads over the ranks)."""
        return (offset + position) % self.world_size == self.rank

    def shard(self, items: Sequence[T], offset: int = 0, rank: int | None = None) -> list[T]:
        """This rank's items (or ``rank``'s) of ``items``, interleaved as :meth:`owns` says;
        no padding, so every item is in exactly one shard."""
        rank = self.rank if rank is None else rank
        return [x for j, x in enumerate(items) if (offset + j) % self.world_size == rank]

    # -- collectives --------------------------------------------------------------------------
    def barrier(self, what: str) -> None:
        """Wait until every rank gets here (``what``: the wait, for error messages)."""
        if not self.active:
            return
        import torch
        import torch.distributed as dist

        with _collective(self, what):
            dist.all_reduce(torch.zeros(1))  # a CPU tensor: gloo, whatever the GPU backend

    def broadcast(self, obj: T, what: str) -> T:
        """Rank 0's ``obj`` on every rank (picklable)."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        with _collective(self, what):
            dist.broadcast_object_list(box, src=0, device=_cpu())
        return box[0]  # type: ignore[return-value]

    def all_gather(self, obj: T, what: str) -> list[T]:
        """Every rank's ``obj``, by rank, on every rank."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        with _collective(self, what):
            dist.all_gather_object(out, obj)
        return out

    def gather(self, obj: T, what: str) -> list[T] | None:
        """Every rank's ``obj``, by rank, on rank 0 (None elsewhere)."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        with _collective(self, what):
            dist.gather_object(obj, out, dst=0)
        return out

    def check_same(self, value: Any, what: str) -> None:
        """Stop every rank unless all hold an equal ``value`` (compared by a digest of its
        pickle), e.g. the list of images to score; ``what`` names it in the error."""
        if not self.active:
            return
        import hashlib

        digest = hashlib.sha256(pickle.dumps(value, protocol=4)).hexdigest()
        digests = self.all_gather(digest, f"comparing {what}")
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        if differ:
            raise DistributedError(
                f"{what} differs between rank 0 and rank(s) {', '.join(map(str, differ))}: every "
                "process must see the same files (with several nodes: the same paths on a shared "
                "file system, unchanged during the run)"
            )


def _cpu() -> Any:
    import torch

    return torch.device("cpu")  # object collectives in CPU memory: gloo, whatever the GPUs use


_ACTIVE: DistInfo | None = None


def current() -> DistInfo:
    """The job this process belongs to: the one :func:`init_if_needed` joined, a process group
    a caller initialised itself (ranks from it, node-local ranks from torchrun's variables),
    or a single process."""
    if _ACTIVE is not None:
        return _ACTIVE
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        env = DistInfo.from_env()
        if env.world_size == dist.get_world_size():
            return env
        return DistInfo(dist.get_rank(), dist.get_world_size())
    return DistInfo()


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def init_if_needed(device: Any = "cpu") -> DistInfo:
    """Join the ``torchrun`` job when launched by one (else return a single-process
    :class:`DistInfo`, touching nothing).

    ``device``: the resolved ``--device``. CUDA: this process's GPU becomes ``cuda:LOCAL_RANK``
    (modulo the GPUs seen) so that ``cuda`` means it; CPU: ``usable cores // LOCAL_WORLD_SIZE``
    torch threads (``TIPSOMALY_NUM_THREADS`` overrides). Idempotent.

    Raises:
        DistributedError: the other processes did not join within the timeout.
        InvalidOptionError: bad ``TIPSOMALY_*`` or torchrun variables.
    """
    global _ACTIVE
    if _ACTIVE is not None:
        return _ACTIVE
    if not launched():
        return DistInfo()
    import torch
    import torch.distributed as dist

    info = DistInfo.from_env()
    timeout = timeout_s()
    cuda = str(getattr(device, "type", device)).startswith("cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(info.local_rank % torch.cuda.device_count())
    else:
        threads = os.environ.get(THREADS_ENV, "").strip()
        try:
            n = int(threads) if threads else max(1, _usable_cores() // info.local_world_size)
        except ValueError:
            raise InvalidOptionError(f"{THREADS_ENV}={threads!r} is not an integer") from None
        torch.set_num_threads(max(1, n))
    backend = os.environ.get(BACKEND_ENV, "").strip() or ("cpu:gloo,cuda:nccl" if cuda else "gloo")
    if not dist.is_initialized():
        try:
            dist.init_process_group(
                backend=backend,
                timeout=datetime.timedelta(seconds=timeout),
                rank=info.rank,
                world_size=info.world_size,
            )
        except (RuntimeError, ValueError, TimeoutError) as exc:
            raise DistributedError(
                f"rank {info.rank} of {info.world_size}: cannot join the job (backend "
                f"{backend}, timeout {timeout:g} s): {_first_line(exc)}"
            ) from None
        atexit.register(shutdown)
    if not info.is_main:  # one voice: rank 0's progress and INFO messages
        ours = logging.getLogger("tipsomaly")
        if ours.getEffectiveLevel() < logging.WARNING:
            ours.setLevel(logging.WARNING)
    _ACTIVE = info
    logger.info(
        "torchrun job: %d processes (%d on this node), backend %s, %s, timeout %g s",
        info.world_size,
        info.local_world_size,
        backend,
        "each on cuda:LOCAL_RANK" if cuda else f"{torch.get_num_threads()} CPU thread(s) each",
        timeout,
    )
    return info


def shutdown() -> None:
    """Leave the process group (registered at exit by :func:`init_if_needed`)."""
    global _ACTIVE
    _ACTIVE = None
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


@contextlib.contextmanager
def _collective(info: DistInfo, what: str) -> Iterator[None]:
    """Turn a failed or timed-out collective into a :class:`DistributedError` that says which
    rank, while doing what, and what to do."""
    try:
        yield
    except (RuntimeError, TimeoutError, ConnectionError, pickle.UnpicklingError) as exc:
        if isinstance(exc, TipsomalyError):
            raise
        raise DistributedError(
            f"rank {info.rank} of {info.world_size} lost the other processes while {what}: "
            f"another process died or hangs (see its messages; each wait for the others is "
            f"limited to {TIMEOUT_ENV}={timeout_s():g} s) [{_first_line(exc)}]"
        ) from None


# -- the output folder ------------------------------------------------------------------------
def _lock_token(folder: str | os.PathLike) -> str | None:
    token = OutputLock(folder).holder().get("token")
    return token if isinstance(token, str) else None


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, info: DistInfo | None = None) -> Iterator[None]:
    """Hold ``folder``'s :class:`~.lock.OutputLock` for the job.

    One process: the lock itself. Under torchrun: rank 0 takes it (and keeps it until it
    leaves the block: its work ends last) and broadcasts the outcome, so every rank fails
    alike when another run holds the folder; then every rank checks that it sees rank 0's lock
    file (the same folder everywhere: with several nodes, a shared file system).

    Raises:
        OutputLockedError: (rank 0) another run holds the folder.
        DistributedError: (other ranks) rank 0 could not take it; or some rank does not see
            rank 0's folder.
    """
    info = info or current()
    if not info.active:
        with OutputLock(folder):
            yield
        return
    lock = OutputLock(folder) if info.is_main else None
    outcome: tuple[str, str | None] = ("ok", None)
    if lock is not None:
        try:
            lock.acquire()
            outcome = ("ok", _lock_token(folder))
        except TipsomalyError as exc:
            outcome = ("error", str(exc))
            info.broadcast(outcome, "taking the output folder's lock")
            raise
    outcome = info.broadcast(outcome, "taking the output folder's lock")
    try:
        if outcome[0] == "error":
            raise DistributedError(f"rank 0 could not take the output folder: {outcome[1]}")
        seen = info.is_main or (outcome[1] is not None and _lock_token(folder) == outcome[1])
        blind = [
            r for r, ok in enumerate(info.all_gather(seen, "checking the output folder")) if not ok
        ]
        if blind:
            raise DistributedError(
                f"rank(s) {', '.join(map(str, blind))} do not see rank 0's lock file in {folder}: "
                "--out must be the same folder for every process (with several nodes, on a file "
                "system all of them share)"
            )
        yield
    finally:
        if lock is not None:
            lock.release()

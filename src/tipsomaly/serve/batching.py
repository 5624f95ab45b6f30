"""Micro-batching: concurrent callers' images share forward passes on one model thread.

Callers :meth:`MicroBatcher.submit` images and get one :class:`~concurrent.futures.Future` per
image. One worker thread owns the model: it takes the oldest image, waits until ``batch_size``
images are queued or the oldest has waited ``max_wait_s`` (whichever first), runs them as one
batch and resolves their futures. Images that queued while a batch ran go in the next one
without waiting again, so under load every forward is full and when idle a lone image waits at
most ``max_wait_s``.

The queue is bounded (``max_queue`` images): a submit that would overfill it raises
:class:`~.errors.QueueFullError` at once, for all its images, with a ``Retry-After`` estimate
from the recent forward times; nothing waits unbounded and nothing is dropped silently. A
batch that raises resolves each of its futures with that exception; the worker goes on.
:meth:`MicroBatcher.close` stops new submits and returns once every queued image is answered.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..validation import in_range, positive_int
from .errors import QueueFullError, UnavailableError

logger = logging.getLogger(__name__)

T = TypeVar("T")
#: the model function: (items, class names) of one batch → one result per item, in order
RunBatch = Callable[[list[Any], list[str]], Sequence[T]]


@dataclass(frozen=True)
class BatchInfo:
    """How an image was scored: ``size`` images in its forward pass, ``queue_ms`` from submit
    to the start of that pass, ``forward_ms`` the pass itself."""

    size: int
    queue_ms: float
    forward_ms: float


@dataclass
class _Job:
    item: Any
    class_name: str
    future: Future
    queued_at: float


class MicroBatcher(Generic[T]):
    """One model thread serving a bounded queue in micro-batches (see the module doc).

    Args:
        run: scores one batch: ``run(items, class_names)`` → results in the same order.
        batch_size: most images per call of ``run``.
        max_wait_s: how long the oldest queued image may wait for the batch to fill.
        max_queue: most images queued (not yet in a running batch).
    """

    def __init__(
        self,
        run: RunBatch,
        *,
        batch_size: int,
        max_wait_s: float,
        max_queue: int,
        name: str = "tipsomaly-model",
    ) -> None:
        self._run = run
        self.batch_size = positive_int(batch_size, "batch_size")
        self.max_wait_s = in_range(max_wait_s, "max_wait_s", 0)
        self.max_queue = positive_int(max_queue, "max_queue")
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._busy = 0  # images in the running batch
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        # statistics (under the condition's lock)
        self.forwards = 0
        self.images = 0
        self.sizes: Counter[int] = Counter()
        self._batch_s = 0.0  # moving average of a forward's duration

    # -- callers ---------------------------------------------------------------------------
    def start(self) -> MicroBatcher[T]:
        self._thread.start()
        return self

    def submit(self, items: Sequence[tuple[Any, str]]) -> list[Future]:
        """Queue ``(item, class_name)`` pairs, all or none; one future per item, resolving to
        ``(result, BatchInfo)``.

        Raises:
            QueueFullError: they do not fit in the queue now (``retry_after`` in seconds).
            UnavailableError: the batcher is closing.
        """
        now = time.monotonic()
        with self._cond:
            self._check_room(len(items))
            jobs = [_Job(item, name, Future(), now) for item, name in items]
            self._queue.extend(jobs)
            self._cond.notify_all()
        return [j.future for j in jobs]

    def check_room(self, n: int) -> None:
        """Raise as :meth:`submit` would if ``n`` images were submitted now."""
        with self._cond:
            self._check_room(n)

    def _check_room(self, n: int) -> None:
        if self._closing:
            raise UnavailableError("the service is stopping", retry_after=5)
        if len(self._queue) + n > self.max_queue:
            raise QueueFullError(
                f"the queue is full ({len(self._queue)} of {self.max_queue} images wait "
                "for the model); retry later",
                retry_after=self._retry_after(),
            )

    def close(self, timeout: float | None = None) -> bool:
        """Refuse new submits, answer every queued image, stop the thread. Returns whether it
        stopped within ``timeout`` seconds (``None``: waits)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def stats(self) -> dict[str, Any]:
        """Counts so far: forwards, images, the histogram of images per forward, what waits."""
        with self._cond:
            return {
                "forwards": self.forwards,
                "images": self.images,
                "images_per_forward": round(self.images / self.forwards, 3)
                if self.forwards
                else None,
                "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())},
                "queued": len(self._queue),
                "running": self._busy,
                "forward_ms_avg": round(self._batch_s * 1000, 3),
            }

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _retry_after(self) -> int:
        """Seconds until the queue has likely drained (at least 1)."""
        batches = math.ceil((len(self._queue) + self._busy) / self.batch_size) + 1
        return max(1, math.ceil(batches * max(self._batch_s, 0.0) + self.max_wait_s))

    # -- the model thread --------------------------------------------------------------------
    def _next_batch(self) -> list[_Job] | None:
        """Block until a batch is due; ``None`` once closing with nothing queued."""
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            deadline = self._queue[0].queued_at + self.max_wait_s
            while len(self._queue) < self.batch_size and not self._closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            n = min(self.batch_size, len(self._queue))
            batch = [self._queue.popleft() for _ in range(n)]
            self._busy = n
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            # a future cancelled by its caller (gone) is not scored
            live = [j for j in batch if j.future.set_running_or_notify_cancel()]
            if live:
                self._run_batch(live)
            with self._cond:
                self._busy = 0

    def _run_batch(self, jobs: list[_Job]) -> None:
        start = time.monotonic()
        try:
            results = list(self._run([j.item for j in jobs], [j.class_name for j in jobs]))
            if len(results) != len(jobs):
                raise RuntimeError(f"{len(jobs)} images in, {len(results)} results out")
        except Exception as exc:  # noqa: BLE001 - answered to each caller; the thread goes on
            logger.exception("a batch of %d image(s) failed", len(jobs))
            for j in jobs:
                j.future.set_exception(exc)
            return
        end = time.monotonic()
        seconds = end - start
        with self._cond:
            self.forwards += 1
            self.images += len(jobs)
            self.sizes[len(jobs)] += 1
            self._batch_s = seconds if self.forwards == 1 else 0.8 * self._batch_s + 0.2 * seconds
        for j, result in zip(jobs, results, strict=True):
            info = BatchInfo(len(jobs), (start - j.queued_at) * 1000, seconds * 1000)
            j.future.set_result((result, info))


__all__ = ["BatchInfo", "MicroBatcher", "RunBatch"]

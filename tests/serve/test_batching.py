"""The micro-batcher alone: batches fill up to the size or the wait, the queue is bounded,
failures reach every caller, closing answers what is queued. No model, no server."""

from __future__ import annotations

import threading
import time

import pytest

from tipsomaly.serve.batching import MicroBatcher
from tipsomaly.serve.errors import QueueFullError, UnavailableError


class Recorder:
    """A stand-in model: records each batch, optionally waits for ``gate`` first."""

    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.batches: list[list] = []
        self.gate = gate
        self.fail = fail
        self.entered = threading.Event()

    def __call__(self, items, classes):
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail:
            raise RuntimeError("boom")
        self.batches.append(list(zip(items, classes, strict=True)))
        return [f"{c}:{i}" for i, c in zip(items, classes, strict=True)]


def test_concurrent_submits_share_one_forward_in_order():
    run = Recorder()
    b = MicroBatcher(run, batch_size=8, max_wait_s=0.5, max_queue=16).start()
    futures = b.submit([(1, "a"), (2, "a")]) + b.submit([(3, "b")])
    futures += b.submit([(i, "c") for i in range(4, 9)])  # 8 queued: runs without waiting
    answers = [f.result(5) for f in futures]
    assert [a for a, _ in answers] == ["a:1", "a:2", "b:3"] + [f"c:{i}" for i in range(4, 9)]
    assert len(run.batches) == 1 and all(info.size == 8 for _, info in answers)
    assert b.stats()["images_per_forward"] == 8.0
    b.close(5)


def test_a_lone_image_waits_at_most_max_wait():
    run = Recorder()
    b = MicroBatcher(run, batch_size=8, max_wait_s=0.05, max_queue=8).start()
    start = time.monotonic()
    (result, info), = [f.result(5) for f in b.submit([("x", "k")])]  # fmt: skip
    assert result == "k:x" and info.size == 1
    assert 0.04 <= time.monotonic() - start < 2
    assert info.queue_ms >= 40
    b.close(5)


def test_batches_never_exceed_the_batch_size():
    run = Recorder(gate=threading.Event())
    b = MicroBatcher(run, batch_size=3, max_wait_s=0.0, max_queue=20).start()
    first = b.submit([(0, "a")])
    assert run.entered.wait(5)  # the worker is busy with the first image
    rest = b.submit([(i, "a") for i in range(1, 8)])  # queued meanwhile: 3 + 3 + 1
    run.gate.set()
    for f in first + rest:
        f.result(5)
    assert [len(batch) for batch in run.batches] == [1, 3, 3, 1]
    assert b.stats()["batch_sizes"] == {"1": 2, "3": 2}
    b.close(5)


def test_a_full_queue_refuses_at_once_with_retry_after():
    run = Recorder(gate=threading.Event())
    b = MicroBatcher(run, batch_size=1, max_wait_s=0.0, max_queue=2).start()
    busy = b.submit([(0, "a")])
    assert run.entered.wait(5)
    queued = b.submit([(1, "a"), (2, "a")])
    with pytest.raises(QueueFullError, match="queue is full") as caught:
        b.submit([(3, "a")])
    assert caught.value.status == 503 and caught.value.retry_after >= 1
    assert b.queued == 2  # all or none: nothing of the refused request was queued
    run.gate.set()
    assert [f.result(5)[0] for f in busy + queued] == ["a:0", "a:1", "a:2"]
    b.close(5)


def test_a_failing_batch_reaches_each_caller_and_the_worker_goes_on():
    run = Recorder(fail=True)
    b = MicroBatcher(run, batch_size=4, max_wait_s=0.0, max_queue=8).start()
    futures = b.submit([(0, "a"), (1, "a")])
    for f in futures:
        with pytest.raises(RuntimeError, match="boom"):
            f.result(5)
    run.fail = False
    assert b.submit([(2, "a")])[0].result(5)[0] == "a:2"
    b.close(5)


def test_close_answers_the_queue_then_refuses():
    run = Recorder(gate=threading.Event())
    b = MicroBatcher(run, batch_size=2, max_wait_s=0.0, max_queue=8).start()
    futures = b.submit([(i, "a") for i in range(5)])
    assert run.entered.wait(5)
    closer = threading.Thread(target=b.close, args=(10,))
    closer.start()
    time.sleep(0.05)
    with pytest.raises(UnavailableError, match="stopping"):
        b.submit([(9, "a")])
    run.gate.set()
    closer.join(10)
    assert not closer.is_alive()
    assert [f.result(0)[0] for f in futures] == [f"a:{i}" for i in range(5)]


def test_a_cancelled_image_is_not_scored():
    run = Recorder(gate=threading.Event())
    b = MicroBatcher(run, batch_size=1, max_wait_s=0.0, max_queue=8).start()
    busy = b.submit([(0, "a")])
    assert run.entered.wait(5)
    gone = b.submit([(1, "a")])
    assert gone[0].cancel()  # its caller went away while it was queued
    kept = b.submit([(2, "a")])
    run.gate.set()
    assert kept[0].result(5)[0] == "a:2" and busy[0].result(5)[0] == "a:0"
    assert [batch[0][0] for batch in run.batches] == [0, 2]
    b.close(5)

"""One writer per output folder: the lock held by real processes, stale locks taken over."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from tipsomaly.errors import TipsomalyError
from tipsomaly.runners.lock import LOCK_NAME, OutputLock, OutputLockedError

HOLDER = textwrap.dedent(
    """
    import sys, time
    from tipsomaly.runners.lock import OutputLock
    lock = OutputLock(sys.argv[1], command="holder-process --test").acquire()
    print("ready", flush=True)
    sys.stdin.readline()  # hold until the test closes stdin (or kills us)
    lock.release()
    """
)


def _start_holder(folder):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_holder_refuses_a_second_writer_then_sigkill_leaves_a_stale_lock(tmp_path, caplog):
    out = tmp_path / "out"
    holder = _start_holder(out)
    try:
        with pytest.raises(OutputLockedError) as info:
            OutputLock(out).acquire()
        message = str(info.value)
        assert f"pid {holder.pid}" in message and str(out) in message
        assert "holder-process --test" in message
        assert isinstance(info.value, TipsomalyError)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    record = json.loads((out / LOCK_NAME).read_text())
    assert record["pid"] == holder.pid  # the killed run's record is still there
    with caplog.at_level(logging.WARNING, logger="tipsomaly.runners.lock"):
        with OutputLock(out) as lock:
            assert lock.held
            assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"pid {holder.pid}" in caplog.text and "stale" in caplog.text
    assert not (out / LOCK_NAME).exists()  # released: removed


def test_a_holder_that_ends_normally_releases_the_folder(tmp_path):
    out = tmp_path / "out"
    holder = _start_holder(out)
    holder.stdin.close()
    assert holder.wait(timeout=60) == 0
    assert not (out / LOCK_NAME).exists()
    with OutputLock(out) as lock:
        assert lock.held


def test_record_of_a_dead_pid_on_this_host_is_stale(tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    pid = _dead_pid()
    record = {"pid": pid, "host": socket.gethostname(), "started": "earlier", "command": "x"}
    (out / LOCK_NAME).write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING), OutputLock(out) as lock:
        assert lock.held
    assert f"pid {pid}" in caplog.text


def test_a_reused_pid_is_stale_but_the_recording_process_is_not(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    record = {"pid": os.getpid(), "host": socket.gethostname(), "proc_start": "1", "command": "x"}
    (out / LOCK_NAME).write_text(json.dumps(record))
    with OutputLock(out) as lock:  # our pid, but another process start time: a reused pid
        assert lock.held
    live = OutputLock(out)._record()  # this very process, exactly as it records itself
    (out / LOCK_NAME).write_text(json.dumps(live))
    with pytest.raises(OutputLockedError, match=f"pid {os.getpid()}"):
        OutputLock(out).acquire()


def test_a_holder_on_another_host_is_refused_with_what_to_delete(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    record = {"pid": 1, "host": "elsewhere.example", "command": "tipsomaly eval"}
    (out / LOCK_NAME).write_text(json.dumps(record))
    with pytest.raises(OutputLockedError) as info:
        OutputLock(out).acquire()
    assert "elsewhere.example" in str(info.value)
    assert f"delete {out / LOCK_NAME}" in str(info.value)


def test_two_locks_in_one_process_conflict_and_garbage_is_taken_over(tmp_path, caplog):
    out = tmp_path / "out"
    with OutputLock(out), pytest.raises(OutputLockedError, match=f"pid {os.getpid()}"):
        OutputLock(out).acquire()
    (out / LOCK_NAME).write_bytes(b"\x00garbage")
    with caplog.at_level(logging.WARNING), OutputLock(out) as lock:
        assert lock.held
    assert "unreadable lock file" in caplog.text

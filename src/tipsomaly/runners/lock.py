"""One writer per output folder: ``OUT/.tipsomaly.lock``, with stale-lock detection.

A run that writes into a folder (``predict``, ``eval``, ``train``) holds the folder's lock for
its whole duration. The lock file records the holder: process id, host name, boot id, the
process's start time and its command line. Two mechanisms decide whether a lock is held:

* an exclusive ``flock`` on the file, which the kernel drops when the holder exits or is
  killed (SIGKILL included), so a crashed run never blocks the next one on this host;
* the recorded holder: a lock left by a process that is gone (same host, and its pid is not
  running, or is now another process, or the machine rebooted since) is *stale*: it is taken
  over with a warning. A holder on another host cannot be checked from here: the second run is
  refused, naming that host and the file to delete if no run is active there.

A second run on a held folder fails at once with :class:`OutputLockedError` (a
:class:`~tipsomaly.errors.TipsomalyError`) naming the holder's pid, command and the folder.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

from ..errors import OutputError, TipsomalyError

logger = logging.getLogger(__name__)

LOCK_NAME = ".tipsomaly.lock"

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: the recorded holder alone decides
    fcntl = None  # type: ignore[assignment]


class OutputLockedError(TipsomalyError, RuntimeError):
    """Another live run holds the output folder's lock."""

    def __init__(self, folder: str | os.PathLike, holder: dict[str, Any], hint: str = "") -> None:
        self.folder = str(folder)
        self.holder = dict(holder)
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
        started = holder.get("started")
        if started:
            who += f", started {started}"
        command = holder.get("command")
        if command:
            who += f": {command}"
        text = f"{self.folder} is in use by another tipsomaly run ({who})"
        text += hint or "; wait for it to finish or choose another output folder"
        super().__init__(text)

    def __reduce__(self):  # picklable across worker processes
        return (OutputLockedError, (self.folder, self.holder))


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _process_start(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (clock ticks since boot), where readable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _command_line() -> str:
    argv = [os.path.basename(sys.argv[0]) if sys.argv else "python", *sys.argv[1:]]
    text = " ".join(argv)
    text = os.fsencode(text).decode("utf-8", "backslashreplace")
    return text if len(text) <= 300 else text[:297] + "..."


def holder_is_stale(holder: dict[str, Any]) -> bool | None:
    """True if the recorded holder is certainly gone, False if it may be running, None when
    it cannot be told from here (another host)."""
    if holder.get("host") != socket.gethostname():
        return None
    boot = _boot_id()
    if boot and holder.get("boot_id") and holder["boot_id"] != boot:
        return True  # rebooted since
    pid = holder.get("pid")
    if not isinstance(pid, int) or not _pid_alive(pid):
        return True
    recorded, current = holder.get("proc_start"), _process_start(pid)
    return bool(recorded and current and recorded != current)  # pid reused by another process


class OutputLock:
    """The lock of one output folder; use as a context manager (or :meth:`acquire` /
    :meth:`release`).

    Args:
        folder: the output folder (created if missing).
        command: what to record as the holder's command (default: this process's argv).
    """

    def __init__(self, folder: str | os.PathLike, command: str | None = None) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = command
        self._fd: int | None = None
        self._token = uuid.uuid4().hex

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _record(self) -> dict[str, Any]:
        pid = os.getpid()
        return {
            "pid": pid,
            "host": socket.gethostname(),
            "boot_id": _boot_id(),
            "proc_start": _process_start(pid),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": self.command or _command_line(),
            "token": self._token,
        }

    def acquire(self) -> OutputLock:
        """Take the lock or raise :class:`OutputLockedError`; stale locks are taken over.

        Raises:
            OutputLockedError: a live run (or one on another host) holds the folder.
            OutputError: the folder or its lock file cannot be written.
        """
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this object")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(self.folder, exc) from None
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputError(self.path, exc) from None
            try:
                if self._try_take(fd):
                    self._fd = fd
                    return self
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the file was replaced under us: try again
        raise OutputLockedError(self.folder, self.holder(), "; the lock file keeps changing")

    def _try_take(self, fd: int) -> bool:
        flocked = False
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                flocked = True
            except BlockingIOError:
                raise OutputLockedError(self.folder, self.holder()) from None
            except OSError as exc:  # a file system without flock: the record alone decides
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise OutputError(self.path, exc) from None
        # the lock file we locked must still be the one at the path (a releasing run unlinks it)
        try:
            if os.stat(self.path).st_ino != os.fstat(fd).st_ino:
                return False
        except FileNotFoundError:
            return False
        holder = self._read_fd(fd)
        if holder:
            stale = holder_is_stale(holder)
            if stale is None:
                raise OutputLockedError(
                    self.folder,
                    holder,
                    f"; if no run is active on {holder.get('host')}, delete {self.path}",
                )
            if not stale and (not flocked or holder.get("proc_start") is not None):
                # alive and the very process that wrote the record (the flock alone is not
                # trusted: some file systems accept every flock)
                raise OutputLockedError(self.folder, holder)
            logger.warning(
                "taking over the stale lock of %s: pid %s (started %s) is no longer running",
                self.folder,
                holder.get("pid"),
                holder.get("started"),
            )
        elif _file_size(fd):
            logger.warning("taking over the unreadable lock file %s", self.path)
        self._write_fd(fd, self._record())
        return True

    def _write_fd(self, fd: int, record: dict[str, Any]) -> None:
        data = (json.dumps(record) + "\n").encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        except OSError as exc:
            raise OutputError(self.path, exc) from None

    @staticmethod
    def _read_fd(fd: int) -> dict[str, Any] | None:
        try:
            data = os.pread(fd, 65536, 0)
            holder = json.loads(data.decode("utf-8"))
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def holder(self) -> dict[str, Any]:
        """The record in the lock file (empty when there is none or it is unreadable)."""
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def release(self) -> None:
        """Give the lock back: the lock file is removed (if still ours), then unlocked."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    os.unlink(self.path)
        finally:
            os.close(fd)

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _file_size(fd: int) -> int:
    try:
        return os.fstat(fd).st_size
    except OSError:
        return 0

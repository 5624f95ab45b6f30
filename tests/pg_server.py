"""A real PostgreSQL server for the tests: ``initdb`` into a temporary folder, ``pg_ctl start``
on a free port of 127.0.0.1 (no Unix socket), ``pg_ctl stop -m immediate`` at the end.

The binaries: ``pg_ctl`` on PATH (with ``initdb`` and ``postgres`` beside it), else Debian's
``/usr/lib/postgresql/<version>/bin`` (the ``postgresql`` package; scripts/test.sh installs it
where apt-get is available). PostgreSQL refuses to run as root: as root, the server runs as the
unprivileged user ``nobody`` through ``runuser`` (or ``su``), in a folder it owns. Where none of
that works, :func:`start` says why and the tests using it skip with that reason.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

UNPRIVILEGED = "nobody"


def binaries() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres, or None."""
    found = shutil.which("pg_ctl")
    candidates = [Path(os.path.realpath(found)).parent] if found else []
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for folder in candidates:
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    """A running server: ``url`` of its ``postgres`` database (user ``postgres``, trust)."""

    root: Path
    port: int
    bin: Path
    prefix: list[str]

    @property
    def url(self) -> str:
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.database_url(name)

    def stop(self) -> None:
        subprocess.run(
            [*self.prefix, str(self.bin / "pg_ctl"), "-D", str(self.root / "data"),
             "-m", "immediate", "stop"],
            capture_output=True, timeout=60,
        )  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)


def start() -> PostgresServer | str:
    """A started server, or the reason there is none (a string)."""
    folder = binaries()
    if folder is None:
        return (
            "no PostgreSQL binaries (pg_ctl, initdb, postgres on PATH or in "
            "/usr/lib/postgresql/*/bin): apt-get install postgresql"
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (the records extra)"
    prefix: list[str] = []
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam(UNPRIVILEGED)
        except KeyError:
            return f"running as root and there is no user {UNPRIVILEGED!r} to run PostgreSQL as"
        runner = shutil.which("runuser") or shutil.which("su")
        if runner is None:
            return "running as root without runuser or su to run PostgreSQL as another user"
        if runner.endswith("runuser"):
            prefix = [runner, "-u", UNPRIVILEGED, "--"]
        else:
            prefix = [runner, UNPRIVILEGED, "-s", "/bin/sh", "-c", 'exec "$0" "$@"']
    root = Path(tempfile.mkdtemp(prefix="tipsomaly-pg-"))
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    port = _free_port()
    data, log = root / "data", root / "server.log"
    init = subprocess.run(
        [*prefix, str(folder / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
         "-E", "UTF8", "--no-sync"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        return f"initdb failed: {(init.stderr or init.stdout).strip()[-300:]}"
    options = (
        f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='' "
        "-c fsync=off -c max_connections=200"
    )
    run = subprocess.run(
        [*prefix, str(folder / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log),
         "-w", "-t", "60", "start"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if run.returncode != 0:
        text = ""
        with contextlib.suppress(OSError):
            text = log.read_text(errors="replace")
        shutil.rmtree(root, ignore_errors=True)
        return f"pg_ctl start failed: {(text or run.stderr).strip()[-300:]}"
    return PostgresServer(root, port, folder, prefix)

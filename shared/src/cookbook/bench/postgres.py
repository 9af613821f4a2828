"""A throwaway PostgreSQL server for DBOS + Postgres: Debian's postgresql, in a temporary directory.

Started on a free port, as the `postgres` user when the bench runs as root (PostgreSQL refuses to
run as root), and stopped by its pid, also when the run fails.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

POSTGRES_BIN = Path(os.environ.get("COOKBOOK_POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))
START_TIMEOUT_SECONDS = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


@dataclass(frozen=True)
class PostgresServer:
    url: str  # postgresql://...
    pid: int  # the process started (runuser, as root), whose descendants are the server's


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Yield a fresh server; stop it on the way out.

    Its directory is a temporary one of its own: the `postgres` user must be able to reach it,
    which the bench's private work directory does not allow.
    """
    if not (POSTGRES_BIN / "initdb").exists():
        raise SystemExit(
            f"cookbook bench --postgres: no PostgreSQL under {POSTGRES_BIN} "
            "(apt-get install postgresql, or set COOKBOOK_POSTGRES_BIN)"
        )
    workdir = Path(tempfile.mkdtemp(prefix="cookbook-bench-postgres-"))
    data = workdir / "pgdata"
    data.mkdir()
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        for path in (workdir, data):
            os.chown(path, user.pw_uid, user.pw_gid)
    initdb = subprocess.run(
        _as_server_user(
            [str(POSTGRES_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
        ),
        capture_output=True,
        text=True,
        check=False,
    )
    if initdb.returncode != 0:
        shutil.rmtree(workdir, ignore_errors=True)
        raise RuntimeError(f"initdb failed ({initdb.returncode}): {initdb.stderr[-2000:]}")
    port = _free_port()
    # fsync and synchronous_commit stay at their defaults (on): the same durability as the rest.
    server = subprocess.Popen(
        _as_server_user(
            [
                str(POSTGRES_BIN / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-k",
                str(workdir),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=300",
            ]
        ),
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "postgres.log").open("ab"),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            ready = subprocess.run(
                [str(POSTGRES_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                capture_output=True,
                check=False,
            )
            if ready.returncode == 0:
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start on port {port}")
            time.sleep(0.1)
        yield PostgresServer(f"postgresql://postgres@127.0.0.1:{port}/postgres", server.pid)
    finally:
        # runuser forwards the signal to postgres; SIGINT is its "fast shutdown". The process
        # group (its own session) is signalled so nothing is left if runuser itself went away.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        shutil.rmtree(workdir, ignore_errors=True)

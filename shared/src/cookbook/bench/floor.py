"""The physical floor: one fsync'd append and one fsync'd SQLite commit on the same disk."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class FloorFigures:
    what: str
    seconds: list[float]


def measure_floor(workdir: Path, samples: int = 400) -> list[FloorFigures]:
    import sqlite3

    workdir.mkdir(parents=True, exist_ok=True)
    record = b'{"now":1700000000000,"req":{"kind":"task.fence","id":"x"}}' + b" " * 200 + b"\n"
    fd = os.open(workdir / "floor.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    appends = []
    try:
        for _ in range(samples):
            started = time.perf_counter()
            os.write(fd, record)
            os.fsync(fd)
            appends.append(time.perf_counter() - started)
    finally:
        os.close(fd)
    db = sqlite3.connect(workdir / "floor.sqlite", isolation_level=None)
    commits = []
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # fsync the WAL on every commit
        db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB)")
        for i in range(samples):
            started = time.perf_counter()
            db.execute("BEGIN")
            db.execute("INSERT INTO t (v) VALUES (?)", (record + str(i).encode(),))
            db.execute("COMMIT")
            commits.append(time.perf_counter() - started)
    finally:
        db.close()
    return [
        FloorFigures(
            "fsync'd append of one ~250-byte record to a file (the dev server's log)", appends
        ),
        FloorFigures("fsync'd SQLite commit of one row (WAL mode, synchronous=FULL)", commits),
    ]

"""Finished executions, on disk in SQLite and read on demand, so memory holds only live state.

A promise that is settled, awaited by nobody and listened to by nobody, whose task (if any) is
fulfilled, can never change again: every `ServerState` transition either requires a pending
promise or a task that is not fulfilled, or leaves such a promise as it is. Compaction moves
whole finished branches here (a branch: a task's promise and the `ctx.run` steps under it, which
a task's preload reads together), one compressed row per branch, so the in-memory dicts keep only
what can still change. Lookups by id fall through to this archive, so a finished execution stays
readable: `promise.get`, an idempotent re-create, `promise.search`, `make tree`.

Rows carry a number that only grows; a snapshot names the last row it counts on, and rows past it
(written by a compaction that was killed before its snapshot was renamed into place) are deleted
at open, so the archive always matches the snapshot it is replayed with.
"""

from __future__ import annotations

import sqlite3
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from resonate.connections.local import DurablePromise, Task

SCHEMA = """
CREATE TABLE IF NOT EXISTS branches (
    row INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS branches_by_origin ON branches (origin);
CREATE TABLE IF NOT EXISTS ids (
    id TEXT PRIMARY KEY,
    row INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tags (
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    id TEXT NOT NULL,
    row INTEGER NOT NULL,
    PRIMARY KEY (key, value, id)
) WITHOUT ROWID;
"""

# Decoded branches kept for repeated reads of the same execution (a tree view, a re-create).
CACHED_BRANCHES = 256


class _Branch(msgspec.Struct, array_like=True):
    promises: list[DurablePromise]
    tasks: list[Task]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Branch)


@dataclass(frozen=True)
class ArchivedBranch:
    """One finished branch: its promises in creation order, and their fulfilled tasks."""

    promises: tuple[DurablePromise, ...]
    tasks: tuple[Task, ...]


class Archive:
    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        # isolation_level=None: transactions are explicit (BEGIN/COMMIT in `add`).
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # FULL: a COMMIT returns once the rows are on disk; the snapshot that counts on them is
        # written after it. The default rollback journal keeps the archive to one file at rest.
        self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'OFF'}")
        self._db.executescript(SCHEMA)
        self._cache: OrderedDict[int, ArchivedBranch] = OrderedDict()
        # Kept in memory: until the first compaction the archive is empty, and every lookup of a
        # promise that is not in memory (each create of a new id) can skip the query.
        self._last_row = self.last_row()

    def close(self) -> None:
        self._db.close()

    # -- consistency with the snapshot --------------------------------------------------------

    def last_row(self) -> int:
        found = self._db.execute("SELECT max(row) FROM branches").fetchone()[0]
        return int(found) if found is not None else 0

    def truncate_after(self, row: int) -> int:
        """Forget rows past `row`: a compaction wrote them but its snapshot never landed."""
        if self.last_row() <= row:
            return 0
        self._db.execute("BEGIN")
        self._db.execute("DELETE FROM ids WHERE row > ?", (row,))
        self._db.execute("DELETE FROM tags WHERE row > ?", (row,))
        dropped = self._db.execute("DELETE FROM branches WHERE row > ?", (row,)).rowcount
        self._db.execute("COMMIT")
        self._cache.clear()
        self._last_row = self.last_row()
        return int(dropped)

    # -- writes -------------------------------------------------------------------------------

    def add(self, branches: Iterable[ArchivedBranch]) -> int:
        """Store finished branches in one transaction, durable on return; the last row."""
        self._db.execute("BEGIN")
        try:
            for branch in branches:
                origin = branch.promises[0].tags.get("resonate:origin", branch.promises[0].id)
                body = zlib.compress(
                    _encoder.encode(_Branch(list(branch.promises), list(branch.tasks)))
                )
                cursor = self._db.execute(
                    "INSERT INTO branches (origin, body) VALUES (?, ?)", (origin, body)
                )
                row = cursor.lastrowid
                self._db.executemany(
                    "INSERT OR REPLACE INTO ids (id, row) VALUES (?, ?)",
                    [(p.id, row) for p in branch.promises],
                )
                self._db.executemany(
                    "INSERT OR REPLACE INTO tags (key, value, id, row) VALUES (?, ?, ?, ?)",
                    [
                        (key, value, p.id, row)
                        for p in branch.promises
                        for key, value in p.tags.items()
                        if not key.startswith("resonate:")
                    ],
                )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._last_row = self.last_row()
        return self._last_row

    # -- reads --------------------------------------------------------------------------------

    def _branch(self, row: int) -> ArchivedBranch:
        cached = self._cache.get(row)
        if cached is not None:
            self._cache.move_to_end(row)
            return cached
        body = self._db.execute("SELECT body FROM branches WHERE row = ?", (row,)).fetchone()[0]
        decoded = _decoder.decode(zlib.decompress(body))
        branch = ArchivedBranch(tuple(decoded.promises), tuple(decoded.tasks))
        self._cache[row] = branch
        if len(self._cache) > CACHED_BRANCHES:
            self._cache.popitem(last=False)
        return branch

    def _row_of(self, promise_id: str) -> int | None:
        if self._last_row == 0:
            return None
        found = self._db.execute("SELECT row FROM ids WHERE id = ?", (promise_id,)).fetchone()
        return int(found[0]) if found is not None else None

    def branch_of(self, promise_id: str) -> ArchivedBranch | None:
        row = self._row_of(promise_id)
        return self._branch(row) if row is not None else None

    def promise(self, promise_id: str) -> DurablePromise | None:
        branch = self.branch_of(promise_id)
        if branch is None:
            return None
        return next((p for p in branch.promises if p.id == promise_id), None)

    def task(self, task_id: str) -> Task | None:
        branch = self.branch_of(task_id)
        if branch is None:
            return None
        return next((t for t in branch.tasks if t.id == task_id), None)

    def of_origin(self, origin: str) -> Iterator[ArchivedBranch]:
        rows = self._db.execute("SELECT row FROM branches WHERE origin = ?", (origin,)).fetchall()
        for (row,) in rows:
            yield self._branch(int(row))

    def tagged(self, key: str, value: str) -> Iterator[DurablePromise]:
        rows = self._db.execute(
            "SELECT id, row FROM tags WHERE key = ? AND value = ?", (key, value)
        ).fetchall()
        for promise_id, row in rows:
            found = next((p for p in self._branch(int(row)).promises if p.id == promise_id), None)
            if found is not None:
                yield found

    def everything(self) -> Iterator[ArchivedBranch]:
        """Every branch (a scan that decodes the whole archive: for unnarrowed searches)."""
        rows = self._db.execute("SELECT body FROM branches ORDER BY row").fetchall()
        for (body,) in rows:
            decoded = _decoder.decode(zlib.decompress(body))
            yield ArchivedBranch(tuple(decoded.promises), tuple(decoded.tasks))

    def counts(self) -> dict[str, Any]:
        branches = self._db.execute("SELECT count(*) FROM branches").fetchone()[0]
        promises = self._db.execute("SELECT count(*) FROM ids").fetchone()[0]
        return {"branches": int(branches), "promises": int(promises)}

"""The steps: the hand-off between waiters and the coordinator, and the shared resource itself.

The hand-off is made of promises whose ids the example chooses (`<mutex>.slot.<n>`,
`<mutex>.inbox.<n>`): creating a promise is first-writer-wins (a second create of the same id
returns the first one, untouched), so a slot is claimed by exactly one waiter with no lock
table, and every step here may run again after a crash and find what it did the first time.

The resource is a report generator that may not run twice at once. Its store (SQLite, a file the
example owns) records each use: who held it, under which turn, when it started and ended. The
turn is a fencing token: a use whose turn is older than one that already started is refused.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resonate.context import Context
from resonate.error import ServerError
from resonate.resonate import Resonate
from resonate.types import PromiseRecord, Value

# The hand-off records outlive any wait on them; a day bounds what the server keeps.
RECORD_TTL_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class Claim:
    """A waiter's place in the queue: its turn and the promise its grant goes to."""

    turn: int
    holder: str
    grant_id: str


@dataclass(frozen=True)
class Grant:
    """What the coordinator hands a waiter: its turn (the fence) and the promise to release."""

    turn: int
    release_id: str


@dataclass(frozen=True)
class Hub:
    """The Resonate client the hand-off steps create and settle promises with."""

    resonate: Resonate


@dataclass(frozen=True)
class ReportStore:
    """The shared resource: where each use of the report generator is recorded."""

    path: Path

    def connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS uses (mutex TEXT NOT NULL, turn INTEGER NOT NULL,"
            " holder TEXT NOT NULL, pid INTEGER NOT NULL, started_at REAL NOT NULL,"
            " finished_at REAL, status TEXT NOT NULL, PRIMARY KEY (mutex, turn))"
        )
        return db


def report_store() -> ReportStore:
    return ReportStore(Path(os.environ.get("MUTEX_DB", ".cookbook/mutex/reports.db")))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _claim_of(record_param: Value) -> Claim | None:
    data: Any = record_param.data
    if not isinstance(data, dict):
        return None
    return Claim(int(data["turn"]), str(data["holder"]), str(data["grant_id"]))


async def enqueue(ctx: Context, mutex: str, holder: str, grant_id: str) -> int:
    """Claim the first free slot, then ring the coordinator's inbox for it if it is open.

    Both sides write before they read (here: claim, then look for the inbox; the coordinator:
    open the inbox, then look for the claim), so at least one of them sees the other and the
    inbox is resolved; both resolving it is harmless, they resolve it with the same claim.
    """
    hub = ctx.get_dependency(Hub).resonate
    turn = 1
    while True:
        claim = {"turn": turn, "holder": holder, "grant_id": grant_id}
        record = await hub.promises.create(
            f"{mutex}.slot.{turn}", _now_ms() + RECORD_TTL_MS, Value(data=claim), {}
        )
        taken = _claim_of(record.param)
        if taken is not None and taken.grant_id == grant_id:  # ours (now, or before a crash)
            break
        turn += 1
    inbox = await _get_if_created(hub, f"{mutex}.inbox.{turn}")
    if inbox is None:  # not open yet: the coordinator finds the claim when it opens it
        return turn
    await _resolve_once(hub, str(inbox.param.data), claim)
    return turn


async def open_turn(ctx: Context, mutex: str, turn: int, inbox_id: str) -> None:
    """Publish where the claim for `turn` goes, then deliver a claim that came first."""
    hub = ctx.get_dependency(Hub).resonate
    await hub.promises.create(
        f"{mutex}.inbox.{turn}", _now_ms() + RECORD_TTL_MS, Value(data=inbox_id), {}
    )
    slot = await _get_if_created(hub, f"{mutex}.slot.{turn}")
    if slot is None:  # nobody claimed it yet: the waiter that does will resolve the inbox
        return
    await _resolve_once(hub, inbox_id, slot.param.data)


async def grant(ctx: Context, grant_id: str, turn: int, release_id: str) -> bool:
    """Hand the resource over; False if the waiter stopped waiting (its grant timed out)."""
    hub = ctx.get_dependency(Hub).resonate
    record = await _resolve_once(hub, grant_id, {"turn": turn, "release_id": release_id})
    return record.state == "resolved"


async def release(ctx: Context, release_id: str) -> None:
    """Give the resource back. After the coordinator's hold limit this changes nothing."""
    await _resolve_once(ctx.get_dependency(Hub).resonate, release_id, None)


async def _get_if_created(hub: Resonate, promise_id: str) -> PromiseRecord | None:
    """The promise, or None if nobody created it yet.

    Only the server's "not found" means that. Any other failure (the server restarting, a 503)
    must raise, so the step is retried: read as "not there yet", it would leave the other side's
    write unseen by both sides, and the inbox pending until its timeout.
    """
    try:
        return await hub.promises.get(promise_id)
    except ServerError as exc:
        if exc.code == 404:
            return None
        raise


async def _resolve_once(hub: Resonate, promise_id: str, data: Any) -> PromiseRecord:
    """Resolve a promise unless it is settled already (by this step before a crash, by the
    other side of the hand-off, or by its timeout): a settled promise keeps its first value
    anyway, and asking again would be work done twice in the server's journal."""
    record = await hub.promises.get(promise_id)
    if record.state != "pending":
        return record
    return await hub.promises.resolve(promise_id, Value(data=data))


async def generate_report(
    ctx: Context, mutex: str, holder: str, turn: int, work_seconds: float
) -> str:
    """Use the resource: record the start, do the work, record the end, fenced by `turn`.

    Returns "done", or "fenced" when a later turn has started meanwhile (this holder was
    presumed dead and the coordinator moved on): its report is discarded, not published.
    """
    store = ctx.get_dependency(ReportStore)
    with closing(store.connect()) as db:
        if _superseded(db, mutex, turn):
            _mark_fenced(db, mutex, turn, holder)
            return "fenced"
        # A rerun of this step (its worker died mid-report) starts the report again.
        db.execute(
            "INSERT INTO uses (mutex, turn, holder, pid, started_at, status)"
            " VALUES (?, ?, ?, ?, ?, 'running') ON CONFLICT (mutex, turn) DO UPDATE SET"
            " pid = excluded.pid, started_at = excluded.started_at, finished_at = NULL,"
            " status = 'running'",
            (mutex, turn, holder, os.getpid(), time.time()),
        )
    print(f"{holder} is generating the report (turn {turn})", flush=True)
    await asyncio.sleep(work_seconds)
    with closing(store.connect()) as db:
        db.execute("BEGIN IMMEDIATE")
        if _superseded(db, mutex, turn):
            db.execute("ROLLBACK")
            _mark_fenced(db, mutex, turn, holder)
            return "fenced"
        db.execute(
            "UPDATE uses SET finished_at = ?, status = 'done' WHERE mutex = ? AND turn = ?",
            (time.time(), mutex, turn),
        )
        db.execute("COMMIT")
    return "done"


def _superseded(db: sqlite3.Connection, mutex: str, turn: int) -> bool:
    row = db.execute(
        "SELECT 1 FROM uses WHERE mutex = ? AND turn > ? LIMIT 1", (mutex, turn)
    ).fetchone()
    return row is not None


def _mark_fenced(db: sqlite3.Connection, mutex: str, turn: int, holder: str) -> None:
    db.execute(
        "INSERT INTO uses (mutex, turn, holder, pid, started_at, status)"
        " VALUES (?, ?, ?, ?, ?, 'fenced') ON CONFLICT (mutex, turn) DO UPDATE SET"
        " status = 'fenced'",
        (mutex, turn, holder, os.getpid(), time.time()),
    )

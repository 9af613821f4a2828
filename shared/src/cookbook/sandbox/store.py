"""SQLite persistence for the provider sandbox, and the read-only reader tests use."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

type JSONObject = dict[str, Any]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    provider TEXT NOT NULL,
    action TEXT NOT NULL,
    idempotency_key TEXT,
    body TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    replayed INTEGER NOT NULL,
    injected_fault INTEGER NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_key ON requests (idempotency_key);

CREATE TABLE IF NOT EXISTS effects (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    provider TEXT NOT NULL,
    action TEXT NOT NULL,
    idempotency_key TEXT,
    resource_id TEXT NOT NULL,
    body TEXT NOT NULL,
    response TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS effects_key ON effects (idempotency_key);

-- The PRIMARY KEY is the last line of defence against a key producing two effects.
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    action TEXT NOT NULL,
    body TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    response TEXT NOT NULL,
    created_at REAL NOT NULL
);

-- Reservations and charges, so cancel/refund can check what exists and what state it is in.
CREATE TABLE IF NOT EXISTS resources (
    id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    related_id TEXT,
    body TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);

-- Reservation requests cancelled by their Idempotency-Key before they arrived: refused if they do.
CREATE TABLE IF NOT EXISTS voided_keys (
    key TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    void_id TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


# The idempotency contract every provider of the sandbox keeps (Stripe's spelling and bound).
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
REPLAYED_HEADER: Final = "Idempotent-Replayed"
MAX_IDEMPOTENCY_KEY_LENGTH: Final = 255


def canonical_json(value: Any) -> str:
    """Key-order-independent JSON, so equal bodies compare equal as strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _reject_constants(name: str) -> Any:
    # NaN/Infinity are not JSON; accepting them would make the response unrenderable.
    raise ValueError(f"{name} is not valid JSON")


def decode_json(raw: bytes) -> tuple[Any, str | None]:
    """A request body's JSON, or why it is not JSON (NaN and Infinity are not)."""
    try:
        return json.loads(raw, parse_constant=_reject_constants), None
    except ValueError as exc:
        return None, str(exc)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    id: int
    provider: str
    action: str
    idempotency_key: str | None
    # Decoded JSON; a body that was not valid JSON is kept as its raw text.
    body: Any
    status_code: int
    replayed: bool
    injected_fault: bool
    started_at: float
    finished_at: float


@dataclass(frozen=True, slots=True)
class EffectRecord:
    id: int
    provider: str
    action: str
    idempotency_key: str | None
    resource_id: str
    body: JSONObject
    response: JSONObject
    # Taken when the request began being handled (before injected latency), so that
    # overlapping executions can be proven from the records alone.
    started_at: float
    finished_at: float


@dataclass(frozen=True, slots=True)
class Resource:
    id: str
    provider: str
    kind: str
    status: str
    related_id: str | None
    body: JSONObject


@dataclass(frozen=True, slots=True)
class Incoming:
    """A validated provider call, ready to be executed."""

    provider: str
    action: str
    idempotency_key: str | None
    body: JSONObject
    started_at: float

    @property
    def canonical_body(self) -> str:
        return canonical_json(self.body)


@dataclass(frozen=True, slots=True)
class ActionResult:
    status_code: int
    body: JSONObject
    # None means the call changed nothing in the outside world (e.g. a repeated cancel).
    effect_resource_id: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    status_code: int
    # Exact response text, so a replay is byte-for-byte the original response.
    body: str
    kind: Literal["executed", "replayed", "conflict"]


class Transaction:
    """Resource access for an action, valid only inside SandboxStore.execute."""

    def __init__(self, conn: sqlite3.Connection, now: float) -> None:
        self._conn = conn
        self._now = now

    def get(self, resource_id: str) -> Resource | None:
        row = self._conn.execute(
            "SELECT id, provider, kind, status, related_id, body FROM resources WHERE id = ?",
            (resource_id,),
        ).fetchone()
        if row is None:
            return None
        return Resource(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]))

    def create(
        self, resource_id: str, provider: str, kind: str, status: str, body: JSONObject
    ) -> None:
        self._conn.execute(
            "INSERT INTO resources (id, provider, kind, status, related_id, body, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, NULL, ?, ?, ?)",
            (resource_id, provider, kind, status, canonical_json(body), self._now, self._now),
        )

    def stored_response(self, key: str) -> tuple[str, str, JSONObject] | None:
        """(provider, action, response) of the request that succeeded under `key`, if any."""
        row = self._conn.execute(
            "SELECT provider, action, response FROM idempotency WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else (row[0], row[1], json.loads(row[2]))

    def void_of(self, key: str) -> str | None:
        """The void recorded for a request key (see `void`), if any."""
        row = self._conn.execute("SELECT void_id FROM voided_keys WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def void(self, key: str, provider: str, void_id: str) -> None:
        """Record that a request with this key must be refused if it ever arrives."""
        self._conn.execute(
            "INSERT INTO voided_keys (key, provider, void_id, created_at) VALUES (?, ?, ?, ?)",
            (key, provider, void_id, self._now),
        )

    def update(self, resource_id: str, status: str, related_id: str | None = None) -> None:
        self._conn.execute(
            "UPDATE resources SET status = ?, related_id = ?, updated_at = ? WHERE id = ?",
            (status, related_id, self._now, resource_id),
        )


def _prefix_clause(key_prefix: str | None) -> tuple[str, tuple[Any, ...]]:
    if key_prefix is None:
        return "", ()
    # substr() instead of LIKE so that '%' and '_' in keys need no escaping.
    return " WHERE substr(idempotency_key, 1, length(?)) = ?", (key_prefix, key_prefix)


def _decode_body(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _select_requests(conn: sqlite3.Connection, key_prefix: str | None) -> list[RequestRecord]:
    where, params = _prefix_clause(key_prefix)
    rows = conn.execute(
        "SELECT id, provider, action, idempotency_key, body, status_code, replayed,"
        f" injected_fault, started_at, finished_at FROM requests{where}"
        " ORDER BY started_at, id",
        params,
    ).fetchall()
    return [
        RequestRecord(
            id=r[0],
            provider=r[1],
            action=r[2],
            idempotency_key=r[3],
            body=_decode_body(r[4]),
            status_code=r[5],
            replayed=bool(r[6]),
            injected_fault=bool(r[7]),
            started_at=r[8],
            finished_at=r[9],
        )
        for r in rows
    ]


def _select_effects(conn: sqlite3.Connection, key_prefix: str | None) -> list[EffectRecord]:
    where, params = _prefix_clause(key_prefix)
    rows = conn.execute(
        "SELECT id, provider, action, idempotency_key, resource_id, body, response,"
        f" started_at, finished_at FROM effects{where} ORDER BY started_at, id",
        params,
    ).fetchall()
    return [
        EffectRecord(
            id=r[0],
            provider=r[1],
            action=r[2],
            idempotency_key=r[3],
            resource_id=r[4],
            body=json.loads(r[5]),
            response=json.loads(r[6]),
            started_at=r[7],
            finished_at=r[8],
        )
        for r in rows
    ]


class SandboxStore:
    """The sandbox's single read-write connection.

    Every method is synchronous and short; callers on the event loop never await while
    holding the lock, so a check-then-write (idempotency lookup, cancel state) is atomic.
    """

    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self._lock = threading.Lock()
        # isolation_level=None: transactions are begun explicitly (BEGIN IMMEDIATE) so the
        # write lock is taken before the idempotency lookup, not at the first write.
        self._conn = sqlite3.connect(
            os.fspath(db_path), check_same_thread=False, isolation_level=None, timeout=10.0
        )
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable against process crashes in WAL mode, which is what the
            # crash tests exercise; FULL would only add fsyncs for power loss.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def record_request(
        self,
        *,
        provider: str,
        action: str,
        idempotency_key: str | None,
        body_text: str,
        status_code: int,
        started_at: float,
        injected_fault: bool = False,
    ) -> None:
        """Record a request that was answered without executing (404, 422, injected fault...)."""
        with self._transaction() as conn:
            self._insert_request(
                conn,
                provider=provider,
                action=action,
                idempotency_key=idempotency_key,
                body_text=body_text,
                status_code=status_code,
                replayed=False,
                injected_fault=injected_fault,
                started_at=started_at,
            )

    def execute(self, call: Incoming, action: Callable[[Transaction], ActionResult]) -> Outcome:
        """Run an action exactly once per idempotency key.

        The idempotency lookup, the action's state changes, the effect row, the stored
        response and the request row commit together, so a crash never leaves an effect
        without its stored response (which would let a retry apply it twice).
        """
        with self._transaction() as conn:
            outcome = self._replay_or_conflict(conn, call)
            if outcome is not None:
                self._insert_request(
                    conn,
                    provider=call.provider,
                    action=call.action,
                    idempotency_key=call.idempotency_key,
                    body_text=call.canonical_body,
                    status_code=outcome.status_code,
                    replayed=outcome.kind == "replayed",
                    injected_fault=False,
                    started_at=call.started_at,
                )
                return outcome

            result = action(Transaction(conn, time.time()))
            # Not canonical: keep the provider's field order ("id" first) for readability.
            response_text = json.dumps(result.body, separators=(",", ":"), ensure_ascii=False)
            finished_at = time.time()
            if result.effect_resource_id is not None:
                conn.execute(
                    "INSERT INTO effects (provider, action, idempotency_key, resource_id, body,"
                    " response, started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        call.provider,
                        call.action,
                        call.idempotency_key,
                        result.effect_resource_id,
                        call.canonical_body,
                        response_text,
                        call.started_at,
                        finished_at,
                    ),
                )
            # Only successes are remembered: a 404 (say, cancelling a reservation that does
            # not exist yet) must be retryable with the same key once the cause is fixed.
            if call.idempotency_key is not None and 200 <= result.status_code < 300:
                conn.execute(
                    "INSERT INTO idempotency (key, provider, action, body, status_code,"
                    " response, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        call.idempotency_key,
                        call.provider,
                        call.action,
                        call.canonical_body,
                        result.status_code,
                        response_text,
                        finished_at,
                    ),
                )
            self._insert_request(
                conn,
                provider=call.provider,
                action=call.action,
                idempotency_key=call.idempotency_key,
                body_text=call.canonical_body,
                status_code=result.status_code,
                replayed=False,
                injected_fault=False,
                started_at=call.started_at,
                finished_at=finished_at,
            )
            return Outcome(result.status_code, response_text, "executed")

    def _replay_or_conflict(self, conn: sqlite3.Connection, call: Incoming) -> Outcome | None:
        if call.idempotency_key is None:
            return None
        row = conn.execute(
            "SELECT provider, action, body, status_code, response FROM idempotency WHERE key = ?",
            (call.idempotency_key,),
        ).fetchone()
        if row is None:
            return None
        provider, action, body, status_code, response = row
        if (provider, action, body) == (call.provider, call.action, call.canonical_body):
            return Outcome(status_code, response, "replayed")
        conflict = {
            "error": (
                f"idempotency key {call.idempotency_key!r} was used with a different request"
            ),
            "idempotency_key": call.idempotency_key,
            "original_request": {"provider": provider, "action": action},
        }
        return Outcome(409, canonical_json(conflict), "conflict")

    @staticmethod
    def _insert_request(
        conn: sqlite3.Connection,
        *,
        provider: str,
        action: str,
        idempotency_key: str | None,
        body_text: str,
        status_code: int,
        replayed: bool,
        injected_fault: bool,
        started_at: float,
        finished_at: float | None = None,
    ) -> None:
        conn.execute(
            "INSERT INTO requests (provider, action, idempotency_key, body, status_code,"
            " replayed, injected_fault, started_at, finished_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                provider,
                action,
                idempotency_key,
                body_text,
                status_code,
                int(replayed),
                int(injected_fault),
                started_at,
                time.time() if finished_at is None else finished_at,
            ),
        )

    def requests(self, key_prefix: str | None = None) -> list[RequestRecord]:
        with self._lock:
            return _select_requests(self._conn, key_prefix)

    def effects(self, key_prefix: str | None = None) -> list[EffectRecord]:
        with self._lock:
            return _select_effects(self._conn, key_prefix)

    def wipe(self) -> None:
        with self._transaction() as conn:
            for table in ("requests", "effects", "idempotency", "resources", "voided_keys"):
                conn.execute(f"DELETE FROM {table}")


class SandboxRecords:
    """Read-only view of a sandbox database, for assertions in tests.

    Opens a fresh connection per call so it always sees the latest committed state of a
    sandbox running in another process, and never holds locks between calls.
    """

    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self._path = Path(db_path).resolve()

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # mode=rw refuses to create a missing file: a wrong path should fail loudly rather
        # than read as "no effects happened".
        conn = sqlite3.connect(f"{self._path.as_uri()}?mode=rw", uri=True, timeout=10.0)
        try:
            conn.execute("PRAGMA query_only=ON")
            yield conn
        finally:
            conn.close()

    def requests(self, key_prefix: str | None = None) -> list[RequestRecord]:
        with self._connect() as conn:
            return _select_requests(conn, key_prefix)

    def effects(self, key_prefix: str | None = None) -> list[EffectRecord]:
        with self._connect() as conn:
            return _select_effects(conn, key_prefix)

    def effect_counts_by_key(self, key_prefix: str | None = None) -> dict[str, int]:
        """Effects per idempotency key; effects made without a key are not counted."""
        counts: dict[str, int] = {}
        for effect in self.effects(key_prefix):
            if effect.idempotency_key is not None:
                counts[effect.idempotency_key] = counts.get(effect.idempotency_key, 0) + 1
        return counts

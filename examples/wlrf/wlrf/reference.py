"""The system of reference: the user-facing details of each account, in SQLite.

A row is written `pending` before the ledger account exists and marked `active` after. The
status is a note for people and sweepers, never the truth about existence: only the ledger (the
system of record) says whether an account exists - see `workflow.read_account`.
"""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

type ReferenceStatus = Literal["pending", "active"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    account_id TEXT PRIMARY KEY,         -- the ledger account's id (u128, decimal)
    request_id TEXT NOT NULL UNIQUE,     -- the execution that opened it: one account per request
    holder_id  TEXT NOT NULL,            -- the customer, by reference: never a name
    ledger     INTEGER NOT NULL,
    code       INTEGER NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('pending', 'active'))
)
"""


@dataclass(frozen=True)
class ReferenceRow:
    account_id: str
    request_id: str
    holder_id: str
    ledger: int
    code: int
    status: ReferenceStatus


class ReferenceStore:
    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.execute(_SCHEMA)

    async def write_pending(
        self, account_id: str, request_id: str, holder_id: str, ledger: int, code: int
    ) -> None:
        """Insert the row as `pending`, unless an earlier attempt did: then leave it as it is."""
        await asyncio.to_thread(
            self._execute,
            "INSERT INTO accounts VALUES (?, ?, ?, ?, ?, 'pending')"
            " ON CONFLICT (account_id) DO NOTHING",
            (account_id, request_id, holder_id, ledger, code),
        )

    async def mark_active(self, account_id: str) -> None:
        await asyncio.to_thread(
            self._execute,
            "UPDATE accounts SET status = 'active' WHERE account_id = ?",
            (account_id,),
        )

    async def get(self, account_id: str) -> ReferenceRow | None:
        return await asyncio.to_thread(self._select, "account_id", account_id)

    async def opened_by(self, request_id: str) -> ReferenceRow | None:
        """The row the given execution wrote, whatever its status."""
        return await asyncio.to_thread(self._select, "request_id", request_id)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10, isolation_level=None)

    def _execute(self, sql: str, params: tuple[str | int, ...]) -> None:
        with closing(self._connect()) as db:
            db.execute(sql, params)

    def _select(
        self, column: Literal["account_id", "request_id"], value: str
    ) -> ReferenceRow | None:
        with closing(self._connect()) as db:
            row = db.execute(
                "SELECT account_id, request_id, holder_id, ledger, code, status FROM accounts"
                f" WHERE {column} = ?",
                (value,),
            ).fetchone()
        return None if row is None else ReferenceRow(*row)

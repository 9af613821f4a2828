"""The ledger and the steps that change it: debit, credit, and the reversal of a debit.

The ledger is a SQLite database this example owns (WAL mode, so the gateway and the invariant
checks read while workers write). Every operation carries an op id, the step's durable id
(`ctx.info.id`), which is the same on every attempt and every replay of that step. The `entries`
table has the op id as its primary key, and the entry is inserted in the same transaction as the
balance change: an operation that already ran fails the insert, the transaction rolls back (with
its balance change), and the step returns the outcome stored the first time. So a step replayed
after a crash, or retried after its answer was lost, is a no-op returning the original outcome.

An operation the ledger refuses (insufficient funds, a frozen or unknown account) is an outcome,
recorded like any other: asking again would be refused again, so it is never retried.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from resonate.context import Context

type Kind = Literal["debit", "credit", "reversal"]
type Outcome = Literal["applied", "insufficient_funds", "account_frozen", "unknown_account"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id      TEXT PRIMARY KEY,
    balance INTEGER NOT NULL CHECK (balance >= 0),   -- integer cents: no float rounding
    status  TEXT NOT NULL CHECK (status IN ('open', 'frozen'))
);
CREATE TABLE IF NOT EXISTS entries (
    op_id       TEXT PRIMARY KEY,                    -- the step's durable id: once per step
    transfer_id TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('debit', 'credit', 'reversal')),
    account_id  TEXT NOT NULL,
    amount      INTEGER NOT NULL CHECK (amount > 0),
    outcome     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_by_transfer ON entries (transfer_id);
"""

# The accounts a fresh ledger opens with, so the demo and the crash harness have money to move.
# A real ledger has its accounts already.
DEMO_ACCOUNTS: Mapping[str, tuple[int, str]] = {
    "alice": (100_000_000, "open"),  # 1,000,000.00
    "bob": (100_000_000, "open"),
    "carol": (100_000_000, "open"),
    "dormant": (0, "frozen"),  # takes no money: a credit to it is refused
}


@dataclass(frozen=True)
class Ledger:
    """The ledger file; each call opens its own connection (steps run on worker threads)."""

    path: Path

    @classmethod
    def at(cls, directory: Path, accounts: Mapping[str, tuple[int, str]] = DEMO_ACCOUNTS) -> Ledger:
        """The ledger in `directory`, created with `accounts` if it does not exist yet."""
        directory.mkdir(parents=True, exist_ok=True)
        ledger = cls(directory / "ledger.db")
        with ledger._transaction() as db:  # several workers may start at once: one creates
            for statement in SCHEMA.split(";"):
                db.execute(statement)
            db.executemany(
                "INSERT OR IGNORE INTO accounts (id, balance, status) VALUES (?, ?, ?)",
                [(id_, balance, status) for id_, (balance, status) in accounts.items()],
            )
        return ledger

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: transactions are begun explicitly. BEGIN IMMEDIATE takes the write
        # lock up front, so two workers' operations on one account are serialised, not interleaved.
        with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a committed entry survives a power cut
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def apply(
        self, op_id: str, transfer_id: str, kind: Kind, account_id: str, amount: int
    ) -> Outcome:
        """Apply one operation once: the first time it changes a balance, then it is looked up."""
        try:
            with self._transaction() as db:
                outcome = _change_balance(db, kind, account_id, amount)
                db.execute(
                    "INSERT INTO entries (op_id, transfer_id, kind, account_id, amount, outcome)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (op_id, transfer_id, kind, account_id, amount, outcome),
                )
        except sqlite3.IntegrityError:  # this op id ran before: its balance change is rolled back
            return self.outcome_of(op_id)
        return outcome

    def outcome_of(self, op_id: str) -> Outcome:
        with closing(sqlite3.connect(self.path, timeout=30)) as db:
            row = db.execute("SELECT outcome FROM entries WHERE op_id = ?", (op_id,)).fetchone()
        if row is None:
            raise LookupError(f"no ledger entry {op_id!r}")
        stored: Outcome = row[0]
        return stored

    def balances(self) -> dict[str, int]:
        with closing(sqlite3.connect(self.path, timeout=30)) as db:
            return dict(db.execute("SELECT id, balance FROM accounts ORDER BY id").fetchall())

    def entries(self, transfer_id: str | None = None) -> list[tuple[str, str, int, str]]:
        """(kind, account, amount, outcome) of every entry, or of one transfer's, in order."""
        query = "SELECT kind, account_id, amount, outcome, transfer_id FROM entries ORDER BY rowid"
        with closing(sqlite3.connect(self.path, timeout=30)) as db:
            rows = db.execute(query).fetchall()
        return [
            (kind, account, amount, outcome)
            for kind, account, amount, outcome, of in rows
            if transfer_id is None or of == transfer_id
        ]


def _change_balance(db: sqlite3.Connection, kind: Kind, account_id: str, amount: int) -> Outcome:
    row = db.execute("SELECT balance, status FROM accounts WHERE id = ?", (account_id,)).fetchone()
    if row is None:
        return "unknown_account"
    balance, status = row
    if kind == "reversal":  # money going back where it came from is never refused
        db.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, account_id))
        return "applied"
    if status != "open":
        return "account_frozen"
    if kind == "debit":
        if balance < amount:
            return "insufficient_funds"
        db.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (amount, account_id))
    else:
        db.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, account_id))
    return "applied"


# -- the steps: each one ledger operation, keyed by its own durable id -------------------------


# SQLite blocks while another worker holds the write lock: on a thread, not the event loop that
# keeps the worker's leases alive.


async def debit(ctx: Context, transfer_id: str, account_id: str, amount: int) -> Outcome:
    ledger = ctx.get_dependency(Ledger)
    op_id = ctx.info.id
    return await asyncio.to_thread(ledger.apply, op_id, transfer_id, "debit", account_id, amount)


async def credit(ctx: Context, transfer_id: str, account_id: str, amount: int) -> Outcome:
    ledger = ctx.get_dependency(Ledger)
    op_id = ctx.info.id
    return await asyncio.to_thread(ledger.apply, op_id, transfer_id, "credit", account_id, amount)


async def reverse_debit(ctx: Context, transfer_id: str, account_id: str, amount: int) -> Outcome:
    ledger = ctx.get_dependency(Ledger)
    op_id = ctx.info.id
    return await asyncio.to_thread(ledger.apply, op_id, transfer_id, "reversal", account_id, amount)

"""The system of record: a TigerBeetle ledger, or a stand-in with TigerBeetle's semantics.

Both implementations speak TigerBeetle's own types (`tigerbeetle.Account`,
`tigerbeetle.CreateAccountResult`) and result codes (`tigerbeetle.CreateAccountStatus`), so the
steps cannot tell them apart:

  TigerBeetleLedger  the official client, used when TIGERBEETLE_ADDRESS is set.
  StandInLedger      NOT TigerBeetle: a SQLite file that answers `create_accounts` and
                     `lookup_accounts` the way TigerBeetle does (`exists` for the same id with the
                     same fields, `exists_with_different_*` when they differ, its validation codes
                     in its order of precedence). It exists because no TigerBeetle server can run
                     where the cookbook's tests run. Being a file, it outlives a worker's SIGKILL,
                     and every worker process sees the same accounts.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Protocol

import tigerbeetle as tb
from tigerbeetle.bindings import CAccount

# The client retries a lost connection forever and never times out on its own.
LEDGER_TIMEOUT_SECONDS = 5.0


class Ledger(Protocol):
    """The two TigerBeetle requests the example uses, with TigerBeetle's types."""

    description: str

    async def create_accounts(self, accounts: list[tb.Account]) -> list[tb.CreateAccountResult]:
        """One result per account, in order: `created`, `exists`, or why it was refused."""
        ...

    async def lookup_accounts(self, ids: list[int]) -> list[tb.Account]:
        """The accounts that exist, in the order asked; unknown ids are left out."""
        ...

    async def close(self) -> None: ...


class LedgerClient(Protocol):
    """What `TigerBeetleLedger` needs of `tigerbeetle.ClientAsync` (tests pass a fake)."""

    async def create_accounts(
        self, accounts: list[tb.Account], /
    ) -> list[tb.CreateAccountResult]: ...

    async def lookup_accounts(self, ids: list[int], /) -> list[tb.Account]: ...

    async def close(self) -> None: ...


class LedgerUnavailableError(Exception):
    """The ledger did not answer in time. Transient: the step is retried."""


def connect_ledger(environ: Mapping[str, str], standin_path: Path) -> Ledger:
    """TigerBeetle when TIGERBEETLE_ADDRESS is set, else the stand-in at `standin_path`."""
    address = environ.get("TIGERBEETLE_ADDRESS", "")
    if not address:
        return StandInLedger(standin_path)
    cluster_id = int(environ.get("TIGERBEETLE_CLUSTER_ID", "0"))
    client = tb.ClientAsync(cluster_id=cluster_id, replica_addresses=address)
    return TigerBeetleLedger(client, f"TigerBeetle at {address} (cluster {cluster_id})")


class TigerBeetleLedger:
    """The official client, with every request bounded by a timeout."""

    def __init__(
        self,
        client: LedgerClient,
        description: str,
        timeout: float = LEDGER_TIMEOUT_SECONDS,
    ) -> None:
        self.client = client
        self.description = description
        self.timeout = timeout

    async def create_accounts(self, accounts: list[tb.Account]) -> list[tb.CreateAccountResult]:
        return await self._answer(self.client.create_accounts(accounts))

    async def lookup_accounts(self, ids: list[int]) -> list[tb.Account]:
        return await self._answer(self.client.lookup_accounts(ids))

    async def close(self) -> None:
        await self.client.close()

    async def _answer[T](self, request: Awaitable[T]) -> T:
        # Shielded: cancelling a request the client has submitted leaves it registered, and
        # `close()` then fails an assertion. Left running, it ends when the client closes. It
        # may also still be applied after we gave up on it - which is fine, because every write
        # is idempotent: its retry is answered `exists`.
        pending = asyncio.ensure_future(request)
        pending.add_done_callback(lambda task: task.cancelled() or task.exception())
        try:
            return await asyncio.wait_for(asyncio.shield(pending), self.timeout)
        except TimeoutError:
            raise LedgerUnavailableError(
                f"{self.description} did not answer within {self.timeout:g}s"
            ) from None


# Account flags whose semantics the stand-in does not model (linked chains, imported events).
_UNMODELLED = tb.AccountFlags.LINKED | tb.AccountFlags.IMPORTED
_KNOWN_FLAGS = sum(tb.AccountFlags)
_ID_MAX = 2**128 - 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id            TEXT PRIMARY KEY,  -- u128 as decimal text: SQLite integers have 64 bits
    user_data_128 TEXT NOT NULL,
    user_data_64  TEXT NOT NULL,
    user_data_32  INTEGER NOT NULL,
    ledger        INTEGER NOT NULL,
    code          INTEGER NOT NULL,
    flags         INTEGER NOT NULL,
    timestamp     INTEGER NOT NULL
)
"""


class StandInLedger:
    """NOT TigerBeetle: a SQLite file with TigerBeetle's create/lookup semantics for accounts.

    One transaction per `create_accounts` batch, like one TigerBeetle request. Not modelled:
    transfers (so every balance is zero), linked chains and imported events (refused with
    NotImplementedError), replication, and TigerBeetle's performance.
    """

    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        self.description = f"in-process stand-in (not TigerBeetle) at {self.path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.execute(_SCHEMA)

    async def create_accounts(self, accounts: list[tb.Account]) -> list[tb.CreateAccountResult]:
        return await asyncio.to_thread(self._create_accounts, accounts)

    async def lookup_accounts(self, ids: list[int]) -> list[tb.Account]:
        return await asyncio.to_thread(self._lookup_accounts, ids)

    async def close(self) -> None:
        pass

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10, isolation_level=None)

    def _create_accounts(self, accounts: list[tb.Account]) -> list[tb.CreateAccountResult]:
        for account in accounts:
            CAccount.from_param(account)  # the client's own range checks (IntegerOverflowError)
            if account.flags & _UNMODELLED:
                raise NotImplementedError("the stand-in ledger does not model linked or imported")
        with closing(self._connect()) as db, db:
            db.execute("BEGIN IMMEDIATE")  # one writer at a time across processes
            (last,) = db.execute("SELECT coalesce(max(timestamp), 0) FROM accounts").fetchone()
            now = max(time.time_ns(), last + 1)
            results = []
            for account in accounts:
                existing = self._find(db, account.id)
                status = _create_status(account, existing)
                if status is tb.CreateAccountStatus.CREATED:
                    _insert(db, account, now)
                    results.append(tb.CreateAccountResult(timestamp=now, status=status))
                    now += 1
                elif status is tb.CreateAccountStatus.EXISTS:
                    assert existing is not None
                    results.append(
                        tb.CreateAccountResult(timestamp=existing.timestamp, status=status)
                    )
                else:
                    results.append(tb.CreateAccountResult(timestamp=now, status=status))
            return results

    def _lookup_accounts(self, ids: list[int]) -> list[tb.Account]:
        with closing(self._connect()) as db:
            found = (self._find(db, account_id) for account_id in ids)
            return [account for account in found if account is not None]

    @staticmethod
    def _find(db: sqlite3.Connection, account_id: int) -> tb.Account | None:
        row = db.execute(
            "SELECT user_data_128, user_data_64, user_data_32, ledger, code, flags, timestamp"
            " FROM accounts WHERE id = ?",
            (str(account_id),),
        ).fetchone()
        if row is None:
            return None
        user_data_128, user_data_64, user_data_32, ledger, code, flags, timestamp = row
        return tb.Account(
            id=account_id,
            user_data_128=int(user_data_128),
            user_data_64=int(user_data_64),
            user_data_32=user_data_32,
            ledger=ledger,
            code=code,
            flags=tb.AccountFlags(flags),
            timestamp=timestamp,
        )


def _insert(db: sqlite3.Connection, account: tb.Account, timestamp: int) -> None:
    db.execute(
        "INSERT INTO accounts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            str(account.id),
            str(account.user_data_128),
            str(account.user_data_64),
            account.user_data_32,
            account.ledger,
            account.code,
            int(account.flags),
            timestamp,
        ),
    )


def _create_status(new: tb.Account, existing: tb.Account | None) -> tb.CreateAccountStatus:
    """TigerBeetle's answer for one account, checked in its documented order of precedence."""
    status = tb.CreateAccountStatus
    flags = tb.AccountFlags
    if new.timestamp != 0:
        return status.TIMESTAMP_MUST_BE_ZERO
    if new.flags & ~_KNOWN_FLAGS:
        return status.RESERVED_FLAG
    if new.id == 0:
        return status.ID_MUST_NOT_BE_ZERO
    if new.id == _ID_MAX:
        return status.ID_MUST_NOT_BE_INT_MAX
    if existing is not None:
        for field, differs in (
            ("flags", status.EXISTS_WITH_DIFFERENT_FLAGS),
            ("user_data_128", status.EXISTS_WITH_DIFFERENT_USER_DATA_128),
            ("user_data_64", status.EXISTS_WITH_DIFFERENT_USER_DATA_64),
            ("user_data_32", status.EXISTS_WITH_DIFFERENT_USER_DATA_32),
            ("ledger", status.EXISTS_WITH_DIFFERENT_LEDGER),
            ("code", status.EXISTS_WITH_DIFFERENT_CODE),
        ):
            if getattr(new, field) != getattr(existing, field):
                return differs
        return status.EXISTS
    if new.flags & flags.DEBITS_MUST_NOT_EXCEED_CREDITS and (
        new.flags & flags.CREDITS_MUST_NOT_EXCEED_DEBITS
    ):
        return status.FLAGS_ARE_MUTUALLY_EXCLUSIVE
    for field, nonzero in (
        ("debits_pending", status.DEBITS_PENDING_MUST_BE_ZERO),
        ("debits_posted", status.DEBITS_POSTED_MUST_BE_ZERO),
        ("credits_pending", status.CREDITS_PENDING_MUST_BE_ZERO),
        ("credits_posted", status.CREDITS_POSTED_MUST_BE_ZERO),
    ):
        if getattr(new, field) != 0:
            return nonzero
    if new.ledger == 0:
        return status.LEDGER_MUST_NOT_BE_ZERO
    if new.code == 0:
        return status.CODE_MUST_NOT_BE_ZERO
    return status.CREATED

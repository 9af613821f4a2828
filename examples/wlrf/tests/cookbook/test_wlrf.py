"""wlrf: the write order, the read rule, the ledger's answers, and SIGKILLs between the writes.

Assertions are on the two systems' own records (the SQLite files), read with plain SQL.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any, cast

import pytest
import tigerbeetle as tb
from cookbook import clients
from cookbook.testing.fixtures import ProcessFactory, RunningDevServer
from cookbook.testing.plaintext import plaintext_found, stored_values
from resonate.dependencies import DependencyMap
from resonate.resonate import Resonate
from resonate.testing import RecordingSleeper, resolved_promise, root_context
from wlrf.ledger import Ledger, LedgerUnavailableError
from wlrf.steps import LedgerRefusedError, Stores, open_stores, require_account
from wlrf.workflow import Account, open_account, read_account

Status = tb.CreateAccountStatus
# The customer, as the bank's customer system holds them. Only the reference may reach the
# Resonate server (it stores every argument in plaintext); the system resolves the rest.
HOLDER_ID = "cus_7f3a9c21"
HOLDER_NAME, HOLDER_EMAIL = "Ada Lovelace", "ada@example.com"


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    """Both stores in this test's own files, and the stand-in ledger whatever the shell says."""
    return {
        "REFERENCE_DB": str(tmp_path / "reference.db"),
        "LEDGER_STANDIN_DB": str(tmp_path / "ledger.db"),
        "TIGERBEETLE_ADDRESS": "",
    }


@pytest.fixture
def stores(environ: dict[str, str]) -> Stores:
    return open_stores(environ)


def reference_rows(environ: dict[str, str]) -> list[tuple[str, str, str]]:
    """(account id, request id, status) of every row in the system of reference."""
    with closing(sqlite3.connect(environ["REFERENCE_DB"])) as db:
        return db.execute("SELECT account_id, request_id, status FROM accounts").fetchall()


def ledger_rows(environ: dict[str, str]) -> list[tuple[str, int, int, int]]:
    """(id, ledger, code, timestamp) of every account in the (stand-in) system of record."""
    with closing(sqlite3.connect(environ["LEDGER_STANDIN_DB"])) as db:
        return db.execute("SELECT id, ledger, code, timestamp FROM accounts").fetchall()


# -- the ledger's answers ----------------------------------------------------------------------


@pytest.mark.parametrize("status", list(Status), ids=lambda s: s.name.lower())
def test_only_created_and_exists_mean_the_account_is_there(status: Status) -> None:
    name = status.name.lower()
    if status in (Status.CREATED, Status.EXISTS):
        require_account(name)
    elif name.startswith("exists_with_different_"):
        with pytest.raises(LedgerRefusedError, match=f"other fields \\({name}\\)"):
            require_account(name)
    else:
        with pytest.raises(LedgerRefusedError, match=f"refused the account: {name}$"):
            require_account(name)


# -- Read First --------------------------------------------------------------------------------


def test_a_pending_reference_row_is_invisible_until_the_ledger_has_the_account(
    stores: Stores,
) -> None:
    async def scenario() -> tuple[Account | None, Account | None]:
        await stores.reference.write_pending("42", "req-1", HOLDER_ID, 840, 1)
        before = await read_account(stores, "42")
        await stores.ledger.create_accounts([tb.Account(id=42, ledger=840, code=1)])
        after = await read_account(stores, "42")
        return before, after

    before, after = asyncio.run(scenario())

    assert before is None
    # The reference row still says pending: only the ledger decides.
    assert after == Account("42", HOLDER_ID, 840, 1, balance=0)


def test_a_ledger_account_without_its_reference_row_is_an_error(stores: Stores) -> None:
    asyncio.run(stores.ledger.create_accounts([tb.Account(id=42, ledger=840, code=1)]))

    with pytest.raises(RuntimeError, match="no reference row"):
        asyncio.run(read_account(stores, "42"))


# -- the workflow body, replayed in-process from a journal -------------------------------------


class RecordingLedger:
    """A ledger that records every create's answer, and times out on the first `timeouts`."""

    def __init__(self, inner: Ledger, timeouts: int = 0) -> None:
        self.inner = inner
        self.timeouts = timeouts
        self.answers: list[str] = []
        self.description = inner.description

    async def create_accounts(self, accounts: list[tb.Account]) -> list[tb.CreateAccountResult]:
        if len(self.answers) < self.timeouts:
            self.answers.append("timeout")
            raise LedgerUnavailableError("no answer")
        results = await self.inner.create_accounts(accounts)
        self.answers += [r.status.name.lower() for r in results]
        return results

    async def lookup_accounts(self, ids: list[int]) -> list[tb.Account]:
        return await self.inner.lookup_accounts(ids)

    async def close(self) -> None:
        await self.inner.close()


async def replay(stores: Stores, journal: dict[str, str], sleeper: Any = None) -> None:
    """Run `open_account` as execution `open-1` with these step results already journaled."""
    deps = DependencyMap()
    deps.insert(stores)
    ctx = root_context(
        id="open-1",
        preload=[resolved_promise(f"open-1{suffix}", value) for suffix, value in journal.items()],
        deps=deps,
        sleeper=sleeper,
    )
    await open_account(ctx, HOLDER_ID, 840, 1)


def test_a_resumed_execution_reuses_the_id_in_its_journal(
    stores: Stores, environ: dict[str, str]
) -> None:
    asyncio.run(replay(stores, {":1": "4242"}))

    assert reference_rows(environ) == [("4242", "open-1", "active")]
    assert [row[:3] for row in ledger_rows(environ)] == [("4242", 840, 1)]


def test_writes_repeated_by_a_rerun_leave_one_row_and_one_account(
    stores: Stores, environ: dict[str, str]
) -> None:
    # Twice from the same journal: as if a worker died after every write, before any checkpoint.
    asyncio.run(replay(stores, {":1": "4242"}))
    first_ledger = ledger_rows(environ)
    ledger = RecordingLedger(stores.ledger)

    asyncio.run(replay(Stores(stores.reference, ledger), {":1": "4242"}))

    assert ledger.answers == ["exists"]  # which counts as success
    assert reference_rows(environ) == [("4242", "open-1", "active")]
    assert ledger_rows(environ) == first_ledger


def test_a_ledger_that_did_not_answer_is_asked_again(
    stores: Stores, environ: dict[str, str]
) -> None:
    ledger = RecordingLedger(stores.ledger, timeouts=1)
    sleeper = RecordingSleeper()

    asyncio.run(replay(Stores(stores.reference, ledger), {":1": "4242"}, sleeper))

    assert (ledger.answers, sleeper.delays) == (["timeout", "created"], [2])
    assert [row[0] for row in ledger_rows(environ)] == ["4242"]


def test_an_id_the_ledger_holds_with_other_fields_fails_without_a_retry(
    stores: Stores, environ: dict[str, str]
) -> None:
    # E.g. a deploy changed the account's code while this execution was in flight.
    earlier = tb.Account(
        id=4242, ledger=840, code=2, flags=tb.AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
    )
    asyncio.run(stores.ledger.create_accounts([earlier]))
    ledger = RecordingLedger(stores.ledger)

    with pytest.raises(LedgerRefusedError, match="exists_with_different_code"):
        asyncio.run(replay(Stores(stores.reference, ledger), {":1": "4242"}))

    assert ledger.answers == ["exists_with_different_code"]  # asked once, never again
    assert reference_rows(environ) == [("4242", "open-1", "pending")]


# -- through real processes: a dev server and worker processes ----------------------------------


def start(client: Resonate, execution_id: str, holder_id: str, ledger: int) -> Any:
    return client.options(target="wlrf").rpc(execution_id, "open_account", holder_id, ledger, 1)


def test_opens_an_account_and_a_refused_one_stays_invisible(
    devserver: RunningDevServer,
    start_worker: ProcessFactory,
    environ: dict[str, str],
    stores: Stores,
) -> None:
    start_worker("wlrf.worker", {"RESONATE_URL": devserver.url, **environ})
    # Ids name nobody: the server stores them.
    ada, grace = (f"wlrf-test-{secrets.token_hex(4)}" for _ in range(2))

    async def scenario() -> None:
        client = Resonate(url=devserver.url, group="wlrf-tests")
        try:
            await asyncio.wait_for(start(client, ada, HOLDER_ID, 840).result(), 30)
            with pytest.raises(LedgerRefusedError, match="ledger_must_not_be_zero"):
                await asyncio.wait_for(start(client, grace, "cus_b04e6d58", 0).result(), 30)
        finally:
            await client.stop()

    asyncio.run(scenario())

    rows = {
        request: (account_id, status) for account_id, request, status in reference_rows(environ)
    }
    (ada_id, ada_status), (grace_id, grace_status) = rows[ada], rows[grace]
    assert (ada_status, grace_status) == ("active", "pending")
    assert [row[:3] for row in ledger_rows(environ)] == [(ada_id, 840, 1)]
    assert asyncio.run(read_account(stores, ada_id)) == Account(ada_id, HOLDER_ID, 840, 1, 0)
    assert asyncio.run(read_account(stores, grace_id)) is None


NOT_A_REFERENCE = "holder_id is not a customer reference (cus_ and 4 to 32 letters or digits)"


@pytest.mark.parametrize(
    ("holder_id", "ledger", "code", "problem"),
    [
        (HOLDER_ID, 2**32, 1, "ledger 4294967296 is outside 0..4294967295"),
        (HOLDER_ID, -1, 1, "ledger -1 is outside 0..4294967295"),
        (HOLDER_ID, 840, 2**16, "code 65536 is outside 0..65535"),
        # The error does not repeat the value: the server stores it, as the execution's result.
        (HOLDER_EMAIL, 840, 1, NOT_A_REFERENCE),
        (HOLDER_NAME, 840, 1, NOT_A_REFERENCE),
        (f"cus_{HOLDER_EMAIL}", 840, 1, NOT_A_REFERENCE),
    ],
    ids=["ledger-too-big", "ledger-negative", "code-too-big", "email", "name", "cus_email"],
)
def test_a_bad_request_fails_at_once_and_writes_nothing(
    devserver: RunningDevServer,
    start_worker: ProcessFactory,
    environ: dict[str, str],
    holder_id: str,
    ledger: int,
    code: int,
    problem: str,
) -> None:
    # Refused before the first step. Were the workflow registered without a policy, the SDK would
    # retry the body (2 s, 4 s, 8 s, ...), and the test would time out instead.
    start_worker("wlrf.worker", {"RESONATE_URL": devserver.url, **environ})
    execution_id = f"wlrf-test-{secrets.token_hex(4)}"

    async def scenario() -> None:
        client = Resonate(url=devserver.url, group="wlrf-tests")
        try:
            handle = client.options(target="wlrf").rpc(
                execution_id, "open_account", holder_id, ledger, code
            )
            await asyncio.wait_for(handle.result(), 10)
        finally:
            await client.stop()

    with pytest.raises(ValueError, match=f"^invalid account: {re.escape(problem)}$"):
        asyncio.run(scenario())

    assert reference_rows(environ) == []
    assert ledger_rows(environ) == []


def test_the_server_holds_the_holders_reference_never_their_name(
    devserver: RunningDevServer,
    start_worker: ProcessFactory,
    environ: dict[str, str],
) -> None:
    start_worker("wlrf.worker", {"RESONATE_URL": devserver.url, **environ})
    execution_id = f"wlrf-test-{secrets.token_hex(4)}"

    async def scenario() -> None:
        client = Resonate(url=devserver.url, group="wlrf-tests")
        try:
            await asyncio.wait_for(start(client, execution_id, HOLDER_ID, 840).result(), 30)
        finally:
            await client.stop()

    asyncio.run(scenario())

    # Everything the server holds for the execution: its promises (the workflow's and each
    # step's), their arguments and results, and its request journal.
    promises = cast(list[dict[str, Any]], devserver.state(execution_id)["promises"])
    held = json.dumps([promises, devserver.journal(execution_id)]).encode()
    values = [json.dumps(value) for value in stored_values(promises)]
    assert len(promises) == 5  # the workflow and its four steps
    assert plaintext_found(held, [HOLDER_NAME, "Lovelace", HOLDER_EMAIL]) == []
    assert not [value for value in values if "@" in value]  # no email address, whoever's
    assert [value for value in values if HOLDER_ID in value]
    # The receiving system got the reference: the customer system resolves it when needed.
    with closing(sqlite3.connect(environ["REFERENCE_DB"])) as db:
        assert db.execute("SELECT request_id, holder_id FROM accounts").fetchall() == [
            (execution_id, HOLDER_ID)
        ]


@pytest.mark.parametrize(
    "operation",
    [
        # The worker dies as it asks to start the ledger step: the reference row is written,
        # the ledger account is not.
        "create",
        # The worker dies as it asks to checkpoint the ledger step: both are written, and the
        # ledger step will run again.
        "settle",
    ],
    ids=["between-the-writes", "after-the-ledger-write"],
)
def test_a_worker_killed_around_the_ledger_write_is_resumed_to_one_account(
    devserver: RunningDevServer,
    start_worker: ProcessFactory,
    environ: dict[str, str],
    stores: Stores,
    operation: str,
) -> None:
    env = {"RESONATE_URL": devserver.url, **environ}
    victim = start_worker("wlrf.worker", env, name="worker-1")
    execution_id = f"wlrf-test-{secrets.token_hex(4)}"
    armed = clients.post(
        f"{devserver.url}/_cookbook/tripwires",
        json={
            "operation": operation,
            "promise_id": f"{execution_id}:3",
            "when": "before",
            "victim": "worker",
            "pid": victim.pid,
        },
    )
    armed.raise_for_status()

    async def scenario() -> tuple[list[Any], list[Any], Account | None]:
        client = Resonate(url=devserver.url, group="wlrf-tests")
        try:
            handle = start(client, execution_id, HOLDER_ID, 840)
            assert await asyncio.to_thread(victim.wait, 30) == -9  # SIGKILLed by the tripwire
            (account_id, _, _), *_ = reference_rows(environ)
            at_the_kill = (
                reference_rows(environ),
                ledger_rows(environ),
                await read_account(stores, account_id),
            )
            await asyncio.to_thread(start_worker, "wlrf.worker", env, "worker-2")
            await asyncio.wait_for(handle.result(), 30)
            return at_the_kill
        finally:
            await client.stop()

    (reference_then, ledger_then, read_then) = asyncio.run(scenario())

    ((account_id, request_id, status),) = reference_then
    assert (request_id, status) == (execution_id, "pending")
    if operation == "create":
        assert ledger_then == []
        assert read_then is None  # Read First: a pending row alone is not an account
    else:
        assert [row[0] for row in ledger_then] == [account_id]
        assert read_then == Account(account_id, HOLDER_ID, 840, 1, 0)
    # After the takeover: one row, one account, one id.
    assert reference_rows(environ) == [(account_id, execution_id, "active")]
    final_ledger = ledger_rows(environ)
    assert [row[:3] for row in final_ledger] == [(account_id, 840, 1)]
    if ledger_then:
        assert final_ledger == ledger_then  # the rerun was answered `exists`: the account untouched

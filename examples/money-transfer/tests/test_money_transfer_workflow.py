"""`transfer` in process: the SDK's own `resonate.testing` and the example's own ledger (SQLite,
in a temporary directory).

The ledger alone is tested in test_ledger.py; these run the workflow over it, registered as the
worker does. They need only the SDK, this package and pytest: they run in a copy of this folder
outside the cookbook (`make copy-out-money-transfer`). The tests that drive a real dev server,
workers and the gateway, crashes included, are in tests/cookbook/ and run in the cookbook only.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from money_transfer.steps import Kind, Ledger, Outcome
from money_transfer.workflow import (
    STEP_RETRIES,
    WORKFLOW_RETRIES,
    TransferRequest,
    TransferResult,
    transfer,
)
from resonate.context import Context
from resonate.dependencies import DependencyMap
from resonate.testing import local_resonate, root_context

ACCOUNTS = {"alice": (10_000, "open"), "bob": (0, "open"), "dormant": (0, "frozen")}


def request(to: str = "bob", amount: int = 4_000) -> TransferRequest:
    return TransferRequest(
        transfer_id="tr-1", from_account="alice", to_account=to, amount_cents=amount
    )


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger.at(tmp_path, ACCOUNTS)


def run(ledger: Ledger, req: TransferRequest) -> TransferResult:
    """The transfer on an in-process Resonate registered as the worker does."""

    async def go() -> TransferResult:
        resonate = local_resonate()
        try:
            resonate.with_dependency(ledger)
            resonate.register(transfer, retry_policy=WORKFLOW_RETRIES)
            result: TransferResult = await asyncio.wait_for(
                resonate.run(req.transfer_id, transfer, req).result(), 30
            )
            return result
        finally:
            await resonate.stop()

    return asyncio.run(go())


def test_a_transfer_debits_and_credits_once_each(ledger: Ledger) -> None:
    result = run(ledger, request())

    assert result == TransferResult(status="completed")
    assert ledger.balances() == {"alice": 6_000, "bob": 4_000, "dormant": 0}
    assert ledger.entries("tr-1") == [
        ("debit", "alice", 4_000, "applied"),
        ("credit", "bob", 4_000, "applied"),
    ]


def test_a_refused_debit_declines_and_moves_nothing(ledger: Ledger) -> None:
    result = run(ledger, request(amount=20_000))

    assert result == TransferResult(status="declined", reason="insufficient_funds")
    assert ledger.balances()["alice"] == 10_000
    assert ledger.entries("tr-1") == [("debit", "alice", 20_000, "insufficient_funds")]


def test_a_refused_credit_is_answered_with_a_reversal_and_the_money_is_back(
    ledger: Ledger,
) -> None:
    result = run(ledger, request(to="dormant"))

    assert result == TransferResult(status="reversed", reason="account_frozen")
    assert ledger.balances() == {"alice": 10_000, "bob": 0, "dormant": 0}
    assert [kind for kind, *_ in ledger.entries("tr-1")] == ["debit", "credit", "reversal"]


def test_a_ledger_failure_is_retried_under_the_same_op_id(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    applied = Ledger.apply
    op_ids: list[str] = []

    def locked_once(
        self: Ledger, op_id: str, transfer_id: str, kind: Kind, account_id: str, amount: int
    ) -> Outcome:
        op_ids.append(op_id)
        if len(op_ids) == 1:
            raise sqlite3.OperationalError("database is locked")
        return applied(self, op_id, transfer_id, kind, account_id, amount)

    monkeypatch.setattr(Ledger, "apply", locked_once)

    result = run(ledger, request())

    assert result.status == "completed"
    assert op_ids[0] == op_ids[1]  # the debit, asked again as the same operation
    assert ledger.balances()["alice"] == 6_000
    assert STEP_RETRIES.max_retries >= 1


def test_a_debit_that_ran_before_a_crash_is_not_taken_twice(ledger: Ledger) -> None:
    """The worker died after the ledger applied the debit, before its checkpoint: the next one
    runs the step again, under the same op id, and the ledger answers with the first outcome."""
    ledger.apply("tr-1:1", "tr-1", "debit", "alice", 4_000)

    async def replay() -> TransferResult:
        deps = DependencyMap()
        deps.insert(ledger)
        ctx: Context = root_context(id="tr-1", deps=deps)
        return await transfer(ctx, request())

    result = asyncio.run(replay())

    assert result == TransferResult(status="completed")
    assert ledger.balances() == {"alice": 6_000, "bob": 4_000, "dormant": 0}
    assert len(ledger.entries("tr-1")) == 2

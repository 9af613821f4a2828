"""The ledger on its own: an op id applies once, whoever asks again and however many at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from money_transfer.steps import Ledger

ACCOUNTS = {"a": (10_000, "open"), "b": (0, "open"), "frozen": (0, "frozen")}


def test_an_op_id_applied_again_changes_nothing_and_returns_the_first_outcome(
    tmp_path: Path,
) -> None:
    ledger = Ledger.at(tmp_path, ACCOUNTS)

    first = ledger.apply("t1:1", "t1", "debit", "a", 4_000)
    again = ledger.apply("t1:1", "t1", "debit", "a", 4_000)

    assert (first, again) == ("applied", "applied")
    assert ledger.balances()["a"] == 6_000
    assert ledger.entries("t1") == [("debit", "a", 4_000, "applied")]


def test_a_refusal_is_recorded_and_replayed_as_the_same_refusal(tmp_path: Path) -> None:
    ledger = Ledger.at(tmp_path, ACCOUNTS)

    refused = ledger.apply("t2:1", "t2", "debit", "a", 20_000)
    ledger.apply("t3:1", "t3", "credit", "a", 50_000)  # now there would be enough
    replayed = ledger.apply("t2:1", "t2", "debit", "a", 20_000)

    assert (refused, replayed) == ("insufficient_funds", "insufficient_funds")
    assert ledger.balances()["a"] == 60_000
    assert ledger.apply("t4:1", "t4", "credit", "frozen", 1) == "account_frozen"
    assert ledger.apply("t5:1", "t5", "credit", "nobody", 1) == "unknown_account"


def test_the_same_op_from_many_workers_at_once_applies_once(tmp_path: Path) -> None:
    ledger = Ledger.at(tmp_path, ACCOUNTS)

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(
            pool.map(lambda _: ledger.apply("t6:1", "t6", "debit", "a", 1_000), range(32))
        )

    assert outcomes == ["applied"] * 32
    assert ledger.balances()["a"] == 9_000
    assert len(ledger.entries("t6")) == 1


def test_opening_an_existing_ledger_keeps_its_balances(tmp_path: Path) -> None:
    ledger = Ledger.at(tmp_path, ACCOUNTS)
    ledger.apply("t7:1", "t7", "debit", "a", 1_000)

    reopened = Ledger.at(tmp_path, ACCOUNTS)

    assert reopened.balances()["a"] == 9_000

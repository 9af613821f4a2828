"""The system of record: the stand-in answers like TigerBeetle; the real client is always guarded.

No test here constructs or calls the real TigerBeetle client: without a reachable server it
waits forever. Where a client is needed, a fake takes its place.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import tigerbeetle as tb
from wlrf.ledger import (
    LedgerUnavailableError,
    StandInLedger,
    TigerBeetleLedger,
    connect_ledger,
)

Status = tb.CreateAccountStatus


def account(**fields: Any) -> tb.Account:
    return tb.Account(**{"id": 7, "ledger": 840, "code": 1, **fields})


def create(ledger: StandInLedger, *accounts: tb.Account) -> list[tb.CreateAccountResult]:
    return asyncio.run(ledger.create_accounts(list(accounts)))


def lookup(ledger: StandInLedger, *ids: int) -> list[tb.Account]:
    return asyncio.run(ledger.lookup_accounts(list(ids)))


@pytest.fixture
def standin(tmp_path: Path) -> StandInLedger:
    return StandInLedger(tmp_path / "ledger.db")


def test_creates_once_and_answers_exists_with_the_original_timestamp(
    standin: StandInLedger,
) -> None:
    (created,) = create(standin, account())
    (again,) = create(standin, account())

    assert created.status is Status.CREATED
    assert again.status is Status.EXISTS
    assert again.timestamp == created.timestamp
    (stored,) = lookup(standin, 7)
    assert stored == account(timestamp=created.timestamp)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("flags", tb.AccountFlags.HISTORY, Status.EXISTS_WITH_DIFFERENT_FLAGS),
        ("user_data_128", 2**100, Status.EXISTS_WITH_DIFFERENT_USER_DATA_128),
        ("user_data_64", 2**63, Status.EXISTS_WITH_DIFFERENT_USER_DATA_64),
        ("user_data_32", 1, Status.EXISTS_WITH_DIFFERENT_USER_DATA_32),
        ("ledger", 978, Status.EXISTS_WITH_DIFFERENT_LEDGER),
        ("code", 2, Status.EXISTS_WITH_DIFFERENT_CODE),
    ],
)
def test_the_same_id_with_another_field_is_refused(
    standin: StandInLedger, field: str, value: int, expected: Status
) -> None:
    create(standin, account())

    (result,) = create(standin, account(**{field: value}))

    assert result.status is expected
    (stored,) = lookup(standin, 7)
    assert getattr(stored, field) != value  # the original is untouched


def test_differences_are_reported_in_tigerbeetles_order_of_precedence(
    standin: StandInLedger,
) -> None:
    create(standin, account())

    (ledger_and_code,) = create(standin, account(ledger=978, code=2))
    (balance_ignored,) = create(standin, account(debits_posted=5))

    assert ledger_and_code.status is Status.EXISTS_WITH_DIFFERENT_LEDGER
    assert balance_ignored.status is Status.EXISTS  # `exists` outranks the balance checks


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"timestamp": 1}, Status.TIMESTAMP_MUST_BE_ZERO),
        ({"flags": 1 << 6}, Status.RESERVED_FLAG),
        ({"id": 0}, Status.ID_MUST_NOT_BE_ZERO),
        ({"id": 2**128 - 1}, Status.ID_MUST_NOT_BE_INT_MAX),
        (
            {
                "flags": tb.AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
                | tb.AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS
            },
            Status.FLAGS_ARE_MUTUALLY_EXCLUSIVE,
        ),
        ({"debits_pending": 1}, Status.DEBITS_PENDING_MUST_BE_ZERO),
        ({"debits_posted": 1}, Status.DEBITS_POSTED_MUST_BE_ZERO),
        ({"credits_pending": 1}, Status.CREDITS_PENDING_MUST_BE_ZERO),
        ({"credits_posted": 1}, Status.CREDITS_POSTED_MUST_BE_ZERO),
        ({"ledger": 0}, Status.LEDGER_MUST_NOT_BE_ZERO),
        ({"code": 0}, Status.CODE_MUST_NOT_BE_ZERO),
        ({"ledger": 0, "code": 0}, Status.LEDGER_MUST_NOT_BE_ZERO),
    ],
)
def test_invalid_accounts_get_tigerbeetles_codes_and_are_not_stored(
    standin: StandInLedger, fields: dict[str, Any], expected: Status
) -> None:
    invalid = account(**fields)

    (result,) = create(standin, invalid)

    assert result.status is expected
    assert lookup(standin, invalid.id) == []


def test_a_batch_gets_one_result_per_account_in_order(standin: StandInLedger) -> None:
    results = create(standin, account(id=1), account(id=2, code=0), account(id=1))

    assert [r.status for r in results] == [
        Status.CREATED,
        Status.CODE_MUST_NOT_BE_ZERO,
        Status.EXISTS,
    ]
    assert results[2].timestamp == results[0].timestamp
    assert [a.id for a in lookup(standin, 1, 2)] == [1]


def test_lookup_returns_found_accounts_in_the_order_asked(standin: StandInLedger) -> None:
    create(standin, account(id=1), account(id=2**127), account(id=3))

    assert [a.id for a in lookup(standin, 3, 99, 2**127, 1)] == [3, 2**127, 1]


def test_timestamps_increase_strictly_like_cluster_time(standin: StandInLedger) -> None:
    results = create(standin, *(account(id=i) for i in range(1, 6)))
    later = create(standin, account(id=6))

    stamps = [r.timestamp for r in results + later]
    assert stamps == sorted(set(stamps))
    assert stamps[0] <= time.time_ns()


def test_accounts_outlive_the_process_that_wrote_them(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    (created,) = create(StandInLedger(path), account())

    survivor = StandInLedger(path)  # what a new worker process opens

    assert [a.timestamp for a in lookup(survivor, 7)] == [created.timestamp]
    assert create(survivor, account())[0].status is Status.EXISTS


def test_values_the_client_cannot_encode_raise_like_the_client(standin: StandInLedger) -> None:
    with pytest.raises(tb.IntegerOverflowError):
        create(standin, account(id=1), account(id=2, code=2**16))

    assert lookup(standin, 1) == []  # the whole batch was rejected before anything was written


@pytest.mark.parametrize("flag", [tb.AccountFlags.LINKED, tb.AccountFlags.IMPORTED])
def test_unmodelled_semantics_are_refused_loudly(standin: StandInLedger, flag: int) -> None:
    with pytest.raises(NotImplementedError):
        create(standin, account(flags=flag))


# -- the real client: chosen only by TIGERBEETLE_ADDRESS, never waited on forever ---------------


class SilentClient:
    """A client whose server never answers: what the real one does without a reachable server."""

    def __init__(self) -> None:
        self.closed = False

    async def create_accounts(self, accounts: list[tb.Account]) -> list[tb.CreateAccountResult]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def lookup_accounts(self, ids: list[int]) -> list[tb.Account]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def close(self) -> None:
        self.closed = True


class AnsweringClient(SilentClient):
    async def lookup_accounts(self, ids: list[int]) -> list[tb.Account]:
        return [tb.Account(id=i, ledger=1, code=1) for i in ids]


def test_a_ledger_that_does_not_answer_is_reported_within_the_timeout() -> None:
    ledger = TigerBeetleLedger(SilentClient(), "TigerBeetle at test", timeout=0.2)

    async def ask() -> float:
        started = time.perf_counter()
        with pytest.raises(LedgerUnavailableError, match=r"did not answer within 0\.2s"):
            await ledger.create_accounts([account()])
        return time.perf_counter() - started

    assert asyncio.run(ask()) < 2


def test_answers_pass_through_unchanged() -> None:
    ledger = TigerBeetleLedger(AnsweringClient(), "TigerBeetle at test")

    found = asyncio.run(ledger.lookup_accounts([3, 4]))

    assert [a.id for a in found] == [3, 4]


@pytest.fixture
def client_constructions(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """Replace the real client's constructor; record every attempt to build one."""
    built: list[tuple[int, str]] = []

    def fake_client(*, cluster_id: int, replica_addresses: str) -> SilentClient:
        built.append((cluster_id, replica_addresses))
        return SilentClient()

    monkeypatch.setattr(tb, "ClientAsync", fake_client)
    return built


@pytest.mark.parametrize("environ", [{}, {"TIGERBEETLE_ADDRESS": ""}])
def test_without_an_address_the_stand_in_is_used_and_no_client_is_built(
    tmp_path: Path, client_constructions: list[tuple[int, str]], environ: dict[str, str]
) -> None:
    ledger = connect_ledger(environ, tmp_path / "ledger.db")

    assert isinstance(ledger, StandInLedger)
    assert "not TigerBeetle" in ledger.description
    assert client_constructions == []


def test_with_an_address_the_official_client_is_used(
    tmp_path: Path, client_constructions: list[tuple[int, str]]
) -> None:
    environ = {"TIGERBEETLE_ADDRESS": "127.0.0.1:3000", "TIGERBEETLE_CLUSTER_ID": "5"}

    ledger = connect_ledger(environ, tmp_path / "ledger.db")

    assert isinstance(ledger, TigerBeetleLedger)
    assert client_constructions == [(5, "127.0.0.1:3000")]
    assert ledger.description == "TigerBeetle at 127.0.0.1:3000 (cluster 5)"
    assert not (tmp_path / "ledger.db").exists()

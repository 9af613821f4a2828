"""money-transfer end to end: a real dev server, workers, the gateway, and the ledger's own rows.

Every test asserts on the ledger (its entries and balances), the receiving system, and on the dev
server's records; and after moving money, on the ledger's invariants: the total is unchanged, no
balance is below zero, and every transfer is declined, completed, or reversed, never half applied.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cookbook import clients
from cookbook.stack import devserver_process, gateway_process, url_of, worker_process
from cookbook.testing.bodies import REMOVED, as_json, changed, malformed_bodies
from cookbook.testing.fixtures import ProcessFactory, RunningDevServer
from money_transfer.steps import Ledger
from resonate.resonate import Resonate

# The entries a transfer may leave, in order: declined at the debit, completed, or reversed.
REFUSALS = ("insufficient_funds", "account_frozen", "unknown_account")


def shape_of(entries: list[tuple[str, str, int, str]]) -> str:
    """completed, declined or reversed; anything else names what is wrong."""
    kinds = [(kind, outcome) for kind, _, _, outcome in entries]
    amounts = {amount for _, _, amount, _ in entries}
    if len(amounts) > 1:
        return f"amounts differ: {entries}"
    match kinds:
        case [("debit", refusal)] if refusal in REFUSALS:
            return "declined"
        case [("debit", "applied"), ("credit", "applied")]:
            return "completed"
        case [("debit", "applied"), ("credit", refusal), ("reversal", "applied")] if (
            refusal in REFUSALS and entries[0][1] == entries[2][1]
        ):
            return "reversed"
    return f"half applied: {entries}"


def assert_invariants(ledger: Ledger, total_before: int, transfer_ids: Iterable[str]) -> None:
    balances = ledger.balances()
    assert sum(balances.values()) == total_before, "money was created or destroyed"
    assert all(cents >= 0 for cents in balances.values()), balances
    shapes = {tid: shape_of(ledger.entries(tid)) for tid in transfer_ids}
    broken = {
        tid: shape
        for tid, shape in shapes.items()
        if shape not in {"declined", "completed", "reversed"}
    }
    assert not broken, broken


# -- through the gateway -----------------------------------------------------------------------


@dataclass(frozen=True)
class TransferStack:
    gateway: httpx.Client
    server: RunningDevServer
    ledger: Ledger

    def wait_settled(self, transfer_id: str) -> dict[str, Any]:
        """Await the execution (a Resonate listener, not a poll), then ask the gateway."""

        async def settled() -> None:
            client = Resonate(url=self.server.url, group="money-transfer-tests")
            try:
                await asyncio.wait_for((await client.get(transfer_id)).result(), 30)
            finally:
                await client.stop()

        asyncio.run(settled())
        status: dict[str, Any] = self.gateway.get(f"/transfers/{transfer_id}").json()
        return status


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TransferStack]:
    # Module-scoped (one start-up for every gateway test); stopped by pid at the end.
    data_dir = tmp_path_factory.mktemp("devserver")
    ledger_dir = tmp_path_factory.mktemp("ledger")
    with devserver_process(data_dir) as server:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")}
        env = {
            **inherited,
            "RESONATE_URL": url_of(server),
            "MONEY_TRANSFER_DATA_DIR": str(ledger_dir),
        }
        with (
            worker_process("money_transfer.worker", env),
            gateway_process("money_transfer.gateway", env) as gateway,
            clients.client(base_url=url_of(gateway), timeout=10) as client,
        ):
            yield TransferStack(
                client, RunningDevServer(server, data_dir, False), Ledger.at(ledger_dir)
            )


def transfer_request(**fields: Any) -> dict[str, Any]:
    return {
        "transfer_id": f"test-{secrets.token_hex(4)}",
        "from_account": "alice",
        "to_account": "bob",
        "amount_cents": 1_999,
        **fields,
    }


def test_a_transfer_debits_and_credits_once(stack: TransferStack) -> None:
    body = transfer_request()
    total = sum(stack.ledger.balances().values())

    assert stack.gateway.post("/transfers", json=body).status_code == 202
    status = stack.wait_settled(body["transfer_id"])

    assert status == {
        "transfer_id": body["transfer_id"],
        "status": "completed",
        "from_account": "alice",
        "to_account": "bob",
        "amount_cents": 1_999,
    }
    assert stack.ledger.entries(body["transfer_id"]) == [
        ("debit", "alice", 1_999, "applied"),
        ("credit", "bob", 1_999, "applied"),
    ]
    assert_invariants(stack.ledger, total, [body["transfer_id"]])


def test_insufficient_funds_is_declined_once_and_nothing_moves(stack: TransferStack) -> None:
    body = transfer_request(from_account="carol", amount_cents=1_000_000_000)
    before = stack.ledger.balances()

    stack.gateway.post("/transfers", json=body).raise_for_status()
    status = stack.wait_settled(body["transfer_id"])

    assert (status["status"], status["reason"]) == ("declined", "insufficient_funds")
    # One attempt, recorded as a refusal: not retried.
    assert stack.ledger.entries(body["transfer_id"]) == [
        ("debit", "carol", 1_000_000_000, "insufficient_funds")
    ]
    assert stack.ledger.balances() == before


def test_a_refused_credit_reverses_the_debit(stack: TransferStack) -> None:
    body = transfer_request(to_account="dormant")
    before = stack.ledger.balances()

    stack.gateway.post("/transfers", json=body).raise_for_status()
    status = stack.wait_settled(body["transfer_id"])

    assert (status["status"], status["reason"]) == ("reversed", "account_frozen")
    assert stack.ledger.entries(body["transfer_id"]) == [
        ("debit", "alice", 1_999, "applied"),
        ("credit", "dormant", 1_999, "account_frozen"),
        ("reversal", "alice", 1_999, "applied"),
    ]
    assert stack.ledger.balances() == before


def test_twenty_identical_posts_move_the_money_once(stack: TransferStack) -> None:
    body = transfer_request()
    total = sum(stack.ledger.balances().values())

    async def post_all() -> list[int]:
        async with clients.async_client(base_url=stack.gateway.base_url) as client:
            answers = await asyncio.gather(
                *(client.post("/transfers", json=body) for _ in range(20))
            )
        return [a.status_code for a in answers]

    assert asyncio.run(post_all()) == [202] * 20
    assert stack.wait_settled(body["transfer_id"])["status"] == "completed"
    assert len(stack.ledger.entries(body["transfer_id"])) == 2
    assert_invariants(stack.ledger, total, [body["transfer_id"]])


def test_same_transfer_id_with_a_different_body_is_409(stack: TransferStack) -> None:
    body = transfer_request()
    assert stack.gateway.post("/transfers", json=body).status_code == 202

    conflict = stack.gateway.post("/transfers", json={**body, "amount_cents": 99_999})

    assert conflict.status_code == 409
    assert "exists with a different request" in conflict.json()["detail"]
    assert stack.wait_settled(body["transfer_id"])["status"] == "completed"
    assert [amount for _, _, amount, _ in stack.ledger.entries(body["transfer_id"])] == [
        1_999,
        1_999,
    ]


def test_unknown_transfers_are_404(stack: TransferStack) -> None:
    assert stack.gateway.get(f"/transfers/none-{secrets.token_hex(4)}").status_code == 404
    assert stack.gateway.get("/transfers/tx:1").status_code == 422


def _changed(path: str, value: Any) -> dict[str, Any]:
    return changed(transfer_request(), path, value)


HOSTILE: dict[str, bytes] = {
    **malformed_bodies(transfer_request()),
    "missing transfer_id": as_json(_changed("transfer_id", REMOVED)),
    "missing amount": as_json(_changed("amount_cents", REMOVED)),
    "transfer_id with colon": as_json(_changed("transfer_id", "tx:1")),
    "transfer_id too long": as_json(_changed("transfer_id", "t" * 65)),
    "transfer_id path traversal": as_json(_changed("transfer_id", "../../etc/passwd")),
    "account uppercase": as_json(_changed("from_account", "ALICE")),
    "account NUL byte": as_json(_changed("to_account", "bob\x00")),
    "account lone surrogate": as_json(_changed("to_account", "bob\ud800")),
    "account number": as_json(_changed("to_account", 7)),
    "to itself": as_json(_changed("to_account", "alice")),
    "amount zero": as_json(_changed("amount_cents", 0)),
    "amount negative": as_json(_changed("amount_cents", -500)),
    "amount fraction": as_json(_changed("amount_cents", 19.99)),
    "amount as string": as_json(_changed("amount_cents", "1999")),
    "amount as bool": as_json(_changed("amount_cents", True)),
    "amount NaN": as_json(_changed("amount_cents", float("nan"))),
    "amount huge": as_json(_changed("amount_cents", 10**30)),
    "extra field": as_json(_changed("currency", "EUR")),
    "deeply nested": b"[" * 5_000 + b"]" * 5_000,
    "body over 16 KiB": as_json(_changed("memo", "A" * 20_000)),
}


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_request_is_rejected_and_nothing_is_stored(
    stack: TransferStack, body: bytes
) -> None:
    executions_before = stack.server.executions()
    entries_before = len(stack.ledger.entries())

    response = stack.gateway.post(
        "/transfers", content=body, headers={"Content-Type": "application/json"}
    )

    assert 400 <= response.status_code < 500, response.text
    assert len(response.content) < 2_000  # says what is wrong without echoing the input
    if response.status_code == 422:
        assert response.json()["detail"], "a 422 names the fields that are wrong"
    assert stack.server.executions() == executions_before
    assert len(stack.ledger.entries()) == entries_before


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("amount_cents", 0, "Input should be greater than or equal to 1"),
        ("amount_cents", 19.99, "Input should be a valid integer"),
        ("to_account", "alice", "Value error, must differ from from_account"),
    ],
)
def test_bad_input_is_422_naming_the_field(
    stack: TransferStack, field: str, value: Any, message: str
) -> None:
    response = stack.gateway.post("/transfers", json=_changed(field, value))

    assert response.status_code == 422
    [problem] = response.json()["detail"]
    assert (problem["loc"], problem["msg"]) == (["body", field], message)


def test_an_oversized_body_is_413(stack: TransferStack) -> None:
    response = stack.gateway.post("/transfers", json=_changed("memo", "A" * 20_000))

    assert response.status_code == 413


# -- many transfers at once, with a worker killed among them -----------------------------------

ACCOUNTS = 10
OPENING_BALANCE = 10_000  # 100.00 each: small, so that some transfers overdraw and are declined


def test_200_concurrent_transfers_with_a_worker_killed_keep_every_invariant(
    devserver: RunningDevServer, start_worker: ProcessFactory, tmp_path: Path
) -> None:
    accounts = {f"acct-{n}": (OPENING_BALANCE, "open") for n in range(ACCOUNTS - 1)}
    accounts["acct-frozen"] = (OPENING_BALANCE, "frozen")  # every credit to it is reversed
    ledger = Ledger.at(tmp_path / "ledger", accounts)
    env = {
        "RESONATE_URL": devserver.url,
        "MONEY_TRANSFER_DATA_DIR": str(ledger.path.parent),
        "RESONATE_TTL_SECONDS": "2",  # the killed worker's transfers move on after 2 s
    }
    doomed = start_worker("money_transfer.worker", env, name="worker-1")
    start_worker("money_transfer.worker", env, name="worker-2")
    total = sum(ledger.balances().values())  # with the demo accounts each worker opens
    chooser = random.Random(15)
    names = sorted(accounts)
    run = secrets.token_hex(3)
    transfers = {}
    for n in range(200):
        source, destination = chooser.sample(names, 2)
        transfers[f"tx-{run}-{n}"] = {
            "transfer_id": f"tx-{run}-{n}",
            "from_account": source,
            "to_account": destination,
            "amount_cents": chooser.randint(1, 6_000),
        }

    async def transfer_all() -> list[Any]:
        client = Resonate(url=devserver.url, group="money-transfer-tests")
        try:
            workers = client.options(target="money-transfer")
            handles = [workers.rpc(tid, "transfer", body) for tid, body in transfers.items()]
            # SIGKILL a worker once 30 transfers are done: most of the rest are queued or mid-way.
            pending = [asyncio.ensure_future(h.result()) for h in handles]
            for done, finished in enumerate(asyncio.as_completed(pending), 1):
                await finished
                if done == 30:
                    doomed.kill()
            return await asyncio.wait_for(asyncio.gather(*pending), 120)
        finally:
            await client.stop()

    results = asyncio.run(transfer_all())

    assert len(results) == 200
    assert_invariants(ledger, total, transfers)
    shapes = {shape_of(ledger.entries(tid)) for tid in transfers}
    assert shapes == {"completed", "declined", "reversed"}, "every path was taken"

"""webhook-handler end to end: a real dev server, workers, the gateway, the provider sandbox.

Deliveries are signed as the payments provider signs them (`cookbook.sandbox.webhooks`, not the
gateway's own code), and every test asserts on what the receiving systems recorded: the sandbox
(every shipment, cancellation and email, by the event's Idempotency-Key prefix), the order book
(each event applied once) and the dev server (which executions exist).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cookbook import clients
from cookbook.processes import ManagedProcess
from cookbook.sandbox.webhooks import SIGNATURE_HEADER, signature_header
from cookbook.stack import devserver_process, gateway_process, url_of, worker_process
from cookbook.testing.bodies import REMOVED, as_json, changed, malformed_bodies
from cookbook.testing.fixtures import ProcessFactory, RunningDevServer, RunningSandbox
from resonate.resonate import Resonate
from webhook_handler.steps import OrderBook

SECRET = "whsec_tests_" + "k" * 24


def sign(body: bytes, *, secret: str = SECRET, at: float | None = None) -> dict[str, str]:
    timestamp = int(time.time() if at is None else at)
    return {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: signature_header(secret, body, timestamp),
    }


def new_event(event_type: str = "payment_succeeded", order_id: str | None = None) -> dict[str, Any]:
    tag = secrets.token_hex(6)
    return {
        "id": f"evt_{tag}",
        "type": event_type,
        "created": 1_765_000_000,
        "data": {
            "order_id": order_id or f"order-{tag}",
            "charge_id": f"ch_{tag}",
            "amount": 4_200,
            "currency": "eur",
        },
    }


@dataclass(frozen=True)
class Shop:
    gateway: httpx.Client
    server: RunningDevServer
    sandbox: RunningSandbox
    book: OrderBook

    def deliver(self, event: dict[str, Any]) -> httpx.Response:
        body = json.dumps(event).encode()
        return self.gateway.post("/webhooks/payments", content=body, headers=sign(body))

    def outcomes(self, *event_ids: str) -> list[dict[str, Any]]:
        """Await the executions (Resonate listeners, not polls); their outcomes."""
        return asyncio.run(results(self.server.url, list(event_ids)))

    def effects(self, event_id: str) -> list[tuple[str, str]]:
        found = self.sandbox.records.effects(key_prefix=event_id + ":")
        return [(e.provider, e.action) for e in found]


async def results(url: str, ids: list[str], seconds: float = 60) -> list[dict[str, Any]]:
    client = Resonate(url=url, group="webhook-handler-tests")
    try:
        handles = [await client.get(i) for i in ids]
        done = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), seconds)
        return [dict(d) for d in done]
    finally:
        await client.stop()


@pytest.fixture(scope="module")
def shop(sandbox: RunningSandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    # Module-scoped (one start-up for most tests); each test uses event and order ids of its own.
    data_dir = tmp_path_factory.mktemp("devserver")
    book_dir = tmp_path_factory.mktemp("book")
    with devserver_process(data_dir) as server:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")}
        env = {
            **inherited,
            "RESONATE_URL": url_of(server),
            "PROVIDER_API_URL": sandbox.url,
            "WEBHOOK_HANDLER_DATA_DIR": str(book_dir),
            "WEBHOOK_SECRET": SECRET,
        }
        with (
            worker_process("webhook_handler.worker", env),
            gateway_process("webhook_handler.gateway", env) as gateway,
            clients.client(base_url=url_of(gateway), timeout=10) as client,
        ):
            yield Shop(
                client, RunningDevServer(server, data_dir, False), sandbox, OrderBook.at(book_dir)
            )


# -- what each event does ----------------------------------------------------------------------


def test_a_payment_ships_the_order_once_and_answers_before_it_is_done(shop: Shop) -> None:
    event = new_event()

    answer = shop.deliver(event)

    assert answer.status_code == 202
    assert answer.json() == {
        "event_id": event["id"],
        "status": "accepted",
        "status_url": f"/events/{event['id']}",
    }
    [outcome] = shop.outcomes(event["id"])
    assert outcome["action"] == "fulfilled"
    assert shop.effects(event["id"]) == [("inventory", "reserve")]
    status = shop.gateway.get(f"/events/{event['id']}").json()
    assert (status["status"], status["outcome"]["shipment_id"]) == ("done", outcome["shipment_id"])


def test_a_refund_after_the_payment_cancels_the_shipment_and_emails(shop: Shop) -> None:
    paid = new_event()
    refunded = new_event("charge_refunded", paid["data"]["order_id"])
    shop.deliver(paid).raise_for_status()
    shop.outcomes(paid["id"])

    shop.deliver(refunded).raise_for_status()
    [outcome] = shop.outcomes(refunded["id"])

    assert (outcome["action"], outcome["cancellation"]) == ("refunded", "cancelled")
    assert shop.effects(refunded["id"]) == [("inventory", "cancel"), ("email", "send")]
    [cancel] = shop.sandbox.records.effects(key_prefix=refunded["id"] + ":")[:1]
    [reserve] = shop.sandbox.records.effects(key_prefix=paid["id"] + ":")
    assert cancel.resource_id == reserve.resource_id


def test_a_refund_that_overtakes_its_payment_means_nothing_ships(shop: Shop) -> None:
    refunded = new_event("charge_refunded")
    paid = new_event("payment_succeeded", refunded["data"]["order_id"])

    shop.deliver(refunded).raise_for_status()
    [refund] = shop.outcomes(refunded["id"])
    shop.deliver(paid).raise_for_status()
    [payment] = shop.outcomes(paid["id"])

    assert (refund["action"], refund["detail"], refund["cancellation"]) == (
        "refunded",
        "nothing_to_cancel",
        "none",
    )
    assert (payment["action"], payment["detail"]) == ("not_shipped", "already_refunded")
    assert shop.effects(refunded["id"]) == [("email", "send")]
    assert shop.effects(paid["id"]) == []


def test_a_refund_while_the_shipment_call_is_on_its_way_voids_it(shop: Shop) -> None:
    paid = new_event()
    refunded = new_event("charge_refunded", paid["data"]["order_id"])
    # The warehouse is down for this payment's calls: the order book has claimed the shipment and
    # written down its key, and the call is being retried, when the refund comes.
    fault = clients.post(
        f"{shop.sandbox.url}/_admin/faults",
        json={
            "provider": "inventory",
            "action": "reserve",
            "mode": "fail_always",
            "status": 503,
            "key_prefix": paid["id"] + ":",
        },
    ).json()
    shop.deliver(paid).raise_for_status()
    eventually(lambda: shop.sandbox.records.requests(key_prefix=paid["id"] + ":"))

    shop.deliver(refunded).raise_for_status()
    [refund] = shop.outcomes(refunded["id"])
    clients.delete(f"{shop.sandbox.url}/_admin/faults/{fault['id']}").raise_for_status()
    [payment] = shop.outcomes(paid["id"])

    assert (refund["action"], refund["cancellation"]) == ("refunded", "voided")
    assert payment["action"] == "shipment_voided"
    assert shop.effects(paid["id"]) == []  # the late call was refused: nothing ships


def test_two_payment_events_for_one_order_ship_it_once(shop: Shop) -> None:
    first = new_event()
    second = new_event("payment_succeeded", first["data"]["order_id"])

    shop.deliver(first).raise_for_status()
    shop.deliver(second).raise_for_status()
    outcomes = shop.outcomes(first["id"], second["id"])

    assert sorted(o["action"] for o in outcomes) == ["fulfilled", "not_shipped"]
    assert len(shop.effects(first["id"]) + shop.effects(second["id"])) == 1


def test_the_same_event_in_two_executions_is_applied_once(shop: Shop) -> None:
    # Not the gateway's way (it starts an event under its own id), but the order book's guard.
    async def twice() -> list[dict[str, Any]]:
        client = Resonate(url=shop.server.url, group="webhook-handler-tests")
        try:
            handle = client.options(target="webhook-handler").rpc(
                f"twice-{secrets.token_hex(4)}",
                "deliver_in_order",
                ["payment_succeeded", "payment_succeeded"],
            )
            outcomes: list[dict[str, Any]] = await asyncio.wait_for(handle.result(), 60)
            return outcomes
        finally:
            await client.stop()

    first, second = asyncio.run(twice())

    assert (first["action"], second["action"]) == ("fulfilled", "duplicate")
    assert [d for _, t, d in shop.book.applied_events(first["order_id"])] == ["fulfil"]


# -- what the gateway takes --------------------------------------------------------------------


def test_twenty_concurrent_deliveries_of_one_event_start_one_execution(shop: Shop) -> None:
    event = new_event()
    body = json.dumps(event).encode()
    executions_before = shop.server.executions()

    async def deliver_all() -> list[int]:
        async with clients.async_client(base_url=shop.gateway.base_url) as client:
            answers = await asyncio.gather(
                *(
                    client.post("/webhooks/payments", content=body, headers=sign(body))
                    for _ in range(20)
                )
            )
        return [a.status_code for a in answers]

    assert asyncio.run(deliver_all()) == [202] * 20
    shop.outcomes(event["id"])
    assert shop.effects(event["id"]) == [("inventory", "reserve")]
    # One execution, and in it only its one step.
    (execution,) = shop.server.executions() - executions_before
    promises = shop.server.state(execution)["promises"]
    assert isinstance(promises, list)
    assert len(promises) == 2


def test_the_same_event_id_with_other_contents_is_409(shop: Shop) -> None:
    event = new_event()
    shop.deliver(event).raise_for_status()

    conflict = shop.deliver(changed(event, "data.amount", 1))

    assert conflict.status_code == 409
    assert "delivered before with other contents" in conflict.json()["detail"]
    [outcome] = shop.outcomes(event["id"])
    assert outcome["action"] == "fulfilled"


def test_an_event_type_not_acted_on_is_200_and_starts_nothing(shop: Shop) -> None:
    event = {"id": f"evt_{secrets.token_hex(6)}", "type": "customer.created", "data": {}}
    executions_before = shop.server.executions()

    answer = shop.deliver(event)

    assert (answer.status_code, answer.json()) == (
        200,
        {"event_id": event["id"], "status": "ignored"},
    )
    assert shop.server.executions() == executions_before


def test_unknown_events_are_404(shop: Shop) -> None:
    assert shop.gateway.get(f"/events/evt_{secrets.token_hex(6)}").status_code == 404
    assert shop.gateway.get("/events/evt_a:1").status_code == 422


# -- signatures: a 400, and nothing started ------------------------------------------------------


def _forged(event: dict[str, Any]) -> dict[str, tuple[bytes, dict[str, str]]]:
    body = json.dumps(event).encode()
    tampered = json.dumps(changed(event, "data.amount", 1)).encode()
    header = sign(body)[SIGNATURE_HEADER]
    timestamp, signature = header.split(",")
    json_type = {"Content-Type": "application/json"}
    return {
        "tampered body": (tampered, sign(body)),
        "wrong secret": (body, sign(body, secret="whsec_someone_else_0123456789")),
        "stale timestamp": (body, sign(body, at=time.time() - 301)),
        "timestamp from the future": (body, sign(body, at=time.time() + 600)),
        "missing header": (body, json_type),
        "empty header": (body, {**json_type, SIGNATURE_HEADER: ""}),
        "no timestamp": (body, {**json_type, SIGNATURE_HEADER: signature}),
        "no v1 signature": (body, {**json_type, SIGNATURE_HEADER: timestamp}),
        "v0 scheme only": (body, {**json_type, SIGNATURE_HEADER: header.replace("v1=", "v0=")}),
        "timestamp changed": (
            body,
            {**json_type, SIGNATURE_HEADER: f"t={int(time.time()) - 1},{signature}"},
        ),
        "signature truncated": (body, {**json_type, SIGNATURE_HEADER: header[:-2]}),
        "non-ascii signature": (body, {**json_type, SIGNATURE_HEADER: header[:-1] + "é"}),
    }


FORGERIES = list(_forged(new_event()))


@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_bad_signature_is_400_and_starts_nothing(shop: Shop, forgery: str) -> None:
    event = new_event()
    body, headers = _forged(event)[forgery]
    executions_before = shop.server.executions()

    answer = shop.gateway.post(
        "/webhooks/payments",
        content=body,
        headers={k.encode(): v.encode() for k, v in headers.items()},
    )

    assert answer.status_code == 400, answer.text
    assert answer.json()["detail"].startswith("invalid signature: ")
    assert shop.server.executions() == executions_before
    assert shop.gateway.get(f"/events/{event['id']}").status_code == 404


def test_a_rotated_secret_is_taken_with_either_signature(shop: Shop) -> None:
    event = new_event()
    body = json.dumps(event).encode()
    old = sign(body, secret="whsec_old_secret_0123456789ab")[SIGNATURE_HEADER]
    new = sign(body)[SIGNATURE_HEADER].split(",")[1]

    answer = shop.gateway.post(
        "/webhooks/payments",
        content=body,
        headers={"Content-Type": "application/json", SIGNATURE_HEADER: f"{old},{new}"},
    )

    assert answer.status_code == 202


# -- bad bodies, correctly signed: a 422 naming the field, and nothing started ---------------------


def _changed(path: str, value: Any) -> dict[str, Any]:
    return changed(new_event(), path, value)


HOSTILE: dict[str, bytes] = {
    **malformed_bodies(new_event()),
    "invalid utf-8": b'{"id": "evt_\xff\xfe"}',
    "deeply nested": b"[" * 5_000 + b"]" * 5_000,
    "missing id": as_json(_changed("id", REMOVED)),
    "missing type": as_json(_changed("type", REMOVED)),
    "missing data": as_json(_changed("data", REMOVED)),
    "missing created": as_json(_changed("created", REMOVED)),
    "missing order_id": as_json(_changed("data.order_id", REMOVED)),
    "missing amount": as_json(_changed("data.amount", REMOVED)),
    "id with colon": as_json(_changed("id", "evt_a:1")),
    "id without prefix": as_json(_changed("id", "12345")),
    "id too long": as_json(_changed("id", "evt_" + "a" * 200)),
    "id path traversal": as_json(_changed("id", "evt_../../etc")),
    "id a number": as_json(_changed("id", 12345)),
    "type a number": as_json(_changed("type", 3)),
    "type with spaces": as_json(_changed("type", "payment succeeded")),
    "data an array": as_json(_changed("data", [])),
    "order_id NUL byte": as_json(_changed("data.order_id", "order\x00")),
    "order_id lone surrogate": as_json(_changed("data.order_id", "order\ud800")),
    "order_id empty": as_json(_changed("data.order_id", "")),
    "charge_id wrong prefix": as_json(_changed("data.charge_id", "py_123")),
    "amount zero": as_json(_changed("data.amount", 0)),
    "amount negative": as_json(_changed("data.amount", -500)),
    "amount fraction": as_json(_changed("data.amount", 42.5)),
    "amount as string": as_json(_changed("data.amount", "4200")),
    "amount as bool": as_json(_changed("data.amount", True)),
    "amount NaN": as_json(_changed("data.amount", float("nan"))),
    "amount huge": as_json(_changed("data.amount", 10**30)),
    "currency uppercase": as_json(_changed("data.currency", "EUR")),
    "created negative": as_json(_changed("created", -1)),
    "created a string": as_json(_changed("created", "yesterday")),
}


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_bad_body_correctly_signed_is_422_and_starts_nothing(shop: Shop, body: bytes) -> None:
    executions_before = shop.server.executions()
    applied_before = set(shop.book.applied_events())

    answer = shop.gateway.post("/webhooks/payments", content=body, headers=sign(body))

    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"], "a 422 names the fields that are wrong"
    assert len(answer.content) < 2_000  # says what is wrong without echoing the input
    assert shop.server.executions() == executions_before
    # An execution an earlier test started may apply its event meanwhile (the stack is shared):
    # whatever was applied since must be one of those (an execution's id is its event's).
    applied_since = set(shop.book.applied_events()) - applied_before
    assert {event_id for event_id, _, _ in applied_since} <= executions_before


@pytest.mark.parametrize(
    ("field", "value", "loc", "message"),
    [
        (
            "data.amount",
            0,
            ["body", "data", "amount"],
            "Input should be greater than or equal to 1",
        ),
        ("data.amount", "4200", ["body", "data", "amount"], "Input should be a valid integer"),
        ("id", "evt_a:1", ["body", "id"], "String should match pattern"),
        ("data.currency", "EUR", ["body", "data", "currency"], "String should match pattern"),
    ],
)
def test_bad_input_is_422_naming_the_field(
    shop: Shop, field: str, value: Any, loc: list[str], message: str
) -> None:
    body = as_json(_changed(field, value))

    answer = shop.gateway.post("/webhooks/payments", content=body, headers=sign(body))

    assert answer.status_code == 422
    [problem] = answer.json()["detail"]
    assert problem["loc"] == loc
    assert problem["msg"].startswith(message)


def test_an_oversized_body_is_413_before_the_signature_is_checked(shop: Shop) -> None:
    body = as_json(_changed("data.note", "A" * 70_000))

    answer = shop.gateway.post("/webhooks/payments", content=body, headers=sign(body))

    assert answer.status_code == 413


# -- the delivery storm --------------------------------------------------------------------------

ORDERS = 150
REFUNDED = 50  # 150 payments + 50 refunds: 200 events


def eventually(found: Callable[[], Any], timeout: float = 60) -> Any:
    """Poll a receiving system's records (it has no change feed) until `found` returns them."""
    deadline = time.monotonic() + timeout
    while not (result := found()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return result


def test_a_delivery_storm_with_a_worker_killed_ships_each_order_once(
    devserver: RunningDevServer,
    sandbox: RunningSandbox,
    start_worker: ProcessFactory,
    start_process: Callable[[ManagedProcess], ManagedProcess],
    tmp_path: Path,
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")},
        "RESONATE_URL": devserver.url,
        "PROVIDER_API_URL": sandbox.url,
        "WEBHOOK_HANDLER_DATA_DIR": str(tmp_path / "book"),
        "WEBHOOK_SECRET": SECRET,
        "RESONATE_TTL_SECONDS": "2",  # the killed worker's events move on after 2 s
    }
    doomed = start_worker("webhook_handler.worker", env, name="worker-1")
    start_worker("webhook_handler.worker", env, name="worker-2")
    gateway = start_process(gateway_process("webhook_handler.gateway", env))
    book = OrderBook.at(tmp_path / "book")
    run = secrets.token_hex(3)
    orders = [f"order-{run}-{n}" for n in range(ORDERS)]
    events: list[dict[str, Any]] = [
        {
            "id": f"evt_{run}p{n}",
            "type": "payment_succeeded",
            "data": {"order_id": order, "charge_id": f"ch_{run}{n}", "amount": 100 + n},
        }
        for n, order in enumerate(orders)
    ] + [
        {
            "id": f"evt_{run}r{n}",
            "type": "charge_refunded",
            "data": {"order_id": orders[n], "charge_id": f"ch_{run}{n}", "amount": 100 + n},
        }
        for n in range(REFUNDED)
    ]
    for event in events:
        event["data"]["currency"] = "eur"
    provider = clients.client(base_url=sandbox.url, timeout=30)
    endpoint = provider.post(
        "/webhooks/endpoints",
        json={"url": f"{url_of(gateway)}/webhooks/payments", "secret": SECRET, "concurrency": 8},
    ).json()
    try:
        emitted = provider.post(
            "/webhooks/events",
            json={"events": events, "copies_min": 1, "copies_max": 3, "shuffle": True, "seed": 14},
        ).json()["events"]
        # SIGKILL a worker once 30 orders have shipped: the rest are queued, mid-way or undelivered.
        eventually(lambda: len(sandbox.records.effects(key_prefix=f"evt_{run}")) >= 30)
        doomed.kill()
        at_kill = len(sandbox.records.effects(key_prefix=f"evt_{run}"))
        assert provider.get("/webhooks/idle", params={"wait": 60}).json()["idle"]
        outcomes = asyncio.run(results(devserver.url, [e["id"] for e in events], seconds=120))
    finally:
        provider.delete(f"/webhooks/endpoints/{endpoint['id']}")
        provider.close()

    # The storm was one: shuffled, and with events delivered up to three times.
    copies = Counter(e["copies"] for e in emitted)
    assert set(copies) == {1, 2, 3}
    assert [e["id"] for e in emitted] != [e["id"] for e in events]
    deliveries = clients.get(f"{sandbox.url}/webhooks/deliveries").json()
    taken = Counter(d["event_id"] for d in deliveries if d["outcome"] == "delivered")
    assert {e["id"]: taken[e["id"]] for e in emitted} == {e["id"]: e["copies"] for e in emitted}

    # Each event applied once in the order book, and handled by one execution.
    applied = book.applied_events()
    assert sorted(e for e, _, _ in applied) == sorted(e["id"] for e in events)
    assert "duplicate" not in {o["action"] for o in outcomes}

    # Counted by the warehouse: every order paid and not refunded shipped exactly once; every
    # refunded order has no shipment left standing; every refund emailed once.
    effects = sandbox.records.effects(key_prefix=f"evt_{run}")
    assert len(effects) > at_kill, "the worker was killed before the storm was over"
    reserved = Counter(e.body["order_id"] for e in effects if e.action == "reserve")
    cancelled = {e.response["id"] for e in effects if e.action == "cancel"}
    emailed = Counter(e.body["order_id"] for e in effects if e.provider == "email")
    for n, order in enumerate(orders):
        if n >= REFUNDED:
            assert reserved[order] == 1, order
            continue
        assert reserved[order] <= 1, order
        mine = [e for e in effects if e.action == "reserve" and e.body["order_id"] == order]
        assert all(e.resource_id in cancelled for e in mine), order
        assert emailed[order] == 1, order
    assert sum(reserved.values()) >= ORDERS - REFUNDED

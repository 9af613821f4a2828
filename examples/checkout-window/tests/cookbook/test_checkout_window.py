"""checkout-window end to end: a real dev server, worker and gateway processes, and the sandbox.

Every test drives purchases through the gateway's HTTP API, then asserts on what the receiving
systems recorded: the provider sandbox (each reservation, release, charge and email, with its own
timestamps) and the dev server (the purchase's promises). The API tests share one stack in real
time, where the gateway's 30-minute window never ends during a test; the tests that reach the
window's end start their own stack on a dev server that skips time, so they wait for the real
30 minutes in well under a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import pytest
from cookbook import clients
from cookbook.processes import ManagedProcess
from cookbook.sandbox.store import EffectRecord
from cookbook.stack import devserver_process, gateway_process, url_of, worker_process
from cookbook.testing.bodies import REMOVED, as_json, changed, malformed_bodies
from cookbook.testing.fixtures import (
    ProcessFactory,
    RunningDevServer,
    RunningSandbox,
)
from cookbook.testing.plaintext import plaintext_found, stored_values, what_the_server_holds
from resonate.resonate import Resonate
from resonate.types import Value

TIMEOUT_S = 30
WINDOW_S = 30 * 60  # the gateway's default window
# The window opens right after the stock is reserved: its deadline follows the reservation's
# own timestamp by the window, give or take the time to create the promise (milliseconds on a
# quiet machine; room for a loaded one).
WINDOW_START_S = 2.0

# Step ids, which the tests use to arm tripwires (the example's code never builds them): the
# reservation `:1`, the cancellation promise `:2`, the window record `:3`, then the charge or the
# release `:4`.
CANCELLATION, WINDOW_RECORD = 2, 3

# The purchase names its buyer by reference; who that is (BUYER) only the providers know.
CUSTOMER_ID = "cus_5e0b82d4"
BUYER = {"name": "Zoë Quist", "email": "zoe@example.com"}


def lamp_purchase(purchase_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "purchase_id": purchase_id or f"test-{secrets.token_hex(4)}",
        "customer_id": CUSTOMER_ID,
        "items": [
            {"sku": "LAMP-7", "quantity": 1, "unit_price_cents": 4900},
            {"sku": "BULB-2", "quantity": 3, "unit_price_cents": 350},
        ],
        "currency": "EUR",
    }
    return body


LAMP_TOTAL_CENTS = 4900 + 3 * 350


@dataclass(frozen=True)
class Stack:
    gateway: httpx.Client
    server: RunningDevServer
    sandbox: RunningSandbox

    def buy(self, body: dict[str, Any] | None = None) -> str:
        body = body or lamp_purchase()
        response = self.gateway.post("/purchases", json=body)
        assert response.status_code == 202, response.text
        purchase_id: str = response.json()["purchase_id"]
        return purchase_id

    def get(self, purchase_id: str) -> dict[str, Any]:
        view: dict[str, Any] = self.gateway.get(f"/purchases/{purchase_id}").json()
        return view

    def cancel(self, purchase_id: str) -> httpx.Response:
        return self.gateway.post(f"/purchases/{purchase_id}/cancel")

    def window_open(self, purchase_id: str) -> dict[str, Any]:
        """The purchase, once the step that records its window is done."""
        self.server.wait_for("settle", f"{purchase_id}:{WINDOW_RECORD}", timeout=TIMEOUT_S)
        view = self.get(purchase_id)
        assert view["state"] == "window-open", view
        return view

    def ended(self, purchase_id: str) -> dict[str, Any]:
        """The purchase, once its execution has settled."""
        self.server.wait_for("settle", purchase_id, timeout=TIMEOUT_S)
        return self.get(purchase_id)

    def effects(self, purchase_id: str) -> list[EffectRecord]:
        return self.sandbox.records.effects(key_prefix=f"{purchase_id}:")

    def promises(self, purchase_id: str) -> list[dict[str, Any]]:
        """Every promise the server holds for the purchase: the execution, its steps and
        cancellation (`<id>:<n>`), and its window record (`<id>.window`)."""
        promises = self.server.state()["promises"]
        assert isinstance(promises, list)
        ours = (f"{purchase_id}:", f"{purchase_id}.")
        return [p for p in promises if p["id"] == purchase_id or p["id"].startswith(ours)]


def did(effects: list[EffectRecord]) -> list[str]:
    return [f"{e.provider}.{e.action}" for e in effects]


def add_fault(stack: Stack, purchase_id: str, **fault: Any) -> None:
    body = {**fault, "key_prefix": f"{purchase_id}:"}
    response = clients.post(f"{stack.sandbox.url}/_admin/faults", json=body)
    assert response.status_code == 201, response.text


@pytest.fixture(scope="module")
def stack(sandbox: RunningSandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("devserver")
    with devserver_process(data_dir) as server:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")}
        env = {**inherited, "RESONATE_URL": url_of(server), "PROVIDER_API_URL": sandbox.url}
        with (
            worker_process("checkout_window.worker", env),
            gateway_process("checkout_window.gateway", env) as gateway,
            clients.client(base_url=url_of(gateway), timeout=TIMEOUT_S) as client,
        ):
            yield Stack(client, RunningDevServer(server, data_dir, False), sandbox)


# -- cancelling within the window ------------------------------------------------------------------


def test_a_cancel_within_the_window_releases_the_stock_and_charges_nothing(stack: Stack) -> None:
    purchase_id = stack.buy()
    window_open = stack.window_open(purchase_id)

    first = stack.cancel(purchase_id)
    second = stack.cancel(purchase_id)
    ended = stack.ended(purchase_id)
    after_the_end = stack.cancel(purchase_id)

    reserve, release, email = effects = stack.effects(purchase_id)
    assert did(effects) == ["inventory.reserve", "inventory.cancel", "email.send"]
    assert release.body == {"reservation_id": reserve.resource_id}
    assert release.response["status"] == "cancelled"
    assert email.body["subject"] == f"Purchase {purchase_id} cancelled"
    assert stack.sandbox.records.requests(f"{purchase_id}:")[-1].provider == "email"
    assert window_open["cancel_window_seconds"] == WINDOW_S
    assert (first.status_code, first.json()["outcome"]) == (200, "cancelled")
    # Cancelling twice is not an error: the answer says it was done already.
    assert (second.status_code, second.json()["outcome"]) == (200, "already-cancelled")
    assert (after_the_end.status_code, after_the_end.json()["outcome"]) == (
        200,
        "already-cancelled",
    )
    assert ended["state"] == "cancelled"
    assert ended["reservation_id"] == reserve.resource_id
    assert "charge_id" not in ended


def test_twenty_concurrent_cancels_cancel_once(stack: Stack) -> None:
    purchase_id = stack.buy()
    stack.window_open(purchase_id)

    async def cancel_all() -> list[httpx.Response]:
        async with clients.async_client(
            base_url=stack.gateway.base_url, timeout=TIMEOUT_S
        ) as client:
            url = f"/purchases/{purchase_id}/cancel"
            return await asyncio.gather(*(client.post(url) for _ in range(20)))

    outcomes = sorted(r.json()["outcome"] for r in asyncio.run(cancel_all()))
    assert stack.ended(purchase_id)["state"] == "cancelled"

    assert outcomes == ["already-cancelled"] * 19 + ["cancelled"]
    assert did(stack.effects(purchase_id)) == [
        "inventory.reserve",
        "inventory.cancel",
        "email.send",
    ]


# -- one purchase per id -------------------------------------------------------------------------


def test_twenty_concurrent_duplicate_posts_start_one_purchase(stack: Stack) -> None:
    body = lamp_purchase()
    purchase_id = body["purchase_id"]

    async def post_all() -> list[httpx.Response]:
        async with clients.async_client(
            base_url=stack.gateway.base_url, timeout=TIMEOUT_S
        ) as client:
            return await asyncio.gather(*(client.post("/purchases", json=body) for _ in range(20)))

    responses = asyncio.run(post_all())
    stack.window_open(purchase_id)
    stack.cancel(purchase_id)
    assert stack.ended(purchase_id)["state"] == "cancelled"

    assert [r.status_code for r in responses] == [202] * 20
    assert {r.json()["purchase_id"] for r in responses} == {purchase_id}
    # One execution: the purchase's promises are one root and its own steps (reservation,
    # cancellation, release, email), each created once.
    promises = stack.server.state(purchase_id)["promises"]
    assert isinstance(promises, list)
    assert sorted(p["id"] for p in promises if p["id"] == purchase_id) == [purchase_id]
    requests = stack.sandbox.records.requests(f"{purchase_id}:")
    assert [f"{r.provider}.{r.action}" for r in requests] == [
        "inventory.reserve",
        "inventory.cancel",
        "email.send",
    ]


def test_the_same_id_with_another_body_is_409_and_changes_nothing(stack: Stack) -> None:
    body = lamp_purchase()
    purchase_id = stack.buy(body)
    stack.window_open(purchase_id)

    other = changed(body, "items.0.quantity", 2)
    response = stack.gateway.post("/purchases", json=other)

    assert response.status_code == 409
    assert response.json()["detail"] == f"purchase {purchase_id!r} exists with a different body"
    assert stack.get(purchase_id)["items"][0]["quantity"] == 1
    stack.cancel(purchase_id)
    assert stack.ended(purchase_id)["state"] == "cancelled"


def test_without_an_id_the_gateway_chooses_one(stack: Stack) -> None:
    body = changed(lamp_purchase(), "purchase_id", REMOVED)

    first, second = stack.buy(body), stack.buy(body)
    for purchase_id in (first, second):
        stack.window_open(purchase_id)
        stack.cancel(purchase_id)
        assert stack.ended(purchase_id)["state"] == "cancelled"

    assert first != second  # nothing to tell a repeat from a second purchase: two purchases
    view = stack.get(first)
    assert view["total_cents"] == LAMP_TOTAL_CENTS
    assert view["customer_id"] == CUSTOMER_ID


# -- bad input: a clear 4xx, and nothing started -------------------------------------------------


def _changed(path: str, value: Any) -> dict[str, Any]:
    return changed(lamp_purchase("bad-body"), path, value)


BAD_BODIES: dict[str, bytes] = {
    **malformed_bodies(lamp_purchase("bad-body")),
    "missing customer_id": as_json(_changed("customer_id", REMOVED)),
    "missing items": as_json(_changed("items", REMOVED)),
    "missing currency": as_json(_changed("currency", REMOVED)),
    "purchase_id with colon": as_json(_changed("purchase_id", "p:1")),
    "purchase_id with dot": as_json(_changed("purchase_id", "p.window")),
    "purchase_id empty": as_json(_changed("purchase_id", "")),
    "purchase_id too long": as_json(_changed("purchase_id", "p" * 65)),
    "purchase_id number": as_json(_changed("purchase_id", 7)),
    "purchase_id path traversal": as_json(_changed("purchase_id", "../../etc/passwd")),
    "customer_id empty": as_json(_changed("customer_id", "")),
    "customer_id NUL byte": as_json(_changed("customer_id", "cus_5e0b\x00")),
    "customer_id bidi override": as_json(_changed("customer_id", "cus_\u202e5e0b82d4")),
    "customer_id lone surrogate": as_json(_changed("customer_id", "cus_5e0b\ud800")),
    "customer_id number": as_json(_changed("customer_id", 5_082_004)),
    "no items": as_json(_changed("items", [])),
    "items an object": as_json(_changed("items", {"sku": "LAMP-7"})),
    "sku lowercase": as_json(_changed("items.0.sku", "lamp-7")),
    "quantity zero": as_json(_changed("items.0.quantity", 0)),
    "quantity negative": as_json(_changed("items.0.quantity", -1)),
    "quantity fraction": as_json(_changed("items.0.quantity", 1.5)),
    "quantity as string": as_json(_changed("items.0.quantity", "1")),
    "quantity as bool": as_json(_changed("items.0.quantity", True)),
    "quantity NaN": as_json(_changed("items.0.quantity", float("nan"))),
    "price zero": as_json(_changed("items.0.unit_price_cents", 0)),
    "price huge": as_json(_changed("items.0.unit_price_cents", 10**12)),
    "currency unknown": as_json(_changed("currency", "BTC")),
    "window zero": as_json(_changed("cancel_window_seconds", 0)),
    "window over a day": as_json(_changed("cancel_window_seconds", 86_401)),
    "window as string": as_json(_changed("cancel_window_seconds", "1800")),
    "extra field": as_json(_changed("coupon", "FREE")),
    "extra nested field": as_json(_changed("items.0.discount", 100)),
    "deeply nested": b"[" * 5_000 + b"]" * 5_000,
    "body over 16 KiB": as_json(_changed("items.0.sku", "A" * 20_000)),
}


# Every bad body is a 422 naming the fields that are wrong (a body that is not JSON too, as
# `json_invalid`), but two, each answered with the `{"detail": "..."}` the OpenAPI document
# declares: JSON nested too deeply to read is a 400, a body over 16 KiB a 413.
NOT_A_422 = {
    "deeply nested": (400, {"detail": "There was an error parsing the body"}),
    "body over 16 KiB": (413, {"detail": "the body is over 16 KiB"}),
}


@pytest.mark.parametrize(("case", "body"), BAD_BODIES.items(), ids=BAD_BODIES.keys())
def test_a_bad_body_is_refused_as_declared_and_starts_nothing(
    stack: Stack, case: str, body: bytes
) -> None:
    executions_before = stack.server.executions()

    response = stack.gateway.post(
        "/purchases", content=body, headers={"Content-Type": "application/json"}
    )

    status, answer = NOT_A_422.get(case, (422, None))
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert len(response.content) < 2_000  # says what is wrong without echoing the input
    if answer is not None:
        assert response.json() == answer
    else:  # `{"detail": [{"loc", "msg", "type"}, ...]}`, one entry per wrong field
        detail = response.json()["detail"]
        assert detail, "a 422 names the fields that are wrong"
        assert all(set(field) == {"loc", "msg", "type"} for field in detail), detail
        if case == "truncated json":
            assert [field["type"] for field in detail] == ["json_invalid"]
    assert stack.server.executions() == executions_before
    assert stack.sandbox.records.requests("bad-body:") == []


def test_a_422_names_the_field_and_the_reason(stack: Stack) -> None:
    response = stack.gateway.post("/purchases", json=_changed("items.0.quantity", 0))

    assert response.status_code == 422
    assert response.json()["detail"] == [
        {
            "loc": ["body", "items", 0, "quantity"],
            "msg": "Input should be greater than or equal to 1",
            "type": "greater_than_equal",
        }
    ]


def test_a_streamed_body_over_16_kib_is_the_declared_413(stack: Stack) -> None:
    # No Content-Length: the body is sent in chunks, and counted as it arrives.
    response = stack.gateway.post(
        "/purchases",
        content=iter([b'{"currency": "', b"A" * 20_000, b'"}']),
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 413
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"detail": "the body is over 16 KiB"}


def test_unknown_and_malformed_purchase_ids_are_refused(stack: Stack) -> None:
    assert stack.gateway.get("/purchases/no-such-purchase").status_code == 404
    assert stack.cancel("no-such-purchase").status_code == 404
    assert stack.gateway.get("/purchases/p:1").status_code == 422
    assert stack.cancel("p.window").status_code == 422


# -- personal data: the purchase names its buyer by reference, and only the providers know them --

NOT_A_REFERENCE: dict[str, dict[str, Any]] = {
    "an email address": {"customer_id": BUYER["email"]},
    "a name": {"customer_id": BUYER["name"]},
    "an email after the prefix": {"customer_id": "cus_zoe@example.com"},
    "a name and an email instead": {"buyer": BUYER},
}
PERSONAL = [*BUYER.values(), *BUYER["name"].split()]
# Her first name as an id would spell it: a `cus_zoe...` or a `purchase-zoe-...` names the buyer
# as plainly as her name does, so no stored id or reference may contain it.
FIRST_NAME = "zoe"


@pytest.mark.parametrize("fields", NOT_A_REFERENCE.values(), ids=NOT_A_REFERENCE.keys())
def test_personal_data_where_the_customer_reference_goes_is_422_and_starts_nothing(
    stack: Stack, fields: dict[str, Any]
) -> None:
    body = changed(lamp_purchase(), "customer_id", REMOVED) | fields
    executions_before = stack.server.executions()

    response = stack.gateway.post("/purchases", json=body)

    assert response.status_code == 422, response.text
    assert ["body", "customer_id"] in [error["loc"] for error in response.json()["detail"]]
    assert plaintext_found(response.content, PERSONAL) == []  # not echoed either
    assert stack.server.executions() == executions_before  # nothing started, nothing stored
    assert stack.promises(body["purchase_id"]) == []
    assert stack.sandbox.records.requests(f"{body['purchase_id']}:") == []


# -- the window's end, in skipped time -----------------------------------------------------------


@contextlib.contextmanager
def time_held(server: RunningDevServer) -> Iterator[None]:
    """Keep a dev server that skips time from skipping: the buyer acts "in time".

    It skips only while no task waits for a worker or is leased to one, so a task waiting for a
    group no worker serves holds it; resolving its promise lets time skip again.
    """
    hold_id = f"checkout-tests-hold-{secrets.token_hex(4)}"

    async def settle(create: bool) -> None:
        client = Resonate(url=server.url, group="checkout-tests")
        try:
            if create:
                in_a_day = int(time.time() * 1000) + 24 * 3600 * 1000
                target = {"resonate:target": "poll://any@checkout-tests-hold"}
                await client.promises.create(hold_id, in_a_day, Value(), target)
            else:
                await client.promises.resolve(hold_id, Value())
        finally:
            await client.stop()

    asyncio.run(settle(create=True))
    try:
        yield
    finally:
        asyncio.run(settle(create=False))


@dataclass(frozen=True)
class SkippingStack(Stack):
    """A stack of its own on a dev server that skips time, with workers started on demand."""

    start_worker: Callable[[], ManagedProcess] = field(kw_only=True)


@pytest.fixture(scope="module")
def skipping(sandbox: RunningSandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A dev server that skips time, and a gateway: shared by the tests that reach a window's end.

    Each test starts its own workers (below), so a test that kills one leaves none alive.
    """
    data_dir = tmp_path_factory.mktemp("skipping-devserver")
    with devserver_process(data_dir, fast_recovery=True, skip_time=True) as server:
        env = {**os.environ, "RESONATE_URL": url_of(server), "PROVIDER_API_URL": sandbox.url}
        with (
            gateway_process("checkout_window.gateway", env) as gateway,
            clients.client(base_url=url_of(gateway), timeout=TIMEOUT_S) as client,
        ):
            running = RunningDevServer(server, data_dir, True, skip_time=True)
            yield Stack(client, running, sandbox)


@pytest.fixture
def skipping_stack(skipping: Stack, start_worker: ProcessFactory) -> SkippingStack:
    env = {"RESONATE_URL": skipping.server.url, "PROVIDER_API_URL": skipping.sandbox.url}
    return SkippingStack(
        skipping.gateway,
        skipping.server,
        skipping.sandbox,
        start_worker=lambda: start_worker("checkout_window.worker", env),
    )


def test_when_the_30_minute_window_ends_the_card_is_charged_once(
    skipping_stack: SkippingStack,
) -> None:
    stack = skipping_stack
    stack.start_worker()
    with time_held(stack.server):  # to read the deadline before it is skipped to
        purchase_id = stack.buy()
        window_open = stack.window_open(purchase_id)
    started = time.monotonic()
    ended = stack.ended(purchase_id)
    waited = time.monotonic() - started

    reserve, charge, email = effects = stack.effects(purchase_id)
    assert did(effects) == ["inventory.reserve", "payment.charge", "email.send"]
    closes_at = datetime.fromisoformat(window_open["window_closes_at"]).timestamp()
    assert 0 <= closes_at - reserve.finished_at - WINDOW_S < WINDOW_START_S
    assert waited < 10  # 30 minutes, skipped
    assert charge.body["amount_cents"] == LAMP_TOTAL_CENTS
    assert charge.idempotency_key == f"{purchase_id}:4"  # the step's id
    assert [r.status_code for r in stack.sandbox.records.requests(f"{purchase_id}:4")] == [200]
    assert email.body["subject"] == f"Purchase {purchase_id} confirmed"
    assert ended["state"] == "confirmed"
    assert (ended["reservation_id"], ended["charge_id"]) == (
        reserve.resource_id,
        charge.resource_id,
    )


def test_a_cancel_after_the_window_is_409_and_the_purchase_goes_through(
    skipping_stack: SkippingStack,
) -> None:
    stack = skipping_stack
    stack.start_worker()
    purchase_id = stack.buy()
    confirmed = stack.ended(purchase_id)

    late = stack.cancel(purchase_id)

    assert confirmed["state"] == "confirmed"
    assert late.status_code == 409
    closed = datetime.fromisoformat(confirmed["window_closes_at"]).isoformat(timespec="seconds")
    assert late.json()["detail"] == (
        f"the cancellation window closed at {closed}: the purchase goes through"
    )
    assert stack.get(purchase_id)["state"] == "confirmed"
    payments = [e for e in stack.effects(purchase_id) if e.provider == "payment"]
    assert len(payments) == 1


def test_a_declined_card_releases_the_stock_and_is_not_retried(
    skipping_stack: SkippingStack,
) -> None:
    stack = skipping_stack
    stack.start_worker()
    body = lamp_purchase()
    purchase_id = body["purchase_id"]
    add_fault(stack, purchase_id, provider="payment", action="charge", status=402)

    stack.buy(body)
    ended = stack.ended(purchase_id)

    reserve, release, email = effects = stack.effects(purchase_id)
    assert did(effects) == ["inventory.reserve", "inventory.cancel", "email.send"]
    assert release.body == {"reservation_id": reserve.resource_id}
    assert email.body["subject"] == f"Purchase {purchase_id}: card declined"
    charges = [
        r for r in stack.sandbox.records.requests(f"{purchase_id}:") if r.provider == "payment"
    ]
    assert [r.status_code for r in charges] == [402]  # asked once: a decline is not retried
    assert ended["state"] == "declined"
    assert "402" in ended["reason"]
    assert "charge_id" not in ended


def test_the_server_holds_the_buyers_reference_never_their_name_or_email(
    skipping_stack: SkippingStack,
) -> None:
    stack = skipping_stack
    stack.start_worker()
    purchase_id = stack.buy()
    assert stack.ended(purchase_id)["state"] == "confirmed"

    # Every promise of the purchase, its argument and value decoded: the execution (the purchase),
    # the reservation, the cancellation, the window record, the charge and the email.
    promises = stack.promises(purchase_id)
    assert len(promises) == 7
    stored = {p["id"]: json.dumps(stored_values(p), ensure_ascii=False) for p in promises}
    assert [
        i for i, data in stored.items() if "@" in data or plaintext_found(data.encode(), PERSONAL)
    ] == []
    assert [i for i, data in stored.items() if FIRST_NAME in (i + data).lower()] == []
    assert CUSTOMER_ID in stored[purchase_id]  # the argument was decoded, and holds the reference
    # Nor anywhere else the server keeps or shows it: its files, and its state.
    # One search (it decodes all the server keeps): the reference, which shows the search sees
    # what is stored, and none of the personal data.
    held = what_the_server_holds(stack.server)
    assert plaintext_found(held, [CUSTOMER_ID, *PERSONAL]) == [CUSTOMER_ID]
    # The providers were given the reference, which they resolve to a card and an address.
    effects = stack.effects(purchase_id)
    assert [(e.provider, e.body.get("customer", e.body.get("to"))) for e in effects] == [
        ("inventory", None),
        ("payment", CUSTOMER_ID),
        ("email", CUSTOMER_ID),
    ]


# -- a worker killed inside the window -----------------------------------------------------------


@pytest.mark.parametrize("buyer_cancels", [True, False], ids=["cancelled", "window-ends"])
def test_a_worker_killed_inside_the_window_loses_nothing(
    skipping_stack: SkippingStack, buyer_cancels: bool
) -> None:
    stack = skipping_stack
    first = stack.start_worker()
    with time_held(stack.server):
        body = lamp_purchase()
        purchase_id = body["purchase_id"]
        stack.server.kill_at(
            "suspend", f"{purchase_id}:{CANCELLATION}", when="after", pid=first.pid
        )
        stack.buy(body)
        assert first.wait(TIMEOUT_S) == -9  # killed once suspended on the cancellation
        window = stack.window_open(purchase_id)
        if buyer_cancels:  # no worker is alive: the cancellation waits in the server
            cancelled = stack.cancel(purchase_id)
            assert (cancelled.status_code, cancelled.json()["outcome"]) == (200, "cancelled")
    # Without a cancel, the server times the window out by itself, with no worker alive (the
    # deadline skipped to): a timer in a worker's memory would have died with it.
    restarted_at = time.time()
    stack.start_worker()
    ended = stack.ended(purchase_id)

    reserve, then, _ = effects = stack.effects(purchase_id)
    expected = "inventory.cancel" if buyer_cancels else "payment.charge"
    assert did(effects) == ["inventory.reserve", expected, "email.send"]
    assert ended["state"] == ("cancelled" if buyer_cancels else "confirmed")
    assert reserve.finished_at < restarted_at < then.started_at  # done once, by the new worker
    assert window["state"] == "window-open"

"""food-delivery end to end: a real dev server, worker and gateway, and the provider sandbox.

Every test places orders through the gateway's HTTP API (or, for the crash test, a client of its
own), then asserts on what the receiving systems recorded: the sandbox (each charge, refund,
message and dispatch call) and the dev server (which executions and steps exist). One stack
serves the module; each test uses its own order ids, and the sandbox's records are read by
idempotency-key prefix, i.e. by order.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cookbook import clients
from cookbook.stack import devserver_process, gateway_process, url_of, worker_process
from cookbook.testing.bodies import REMOVED, as_json, changed, malformed_bodies
from cookbook.testing.fixtures import ProcessFactory, RunningDevServer, RunningSandbox
from cookbook.testing.plaintext import plaintext_found, stored_values, what_the_server_holds
from resonate.error import SerializationError
from resonate.resonate import Resonate
from resonate.types import Value

PIPELINE = ["charge", "prepare", "assign_driver", "pick_up", "deliver", "complete"]
DELIVERED_EFFECTS = [
    ("payment", "charge"),
    ("slack", "send"),
    ("api", "call"),
    ("api", "call"),
    ("api", "call"),
    ("push", "send"),
]
NO_DRIVER_EFFECTS = [
    ("payment", "charge"),
    ("slack", "send"),
    ("payment", "refund"),
    ("slack", "send"),
    ("sms", "send"),
]
# The order names its customer and where to deliver by reference; who and where that is
# (CUSTOMER) only the providers know.
CUSTOMER_ID = "cus_5e0b82d4"
ADDRESS_ID = "adr_home7"
CUSTOMER = {
    "name": "Zoë Ångström",
    "email": "zoe@example.com",
    "address": "12 Rue de la Paix, 75002 Paris",
    "phone": "+33 6 12 34 56 78",
}


@dataclass(frozen=True)
class DeliveryStack:
    gateway: httpx.Client
    server: RunningDevServer
    sandbox: RunningSandbox

    def wait_settled(self, order_id: str) -> dict[str, Any]:
        """Await the execution (a Resonate listener, not a poll), then ask the gateway."""

        async def settled() -> None:
            client = Resonate(url=self.server.url, group="food-delivery-tests")
            try:
                handle = await client.get(order_id)
                with contextlib.suppress(Exception):  # a failed order is settled too
                    await asyncio.wait_for(handle.result(), 30)
            finally:
                await client.stop()

        asyncio.run(settled())
        status: dict[str, Any] = self.gateway.get(f"/orders/{order_id}").json()
        return status

    def wait_for(self, order_id: str, step: str, timeout: float = 10) -> dict[str, Any]:
        """Poll the gateway until the order is on `step`, as a client following it would."""
        deadline = time.monotonic() + timeout
        while True:
            status: dict[str, Any] = self.gateway.get(f"/orders/{order_id}").json()
            if status.get("step") == step or time.monotonic() > deadline:
                return status
            time.sleep(0.02)


def arm_fault(sandbox: RunningSandbox, key_prefix: str, **fault: Any) -> None:
    """Make one simulated provider fail the calls whose key starts with `key_prefix`."""
    clients.post(
        f"{sandbox.url}/_admin/faults", json={**fault, "key_prefix": key_prefix}
    ).raise_for_status()


@pytest.fixture(scope="module")
def stack(
    sandbox: RunningSandbox, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DeliveryStack]:
    # Module-scoped (one start-up for ~50 tests); the processes are stopped by pid at the end.
    data_dir = tmp_path_factory.mktemp("devserver")
    with devserver_process(data_dir) as server:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")}
        env = {**inherited, "RESONATE_URL": url_of(server), "PROVIDER_API_URL": sandbox.url}
        with (
            worker_process("food_delivery.worker", env),
            gateway_process("food_delivery.gateway", env) as gateway,
            clients.client(base_url=url_of(gateway), timeout=10) as client,
        ):
            yield DeliveryStack(client, RunningDevServer(server, data_dir, False), sandbox)


def new_order() -> dict[str, Any]:
    return {
        "order_id": f"test-{secrets.token_hex(4)}",
        "customer_id": CUSTOMER_ID,
        "restaurant_id": "rst_napoli42",
        "address_id": ADDRESS_ID,
        "items": [
            {"name": "Margherita", "quantity": 2, "unit_price_cents": 950},
            {"name": "Tiramisù", "quantity": 1, "unit_price_cents": 600},
        ],
        "currency": "EUR",
    }


def effects(sandbox: RunningSandbox, order_id: str) -> list[tuple[str, str]]:
    return [(e.provider, e.action) for e in sandbox.records.effects(key_prefix=f"{order_id}:")]


def calls(sandbox: RunningSandbox, order_id: str) -> list[tuple[str, str, int]]:
    """Every request the providers received for this order: (provider, action, status code)."""
    requests = sandbox.records.requests(key_prefix=f"{order_id}:")
    return [(r.provider, r.action, r.status_code) for r in requests]


# -- the pipeline ------------------------------------------------------------------------------


def test_an_order_is_delivered_with_each_step_acting_once(stack: DeliveryStack) -> None:
    order = new_order()

    accepted = stack.gateway.post("/orders", json=order)

    assert accepted.status_code == 202
    assert accepted.headers["Location"] == f"/orders/{order['order_id']}"
    assert accepted.json() == {
        "order_id": order["order_id"],
        "status_url": f"/orders/{order['order_id']}",
    }
    status = stack.wait_settled(order["order_id"])
    done = stack.sandbox.records.effects(key_prefix=f"{order['order_id']}:")
    assert [(e.provider, e.action) for e in done] == DELIVERED_EFFECTS
    assert [e.idempotency_key for e in done] == [f"{order['order_id']}:{n}" for n in range(1, 7)]
    assert done[0].body["amount_cents"] == 2 * 950 + 600
    assert status == {
        "order_id": order["order_id"],
        "status": "delivered",
        "step": "complete",
        "step_number": 6,
        "steps": PIPELINE,
        "charge_id": done[0].resource_id,
        "driver_assignment": done[2].resource_id,
    }


def test_no_driver_refunds_tells_the_restaurant_and_the_customer(stack: DeliveryStack) -> None:
    order = new_order()
    arm_fault(stack.sandbox, f"{order['order_id']}:", provider="api", status=409)

    assert stack.gateway.post("/orders", json=order).status_code == 202
    status = stack.wait_settled(order["order_id"])

    done = stack.sandbox.records.effects(key_prefix=f"{order['order_id']}:")
    assert [(e.provider, e.action) for e in done] == NO_DRIVER_EFFECTS
    charge, _, refund, told_restaurant, told_customer = done
    assert refund.body["charge_id"] == charge.resource_id
    assert told_restaurant.body["to"] == order["restaurant_id"]
    assert "stop preparing" in told_restaurant.body["text"]
    assert told_customer.body["to"] == order["customer_id"]
    assert "no driver" in told_customer.body["text"]
    assert "refunded" in told_customer.body["text"]
    # The dispatch API's no was asked for once: an answer is not retried.
    assert [c for c in calls(stack.sandbox, order["order_id"]) if c[0] == "api"] == [
        ("api", "call", 409)
    ]
    assert status == {
        "order_id": order["order_id"],
        "status": "cancelled",
        "reason": "no driver",
        "step": "notify_customer",
        "steps": [
            "charge",
            "prepare",
            "assign_driver",
            "refund",
            "tell_restaurant",
            "notify_customer",
        ],
        "charge_id": charge.resource_id,
        "compensations": [
            {"stage": "refund", "receipt": refund.resource_id},
            {"stage": "tell_restaurant", "receipt": told_restaurant.resource_id},
            {"stage": "notify_customer", "receipt": told_customer.resource_id},
        ],
    }


def test_a_refund_that_does_not_go_through_is_not_told_as_done(stack: DeliveryStack) -> None:
    order = new_order()
    arm_fault(stack.sandbox, f"{order['order_id']}:", provider="api", status=409)
    # Refused: the same compensation outcome as a refund out of retries (about ten minutes).
    arm_fault(
        stack.sandbox, f"{order['order_id']}:", provider="payment", action="refund", status=422
    )

    assert stack.gateway.post("/orders", json=order).status_code == 202
    status = stack.wait_settled(order["order_id"])

    assert (status["status"], status["reason"]) == ("cancelled", "no driver")
    [refund] = [c for c in status["compensations"] if c["stage"] == "refund"]
    assert "422" in refund["problem"]
    done = stack.sandbox.records.effects(key_prefix=f"{order['order_id']}:")
    assert [(e.provider, e.action) for e in done] == [
        ("payment", "charge"),
        ("slack", "send"),
        ("slack", "send"),
        ("sms", "send"),
    ]
    text = done[-1].body["text"]
    assert "Your refund has not gone through yet: we will contact you about it." in text
    assert "not charged" not in text
    assert "have been refunded" not in text


def test_a_declined_card_cancels_the_order_before_anything_else(stack: DeliveryStack) -> None:
    order = new_order()
    arm_fault(stack.sandbox, f"{order['order_id']}:1", provider="payment", status=402)

    assert stack.gateway.post("/orders", json=order).status_code == 202
    status = stack.wait_settled(order["order_id"])

    assert (status["status"], status["reason"]) == ("cancelled", "payment declined")
    assert [c["stage"] for c in status["compensations"]] == ["notify_customer"]
    done = stack.sandbox.records.effects(key_prefix=f"{order['order_id']}:")
    assert [(e.provider, e.action) for e in done] == [("sms", "send")]
    assert "You were not charged" in done[0].body["text"]


def test_a_restaurant_that_refuses_the_order_is_refunded_without_a_driver(
    stack: DeliveryStack,
) -> None:
    order = new_order()
    arm_fault(stack.sandbox, f"{order['order_id']}:2", provider="slack", status=422)

    assert stack.gateway.post("/orders", json=order).status_code == 202
    status = stack.wait_settled(order["order_id"])

    assert (status["status"], status["reason"]) == ("cancelled", "restaurant refused")
    assert effects(stack.sandbox, order["order_id"]) == [
        ("payment", "charge"),
        ("payment", "refund"),
        ("sms", "send"),
    ]
    assert status["steps"] == ["charge", "prepare", "refund", "notify_customer"]


def test_a_transient_dispatch_failure_is_retried_in_place(stack: DeliveryStack) -> None:
    order = new_order()
    arm_fault(stack.sandbox, f"{order['order_id']}:3", provider="api", mode="fail_times", times=2)

    assert stack.gateway.post("/orders", json=order).status_code == 202
    status = stack.wait_settled(order["order_id"])

    assert status["status"] == "delivered"
    assert effects(stack.sandbox, order["order_id"]) == DELIVERED_EFFECTS
    # Only the failing step ran again; the charge and the kitchen ticket were not repeated.
    assert calls(stack.sandbox, order["order_id"]) == [
        ("payment", "charge", 200),
        ("slack", "send", 200),
        ("api", "call", 503),
        ("api", "call", 503),
        ("api", "call", 200),
        ("api", "call", 200),
        ("api", "call", 200),
        ("push", "send", 200),
    ]


def test_no_driver_after_transient_failures_is_still_no_driver(stack: DeliveryStack) -> None:
    order = new_order()
    dispatch = f"{order['order_id']}:3"
    arm_fault(stack.sandbox, dispatch, provider="api", mode="fail_times", times=2)
    arm_fault(stack.sandbox, dispatch, provider="api", status=409)

    assert stack.gateway.post("/orders", json=order).status_code == 202
    status = stack.wait_settled(order["order_id"])

    assert (status["status"], status["reason"]) == ("cancelled", "no driver")
    assert effects(stack.sandbox, order["order_id"]) == NO_DRIVER_EFFECTS
    assert [c[2] for c in calls(stack.sandbox, order["order_id"]) if c[0] == "api"] == [
        503,
        503,
        409,
    ]


def test_dispatch_down_for_good_releases_the_driver_it_may_have_assigned(
    stack: DeliveryStack,
) -> None:
    # Every dispatch attempt fails (5 of them, 10 s of retries): whether one assigned a driver is
    # unknown, so the assignment is released by the key it was requested with, after the refund
    # (the dispatch API may still be down), and the order is undone as for no driver.
    order = new_order()
    dispatch_key = f"{order['order_id']}:3"
    arm_fault(stack.sandbox, dispatch_key, provider="api", status=503)

    assert stack.gateway.post("/orders", json=order).status_code == 202
    status = stack.wait_settled(order["order_id"])

    assert (status["status"], status["reason"]) == ("cancelled", "dispatch unavailable")
    assert [c["stage"] for c in status["compensations"]] == [
        "refund",
        "release_driver",
        "tell_restaurant",
        "notify_customer",
    ]
    done = stack.sandbox.records.effects(key_prefix=f"{order['order_id']}:")
    release = next(e for e in done if e.body.get("op") == "release_driver")
    assert release.body["assignment_key"] == dispatch_key
    assert [c[2] for c in calls(stack.sandbox, order["order_id"]) if c[0] == "api"] == [
        503,
        503,
        503,
        503,
        503,
        200,
    ]


def test_status_shows_the_step_the_order_is_on(stack: DeliveryStack) -> None:
    # The dispatch API and then the refund are slow for this order, so the test can see the
    # order standing on each: the gateway reads the marks the steps set as they start.
    order = new_order()
    order_id = order["order_id"]
    arm_fault(stack.sandbox, f"{order_id}:3", provider="api", mode="latency", latency_ms=1000)
    arm_fault(stack.sandbox, f"{order_id}:3", provider="api", status=409)
    arm_fault(stack.sandbox, f"{order_id}:4", provider="payment", mode="latency", latency_ms=1000)
    stack.gateway.post("/orders", json=order).raise_for_status()

    on_dispatch = stack.wait_for(order_id, "assign_driver")
    on_refund = stack.wait_for(order_id, "refund")
    final = stack.wait_settled(order_id)

    assert on_dispatch == {
        "order_id": order_id,
        "status": "in_progress",
        "step": "assign_driver",
        "step_number": 3,
        "steps": ["charge", "prepare", "assign_driver"],
    }
    assert on_refund == {
        "order_id": order_id,
        "status": "cancelling",
        "step": "refund",
        "steps": ["charge", "prepare", "assign_driver", "refund"],
    }
    assert (final["status"], final["step"]) == ("cancelled", "notify_customer")


def test_a_worker_killed_after_the_charge_and_after_the_refund_charges_and_refunds_once(
    devserver: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> None:
    # Each worker dies right after the payment provider acted, before its step was checkpointed:
    # the next one runs the step again, with the same key, and the provider answers from it.
    env = {"RESONATE_URL": devserver.url, "PROVIDER_API_URL": sandbox.url}
    order = new_order()
    order_id = order["order_id"]
    arm_fault(sandbox, f"{order_id}:", provider="api", status=409)
    # Time to arm the next kill switch before the second worker reaches the refund.
    arm_fault(sandbox, f"{order_id}:2", provider="slack", mode="latency", latency_ms=1500)

    def kill_after(action: str, pid: int) -> None:
        switch = {"provider": "payment", "action": action, "pid": pid}
        clients.post(f"{sandbox.url}/_admin/kill-switches", json=switch).raise_for_status()

    first = start_worker("food_delivery.worker", env, name="worker-1")
    kill_after("charge", first.pid)

    async def place() -> Any:
        client = Resonate(url=devserver.url, group="food-delivery-tests")
        try:
            handle = client.options(target="food-delivery").rpc(order_id, "deliver_order", order)
            await handle.id()
            return handle
        finally:
            await client.stop()

    asyncio.run(place())
    first.wait(timeout=20)
    second = start_worker("food_delivery.worker", env, name="worker-2")
    kill_after("refund", second.pid)
    second.wait(timeout=20)
    start_worker("food_delivery.worker", env, name="worker-3")

    async def result() -> Any:
        client = Resonate(url=devserver.url, group="food-delivery-tests")
        try:
            return await asyncio.wait_for((await client.get(order_id)).result(), 30)
        finally:
            await client.stop()

    outcome = asyncio.run(result())

    assert (outcome["status"], outcome["reason"]) == ("cancelled", "no driver")
    payments = sandbox.records.effects(key_prefix=f"{order_id}:")
    assert [(e.provider, e.action) for e in payments] == NO_DRIVER_EFFECTS
    asked = [
        (r.action, r.replayed)
        for r in sandbox.records.requests(key_prefix=f"{order_id}:")
        if r.provider == "payment"
    ]
    # Each was asked twice (the crash was after the effect), and done once.
    assert asked == [("charge", False), ("charge", True), ("refund", False), ("refund", True)]


def test_an_order_that_does_not_decode_fails_at_once_instead_of_retrying(
    stack: DeliveryStack,
) -> None:
    # Not through the gateway, which validates: a client that starts `deliver_order` directly.
    execution_id = f"bad-order-{secrets.token_hex(4)}"

    async def start() -> str:
        client = Resonate(url=stack.server.url, group="food-delivery-tests")
        try:
            handle = client.options(target="food-delivery").rpc(
                execution_id, "deliver_order", {"order_id": 1}
            )
            with pytest.raises(SerializationError, match=r"validation errors? for Order") as failed:
                await asyncio.wait_for(handle.result(), 10)
            return str(failed.value)
        finally:
            await client.stop()

    started = time.monotonic()
    error = asyncio.run(start())

    assert time.monotonic() - started < 10
    assert "order_id" in error
    assert calls(stack.sandbox, execution_id) == []


# -- the gateway -------------------------------------------------------------------------------


def test_twenty_concurrent_duplicate_posts_start_one_execution(stack: DeliveryStack) -> None:
    order = new_order()

    async def post_all() -> list[int]:
        async with clients.async_client(base_url=stack.gateway.base_url) as client:
            responses = await asyncio.gather(
                *(client.post("/orders", json=order) for _ in range(20))
            )
        return [r.status_code for r in responses]

    assert asyncio.run(post_all()) == [202] * 20
    assert stack.wait_settled(order["order_id"])["status"] == "delivered"

    execution = stack.server.state(order["order_id"])
    promises: list[dict[str, Any]] = execution["promises"]  # type: ignore[assignment]
    steps = [f"{order['order_id']}:{n}" for n in range(1, 7)]
    assert sorted(p["id"] for p in promises) == sorted([order["order_id"], *steps])
    assert effects(stack.sandbox, order["order_id"]) == DELIVERED_EFFECTS
    assert len(calls(stack.sandbox, order["order_id"])) == 6


def test_the_same_order_id_with_a_different_order_is_409(stack: DeliveryStack) -> None:
    order = new_order()
    other = copy.deepcopy(order)
    other["items"][0]["quantity"] = 5
    assert stack.gateway.post("/orders", json=order).status_code == 202

    conflict = stack.gateway.post("/orders", json=other)

    assert conflict.status_code == 409
    assert "exists with a different order" in conflict.json()["detail"]
    assert stack.wait_settled(order["order_id"])["status"] == "delivered"
    charge = stack.sandbox.records.effects(key_prefix=f"{order['order_id']}:1")
    assert [e.body["amount_cents"] for e in charge] == [2 * 950 + 600]


def test_unknown_orders_are_404(stack: DeliveryStack) -> None:
    assert stack.gateway.get(f"/orders/no-such-order-{secrets.token_hex(4)}").status_code == 404

    # A promise that is not an order is not shown as one, nor is an order's progress mark.
    other = f"not-an-order-{secrets.token_hex(4)}"

    async def create_promise() -> None:
        client = Resonate(url=stack.server.url, group="food-delivery-tests")
        try:
            in_a_minute = int(time.time() * 1000) + 60_000
            await client.promises.create(other, in_a_minute, Value(data={"not": "an order"}), {})
        finally:
            await client.stop()

    asyncio.run(create_promise())
    assert stack.gateway.get(f"/orders/{other}").status_code == 404
    # A step's id (`<order>:<n>`) and a progress mark's (`<order>~<stage>`) are not order ids.
    assert stack.gateway.get("/orders/order:1").status_code == 422
    assert stack.gateway.get("/orders/order~charge").status_code == 422


# -- hostile input -----------------------------------------------------------------------------


def _changed(path: str, value: Any) -> dict[str, Any]:
    """A valid order with one field set to `value`, or removed (`REMOVED`)."""
    return changed(new_order(), path, value)


HOSTILE: dict[str, bytes] = {
    **malformed_bodies(new_order()),
    "missing order_id": as_json(_changed("order_id", REMOVED)),
    "missing customer_id": as_json(_changed("customer_id", REMOVED)),
    "missing items": as_json(_changed("items", REMOVED)),
    "missing currency": as_json(_changed("currency", REMOVED)),
    "order_id with colon": as_json(_changed("order_id", "order:1")),
    "order_id with tilde": as_json(_changed("order_id", "order~charge")),
    "order_id empty": as_json(_changed("order_id", "")),
    "order_id too long": as_json(_changed("order_id", "o" * 65)),
    "order_id number": as_json(_changed("order_id", 123)),
    "order_id path traversal": as_json(_changed("order_id", "../../etc/passwd")),
    "order_id newline": as_json(_changed("order_id", "order-1\n")),
    "customer_id a phone number": as_json(_changed("customer_id", "+44 20 7946 0000")),
    "customer_id without prefix": as_json(_changed("customer_id", "5e0b82d4")),
    "restaurant_id a customer": as_json(_changed("restaurant_id", "cus_5e0b82d4")),
    "address_id a street": as_json(_changed("address_id", "1 Main Street")),
    "items empty": as_json(_changed("items", [])),
    "items too many": as_json(_changed("items", [new_order()["items"][0]] * 31)),
    "item name huge": as_json(_changed("items.0.name", "A" * 10_000)),
    "item name empty": as_json(_changed("items.0.name", "")),
    "item name only spaces": as_json(_changed("items.0.name", "   ")),
    "item name NUL byte": as_json(_changed("items.0.name", "Pizza\x00")),
    "item name bidi override": as_json(_changed("items.0.name", "Pizza \u202eazzip")),
    "item name lone surrogate": as_json(_changed("items.0.name", "Pizza \ud800")),
    "quantity zero": as_json(_changed("items.0.quantity", 0)),
    "quantity negative": as_json(_changed("items.0.quantity", -1)),
    "quantity huge": as_json(_changed("items.0.quantity", 10**12)),
    "quantity fraction": as_json(_changed("items.0.quantity", 1.5)),
    "quantity as string": as_json(_changed("items.0.quantity", "2")),
    "quantity as bool": as_json(_changed("items.0.quantity", True)),
    "quantity NaN": as_json(_changed("items.0.quantity", float("nan"))),
    "price zero": as_json(_changed("items.0.unit_price_cents", 0)),
    "price null": as_json(_changed("items.0.unit_price_cents", None)),
    "currency unknown": as_json(_changed("currency", "BTC")),
    "currency lowercase": as_json(_changed("currency", "eur")),
    "extra field": as_json(_changed("discount_cents", 500)),
    "extra nested field": as_json(_changed("items.0.free", True)),
    "deeply nested": b"[" * 5_000 + b"]" * 5_000,
    "body over 16 KiB": as_json(_changed("items.0.name", "A" * 20_000)),
}


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_bad_body_is_rejected_and_nothing_is_started(stack: DeliveryStack, body: bytes) -> None:
    executions_before = stack.server.executions()
    provider_calls_before = len(stack.sandbox.records.requests())

    response = stack.gateway.post(
        "/orders", content=body, headers={"Content-Type": "application/json"}
    )

    assert 400 <= response.status_code < 500, response.text
    assert len(response.content) < 2_000  # says what is wrong without echoing the input
    if response.status_code == 422:
        assert response.json()["detail"], "a 422 names the fields that are wrong"
    assert stack.server.executions() == executions_before
    assert len(stack.sandbox.records.requests()) == provider_calls_before


def test_a_422_names_the_field_and_the_reason(stack: DeliveryStack) -> None:
    response = stack.gateway.post("/orders", json=_changed("items.0.quantity", 0))

    assert response.status_code == 422
    assert response.json()["detail"] == [
        {
            "loc": ["body", "items", 0, "quantity"],
            "msg": "Input should be greater than or equal to 1",
            "type": "greater_than_equal",
        }
    ]


# -- personal data: the order names its customer by reference, and only the providers know them --

NOT_A_REFERENCE: dict[str, tuple[str, dict[str, Any]]] = {
    "an email address": ("customer_id", {"customer_id": CUSTOMER["email"]}),
    "a name": ("customer_id", {"customer_id": CUSTOMER["name"]}),
    "an email after the prefix": ("customer_id", {"customer_id": "cus_zoe@example.com"}),
    "a name and an email instead": ("customer_id", {"customer": CUSTOMER}),
    "a street address": ("address_id", {"address_id": CUSTOMER["address"]}),
    "a phone number": ("address_id", {"address_id": CUSTOMER["phone"]}),
}
PERSONAL = [*CUSTOMER.values(), *CUSTOMER["name"].split()]
# Her first name as an id would spell it: a `cus_zoe...` or an `order-zoe-...` names the customer
# as plainly as her name does, so no stored id or reference may contain it.
FIRST_NAME = "zoe"


@pytest.mark.parametrize(("field", "fields"), NOT_A_REFERENCE.values(), ids=NOT_A_REFERENCE.keys())
def test_personal_data_where_a_reference_goes_is_refused(
    stack: DeliveryStack, field: str, fields: dict[str, Any]
) -> None:
    order = {k: v for k, v in new_order().items() if k != field} | fields
    order_id = order["order_id"]

    response = stack.gateway.post("/orders", json=order)

    assert response.status_code == 422, response.text
    assert ["body", field] in [error["loc"] for error in response.json()["detail"]]
    assert plaintext_found(response.content, PERSONAL) == []  # not echoed either
    assert stack.server.state(order_id)["promises"] == []  # nothing started, nothing stored
    assert stack.sandbox.records.requests(key_prefix=f"{order_id}:") == []


def test_the_server_holds_the_customers_references_never_their_name_or_address(
    stack: DeliveryStack,
) -> None:
    order = new_order()
    order_id = order["order_id"]
    assert stack.gateway.post("/orders", json=order).status_code == 202
    assert stack.wait_settled(order_id)["status"] == "delivered"

    # Every promise of the order (the execution, its steps, its progress marks), decoded.
    ours = (f"{order_id}:", f"{order_id}~")
    everything: list[dict[str, Any]] = stack.server.state()["promises"]  # type: ignore[assignment]
    promises = [p for p in everything if p["id"] == order_id or p["id"].startswith(ours)]
    assert len(promises) == 13  # the execution, its 6 steps, 6 marks
    stored = {p["id"]: json.dumps(stored_values(p), ensure_ascii=False) for p in promises}
    # The argument: the order, and its references.
    assert CUSTOMER_ID in stored[order_id]
    assert ADDRESS_ID in stored[order_id]
    assert [
        i for i, data in stored.items() if "@" in data or plaintext_found(data.encode(), PERSONAL)
    ] == []
    assert [i for i, data in stored.items() if FIRST_NAME in (i + data).lower()] == []
    # Nor anywhere else the server keeps or shows it: its files (log, archive), and its state.
    # One search (it decodes all the server keeps): the reference, which shows the search sees
    # what is stored, and none of the personal data.
    held = what_the_server_holds(stack.server)
    assert plaintext_found(held, [CUSTOMER_ID, *PERSONAL]) == [CUSTOMER_ID]
    # The providers were given the references, which they resolve to a card, an address, a phone.
    charged, _, assigned, _, _, pushed = stack.sandbox.records.effects(key_prefix=f"{order_id}:")
    assert charged.body["customer"] == CUSTOMER_ID
    assert assigned.body["dropoff"] == ADDRESS_ID
    assert pushed.body["to"] == CUSTOMER_ID

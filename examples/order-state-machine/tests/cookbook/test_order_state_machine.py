"""order-state-machine end to end: a real dev server, worker and gateway, and the provider sandbox.

Every test drives orders through the gateway's HTTP API, then asserts on what the receiving
systems recorded: the sandbox (every email, charge, refund and notification) and the dev server
(the execution's promises). One stack serves the whole module; each test uses its own order ids,
and the sandbox's records are read by idempotency-key prefix, i.e. by order.
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
from datetime import timedelta
from typing import Any

import httpx
import pytest
from cookbook import clients
from cookbook.sandbox.store import RequestRecord
from cookbook.stack import devserver_process, gateway_process, url_of, worker_process
from cookbook.testing.bodies import REMOVED, as_json, changed, malformed_bodies
from cookbook.testing.fixtures import RunningDevServer, RunningSandbox
from cookbook.testing.plaintext import plaintext_found, stored_values, what_the_server_holds
from resonate.error import ResonateTimeoutError, ServerError
from resonate.resonate import Resonate
from resonate.types import Value

SHIP = {"carrier": "DHL", "tracking_number": "JD014600006281"}
# The order names its customer by reference; who that is (CUSTOMER) only the providers know.
CUSTOMER_ID = "cus_5e0b82d4"
CUSTOMER = {"name": "Zoë Ångström", "email": "zoe@example.com"}


@dataclass(frozen=True)
class Stack:
    gateway: httpx.Client
    server: RunningDevServer
    sandbox: RunningSandbox
    env: dict[str, str]

    def place(self, order: dict[str, Any] | None = None) -> str:
        order = order or new_order()
        response = self.gateway.post("/orders", json=order)
        assert response.status_code == 202, response.text
        order_id: str = order["order_id"]
        return order_id

    def send(self, order_id: str, event: str, body: dict[str, str] | None = None) -> httpx.Response:
        return self.gateway.post(f"/orders/{order_id}/{event}", json=body)

    def finished(self, order_id: str) -> dict[str, Any]:
        """Await the execution (a Resonate listener, not a poll), then ask the gateway."""

        async def settled() -> None:
            client = Resonate(url=self.server.url, group="order-tests")
            try:
                handle = await client.get(order_id)
                with contextlib.suppress(Exception):  # a failed order is finished too
                    await asyncio.wait_for(handle.result(), 30)
            finally:
                await client.stop()

        asyncio.run(settled())
        return self.view(order_id)

    def view(self, order_id: str) -> dict[str, Any]:
        response = self.gateway.get(f"/orders/{order_id}")
        assert response.status_code == 200, response.text
        view: dict[str, Any] = response.json()
        return view

    def waiting(self, order_id: str, waits: int) -> None:
        """Block until the workflow suspended `waits` times: it now waits for an event.

        A long poll on the dev server's journal of the execution, not a sleep.
        """
        seen, suspended = 0, 0
        deadline = time.monotonic() + 30
        while suspended < waits:
            assert time.monotonic() < deadline, f"{order_id} never waited {waits} time(s)"
            page = clients.get(
                f"{self.server.url}/_cookbook/journal",
                params={"origin": order_id, "after": seen, "wait": 10},
                timeout=15,
            ).json()
            seen = page["last_seq"]
            suspended += sum(e["operation"] == "suspend" for e in page["entries"])

    def effects(self, order_id: str) -> list[tuple[str, str]]:
        return [(e.provider, e.action) for e in self.sandbox.records.effects(f"{order_id}:")]

    def statuses(self, order_id: str) -> list[dict[str, Any]]:
        """The statuses the order's workflow published, oldest first (ids the example chose)."""

        async def read() -> list[dict[str, Any]]:
            client = Resonate(url=self.server.url, group="order-tests")
            try:
                found = []
                for seq in range(1, 100):
                    try:
                        found.append(await client.promises.get(f"{order_id}~status-{seq}"))
                    except ServerError:
                        break
                statuses: list[dict[str, Any]] = []
                for promise in found:
                    if promise.state == "resolved" and isinstance(promise.value.data, dict):
                        statuses.append(promise.value.data)
                return statuses
            finally:
                await client.stop()

        return asyncio.run(read())

    def charges(self, order_id: str) -> list[RequestRecord]:
        return [
            r
            for r in self.sandbox.records.requests(f"{order_id}:")
            if (r.provider, r.action) == ("payment", "charge")
        ]

    def promises(self, order_id: str | None = None) -> list[dict[str, Any]]:
        promises: list[dict[str, Any]] = self.server.state(order_id)["promises"]  # type: ignore[assignment]
        return promises


@pytest.fixture(scope="module")
def stack(sandbox: RunningSandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Module-scoped (one start-up for every test); the processes are stopped by pid at the end.
    data_dir = tmp_path_factory.mktemp("devserver")
    with devserver_process(data_dir) as server:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")}
        env = {**inherited, "RESONATE_URL": url_of(server), "PROVIDER_API_URL": sandbox.url}
        with (
            worker_process("order_state_machine.worker", env),
            gateway_process("order_state_machine.gateway", env) as gateway,
            clients.client(base_url=url_of(gateway), timeout=30) as client,
        ):
            yield Stack(client, RunningDevServer(server, data_dir, False), sandbox, env)


def new_order(order_id: str | None = None) -> dict[str, Any]:
    return {
        "order_id": order_id or f"test-{secrets.token_hex(4)}",
        "customer_id": CUSTOMER_ID,
        "items": [
            {"sku": "BOOK-42", "quantity": 2, "unit_price_cents": 1250},
            {"sku": "PEN-7", "quantity": 1, "unit_price_cents": 940},
        ],
        "currency": "EUR",
    }


# -- the lifecycle -----------------------------------------------------------------------------


def test_an_order_is_confirmed_shipped_and_delivered_each_effect_once(stack: Stack) -> None:
    order = new_order()
    accepted = stack.gateway.post("/orders", json=order)
    order_id = order["order_id"]

    assert accepted.status_code == 202
    assert accepted.headers["Location"] == f"/orders/{order_id}"
    assert accepted.json() == {"order_id": order_id, "status_url": f"/orders/{order_id}"}
    # Events may come at once: the gateway holds each until the order waits for its next one.
    shipped = stack.send(order_id, "ship", SHIP)
    assert shipped.status_code == 202, shipped.text
    assert shipped.json() == {
        "order_id": order_id,
        "event": "ship",
        "status_url": f"/orders/{order_id}",
    }
    assert stack.send(order_id, "deliver").status_code == 202

    view = stack.finished(order_id)
    effects = stack.sandbox.records.effects(f"{order_id}:")
    assert [(e.provider, e.action) for e in effects] == [
        ("email", "send"),
        ("payment", "charge"),
        ("push", "send"),
    ]
    assert set(stack.sandbox.records.effect_counts_by_key(f"{order_id}:").values()) == {1}
    email, charge, push = effects
    assert charge.body == {
        "customer": CUSTOMER_ID,
        "amount_cents": 3440,
        "currency": "EUR",
        "description": f"order {order_id}, shipped by DHL JD014600006281",
    }
    assert email.body["subject"] == f"Order {order_id} confirmed"
    assert view["state"] == "delivered"
    assert view["accepts"] == []
    history = view["history"]
    assert [(h["state"], h.get("receipt")) for h in history] == [
        ("created", None),
        ("confirmed", email.resource_id),
        ("shipped", charge.resource_id),
        ("delivered", push.resource_id),
    ]
    assert [(h.get("event") or {}).get("type") for h in history] == [None, None, "ship", "deliver"]
    assert history[2]["event"]["tracking_number"] == "JD014600006281"
    assert [h["at"] for h in history] == sorted(h["at"] for h in history)


def test_the_state_is_the_position_of_the_execution(stack: Stack) -> None:
    order_id = stack.place()
    stack.waiting(order_id, 1)

    view = stack.view(order_id)

    assert view["state"] == "confirmed"
    assert view["accepts"] == ["ship", "cancel"]
    # Nothing but the execution holds it: a step that completed, a promise the workflow awaits,
    # and the step that published the status naming that promise.
    assert [p["state"] for p in stack.promises(order_id)] == [
        "pending",
        "resolved",
        "pending",
        "resolved",
    ]
    (status,) = stack.statuses(order_id)
    assert status["waiting_on"] == stack.promises(order_id)[2]["id"]
    assert status["accepts"] == ["ship", "cancel"]
    assert stack.send(order_id, "ship", SHIP).status_code == 202
    stack.waiting(order_id, 2)
    view = stack.view(order_id)
    assert (view["state"], view["accepts"]) == ("shipped", ["deliver", "cancel"])


def test_a_cancel_before_shipping_charges_nothing(stack: Stack) -> None:
    order_id = stack.place()

    cancelled = stack.send(order_id, "cancel", {"reason": "changed my mind"})

    assert cancelled.status_code == 202, cancelled.text
    view = stack.finished(order_id)
    assert view["state"] == "cancelled"
    assert view["history"][-1]["event"]["reason"] == "changed my mind"
    assert stack.effects(order_id) == [("email", "send"), ("email", "send")]
    notice = stack.sandbox.records.effects(f"{order_id}:")[1]
    assert notice.body["text"] == "Cancelled (changed my mind). Your card was not charged."


def test_a_cancel_after_shipping_refunds_the_charge(stack: Stack) -> None:
    order_id = stack.place()
    assert stack.send(order_id, "ship", SHIP).status_code == 202

    cancelled = stack.send(order_id, "cancel", {"reason": "arrived damaged"})

    assert cancelled.status_code == 202, cancelled.text
    view = stack.finished(order_id)
    assert view["state"] == "refunded"
    _, charge, refund = stack.sandbox.records.effects(f"{order_id}:")
    assert (charge.provider, charge.action) == ("payment", "charge")
    assert (refund.provider, refund.action) == ("payment", "refund")
    assert refund.body == {"charge_id": charge.resource_id, "reason": "arrived damaged"}
    assert view["history"][-1]["receipt"] == refund.resource_id


def test_a_delivered_order_can_no_longer_be_cancelled(stack: Stack) -> None:
    order_id = stack.place()
    assert stack.send(order_id, "ship", SHIP).status_code == 202
    assert stack.send(order_id, "deliver").status_code == 202
    stack.finished(order_id)
    effects_before = stack.effects(order_id)

    refused = stack.send(order_id, "cancel", {"reason": "too late"})

    assert refused.status_code == 409
    assert refused.json()["detail"] == (
        f"order '{order_id}' is delivered: it can no longer be cancelled"
    )
    assert stack.send(order_id, "ship", SHIP).status_code == 409
    assert stack.effects(order_id) == effects_before
    assert stack.view(order_id)["state"] == "delivered"


def test_an_event_the_order_does_not_take_now_is_409(stack: Stack) -> None:
    order_id = stack.place()
    stack.waiting(order_id, 1)

    refused = stack.send(order_id, "deliver")

    assert refused.status_code == 409
    assert refused.json()["detail"] == (
        f"order '{order_id}' is confirmed: it takes ship or cancel now"
    )
    assert stack.view(order_id)["accepts"] == ["ship", "cancel"]  # still waiting, for the right one
    assert stack.send(order_id, "ship", SHIP).status_code == 202
    # A second ship waits for the first to be applied, then finds the order shipped.
    again = stack.send(order_id, "ship", SHIP)
    assert again.status_code == 409
    assert "is shipped: it takes deliver or cancel now" in again.json()["detail"]
    assert stack.effects(order_id) == [("email", "send"), ("payment", "charge")]


def test_concurrent_cancels_one_wins_one_effect(stack: Stack) -> None:
    order_id = stack.place()
    stack.waiting(order_id, 1)

    async def cancel_five_times() -> list[httpx.Response]:
        async with clients.async_client(base_url=stack.gateway.base_url, timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post(f"/orders/{order_id}/cancel", json={"reason": "changed my mind"})
                    for _ in range(5)
                )
            )

    responses = asyncio.run(cancel_five_times())

    assert sorted(r.status_code for r in responses) == [202, 409, 409, 409, 409]
    for lost in (r for r in responses if r.status_code == 409):
        assert lost.json()["detail"] in (
            f"order '{order_id}' took another event (cancel) first",
            f"order '{order_id}' is cancelled: it can no longer be cancelled",
        )
    assert stack.finished(order_id)["state"] == "cancelled"
    assert stack.effects(order_id) == [("email", "send"), ("email", "send")]


def test_an_event_that_is_not_one_is_ignored_by_the_workflow(stack: Stack) -> None:
    """Anyone who reaches the server can resolve the promise; the order waits on regardless."""
    order_id = stack.place()
    stack.waiting(order_id, 1)

    (first,) = stack.statuses(order_id)

    async def resolve_with_garbage() -> None:
        client = Resonate(url=stack.server.url, group="order-tests")
        try:
            await client.promises.resolve(first["waiting_on"], Value(data={"type": "teleport"}))
        finally:
            await client.stop()

    asyncio.run(resolve_with_garbage())
    stack.waiting(order_id, 2)

    assert stack.view(order_id)["accepts"] == ["ship", "cancel"]
    assert stack.send(order_id, "cancel", {"reason": "changed my mind"}).status_code == 202
    assert stack.finished(order_id)["state"] == "cancelled"
    # It waited once more, on a fresh promise, and said so.
    first_wait, second_wait, final = stack.statuses(order_id)
    assert second_wait["waiting_on"] not in (None, first_wait["waiting_on"])
    assert [h["state"] for h in second_wait["history"]] == ["confirmed"]
    assert (final["waiting_on"], final["history"][-1]["state"]) == (None, "cancelled")


def test_unknown_orders_are_404(stack: Stack) -> None:
    unknown = f"no-such-order-{secrets.token_hex(4)}"
    assert stack.gateway.get(f"/orders/{unknown}").status_code == 404
    for event, body in (("ship", SHIP), ("deliver", None), ("cancel", {"reason": "who?"})):
        response = stack.send(unknown, event, body)
        assert response.status_code == 404
        assert response.json()["detail"] == f"no order '{unknown}'"

    # A promise that is not an order is not shown as one.
    other = f"not-an-order-{secrets.token_hex(4)}"

    async def create_promise() -> None:
        client = Resonate(url=stack.server.url, group="order-tests")
        try:
            in_a_minute = int(time.time() * 1000) + 60_000
            await client.promises.create(other, in_a_minute, Value(data={"not": "an order"}), {})
        finally:
            await client.stop()

    asyncio.run(create_promise())
    assert stack.gateway.get(f"/orders/{other}").status_code == 404
    assert stack.send(other, "cancel", {"reason": "who?"}).status_code == 404
    # A step's id (`<order>:<n>`) is not an order id at all.
    assert stack.gateway.get("/orders/order:1").status_code == 422


def test_an_order_whose_execution_failed_says_so(stack: Stack) -> None:
    # Started with a 2 s deadline (the gateway gives 30 days) and never shipped: it times out.
    order = new_order()
    order_id = order["order_id"]

    async def start_and_wait() -> None:
        client = Resonate(url=stack.server.url, group="order-tests", subscription_refresh_secs=0.5)
        try:
            handle = client.options(target="order-state-machine", timeout=timedelta(seconds=2)).rpc(
                order_id, "order_lifecycle", order
            )
            with pytest.raises(ResonateTimeoutError):
                await asyncio.wait_for(handle.result(), 30)
        finally:
            await client.stop()

    asyncio.run(start_and_wait())

    view = stack.view(order_id)
    assert [h["state"] for h in view["history"]] == ["created", "confirmed", "failed"]
    assert (view["state"], view["accepts"]) == ("failed", [])
    refused = stack.send(order_id, "cancel", {"reason": "too late"})
    assert refused.status_code == 409
    assert (
        refused.json()["detail"] == f"order '{order_id}' is failed: it can no longer be cancelled"
    )


@contextlib.contextmanager
def fault(stack: Stack, **spec: Any) -> Iterator[None]:
    """A sandbox fault for the duration of a test, removed also if the test fails."""
    added = clients.post(f"{stack.sandbox.url}/_admin/faults", json=spec).raise_for_status()
    try:
        yield
    finally:
        clients.delete(f"{stack.sandbox.url}/_admin/faults/{added.json()['id']}")


def test_a_declined_card_ends_the_order_declined_without_a_retry(stack: Stack) -> None:
    order_id = stack.place()
    decline = {"provider": "payment", "action": "charge", "status": 402}
    with fault(stack, **decline, mode="fail_always", key_prefix=f"{order_id}:"):
        assert stack.send(order_id, "ship", SHIP).status_code == 202

        view = stack.finished(order_id)

    assert (view["state"], view["accepts"]) == ("declined", [])
    assert len(stack.charges(order_id)) == 1  # asked once: a decline is an answer, not a failure
    assert stack.effects(order_id) == [("email", "send"), ("email", "send")]  # nothing charged
    notice = stack.sandbox.records.effects(f"{order_id}:")[1]
    assert notice.body["subject"] == f"Order {order_id}: payment declined"
    declined = view["history"][-1]
    assert declined["receipt"] == notice.resource_id
    assert declined["reason"].startswith("HTTP 402 Payment Required")
    assert declined["event"]["type"] == "ship"
    assert [h["state"] for h in view["history"]] == ["created", "confirmed", "declined"]
    refused = stack.send(order_id, "cancel", {"reason": "too late"})
    assert refused.status_code == 409
    assert refused.json()["detail"] == (
        f"order '{order_id}' is declined: it can no longer be cancelled"
    )


def test_a_provider_that_is_down_for_a_moment_is_retried_with_the_same_key(stack: Stack) -> None:
    order_id = stack.place()
    down = {"provider": "payment", "action": "charge", "status": 503, "times": 2}
    with fault(stack, **down, mode="fail_times", key_prefix=f"{order_id}:"):
        assert stack.send(order_id, "ship", SHIP).status_code == 202
        stack.waiting(order_id, 2)  # shipped, after 2 s and 4 s of backoff

    attempts = stack.charges(order_id)
    assert [a.status_code for a in attempts] == [503, 503, 200]
    assert len({a.idempotency_key for a in attempts}) == 1
    assert stack.view(order_id)["state"] == "shipped"


def test_children_of_any_kind_do_not_confuse_the_gateway(stack: Stack) -> None:
    """The gateway reads only promises whose ids the example chose: a child it does not know
    (a new step type, a detached call, a promise anyone made) changes nothing it says."""
    order_id = stack.place()
    stack.waiting(order_id, 1)
    before = stack.view(order_id)
    forged = {**stack.statuses(order_id)[0], "seq": 7, "history": []}
    in_a_minute = int(time.time() * 1000) + 60_000

    async def add_strangers() -> None:
        client = Resonate(url=stack.server.url, group="order-tests")
        try:
            strangers = {
                f"{order_id}:d5a912529f7d782fc": {"detached": True},  # not `<id>:<number>`
                f"{order_id}:99": {"state": "teleported", "receipt": 7},  # not a transition
                f"{order_id}:98": "just a string",
            }
            for promise_id, value in strangers.items():
                tags = {"resonate:origin": order_id, "resonate:parent": order_id}
                await client.promises.create(promise_id, in_a_minute, Value(data=None), tags)
                await client.promises.resolve(promise_id, Value(data=value))
            # A status that is not one, and one under an id the workflow would not choose.
            tag = {"order-state-machine:status-of": order_id}
            for promise_id, value in (
                (f"{order_id}~status-5", {"seq": "five"}),
                (f"forged-{order_id}", forged),
            ):
                await client.promises.create(promise_id, in_a_minute, Value(data=None), tag)
                await client.promises.resolve(promise_id, Value(data=value))
        finally:
            await client.stop()

    asyncio.run(add_strangers())

    assert stack.view(order_id) == before
    assert stack.send(order_id, "ship", SHIP).status_code == 202
    assert stack.send(order_id, "deliver").status_code == 202
    assert stack.finished(order_id)["state"] == "delivered"


def test_a_workflow_that_cannot_start_fails_at_once_instead_of_being_retried(stack: Stack) -> None:
    """The worker registers the workflow with its own retry policy (never): under the SDK's
    default, an argument that cannot be decoded would be retried 30 times, doubling each wait."""
    order_id = f"test-{secrets.token_hex(4)}"

    async def start_with_a_bad_order() -> tuple[BaseException | None, float]:
        client = Resonate(url=stack.server.url, group="order-tests")
        try:
            started = time.monotonic()
            handle = client.options(target="order-state-machine").rpc(
                order_id, "order_lifecycle", {"order_id": order_id, "items": "none"}
            )
            (outcome,) = await asyncio.wait_for(
                asyncio.gather(handle.result(), return_exceptions=True), 20
            )
            error = outcome if isinstance(outcome, BaseException) else None
            return error, time.monotonic() - started
        finally:
            await client.stop()

    error, seconds = asyncio.run(start_with_a_bad_order())

    assert error is not None, "a workflow whose argument cannot be decoded fails"
    assert seconds < 5, f"failed after {seconds:.1f}s: it was retried"


# -- personal data: the order names its customer by reference, and only the providers know them --

NOT_A_REFERENCE: dict[str, dict[str, Any]] = {
    "an email address": {"customer_id": CUSTOMER["email"]},
    "a name": {"customer_id": CUSTOMER["name"]},
    "an email after the prefix": {"customer_id": "cus_zoe@example.com"},
    "a name and an email instead": {"customer": CUSTOMER},
}
PERSONAL = [*CUSTOMER.values(), *CUSTOMER["name"].split()]
# Her first name as an id would spell it: a `cus_zoe...` or an `order-zoe-...` names the customer
# as plainly as her name does, so no stored id or reference may contain it.
FIRST_NAME = "zoe"


@pytest.mark.parametrize("fields", NOT_A_REFERENCE.values(), ids=NOT_A_REFERENCE.keys())
def test_personal_data_where_the_customer_reference_goes_is_refused(
    stack: Stack, fields: dict[str, Any]
) -> None:
    order = {k: v for k, v in new_order().items() if k != "customer_id"} | fields
    order_id = order["order_id"]

    response = stack.gateway.post("/orders", json=order)

    assert response.status_code == 422, response.text
    assert ["body", "customer_id"] in [error["loc"] for error in response.json()["detail"]]
    assert plaintext_found(response.content, PERSONAL) == []  # not echoed either
    assert stack.promises(order_id) == []  # nothing started, nothing stored
    assert stack.sandbox.records.requests(f"{order_id}:") == []


def test_the_server_holds_the_customers_reference_never_their_name_or_email(
    stack: Stack,
) -> None:
    order_id = stack.place()
    assert stack.send(order_id, "ship", SHIP).status_code == 202
    assert stack.send(order_id, "deliver").status_code == 202
    assert stack.finished(order_id)["state"] == "delivered"

    # Every promise of the order (the execution, its steps and waits, its statuses), decoded.
    ours = (f"{order_id}:", f"{order_id}~")
    promises = [p for p in stack.promises() if p["id"] == order_id or p["id"].startswith(ours)]
    assert len(promises) == 12  # the execution, its 8 children, 3 statuses
    stored = {p["id"]: json.dumps(stored_values(p), ensure_ascii=False) for p in promises}
    assert CUSTOMER_ID in stored[order_id]  # the argument: the order, and its reference
    assert [
        i for i, data in stored.items() if "@" in data or plaintext_found(data.encode(), PERSONAL)
    ] == []
    assert [i for i, data in stored.items() if FIRST_NAME in (i + data).lower()] == []
    # Nor anywhere else the server keeps or shows it: its files (log, archive), and its state.
    # One search (it decodes all the server keeps): the reference, which shows the search sees
    # what is stored, and none of the personal data.
    held = what_the_server_holds(stack.server)
    assert plaintext_found(held, [CUSTOMER_ID, *PERSONAL]) == [CUSTOMER_ID]
    # The providers were given the reference, which they resolve to an address and a card.
    effects = stack.sandbox.records.effects(f"{order_id}:")
    assert [(e.provider, e.body.get("to", e.body.get("customer"))) for e in effects] == [
        ("email", CUSTOMER_ID),
        ("payment", CUSTOMER_ID),
        ("push", CUSTOMER_ID),
    ]


# -- identity: the order id is the execution id ------------------------------------------------


def test_ten_identical_posts_start_one_execution(stack: Stack) -> None:
    order = new_order()

    async def post_all() -> list[int]:
        async with clients.async_client(base_url=stack.gateway.base_url, timeout=30) as client:
            responses = await asyncio.gather(
                *(client.post("/orders", json=order) for _ in range(10))
            )
        return [r.status_code for r in responses]

    assert asyncio.run(post_all()) == [202] * 10
    order_id = order["order_id"]
    assert stack.send(order_id, "cancel", {"reason": "changed my mind"}).status_code == 202
    assert stack.finished(order_id)["state"] == "cancelled"
    # One execution: the root, confirm, the wait, its status, the cancel, the final status.
    assert len(stack.promises(order_id)) == 6
    assert [s["seq"] for s in stack.statuses(order_id)] == [1, 2]
    assert stack.effects(order_id) == [("email", "send"), ("email", "send")]
    # Posted again once finished, it attaches to the finished execution: nothing runs again.
    assert stack.gateway.post("/orders", json=order).status_code == 202
    assert len(stack.sandbox.records.requests(f"{order_id}:")) == 2


def test_same_order_id_with_a_different_body_is_409(stack: Stack) -> None:
    order = new_order()
    changed = copy.deepcopy(order)
    changed["items"][0]["quantity"] = 5
    order_id = stack.place(order)

    conflict = stack.gateway.post("/orders", json=changed)

    assert conflict.status_code == 409
    assert conflict.json()["detail"] == f"order '{order_id}' exists with a different body"
    assert stack.send(order_id, "ship", SHIP).status_code == 202
    assert stack.send(order_id, "deliver").status_code == 202
    assert stack.finished(order_id)["state"] == "delivered"
    charges = [e for e in stack.sandbox.records.effects(f"{order_id}:") if e.action == "charge"]
    assert [e.body["amount_cents"] for e in charges] == [3440]  # the first body's 2 books, not 5


@pytest.fixture(scope="module")
def idle_gateway(stack: Stack) -> Iterator[httpx.Client]:
    """A second gateway, whose orders go to a group no worker listens on; events wait 0.5 s."""
    env = {**stack.env, "RESONATE_GROUP": "nobody-listens", "ORDER_EVENT_WAIT_SECONDS": "0.5"}
    with (
        gateway_process("order_state_machine.gateway", env) as gateway,
        clients.client(base_url=url_of(gateway), timeout=30) as client,
    ):
        yield client


def test_any_gateway_serves_any_order(stack: Stack, idle_gateway: httpx.Client) -> None:
    order_id = stack.place()

    # Events need no worker group: they resolve promises of the running execution.
    assert idle_gateway.post(f"/orders/{order_id}/ship", json=SHIP).status_code == 202
    assert stack.send(order_id, "deliver").status_code == 202

    stack.finished(order_id)
    assert idle_gateway.get(f"/orders/{order_id}").json() == stack.view(order_id)
    assert stack.effects(order_id) == [("email", "send"), ("payment", "charge"), ("push", "send")]


def test_an_event_for_an_order_that_is_not_waiting_yet_is_turned_away(
    idle_gateway: httpx.Client,
) -> None:
    order = new_order()
    order_id = order["order_id"]
    assert idle_gateway.post("/orders", json=order).status_code == 202  # no worker will run it

    refused = idle_gateway.post(f"/orders/{order_id}/cancel", json={"reason": "changed my mind"})

    assert refused.status_code == 409
    assert refused.headers["Retry-After"] == "1"
    assert refused.json()["detail"] == (
        f"order '{order_id}' is created and not yet waiting for events; try again"
    )
    view = idle_gateway.get(f"/orders/{order_id}").json()
    assert (view["state"], view["accepts"]) == ("created", [])


# -- hostile input -----------------------------------------------------------------------------


def _changed(path: str, value: Any) -> dict[str, Any]:
    """A valid order with one field set to `value`, or removed (`REMOVED`)."""
    return changed(new_order(), path, value)


HOSTILE_ORDERS: dict[str, bytes] = {
    **malformed_bodies(new_order()),
    "missing order_id": as_json(_changed("order_id", REMOVED)),
    "missing customer_id": as_json(_changed("customer_id", REMOVED)),
    "missing currency": as_json(_changed("currency", REMOVED)),
    "order_id with colon": as_json(_changed("order_id", "order:1")),
    "order_id empty": as_json(_changed("order_id", "")),
    "order_id too long": as_json(_changed("order_id", "o" * 65)),
    "order_id number": as_json(_changed("order_id", 123)),
    "order_id path traversal": as_json(_changed("order_id", "../../etc/passwd")),
    "order_id newline": as_json(_changed("order_id", "order-1\n")),
    "customer_id huge": as_json(_changed("customer_id", "cus_" + "A" * 10_000)),
    "customer_id NUL byte": as_json(_changed("customer_id", "cus_zoe\x002030")),
    "customer_id lone surrogate": as_json(_changed("customer_id", "cus_zoe\ud800")),
    "customer_id number": as_json(_changed("customer_id", 2030)),
    "customer_id without prefix": as_json(_changed("customer_id", "zoe2030")),
    "no items": as_json(_changed("items", [])),
    "items not a list": as_json(_changed("items", {"sku": "BOOK-42"})),
    "sku lowercase": as_json(_changed("items.0.sku", "book-42")),
    "quantity zero": as_json(_changed("items.0.quantity", 0)),
    "quantity negative": as_json(_changed("items.0.quantity", -2)),
    "quantity fraction": as_json(_changed("items.0.quantity", 1.5)),
    "quantity as string": as_json(_changed("items.0.quantity", "2")),
    "quantity as bool": as_json(_changed("items.0.quantity", True)),
    "quantity NaN": as_json(_changed("items.0.quantity", float("nan"))),
    "price zero": as_json(_changed("items.0.unit_price_cents", 0)),
    "price huge": as_json(_changed("items.0.unit_price_cents", 10**12)),
    "currency unknown": as_json(_changed("currency", "BTC")),
    "currency lowercase": as_json(_changed("currency", "eur")),
    "extra field": as_json(_changed("discount", 100)),
    "extra nested field": as_json(_changed("items.0.gift", True)),
    "deeply nested": b"[" * 5_000 + b"]" * 5_000,
    "body over 16 KiB": as_json(_changed("customer_id", "cus_" + "A" * 20_000)),
}

HOSTILE_EVENTS: dict[str, tuple[str, bytes]] = {
    "ship empty object": ("ship", as_json({})),
    "ship no body": ("ship", b""),
    "ship missing tracking": ("ship", as_json({"carrier": "DHL"})),
    "ship tracking lowercase": ("ship", as_json({**SHIP, "tracking_number": "jd01460000"})),
    "ship carrier empty": ("ship", as_json({**SHIP, "carrier": ""})),
    "ship carrier control char": ("ship", as_json({**SHIP, "carrier": "DH\x07L"})),
    "ship as cancel": ("ship", as_json({**SHIP, "type": "cancel"})),
    "ship extra field": ("ship", as_json({**SHIP, "signed_by": "me"})),
    "ship array": ("ship", as_json([SHIP])),
    "cancel no body": ("cancel", b""),
    "cancel empty object": ("cancel", as_json({})),
    "cancel reason empty": ("cancel", as_json({"reason": ""})),
    "cancel reason huge": ("cancel", as_json({"reason": "x" * 1_000})),
    "cancel reason number": ("cancel", as_json({"reason": 42})),
    "cancel as ship": ("cancel", as_json({"reason": "x", "type": "ship"})),
    "cancel truncated json": ("cancel", b'{"reason": "chan'),
}


# Not field errors: JSON too deep to parse is a 400, a body over the limit a 413.
NOT_422 = {"deeply nested": 400, "body over 16 KiB": 413}


@pytest.mark.parametrize(("case", "body"), HOSTILE_ORDERS.items(), ids=HOSTILE_ORDERS.keys())
def test_a_hostile_order_is_rejected_and_nothing_is_stored(
    stack: Stack, case: str, body: bytes
) -> None:
    promises_before = len(stack.promises())
    provider_calls_before = len(stack.sandbox.records.requests())

    response = stack.gateway.post(
        "/orders", content=body, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == NOT_422.get(case, 422), response.text
    assert len(response.content) < 2_000  # says what is wrong without echoing the input
    if response.status_code == 422:
        assert response.json()["detail"], "a 422 names the fields that are wrong"
    else:  # the body the OpenAPI document declares for it (FastAPI's own 413 is plain text)
        assert isinstance(response.json()["detail"], str), response.text
    assert len(stack.promises()) == promises_before
    assert len(stack.sandbox.records.requests()) == provider_calls_before


@pytest.fixture(scope="module")
def waiting_order(stack: Stack) -> str:
    """An order that waits for ship or cancel, for hostile events to be thrown at."""
    order_id = stack.place()
    stack.waiting(order_id, 1)
    return order_id


@pytest.mark.parametrize(("event", "body"), HOSTILE_EVENTS.values(), ids=HOSTILE_EVENTS.keys())
def test_a_hostile_event_is_rejected_and_the_order_waits_on(
    stack: Stack, waiting_order: str, event: str, body: bytes
) -> None:
    promises_before = stack.promises(waiting_order)

    response = stack.gateway.post(
        f"/orders/{waiting_order}/{event}",
        content=body,
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 422, response.text
    assert response.json()["detail"], "a 422 names the fields that are wrong"
    assert stack.promises(waiting_order) == promises_before
    assert stack.effects(waiting_order) == [("email", "send")]


# -- the OpenAPI document ----------------------------------------------------------------------

# Every answer each route gives, as the tests above see them.
ANSWERS = {
    ("post", "/orders"): {"202", "400", "409", "413", "422"},
    ("get", "/orders/{order_id}"): {"200", "404", "422"},
    **{
        ("post", f"/orders/{{order_id}}/{event}"): {"202", "400", "404", "409", "413", "422"}
        for event in ("ship", "deliver", "cancel")
    },
}


def test_the_openapi_document_declares_every_answer_with_its_body(stack: Stack) -> None:
    document = stack.gateway.get("/openapi.json").json()

    for (method, path), answers in ANSWERS.items():
        responses = document["paths"][path][method]["responses"]
        assert set(responses) == answers, (method, path)
        for status, response in responses.items():
            schema = response["content"]["application/json"]["schema"]
            assert schema, (method, path, status)
    problem = document["components"]["schemas"]["Problem"]
    assert problem["required"] == ["detail"]
    field_errors = document["components"]["schemas"]["FieldErrors"]
    assert field_errors["properties"]["detail"]["type"] == "array"

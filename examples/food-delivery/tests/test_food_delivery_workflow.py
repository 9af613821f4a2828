"""`deliver_order` in process: the SDK's own `resonate.testing`, fake providers on MockTransport.

An in-process Resonate registered as the worker does (its `WORKFLOW_RETRIES`, and itself as the
`ProgressBoard` the steps mark progress on); the step and compensation retry policies are the
workflow's own, and take no time here. These tests need only the SDK, this package and pytest:
they run in a copy of this folder outside the cookbook (`make copy-out-food-delivery`). The tests
that drive a real dev server, worker, gateway and the provider sandbox are in tests/cookbook/.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from food_delivery.steps import STAGES, ProgressBoard, Providers, progress_id
from food_delivery.workflow import (
    COMPENSATION_RETRIES,
    STEP_RETRIES,
    WORKFLOW_RETRIES,
    Compensation,
    Delivery,
    Order,
    deliver_order,
)
from resonate.context import Context
from resonate.dependencies import DependencyMap
from resonate.testing import local_resonate, resolved_promise, root_context

ORDER = Order.model_validate(
    {
        "order_id": "ord-1",
        "customer_id": "cus_9d3f",
        "restaurant_id": "rst_luigi",
        "address_id": "adr_home1",
        "items": [{"name": "Margherita", "quantity": 2, "unit_price_cents": 900}],
        "currency": "EUR",
    }
)


def stage_of(request: httpx.Request, body: dict[str, Any]) -> str:
    """Which step or compensation a provider request is."""
    path = request.url.path
    if path == "/api/call":
        op: str = body["op"]
        return {"confirm_pickup": "pick_up", "confirm_dropoff": "deliver"}.get(op, op)
    if path == "/slack/send":
        text: str = body["text"]
        return "prepare" if text.startswith("New order") else "tell_restaurant"
    return {
        "/payment/charge": "charge",
        "/payment/refund": "refund",
        "/push/send": "complete",
        "/sms/send": "notify_customer",
    }[path]


type Reply = dict[str, Any] | str | bytes


@dataclass
class FakeProviders:
    """Answer by rule: `answer(stage, attempt) -> (status, body)`, attempt counting that stage.

    A dict is answered as JSON, a str as an HTML page, and bytes as they are under
    `Content-Encoding: gzip`: a garbled body that cannot even be decoded."""

    answer: Callable[[str, int], tuple[int, Reply]]
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # stage, key, body

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        stage = stage_of(request, body)
        self.calls.append((stage, request.headers["Idempotency-Key"], body))
        status, reply = self.answer(stage, self.stages().count(stage))
        if isinstance(reply, str):
            return httpx.Response(status, html=reply)
        if isinstance(reply, bytes):
            return httpx.Response(status, content=reply, headers={"Content-Encoding": "gzip"})
        return httpx.Response(status, json=reply)

    def stages(self) -> list[str]:
        return [stage for stage, _, _ in self.calls]

    def keys(self, stage: str) -> list[str]:
        return [key for called, key, _ in self.calls if called == stage]

    def body(self, stage: str) -> dict[str, Any]:
        return next(body for called, _, body in self.calls if called == stage)


def yes(stage: str, attempt: int) -> tuple[int, dict[str, Any]]:
    return 200, {"id": f"{stage}_{attempt}"}


def except_for(stage: str, status: int) -> Callable[[str, int], tuple[int, dict[str, Any]]]:
    def answer(called: str, attempt: int) -> tuple[int, dict[str, Any]]:
        return (status, {"error": "no"}) if called == stage else yes(called, attempt)

    return answer


def deliver(providers: FakeProviders) -> tuple[Delivery, list[str]]:
    """Run the order in process: its result, and the stages whose progress mark is resolved."""

    async def go() -> tuple[Delivery, list[str]]:
        resonate = local_resonate()
        try:
            transport = httpx.MockTransport(providers.handle)
            async with httpx.AsyncClient(transport=transport, base_url="http://providers") as c:
                resonate.with_dependency(Providers(c))
                resonate.with_dependency(ProgressBoard(resonate))
                resonate.register(deliver_order, retry_policy=WORKFLOW_RETRIES)
                handle = resonate.run(ORDER.order_id, deliver_order, ORDER)
                result: Delivery = await asyncio.wait_for(handle.result(), 30)
                marked: list[str] = []
                for stage in [stage for stage in STAGES if stage in providers.stages()]:
                    mark = await resonate.promises.get(progress_id(ORDER.order_id, stage))
                    if mark.state == "resolved":
                        marked.append(stage)
                return result, marked
        finally:
            await resonate.stop()

    return asyncio.run(go())


def test_a_delivery_calls_each_provider_once_under_its_own_key_and_marks_each_stage() -> None:
    providers = FakeProviders(yes)

    result, marked = deliver(providers)

    assert result == Delivery(
        "delivered", charge_id="charge_1", driver_assignment="assign_driver_1"
    )
    stages = ["charge", "prepare", "assign_driver", "pick_up", "deliver", "complete"]
    assert providers.stages() == stages
    assert len({key for _, key, _ in providers.calls}) == 6
    assert marked == stages
    assert providers.body("charge")["amount_cents"] == 1800


def test_no_driver_is_an_answer_the_order_is_refunded_and_the_restaurant_told() -> None:
    providers = FakeProviders(except_for("assign_driver", 409))

    result, _ = deliver(providers)

    assert result.status == "cancelled"
    assert result.reason == "no driver"
    assert [c.stage for c in result.compensations] == [
        "refund",
        "tell_restaurant",
        "notify_customer",
    ]
    assert len(providers.keys("assign_driver")) == 1  # a refusal is not asked again
    assert providers.body("refund")["charge_id"] == "charge_1"
    assert "You have been refunded." in providers.body("notify_customer")["text"]


def test_a_dispatch_that_stays_down_cancels_and_releases_whatever_its_key_booked() -> None:
    providers = FakeProviders(except_for("assign_driver", 503))

    result, _ = deliver(providers)

    keys = providers.keys("assign_driver")
    assert len(keys) == 1 + STEP_RETRIES.max_retries
    assert set(keys) == {keys[0]}  # every attempt under the same key
    assert result.reason == "dispatch unavailable"
    assert result.compensations[1] == Compensation("release_driver", "release_driver_1")
    assert providers.body("release_driver")["assignment_key"] == keys[0]


PROXY_PAGE = "<html><body>Welcome to the gateway</body></html>"


@pytest.mark.parametrize(
    "reply",
    [PROXY_PAGE, {"status": "assigned"}, b"garbled"],
    ids=["an HTML page", "JSON without the id", "a body that cannot be decoded"],
)
def test_a_dispatch_answered_without_its_answer_releases_whatever_its_key_booked(
    reply: Reply,
) -> None:
    # A 200 that is not the dispatch API's answer says nothing about what it did: not a bug that
    # fails the order, but an assignment that may have landed, retried and then released by key.
    def answer(stage: str, attempt: int) -> tuple[int, Reply]:
        return (200, reply) if stage == "assign_driver" else yes(stage, attempt)

    providers = FakeProviders(answer)

    result, _ = deliver(providers)

    keys = providers.keys("assign_driver")
    assert len(keys) == 1 + STEP_RETRIES.max_retries
    assert set(keys) == {keys[0]}
    assert (result.status, result.reason) == ("cancelled", "dispatch unavailable")
    assert result.compensations[1] == Compensation("release_driver", "release_driver_1")
    assert providers.body("release_driver")["assignment_key"] == keys[0]


def test_no_driver_answered_with_a_page_instead_of_json_is_still_an_answer() -> None:
    providers = FakeProviders(
        lambda stage, attempt: (
            (409, PROXY_PAGE) if stage == "assign_driver" else yes(stage, attempt)
        )
    )

    result, _ = deliver(providers)

    assert (result.status, result.reason) == ("cancelled", "no driver")
    assert len(providers.keys("assign_driver")) == 1
    assert "release_driver" not in providers.stages()


def test_a_dispatch_that_stays_down_does_not_hold_the_refund_behind_the_release() -> None:
    """The release goes to the dispatch API that just failed: down still, it fails through all
    its retries. The customer is refunded first, and told so; the release is reported."""

    def answer(stage: str, attempt: int) -> tuple[int, dict[str, Any]]:
        if stage in ("assign_driver", "release_driver"):
            return 503, {"error": "down"}
        return yes(stage, attempt)

    providers = FakeProviders(answer)

    result, _ = deliver(providers)

    stages = providers.stages()
    assert stages.index("refund") < stages.index("release_driver")
    assert [c.stage for c in result.compensations] == [
        "refund",
        "release_driver",
        "tell_restaurant",
        "notify_customer",
    ]
    assert result.compensations[0] == Compensation("refund", "refund_1")
    assert result.compensations[1].problem is not None  # reported: a person sees to it
    assert len(providers.keys("release_driver")) == 1 + COMPENSATION_RETRIES.max_retries
    assert "You have been refunded." in providers.body("notify_customer")["text"]


def test_a_refund_that_keeps_failing_is_reported_and_the_customer_still_told() -> None:
    def answer(stage: str, attempt: int) -> tuple[int, dict[str, Any]]:
        if stage == "assign_driver":
            return 409, {"error": "no driver available"}
        if stage == "refund":
            return 503, {"error": "down"}
        return yes(stage, attempt)

    providers = FakeProviders(answer)

    result, _ = deliver(providers)

    assert len(providers.keys("refund")) == 1 + COMPENSATION_RETRIES.max_retries
    refund = result.compensations[0]
    assert refund.stage == "refund"
    assert refund.receipt is None
    assert refund.problem == "/payment/refund: HTTP 503 Service Unavailable: down"
    assert [c.stage for c in result.compensations[1:]] == ["tell_restaurant", "notify_customer"]


def test_a_declined_card_cancels_with_nothing_to_undo_but_telling_the_customer() -> None:
    providers = FakeProviders(except_for("charge", 402))

    result, _ = deliver(providers)

    assert result.reason == "payment declined"
    assert result.charge_id is None
    assert providers.stages() == ["charge", "notify_customer"]
    assert "You were not charged." in providers.body("notify_customer")["text"]


def test_a_replay_reads_the_charge_and_the_ticket_from_the_journal() -> None:
    """What the next worker does after a crash after the kitchen ticket: it goes on from there."""
    providers = FakeProviders(yes)
    oid = ORDER.order_id
    journal = [
        resolved_promise(f"{oid}:1", {"receipt": "charge_1", "refusal": None}),
        resolved_promise(f"{oid}:2", {"receipt": "prepare_1", "refusal": None}),
    ]

    async def replay() -> Delivery:
        board = local_resonate()
        try:
            transport = httpx.MockTransport(providers.handle)
            async with httpx.AsyncClient(transport=transport, base_url="http://providers") as c:
                deps = DependencyMap()
                deps.insert(Providers(c))
                deps.insert(ProgressBoard(board))
                ctx: Context = root_context(id=oid, preload=journal, deps=deps)
                return await deliver_order(ctx, ORDER)
        finally:
            await board.stop()

    result = asyncio.run(replay())

    assert result.status == "delivered"
    assert result.charge_id == "charge_1"
    assert providers.stages() == ["assign_driver", "pick_up", "deliver", "complete"]

"""`handle_payment_event` in process: the SDK's own `resonate.testing`, the example's order book
(SQLite, in a temporary directory), the warehouse and the email provider faked on MockTransport.

The order book alone is tested in test_order_book.py; these run the workflow over it, one
execution per event under the event's id, registered as the worker does. They need only the SDK,
this package and pytest: they run in a copy of this folder outside the cookbook
(`make copy-out-webhook-handler`). The tests that drive a real dev server, workers, the gateway
and signed deliveries are in tests/cookbook/ and run in the cookbook only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from resonate.testing import local_resonate
from webhook_handler.steps import OrderBook, Providers
from webhook_handler.workflow import (
    PROVIDER_RETRIES,
    WORKFLOW_RETRIES,
    Charge,
    EventOutcome,
    PaymentEvent,
    handle_payment_event,
)

CHARGE = Charge(order_id="order-1", charge_id="ch_1", amount=4_200, currency="eur")
PAYMENT = PaymentEvent(id="evt_pay", type="payment_succeeded", created=0, data=CHARGE)
REFUND = PaymentEvent(id="evt_ref", type="charge_refunded", created=0, data=CHARGE)


@dataclass
class FakeProviders:
    """The warehouse and the email provider: `answer(path, attempt) -> (status, body)`, or a
    whole response."""

    answer: Callable[[str, int], tuple[int, dict[str, Any]] | httpx.Response]
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # path, key, body

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.calls.append((path, request.headers["Idempotency-Key"], json.loads(request.content)))
        answer = self.answer(path, self.paths().count(path))
        if isinstance(answer, httpx.Response):
            return answer
        status, body = answer
        return httpx.Response(status, json=body)

    def paths(self) -> list[str]:
        return [path for path, _, _ in self.calls]


def answered(path: str, attempt: int) -> tuple[int, dict[str, Any]]:
    return 200, {
        "/inventory/reserve": {"id": "shp_1"},
        "/inventory/cancel": {"id": "cnl_1", "status": "cancelled"},
        "/email/send": {"id": "msg_1"},
    }[path]


def down(down_path: str) -> FakeProviders:
    """The providers with `down_path` answering 503 to every attempt, the rest as usual."""

    def answer(path: str, attempt: int) -> tuple[int, dict[str, Any]]:
        return (503, {}) if path == down_path else answered(path, attempt)

    return FakeProviders(answer)


@pytest.fixture
def book(tmp_path: Path) -> OrderBook:
    return OrderBook.at(tmp_path)


def deliver(
    book: OrderBook, providers: FakeProviders, deliveries: list[tuple[str, PaymentEvent]]
) -> list[EventOutcome]:
    """Each (execution id, event) handled in turn, as the gateway starts them."""

    async def go() -> list[EventOutcome]:
        resonate = local_resonate()
        try:
            transport = httpx.MockTransport(providers.handle)
            async with httpx.AsyncClient(transport=transport, base_url="http://providers") as c:
                resonate.with_dependency(Providers(c))
                resonate.with_dependency(book)
                resonate.register(handle_payment_event, retry_policy=WORKFLOW_RETRIES)
                outcomes = []
                for execution_id, event in deliveries:
                    handle = resonate.run(execution_id, handle_payment_event, event)
                    outcomes.append(await asyncio.wait_for(handle.result(), 30))
                return outcomes
        finally:
            await resonate.stop()

    return asyncio.run(go())


def actions(outcomes: list[EventOutcome]) -> list[str]:
    return [outcome.action for outcome in outcomes]


def test_a_payment_ships_once_under_the_key_the_order_book_wrote_down(book: OrderBook) -> None:
    providers = FakeProviders(answered)

    [shipped] = deliver(book, providers, [(PAYMENT.id, PAYMENT)])

    assert shipped.action == "fulfilled"
    assert shipped.shipment_id == "shp_1"
    [(path, key, _)] = providers.calls
    assert path == "/inventory/reserve"
    assert book.applied_events("order-1") == [("evt_pay", "payment_succeeded", "fulfil")]
    assert key.startswith(PAYMENT.id)  # the step's durable id, claimed before the call


def test_a_refund_after_the_payment_cancels_the_shipment_by_its_key_and_tells_the_customer(
    book: OrderBook,
) -> None:
    providers = FakeProviders(answered)

    outcomes = deliver(book, providers, [(PAYMENT.id, PAYMENT), (REFUND.id, REFUND)])

    assert actions(outcomes) == ["fulfilled", "refunded"]
    assert outcomes[1].cancellation == "cancelled"
    reserve_key = providers.calls[0][1]
    assert providers.calls[1][0] == "/inventory/cancel"
    assert providers.calls[1][2]["reservation_key"] == reserve_key
    assert providers.paths()[2:] == ["/email/send"]


def test_a_refund_that_overtakes_its_payment_is_final_and_nothing_ships(book: OrderBook) -> None:
    providers = FakeProviders(answered)

    outcomes = deliver(book, providers, [(REFUND.id, REFUND), (PAYMENT.id, PAYMENT)])

    assert actions(outcomes) == ["refunded", "not_shipped"]
    assert outcomes[0].cancellation == "none"
    assert outcomes[1].detail == "already_refunded"
    assert providers.paths() == ["/email/send"]  # no warehouse call at all


def test_the_same_event_under_a_second_execution_is_a_duplicate_that_does_nothing(
    book: OrderBook,
) -> None:
    providers = FakeProviders(answered)

    outcomes = deliver(book, providers, [(PAYMENT.id, PAYMENT), ("evt_pay-again", PAYMENT)])

    assert actions(outcomes) == ["fulfilled", "duplicate"]
    assert providers.paths() == ["/inventory/reserve"]


def test_a_warehouse_that_never_answers_leaves_the_claim_for_a_refund_to_cancel(
    book: OrderBook,
) -> None:
    providers = down("/inventory/reserve")

    outcomes = deliver(book, providers, [(PAYMENT.id, PAYMENT), (REFUND.id, REFUND)])

    reserve_keys = [key for path, key, _ in providers.calls if path == "/inventory/reserve"]
    assert len(reserve_keys) == 1 + PROVIDER_RETRIES.max_retries
    assert set(reserve_keys) == {reserve_keys[0]}
    assert actions(outcomes) == ["shipment_unconfirmed", "refunded"]
    cancel = next(body for path, _, body in providers.calls if path == "/inventory/cancel")
    assert cancel["reservation_key"] == reserve_keys[0]  # it may have shipped: cancelled by key


@pytest.mark.parametrize(
    "page",
    [
        lambda: httpx.Response(200, html="<html>Bad Gateway</html>"),
        lambda: httpx.Response(200, json={"status": "ok"}),
        # httpx decodes the body as it builds the response, and raises DecodingError
        lambda: httpx.Response(200, content=b"garbled", headers={"Content-Encoding": "gzip"}),
    ],
    ids=["an HTML page", "JSON without the id", "a body that cannot be decoded"],
)
def test_a_warehouse_answering_without_its_id_leaves_the_claim_for_a_refund_to_cancel(
    book: OrderBook, page: Callable[[], httpx.Response]
) -> None:
    # A 2xx that is not the warehouse's answer says nothing of whether it shipped: not a bug in
    # the step, but a shipment that may have landed, asked again under its key, then cancelled
    # by that key when the refund comes.
    def answer(path: str, attempt: int) -> tuple[int, dict[str, Any]] | httpx.Response:
        return page() if path == "/inventory/reserve" else answered(path, attempt)

    providers = FakeProviders(answer)

    outcomes = deliver(book, providers, [(PAYMENT.id, PAYMENT), (REFUND.id, REFUND)])

    reserve_keys = [key for path, key, _ in providers.calls if path == "/inventory/reserve"]
    assert len(reserve_keys) == 1 + PROVIDER_RETRIES.max_retries
    assert set(reserve_keys) == {reserve_keys[0]}
    assert actions(outcomes) == ["shipment_unconfirmed", "refunded"]
    cancel = next(body for path, _, body in providers.calls if path == "/inventory/cancel")
    assert cancel["reservation_key"] == reserve_keys[0]


def test_a_cancel_the_warehouse_never_answers_ends_with_the_key_and_the_customer_told(
    book: OrderBook,
) -> None:
    providers = down("/inventory/cancel")

    paid, refunded = deliver(book, providers, [(PAYMENT.id, PAYMENT), (REFUND.id, REFUND)])

    assert paid.action == "fulfilled"
    reserve_key = providers.calls[0][1]
    cancels = [body for path, _, body in providers.calls if path == "/inventory/cancel"]
    assert len(cancels) == 1 + PROVIDER_RETRIES.max_retries
    # Not a failed execution: the refund is in the order book for good, so nothing would cancel
    # again. The outcome names the key to cancel by, and the customer is emailed all the same.
    assert (refunded.action, refunded.cancellation) == ("cancellation_unconfirmed", "unconfirmed")
    assert refunded.fulfilment_key == reserve_key
    assert refunded.unsent is None
    assert providers.paths()[-1] == "/email/send"
    assert book.applied_events("order-1")[-1] == ("evt_ref", "charge_refunded", "cancel_fulfilment")


def test_a_refund_email_that_never_goes_out_still_ends_the_refund_with_its_outcome(
    book: OrderBook,
) -> None:
    providers = down("/email/send")

    paid, refunded = deliver(book, providers, [(PAYMENT.id, PAYMENT), (REFUND.id, REFUND)])

    assert paid.action == "fulfilled"
    assert providers.paths().count("/email/send") == 1 + PROVIDER_RETRIES.max_retries
    # Not a failed execution: a re-delivery would attach to it and send nothing. The refund
    # ends with what it did, the shipment cancelled, and says the email may be missing.
    assert (refunded.action, refunded.cancellation) == ("refunded", "cancelled")
    assert refunded.unsent == "the email may not have been sent: /email/send: answered 503"
    assert providers.paths().count("/inventory/cancel") == 1


def test_a_refund_email_the_provider_refuses_is_in_the_outcome(book: OrderBook) -> None:
    def answer(path: str, attempt: int) -> tuple[int, dict[str, Any]]:
        if path == "/email/send":
            return 422, {"error": "no address on file"}
        return answered(path, attempt)

    providers = FakeProviders(answer)

    _, refunded = deliver(book, providers, [(PAYMENT.id, PAYMENT), (REFUND.id, REFUND)])

    assert (refunded.action, refunded.cancellation) == ("refunded", "cancelled")
    assert refunded.unsent == "the email was not sent: refused: 422 no address on file"
    assert providers.paths().count("/email/send") == 1  # a refusal is asked once


@pytest.mark.parametrize(
    ("status", "action"), [(409, "shipment_voided"), (422, "shipment_refused")]
)
def test_a_warehouse_refusal_is_an_outcome_asked_once(
    book: OrderBook, status: int, action: str
) -> None:
    def answer(path: str, attempt: int) -> tuple[int, dict[str, Any]]:
        return (status, {"error": "no"}) if path == "/inventory/reserve" else answered(path, 1)

    providers = FakeProviders(answer)

    [outcome] = deliver(book, providers, [(PAYMENT.id, PAYMENT)])

    assert outcome.action == action
    assert providers.paths() == ["/inventory/reserve"]

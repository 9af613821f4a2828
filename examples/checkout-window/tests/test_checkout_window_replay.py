"""Which way a replay goes: the workflow body run over a given journal, with no server or worker.

The branch depends only on the state of the cancellation promise, which the server decides once:
resolved within the window (cancelled), or timed out at its end (charged).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from checkout_window.steps import Providers
from checkout_window.workflow import Purchase, PurchaseEnded, checkout
from pydantic import ValidationError
from resonate.context import Context
from resonate.dependencies import DependencyMap
from resonate.error import Suspended
from resonate.testing import RecordingSleeper, pending_promise, resolved_promise, root_context
from resonate.types import PromiseRecord

ID = "p-1"
CUSTOMER_ID = "cus_5e0b82d4"  # the buyer, as the providers know them
PURCHASE = Purchase.model_validate(
    {
        "purchase_id": ID,
        "customer_id": CUSTOMER_ID,
        "items": [{"sku": "LAMP-7", "quantity": 1, "unit_price_cents": 4900}],
        "currency": "EUR",
    }
)
DECLINED = "/payment/charge refused: 402 card declined"


# Answers that are not a provider's JSON: a proxy's page, JSON without the id, and a body httpx
# cannot decode (it decodes as it builds the response, and raises DecodingError).
NOT_THE_ANSWER: dict[str, Callable[[int], httpx.Response]] = {
    "an HTML page": lambda status: httpx.Response(status, html="<html><h1>Gateway</h1></html>"),
    "JSON without the id": lambda status: httpx.Response(status, json={"status": "ok"}),
    "a body that cannot be decoded": lambda status: httpx.Response(
        status, content=b"garbled", headers={"Content-Encoding": "gzip"}
    ),
}


@dataclass
class FakeProviders:
    """The providers, in process: the reservation answered with `status` (in the form `body`
    gives it, if any), the email with `email_status`, all else 200; every call noted."""

    status: int = 200
    body: Callable[[int], httpx.Response] | None = None
    email_status: int = 200
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def dependencies(self) -> DependencyMap:
        def answer(request: httpx.Request) -> httpx.Response:
            body = json.loads(request.content)
            self.calls.append((request.headers["Idempotency-Key"], request.url.path, body))
            if request.url.path == "/inventory/reserve" and self.body is not None:
                return self.body(self.status)
            if request.url.path == "/inventory/reserve":
                return httpx.Response(self.status, json={"id": "inventory_1"})
            if request.url.path == "/email/send" and self.email_status != 200:
                return httpx.Response(self.email_status, json={"error": "down"})
            return httpx.Response(200, json={"id": f"id_{len(self.calls)}"})

        client = httpx.AsyncClient(
            base_url="http://providers", transport=httpx.MockTransport(answer)
        )
        deps = DependencyMap()
        deps.insert(Providers(client))
        return deps


def timed_out(promise_id: str) -> PromiseRecord:
    """A latent promise the server timed out at its deadline (what it stores: no value)."""
    return PromiseRecord(id=promise_id, state="rejected_timedout", timeout_at=1, settled_at=1)


def replay(
    journal: list[PromiseRecord], providers: FakeProviders | None = None
) -> PurchaseEnded | list[str]:
    """Run the body over `journal`: its result, or the promises it suspended on."""

    async def run() -> PurchaseEnded | list[str]:
        deps = providers.dependencies() if providers is not None else None
        ctx: Context = root_context(id=ID, preload=journal, deps=deps, sleeper=RecordingSleeper())
        try:
            return await checkout(ctx, PURCHASE, 1800)
        except Suspended:
            await ctx.flush_local_work()
            return ctx.take_remote_todos()

    return asyncio.run(run())


# Step ids: the reservation `:1`, the cancellation promise `:2`, the window record `:3`, then
# the charge or the release `:4`, and so on.
RESERVED = resolved_promise(f"{ID}:1", "inventory_1")
WINDOW_OPENED = resolved_promise(f"{ID}:3")


def test_while_the_window_is_open_the_purchase_waits_for_the_cancellation_alone() -> None:
    # No timer of its own: the cancellation's timeout is the window's end.
    assert replay([RESERVED, pending_promise(f"{ID}:2"), WINDOW_OPENED]) == [f"{ID}:2"]


def test_a_cancellation_in_time_releases_the_stock_and_charges_nothing() -> None:
    journal = [
        RESERVED,
        resolved_promise(f"{ID}:2", {"cancel_id": "c1"}),
        WINDOW_OPENED,
        resolved_promise(f"{ID}:4", "inventory_1"),  # released
        resolved_promise(f"{ID}:5", "email_1"),
    ]

    assert replay(journal) == PurchaseEnded("cancelled", "inventory_1")


def test_when_the_window_times_out_the_card_is_charged() -> None:
    providers = FakeProviders()
    journal = [RESERVED, timed_out(f"{ID}:2"), WINDOW_OPENED]

    ended = replay(journal, providers)

    assert ended == PurchaseEnded("confirmed", "inventory_1", "id_1")
    assert [(key, path) for key, path, _ in providers.calls] == [
        (f"{ID}:4", "/payment/charge"),
        (f"{ID}:5", "/email/send"),
    ]


def test_a_confirmation_email_out_of_retries_keeps_the_charge() -> None:
    # The email answers 503 through every retry, after the card was charged: the purchase is
    # still confirmed with its charge id, and says the email may be missing.
    providers = FakeProviders(email_status=503)
    journal = [RESERVED, timed_out(f"{ID}:2"), WINDOW_OPENED]

    ended = replay(journal, providers)

    reason = "the email may not have been sent: /email/send: answered 503"
    assert ended == PurchaseEnded("confirmed", "inventory_1", "id_1", reason=reason)
    charge, *emails = [(key, path) for key, path, _ in providers.calls]
    assert charge == (f"{ID}:4", "/payment/charge")  # charged once
    assert emails == [(f"{ID}:5", "/email/send")] * 9  # the first attempt and 8 retries


def test_a_confirmation_email_the_provider_refuses_is_in_the_outcome() -> None:
    # The provider refuses the email (a 4xx): asked once, and the confirmed purchase says so.
    providers = FakeProviders(email_status=422)
    journal = [RESERVED, timed_out(f"{ID}:2"), WINDOW_OPENED]

    ended = replay(journal, providers)

    reason = "the email was not sent: /email/send refused: 422 down"
    assert ended == PurchaseEnded("confirmed", "inventory_1", "id_1", reason=reason)
    assert [path for _, path, _ in providers.calls] == ["/payment/charge", "/email/send"]


def test_a_declined_card_releases_the_stock() -> None:
    journal = [
        RESERVED,
        timed_out(f"{ID}:2"),
        WINDOW_OPENED,
        resolved_promise(f"{ID}:4", {"status": 402, "reason": DECLINED}),
        resolved_promise(f"{ID}:5", "inventory_1"),  # released
        resolved_promise(f"{ID}:6", "email_1"),
    ]

    assert replay(journal) == PurchaseEnded("declined", "inventory_1", reason=DECLINED)


def test_an_email_out_of_retries_after_a_decline_keeps_the_release() -> None:
    # Every email ends the same way: the purchase's state is what landed before it, and the
    # reason says the email may be missing.
    providers = FakeProviders(email_status=503)
    journal = [
        RESERVED,
        timed_out(f"{ID}:2"),
        WINDOW_OPENED,
        resolved_promise(f"{ID}:4", {"status": 402, "reason": DECLINED}),
        resolved_promise(f"{ID}:5", "inventory_1"),  # released
    ]

    ended = replay(journal, providers)

    unsent = "the email may not have been sent: /email/send: answered 503"
    assert ended == PurchaseEnded("declined", "inventory_1", reason=f"{DECLINED}; {unsent}")


def test_out_of_stock_ends_the_purchase_before_the_window() -> None:
    providers = FakeProviders(status=409)

    ended = replay([], providers)

    assert isinstance(ended, PurchaseEnded)
    assert ended.state == "out-of-stock"
    assert [path for _, path, _ in providers.calls] == ["/inventory/reserve", "/email/send"]


def test_a_reservation_out_of_retries_is_released_by_its_key() -> None:
    # Every attempt answers 503 (the sleeper makes the backoff instant): the reservation may have
    # landed, so the workflow releases whatever its key names, and opens no window.
    providers = FakeProviders(status=503)

    ended = replay([], providers)

    assert isinstance(ended, PurchaseEnded)
    assert ended.state == "inventory-unavailable"
    *attempts, release = providers.calls
    assert {(key, path) for key, path, _ in attempts} == {(f"{ID}:1", "/inventory/reserve")}
    assert len(attempts) == 9  # the first attempt and 8 retries
    assert release == (f"{ID}:2", "/inventory/cancel", {"reservation_key": f"{ID}:1"})


@pytest.mark.parametrize("body", NOT_THE_ANSWER.values(), ids=NOT_THE_ANSWER.keys())
def test_a_reservation_answered_without_its_answer_is_released_by_its_key(
    body: Callable[[int], httpx.Response],
) -> None:
    # A 200 that is not the inventory's answer says nothing about what it did: not a bug, but a
    # reservation that may have landed, retried under its key and then released by that key.
    providers = FakeProviders(body=body)

    ended = replay([], providers)

    assert isinstance(ended, PurchaseEnded)
    assert ended.state == "inventory-unavailable"
    *attempts, release = providers.calls
    assert {(key, path) for key, path, _ in attempts} == {(f"{ID}:1", "/inventory/reserve")}
    assert len(attempts) == 9  # the first attempt and 8 retries
    assert release == (f"{ID}:2", "/inventory/cancel", {"reservation_key": f"{ID}:1"})


def test_a_reservation_refused_with_a_page_instead_of_json_is_still_out_of_stock() -> None:
    providers = FakeProviders(status=409, body=NOT_THE_ANSWER["an HTML page"])

    ended = replay([], providers)

    assert isinstance(ended, PurchaseEnded)
    assert (ended.state, ended.reason) == (
        "out-of-stock",
        "/inventory/reserve refused: 409 Conflict",
    )
    assert [path for _, path, _ in providers.calls] == ["/inventory/reserve", "/email/send"]


def test_a_release_the_inventory_refuses_is_reported() -> None:
    unknown = "/inventory/cancel refused: 404 unknown inventory reservation 'inventory_1'"
    journal = [
        RESERVED,
        resolved_promise(f"{ID}:2", {"cancel_id": "c1"}),
        WINDOW_OPENED,
        resolved_promise(f"{ID}:4", {"status": 404, "reason": unknown}),
        resolved_promise(f"{ID}:5", "email_1"),
    ]

    # Still cancelled (nothing was charged), with the refusal for a person to look at.
    assert replay(journal) == PurchaseEnded("cancelled", "inventory_1", reason=unknown)


# -- personal data: the purchase names its buyer by reference ----------------------------------


@pytest.mark.parametrize(
    "not_a_reference",
    ["ada@example.com", "Ada Lovelace", "cus_ada@example.com", "5e0b82d4"],
    ids=["an email address", "a name", "an email after the prefix", "without cus_"],
)
def test_a_purchase_with_anything_but_a_customer_reference_is_refused(
    not_a_reference: str,
) -> None:
    # The gateway checks a purchase with this model, and a worker decodes its argument with it: a
    # name or an email address where the reference goes is refused by both.
    with pytest.raises(ValidationError) as refused:
        Purchase.model_validate(PURCHASE.model_dump() | {"customer_id": not_a_reference})

    assert [error["loc"] for error in refused.value.errors()] == [("customer_id",)]


def test_the_charge_and_the_email_name_the_buyer_by_reference() -> None:
    providers = FakeProviders()

    replay([RESERVED, timed_out(f"{ID}:2"), WINDOW_OPENED], providers)

    assert [(path, body) for _, path, body in providers.calls] == [
        (
            "/payment/charge",
            {
                "customer": CUSTOMER_ID,
                "amount_cents": 4900,
                "currency": "EUR",
                "description": f"purchase {ID}",
            },
        ),
        (
            "/email/send",
            {
                "to": CUSTOMER_ID,
                "subject": f"Purchase {ID} confirmed",
                "text": "Charged 49.00 EUR. Your items are on their way.",
            },
        ),
    ]

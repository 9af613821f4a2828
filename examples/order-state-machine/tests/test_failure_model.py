"""The failure model of the steps, without a server: a provider's 4xx is a value, never retried;
a 5xx, 408, 429, timeout or dropped connection raises, to be retried with the same key.

The steps run on a bare root context whose provider client answers from a handler, so every
request is counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
from order_state_machine.steps import (
    Providers,
    ProviderUnavailableError,
    Transition,
    charge,
    confirm,
    refund,
)
from order_state_machine.workflow import (
    STEP_RETRIES,
    WORKFLOW_RETRIES,
    Cancel,
    Item,
    Order,
    Ship,
)
from resonate.dependencies import DependencyMap
from resonate.testing import root_context

ORDER = Order(
    order_id="o-1",
    customer_id="cus_7c41e9a2",
    items=[Item(sku="BOOK-42", quantity=2, unit_price_cents=1250)],
    currency="EUR",
)
SHIP = Ship(carrier="DHL", tracking_number="JD014600006281")

type Handler = Callable[[httpx.Request], httpx.Response]


def run_charge(handler: Handler) -> tuple[Transition, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def counting(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    async def go() -> Transition:
        transport = httpx.MockTransport(counting)
        async with httpx.AsyncClient(transport=transport, base_url="http://providers") as client:
            deps = DependencyMap()
            deps.insert(Providers(client))
            return await charge(root_context(id="o-1", deps=deps), ORDER, SHIP)

    return asyncio.run(go()), seen


@pytest.mark.parametrize("status", [402, 400, 403, 404, 409, 422])
def test_a_refused_charge_is_a_decline_asked_for_once(status: int) -> None:
    declined, requests = run_charge(
        lambda _: httpx.Response(status, json={"error": "card_declined"})
    )

    assert (declined.state, declined.receipt) == ("declined", None)
    assert declined.reason is not None
    assert f"HTTP {status}" in declined.reason
    assert "card_declined" in declined.reason
    assert len(requests) == 1
    assert requests[0].headers["Idempotency-Key"] == "o-1"


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
def test_a_transient_answer_raises_to_be_retried(status: int) -> None:
    with pytest.raises(ProviderUnavailableError, match=f"HTTP {status}"):
        run_charge(lambda _: httpx.Response(status, json={"error": "try later"}))


@pytest.mark.parametrize(
    "failure",
    [httpx.ReadTimeout("slow"), httpx.ConnectError("refused"), httpx.RemoteProtocolError("cut")],
    ids=["timeout", "connection refused", "connection dropped"],
)
def test_a_charge_that_may_have_landed_raises_to_be_retried(failure: httpx.TransportError) -> None:
    # Not a decline: the provider may have charged. The retry sends the same key, and gets the
    # provider's original answer if it did.
    def fail(_: httpx.Request) -> httpx.Response:
        raise failure

    with pytest.raises(ProviderUnavailableError, match=type(failure).__name__):
        run_charge(fail)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (
            lambda _: httpx.Response(200, html="<html><body>Welcome to the gateway</body></html>"),
            "HTTP 200 without a readable 'id'",
        ),
        (lambda _: httpx.Response(200, json={"status": "ok"}), "HTTP 200 without a readable 'id'"),
        (  # httpx decodes the body as it builds the response, and raises DecodingError
            lambda _: httpx.Response(200, content=b"garbled", headers={"Content-Encoding": "gzip"}),
            "DecodingError",
        ),
    ],
    ids=["an HTML page", "JSON without the id", "a body that cannot be decoded"],
)
def test_a_charge_answered_without_its_answer_may_have_landed(answer: Handler, reason: str) -> None:
    # A 2xx that is not the provider's answer says nothing about what it did: not a decline, not
    # a bug in the step, but a charge that may have gone through, retried with the same key.
    with pytest.raises(ProviderUnavailableError, match=reason):
        run_charge(answer)


def test_a_charge_that_went_through_is_shipped() -> None:
    shipped, _ = run_charge(lambda _: httpx.Response(200, json={"id": "payment_1"}))

    assert (shipped.state, shipped.receipt, shipped.reason) == ("shipped", "payment_1", None)


def test_any_other_refusal_is_failed_not_retried() -> None:
    async def go() -> list[Transition]:
        transport = httpx.MockTransport(lambda _: httpx.Response(404, json={"error": "unknown"}))
        async with httpx.AsyncClient(transport=transport, base_url="http://providers") as client:
            deps = DependencyMap()
            deps.insert(Providers(client))
            ctx = root_context(id="o-2", deps=deps)
            return [
                await confirm(ctx, ORDER),
                await refund(ctx, ORDER, "payment_1", Cancel(reason="no")),
            ]

    assert [t.state for t in asyncio.run(go())] == ["failed", "failed"]


def test_the_retry_policies_are_chosen_on_purpose() -> None:
    # Steps: whole-second backoff, giving up after about a minute and a half.
    delays = [STEP_RETRIES.next(attempt) for attempt in range(1, 8)]
    assert delays == [2, 4, 8, 16, 30, 30, None]
    # The workflow: never retried (the SDK's default would retry it 30 times).
    assert WORKFLOW_RETRIES.next(1) is None

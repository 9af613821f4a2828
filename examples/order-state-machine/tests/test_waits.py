"""The workflow's waits, in process: the SDK's `local_resonate` with its manual clock, so that days
can pass between events in a fraction of a second, and the providers on `httpx.MockTransport`.

The test plays the gateway's part: it reads the status the workflow published, and resolves the
promise that status names with the event.
"""

from __future__ import annotations

import asyncio

import httpx
from order_state_machine.steps import Providers, StatusBoard
from order_state_machine.workflow import (
    ORDER_DEADLINE,
    WORKFLOW_RETRIES,
    Deliver,
    Item,
    Order,
    OrderStatus,
    Ship,
    order_lifecycle,
    status_id,
)
from resonate.error import ServerError
from resonate.observability import PromiseSettleReturned
from resonate.resonate import Resonate
from resonate.testing import FakeClock, local_resonate
from resonate.types import Value

ORDER = Order(
    order_id="o-1",
    customer_id="cus_7c41e9a2",
    items=[Item(sku="BOOK-42", quantity=2, unit_price_cents=1250)],
    currency="EUR",
)
DAY = 24 * 3600


async def published(resonate: Resonate, seq: int, settled: asyncio.Event) -> OrderStatus:
    """The order's `seq`th status, once the workflow has published it (each time a step settles,
    look again: no timer)."""
    while True:
        settled.clear()
        try:
            record = await resonate.promises.get(status_id(ORDER.order_id, seq))
            if record.state == "resolved":
                return OrderStatus.model_validate(record.value.data)
        except ServerError:
            pass  # not created yet
        await asyncio.wait_for(settled.wait(), 10)


def test_an_event_days_after_the_last_one_still_moves_the_order() -> None:
    # The warehouse ships two days after the order was confirmed, the carrier delivers two days
    # after that: well inside the order's 30 days, and each past the SDK's one-day default.
    calls: list[str] = []

    def provider(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(200, json={"id": f"receipt_{len(calls)}"})

    async def go() -> str:
        clock = FakeClock(1_800_000_000_000)
        settled = asyncio.Event()

        def observe(event: object) -> None:
            if isinstance(event, PromiseSettleReturned):
                settled.set()

        resonate = local_resonate(clock=clock, observer=observe)
        try:
            transport = httpx.MockTransport(provider)
            async with httpx.AsyncClient(transport=transport, base_url="http://providers") as c:
                resonate.with_dependency(Providers(c))
                resonate.with_dependency(StatusBoard(resonate))
                resonate.register(order_lifecycle, retry_policy=WORKFLOW_RETRIES)
                # Started as the gateway starts it: with the order's deadline.
                handle = resonate.options(timeout=ORDER_DEADLINE).run(
                    ORDER.order_id, order_lifecycle, ORDER
                )
                for seq, event in [
                    (1, Ship(carrier="DHL", tracking_number="JD01")),
                    (2, Deliver()),
                ]:
                    waiting = await published(resonate, seq, settled)
                    assert waiting.waiting_on is not None
                    clock.advance(seconds=2 * DAY)
                    answer = await resonate.promises.resolve(
                        waiting.waiting_on, Value(data=event.model_dump(mode="json"))
                    )
                    assert answer.state == "resolved"  # the wait was still open
                state: str = await asyncio.wait_for(handle.result(), 10)
                return state
        finally:
            await resonate.stop()

    assert asyncio.run(go()) == "delivered"
    assert calls == ["/email/send", "/payment/charge", "/push/send"]

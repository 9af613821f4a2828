"""The payments provider's webhook sender: signatures, re-delivery, duplicates, seeded order."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cookbook.sandbox import create_app
from cookbook.sandbox.webhooks import SIGNATURE_HEADER, signature_header

pytestmark = pytest.mark.anyio

SECRET = "whsec_test_0123456789abcdef"
URL = "http://merchant.test/webhooks"

type Answer = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Merchant:
    """The receiving end: records every request, answers with `answer` (200 by default)."""

    def __init__(self) -> None:
        self.received: list[httpx.Request] = []
        self.answer: Answer = lambda _: httpx.Response(200)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.received.append(request)
        return self.answer(request)

    def event_ids(self) -> list[str]:
        return [json.loads(r.content)["id"] for r in self.received]


@pytest.fixture
def merchant() -> Merchant:
    return Merchant()


@pytest.fixture
async def sandbox(tmp_path: Path, merchant: Merchant) -> AsyncIterator[httpx.AsyncClient]:
    async with InProcessSandbox(tmp_path / "sandbox.db", merchant) as client:
        yield client


class InProcessSandbox:
    """A sandbox app in process, its webhooks delivered to `merchant` instead of the network."""

    def __init__(self, db: Path, merchant: Merchant | Callable[..., Any]) -> None:
        self.app = create_app(db)
        handler = merchant.handle if isinstance(merchant, Merchant) else merchant
        self.app.state.webhooks.transport = httpx.MockTransport(handler)
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://sandbox"
        )

    async def __aenter__(self) -> httpx.AsyncClient:
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()
        await self.app.state.webhooks.close()
        self.app.state.store.close()


async def register(sandbox: httpx.AsyncClient, **options: Any) -> dict[str, Any]:
    response = await sandbox.post(
        "/webhooks/endpoints", json={"url": URL, "secret": SECRET, **options}
    )
    assert response.status_code == 201, response.text
    endpoint: dict[str, Any] = response.json()
    return endpoint


async def emit(sandbox: httpx.AsyncClient, **request: Any) -> list[dict[str, Any]]:
    response = await sandbox.post("/webhooks/events", json=request)
    assert response.status_code == 202, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


async def idle(sandbox: httpx.AsyncClient) -> None:
    answer = (await sandbox.get("/webhooks/idle", params={"wait": 10})).json()
    assert answer == {"idle": True, "pending": 0}


def paid(n: int) -> dict[str, Any]:
    return {"id": f"evt_{n:04d}", "type": "payment_succeeded", "data": {"order_id": f"o{n}"}}


async def test_a_delivery_is_signed_over_timestamp_and_body(
    sandbox: httpx.AsyncClient, merchant: Merchant
) -> None:
    await register(sandbox)
    before = int(time.time())

    await emit(sandbox, events=[paid(1)])
    await idle(sandbox)

    [request] = merchant.received
    assert (request.method, str(request.url)) == ("POST", URL)
    assert json.loads(request.content) == {
        "id": "evt_0001",
        "type": "payment_succeeded",
        "created": pytest.approx(before, abs=5),
        "data": {"order_id": "o1"},
    }
    timestamp, signature = dict(
        part.split("=", 1) for part in request.headers[SIGNATURE_HEADER].split(",")
    ).values()
    assert before <= int(timestamp) <= time.time()
    expected = hmac.new(
        SECRET.encode(), timestamp.encode() + b"." + request.content, hashlib.sha256
    ).hexdigest()
    assert signature == expected
    assert request.headers[SIGNATURE_HEADER] == signature_header(
        SECRET, request.content, int(timestamp)
    )


async def test_non_2xx_and_no_answer_are_delivered_again_until_taken(
    sandbox: httpx.AsyncClient, merchant: Merchant
) -> None:
    answers = iter([500, "connect", 400, 204])

    def answer(request: httpx.Request) -> httpx.Response:
        status = next(answers)
        if status == "connect":
            raise httpx.ConnectError("refused", request=request)
        assert isinstance(status, int)
        return httpx.Response(status)

    merchant.answer = answer
    await register(sandbox, retry_delay_ms=1)

    await emit(sandbox, events=[paid(1)])
    await idle(sandbox)

    deliveries = (await sandbox.get("/webhooks/deliveries")).json()
    assert [(d["attempt"], d["outcome"], d["status_code"], d["error"]) for d in deliveries] == [
        (1, "refused", 500, None),
        (2, "unreachable", None, "ConnectError"),
        (3, "refused", 400, None),
        (4, "delivered", 204, None),
    ]
    # Each attempt is signed when it is sent, and each signature verifies.
    for request in merchant.received:
        timestamp = int(request.headers[SIGNATURE_HEADER].split(",")[0].removeprefix("t="))
        assert request.headers[SIGNATURE_HEADER] == signature_header(
            SECRET, request.content, timestamp
        )
    event = (await sandbox.get("/webhooks/events/evt_0001")).json()
    assert (event["delivered"], event["attempts"]) == (1, 4)


async def test_a_delivery_that_keeps_failing_is_given_up_after_max_attempts(
    sandbox: httpx.AsyncClient, merchant: Merchant
) -> None:
    merchant.answer = lambda _: httpx.Response(503)
    await register(sandbox, retry_delay_ms=1, max_attempts=3)

    await emit(sandbox, events=[paid(1)])
    await idle(sandbox)

    assert len(merchant.received) == 3
    assert (await sandbox.get("/webhooks/events/evt_0001")).json()["delivered"] == 0


async def test_a_taken_event_is_sometimes_delivered_again(
    sandbox: httpx.AsyncClient, merchant: Merchant
) -> None:
    await register(sandbox)

    emitted = await emit(sandbox, events=[paid(n) for n in range(30)], copies_min=1, copies_max=3)
    await idle(sandbox)

    copies = {e["id"]: e["copies"] for e in emitted}
    assert set(copies.values()) == {1, 2, 3}
    received = merchant.event_ids()
    assert {i: received.count(i) for i in copies} == copies
    # Every copy is the same event, byte for byte: the receiver must tell them apart by id.
    bodies = {r.content for r in merchant.received if json.loads(r.content)["id"] == "evt_0000"}
    assert len(bodies) == 1


async def plan(tmp_path: Path, seed: int) -> list[str]:
    merchant = Merchant()
    async with InProcessSandbox(
        tmp_path / f"sandbox-{seed}-{time.monotonic_ns()}.db", merchant
    ) as box:
        await register(box, concurrency=1)
        await emit(
            box,
            events=[paid(n) for n in range(40)],
            copies_min=1,
            copies_max=2,
            shuffle=True,
            seed=seed,
        )
        await idle(box)
    return merchant.event_ids()


async def test_the_out_of_order_plan_is_seeded(tmp_path: Path) -> None:
    first, again, other = await plan(tmp_path, 7), await plan(tmp_path, 7), await plan(tmp_path, 8)

    assert first == again
    assert first != other
    in_emitted_order = [f"evt_{n:04d}" for n in range(40)]
    assert first[:40] != in_emitted_order
    assert sorted(set(first)) == in_emitted_order


async def test_deliveries_overlap_up_to_the_endpoints_concurrency(tmp_path: Path) -> None:
    in_flight = peak = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return httpx.Response(200)

    async with InProcessSandbox(tmp_path / "sandbox.db", slow) as box:
        await register(box, concurrency=3)
        await emit(box, events=[paid(n) for n in range(12)])
        await idle(box)

    assert peak == 3


async def test_the_secret_is_never_listed_and_bad_requests_are_422(
    sandbox: httpx.AsyncClient,
) -> None:
    endpoint = await register(sandbox)
    listed = (await sandbox.get("/webhooks/endpoints")).json()
    assert listed == [endpoint]
    assert SECRET not in json.dumps(listed)

    short_secret = await sandbox.post("/webhooks/endpoints", json={"url": URL, "secret": "x"})
    bad_port = await sandbox.post(
        "/webhooks/endpoints", json={"url": "http://host:12ab/", "secret": SECRET}
    )
    no_events = await sandbox.post("/webhooks/events", json={"events": []})
    copies = await sandbox.post(
        "/webhooks/events", json={"events": [paid(1)], "copies_min": 3, "copies_max": 2}
    )
    bad_id = await sandbox.post("/webhooks/events", json={"events": [{**paid(1), "id": "evt:1"}]})
    problems = (short_secret, bad_port, no_events, copies, bad_id)
    assert [r.status_code for r in problems] == [422] * 5

    await emit(sandbox, events=[paid(1)])
    again = await sandbox.post("/webhooks/events", json={"events": [paid(1)]})
    assert again.status_code == 409
    assert (await sandbox.get("/webhooks/events/evt_none")).status_code == 404
    assert (await sandbox.delete(f"/webhooks/endpoints/{endpoint['id']}")).status_code == 200
    assert (await sandbox.delete(f"/webhooks/endpoints/{endpoint['id']}")).status_code == 404


async def test_events_with_no_endpoint_are_recorded_and_not_delivered(
    sandbox: httpx.AsyncClient, merchant: Merchant
) -> None:
    await emit(sandbox, events=[paid(1)])
    await idle(sandbox)

    assert merchant.received == []
    assert (await sandbox.get("/webhooks/events/evt_0001")).json()["delivered"] == 0

"""The compensation logic of `book_trip`, in process: an in-process Resonate and fake providers.

The end-to-end tests (test_saga.py) drive the real stack through faults the sandbox can inject.
These cover what would take half an hour there: a cancellation that keeps failing through every
retry of `CANCEL_RETRIES` (the test's Resonate sleeps no time between retries).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest
from resonate.testing import local_resonate
from saga.steps import Compensation, Providers
from saga.workflow import WORKFLOW_RETRIES, Trip, TripRolledBackError, book_trip

TRIP = Trip.model_validate(
    {
        "trip_id": "trip-1",
        "traveller": {"name": "Ada Lovelace", "email": "ada@example.com"},
        "flight": {"origin": "LHR", "destination": "LIS", "departs": "2030-05-01"},
        "hotel": {"city": "Lisbon", "check_in": "2030-05-01", "nights": 3},
        "car": {"pickup": "Lisbon airport", "days": 3},
    }
)


@dataclass
class FakeProviders:
    """Providers that answer by rule: `answer(path) -> (status, body)`; every call is recorded."""

    answer: Callable[[str, dict[str, str]], tuple[int, dict[str, str]]]
    calls: list[tuple[str, dict[str, str], str]] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.calls.append((request.url.path, body, request.headers["Idempotency-Key"]))
        status, reply = self.answer(request.url.path, body)
        return httpx.Response(status, json=reply)


def run_trip(providers: FakeProviders) -> TripRolledBackError:
    async def run() -> TripRolledBackError:
        resonate = local_resonate()
        try:
            transport = httpx.MockTransport(providers.handle)
            async with httpx.AsyncClient(transport=transport, base_url="http://providers") as c:
                resonate.with_dependency(Providers(c))
                resonate.register(book_trip, retry_policy=WORKFLOW_RETRIES)
                with pytest.raises(TripRolledBackError) as failed:
                    await asyncio.wait_for(resonate.run("trip-1", book_trip, TRIP).result(), 30)
                return failed.value
        finally:
            await resonate.stop()

    return asyncio.run(run())


def test_a_cancellation_that_keeps_failing_is_reported_and_the_others_still_run() -> None:
    def answer(path: str, body: dict[str, str]) -> tuple[int, dict[str, str]]:
        if path == "/car/reserve":
            return 409, {"error": "no cars left"}
        if path == "/hotel/cancel":
            return 503, {"error": "down"}
        if path.endswith("/reserve"):
            return 200, {"id": path.split("/")[1] + "_1"}
        return 200, {"id": body["reservation_id"], "status": "cancelled"}

    providers = FakeProviders(answer)

    failed = run_trip(providers)

    paths = [path for path, _, _ in providers.calls]
    assert paths.count("/hotel/cancel") == 13  # the first attempt and 12 retries
    assert paths[-1] == "/flight/cancel"
    assert failed.compensations == [
        Compensation(
            "hotel", "unreachable", "hotel_1", "/hotel/cancel: HTTP 503 Service Unavailable: down"
        ),
        Compensation("flight", "cancelled", "flight_1"),
    ]
    assert failed.left_in_place == failed.compensations[:1]


def test_a_reservation_that_kept_failing_is_cancelled_by_its_key() -> None:
    def answer(path: str, body: dict[str, str]) -> tuple[int, dict[str, str]]:
        if path == "/hotel/reserve":
            return 504, {"error": "gateway timeout"}
        if path == "/hotel/cancel":  # the provider had booked it after all
            return 200, {"id": "hotel_1", "status": "cancelled"}
        if path.endswith("/reserve"):
            return 200, {"id": path.split("/")[1] + "_1"}
        return 200, {"id": body["reservation_id"], "status": "cancelled"}

    providers = FakeProviders(answer)

    failed = run_trip(providers)

    reserve_keys = {key for path, _, key in providers.calls if path == "/hotel/reserve"}
    cancels = [(path, body) for path, body, _ in providers.calls if path.endswith("/cancel")]
    assert len(reserve_keys) == 1  # every attempt carried the same key
    assert cancels == [
        ("/hotel/cancel", {"reservation_key": reserve_keys.pop()}),
        ("/flight/cancel", {"reservation_id": "flight_1"}),
    ]
    assert failed.failed == "hotel"
    assert failed.compensations == [
        Compensation("hotel", "cancelled", "hotel_1"),
        Compensation("flight", "cancelled", "flight_1"),
    ]
    assert failed.left_in_place == []

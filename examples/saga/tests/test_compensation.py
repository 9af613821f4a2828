"""The compensation logic of `book_trip`, in process: an in-process Resonate and fake providers.

The end-to-end tests (test_saga.py) drive the real stack through faults the sandbox can inject.
These cover what would take half an hour there: a cancellation that keeps failing through every
retry of `CANCEL_RETRIES` (the test's Resonate sleeps no time between retries); and what the
sandbox cannot answer: a 2xx that is not the provider's answer, and a step with a bug in it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest
import saga.workflow
from resonate.context import Context
from resonate.testing import local_resonate
from saga.steps import Compensation, Providers, Refused, Reservation, cancel, reserve
from saga.workflow import (
    CANCEL_RETRIES,
    RESERVE_RETRIES,
    WORKFLOW_RETRIES,
    Trip,
    TripRolledBackError,
    book_trip,
)

TRIP = Trip.model_validate(
    {
        "trip_id": "trip-1",
        "traveller_id": "cus_7c41e9a2",
        "flight": {"origin": "LHR", "destination": "LIS", "departs": "2030-05-01"},
        "hotel": {"city": "Lisbon", "check_in": "2030-05-01", "nights": 3},
        "car": {"pickup": "Lisbon airport", "days": 3},
    }
)


type Reply = dict[str, str] | str | bytes


@dataclass
class FakeProviders:
    """Providers that answer by rule: `answer(path) -> (status, body)`; every call is recorded.

    A dict is answered as JSON, a str as an HTML page, and bytes as they are under
    `Content-Encoding: gzip`: a garbled body that cannot even be decoded."""

    answer: Callable[[str, dict[str, str]], tuple[int, Reply]]
    calls: list[tuple[str, dict[str, str], str]] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.calls.append((request.url.path, body, request.headers["Idempotency-Key"]))
        status, reply = self.answer(request.url.path, body)
        if isinstance(reply, str):
            return httpx.Response(status, text=reply, headers={"Content-Type": "text/html"})
        if isinstance(reply, bytes):
            return httpx.Response(status, content=reply, headers={"Content-Encoding": "gzip"})
        return httpx.Response(status, json=reply)


def booked_or_cancelled(path: str, body: dict[str, str]) -> tuple[int, dict[str, str]]:
    """What a provider that works answers (a key it never booked under is voided)."""
    if path.endswith("/reserve"):
        return 200, {"id": path.split("/")[1] + "_1"}
    if "reservation_key" in body:
        return 200, {"status": "voided"}
    return 200, {"id": body["reservation_id"], "status": "cancelled"}


PROXY_PAGE = "<html><body><h1>200 OK</h1>Welcome to the gateway</body></html>"


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


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (PROXY_PAGE, "/hotel/reserve: HTTP 200 without a readable 'id'"),
        (b"not gzip", "/hotel/reserve: DecodingError"),
    ],
    ids=["an HTML page", "a body that cannot be decoded"],
)
def test_a_reservation_answered_without_its_answer_is_undone_by_its_key(
    reply: Reply, reason: str
) -> None:
    # A 200 whose body is not the provider's answer says nothing about what the provider did: it
    # is retried like a timeout, and then cancelled by its key, with the flight booked before it.
    def answer(path: str, body: dict[str, str]) -> tuple[int, Reply]:
        if path == "/hotel/reserve":
            return 200, reply
        if path == "/hotel/cancel":  # the provider had booked it
            return 200, {"id": "hotel_1", "status": "cancelled"}
        return booked_or_cancelled(path, body)

    providers = FakeProviders(answer)

    failed = run_trip(providers)

    reserve_keys = [key for path, _, key in providers.calls if path == "/hotel/reserve"]
    cancels = [(path, body) for path, body, _ in providers.calls if path.endswith("/cancel")]
    assert len(reserve_keys) == 1 + RESERVE_RETRIES.max_retries
    assert len(set(reserve_keys)) == 1
    assert cancels == [
        ("/hotel/cancel", {"reservation_key": reserve_keys[0]}),
        ("/flight/cancel", {"reservation_id": "flight_1"}),
    ]
    assert (failed.failed, failed.reason) == ("hotel", reason)
    assert failed.compensations == [
        Compensation("hotel", "cancelled", "hotel_1"),
        Compensation("flight", "cancelled", "flight_1"),
    ]


def test_a_cancellation_answered_with_a_page_instead_of_json_does_not_stop_the_others() -> None:
    def answer(path: str, body: dict[str, str]) -> tuple[int, Reply]:
        if path == "/car/reserve":
            return 409, {"error": "no cars left"}
        if path == "/hotel/cancel":
            return 200, PROXY_PAGE
        return booked_or_cancelled(path, body)

    providers = FakeProviders(answer)

    failed = run_trip(providers)

    paths = [path for path, _, _ in providers.calls]
    assert paths.count("/hotel/cancel") == 1 + CANCEL_RETRIES.max_retries
    assert paths[-1] == "/flight/cancel"
    assert failed.compensations == [
        Compensation(
            "hotel", "unreachable", "hotel_1", "/hotel/cancel: HTTP 200 without a readable 'status'"
        ),
        Compensation("flight", "cancelled", "flight_1"),
    ]
    assert failed.left_in_place == failed.compensations[:1]


def test_a_step_with_a_bug_still_rolls_back_what_was_booked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A bug is not a provider's answer, but it fails the trip all the same: what was booked before
    # it is undone, the buggy step's own call by its key (here it never went out: voided), and a
    # bug in one cancellation does not stop the next.
    async def buggy_reserve(ctx: Context, provider: str, request: dict[str, str]) -> str | Refused:
        if provider == "car":
            raise RuntimeError("a bug in the car step")
        return await reserve(ctx, provider, request)

    async def buggy_cancel(ctx: Context, reservation: Reservation) -> Compensation:
        if reservation.provider == "hotel":
            raise RuntimeError("a bug in the hotel's cancellation")
        return await cancel(ctx, reservation)

    monkeypatch.setattr(saga.workflow, "reserve", buggy_reserve)
    monkeypatch.setattr(saga.workflow, "cancel", buggy_cancel)
    providers = FakeProviders(booked_or_cancelled)

    failed = run_trip(providers)

    assert [path for path, _, _ in providers.calls] == [
        "/flight/reserve",
        "/hotel/reserve",
        "/car/cancel",
        "/flight/cancel",
    ]
    assert (failed.failed, failed.reason) == ("car", "RuntimeError('a bug in the car step')")
    assert failed.compensations == [
        Compensation("car", "voided"),
        Compensation(
            "hotel", "unreachable", "hotel_1", 'RuntimeError("a bug in the hotel\'s cancellation")'
        ),
        Compensation("flight", "cancelled", "flight_1"),
    ]


def test_a_bug_after_the_reservation_landed_cancels_it_by_its_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The hotel step books, then fails with a bug before it returns the id: the provider holds a
    # reservation the workflow never learnt of. It is cancelled by the key the step sent.
    async def reserve_then_fail(
        ctx: Context, provider: str, request: dict[str, str]
    ) -> str | Refused:
        booked = await reserve(ctx, provider, request)
        if provider == "hotel":
            raise RuntimeError(f"a bug after booking {booked}")
        return booked

    def answer(path: str, body: dict[str, str]) -> tuple[int, dict[str, str]]:
        if path == "/hotel/cancel" and body.get("reservation_key"):  # what the key booked
            return 200, {"id": "hotel_1", "status": "cancelled"}
        return booked_or_cancelled(path, body)

    monkeypatch.setattr(saga.workflow, "reserve", reserve_then_fail)
    providers = FakeProviders(answer)

    failed = run_trip(providers)

    reserve_keys = {key for path, _, key in providers.calls if path == "/hotel/reserve"}
    cancels = [(path, body) for path, body, _ in providers.calls if path.endswith("/cancel")]
    assert len(reserve_keys) == 1  # every retry of the step sent the same key
    assert cancels == [
        ("/hotel/cancel", {"reservation_key": reserve_keys.pop()}),
        ("/flight/cancel", {"reservation_id": "flight_1"}),
    ]
    assert (failed.failed, failed.reason) == (
        "hotel",
        "RuntimeError('a bug after booking hotel_1')",
    )
    assert failed.compensations == [
        Compensation("hotel", "cancelled", "hotel_1"),
        Compensation("flight", "cancelled", "flight_1"),
    ]
    assert failed.left_in_place == []

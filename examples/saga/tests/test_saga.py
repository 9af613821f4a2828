"""saga end to end: a real dev server, worker and gateway process, and the provider sandbox.

Every test books through the gateway's HTTP API, then asserts on what the receiving systems
recorded: the sandbox (each reservation and cancellation, with timestamps) and the dev server
(which executions and steps exist). One stack serves the whole module; each test uses its own
trip ids, and the sandbox's records are read by idempotency-key prefix, i.e. by trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cookbook.stack import devserver_process, gateway_process, url_of, worker_process
from cookbook.testing.bodies import REMOVED, as_json, changed
from cookbook.testing.fixtures import RunningDevServer, RunningSandbox
from resonate.resonate import Resonate
from resonate.types import Value
from saga.workflow import TripRolledBackError


@dataclass(frozen=True)
class SagaStack:
    gateway: httpx.Client
    server: RunningDevServer
    sandbox: RunningSandbox

    def wait_settled(self, trip_id: str) -> dict[str, Any]:
        """Await the execution (a Resonate listener, not a poll), then ask the gateway."""

        async def settled() -> None:
            client = Resonate(url=self.server.url, group="saga-tests")
            try:
                handle = await client.get(trip_id)
                with contextlib.suppress(TripRolledBackError):  # a rolled-back trip is settled too
                    await asyncio.wait_for(handle.result(), 30)
            finally:
                await client.stop()

        asyncio.run(settled())
        status: dict[str, Any] = self.gateway.get(f"/trips/{trip_id}").json()
        return status

    def arm_fault(self, trip_id: str, **fault: Any) -> None:
        """Make one simulated provider fail, for this trip's calls only."""
        response = httpx.post(
            f"{self.sandbox.url}/_admin/faults", json={**fault, "key_prefix": f"{trip_id}:"}
        )
        response.raise_for_status()

    def promise_count(self) -> int:
        promises: list[object] = self.server.state()["promises"]  # type: ignore[assignment]
        return len(promises)


@pytest.fixture(scope="module")
def stack(sandbox: RunningSandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SagaStack]:
    # Module-scoped (one start-up for ~50 tests); the processes are stopped by pid at the end.
    data_dir = tmp_path_factory.mktemp("devserver")
    with devserver_process(data_dir) as server:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")}
        env = {**inherited, "RESONATE_URL": url_of(server), "PROVIDER_API_URL": sandbox.url}
        with (
            worker_process("saga.worker", env),
            gateway_process("saga.gateway", env) as gateway,
            httpx.Client(base_url=url_of(gateway), timeout=10) as client,
        ):
            yield SagaStack(client, RunningDevServer(server, data_dir, False), sandbox)


def trip_request() -> dict[str, Any]:
    return {
        "trip_id": f"test-{secrets.token_hex(4)}",
        "traveller": {"name": "Zoë Ångström", "email": "zoe@example.com"},
        "flight": {"origin": "LHR", "destination": "LIS", "departs": "2030-05-01"},
        "hotel": {"city": "Lisbon", "check_in": "2030-05-01", "nights": 3},
        "car": {"pickup": "Lisbon airport", "days": 3},
    }


def calls(stack: SagaStack, trip_id: str) -> list[tuple[str, str, int]]:
    """Every request the providers received for this trip: (provider, action, status code)."""
    requests = stack.sandbox.records.requests(key_prefix=f"{trip_id}:")
    return [(r.provider, r.action, r.status_code) for r in requests]


# -- the saga --------------------------------------------------------------------------------


def test_books_flight_hotel_and_car_once(stack: SagaStack) -> None:
    trip = trip_request()

    accepted = stack.gateway.post("/trips", json=trip)

    assert accepted.status_code == 202
    assert accepted.headers["Location"] == f"/trips/{trip['trip_id']}"
    assert accepted.json() == {
        "trip_id": trip["trip_id"],
        "status_url": accepted.headers["Location"],
    }
    status = stack.wait_settled(trip["trip_id"])
    effects = stack.sandbox.records.effects(key_prefix=f"{trip['trip_id']}:")
    assert [(e.provider, e.action) for e in effects] == [
        ("flight", "reserve"),
        ("hotel", "reserve"),
        ("car", "reserve"),
    ]
    assert status == {
        "trip_id": trip["trip_id"],
        "status": "booked",
        "confirmations": {e.provider: e.resource_id for e in effects},
    }
    assert effects[0].body == {"traveller": "Zoë Ångström", **trip["flight"]}
    assert calls(stack, trip["trip_id"]) == [
        ("flight", "reserve", 200),
        ("hotel", "reserve", 200),
        ("car", "reserve", 200),
    ]


def test_car_refusal_cancels_hotel_then_flight_exactly_once(stack: SagaStack) -> None:
    trip = trip_request()
    stack.arm_fault(trip["trip_id"], provider="car", action="reserve", status=409)

    assert stack.gateway.post("/trips", json=trip).status_code == 202
    status = stack.wait_settled(trip["trip_id"])

    effects = stack.sandbox.records.effects(key_prefix=f"{trip['trip_id']}:")
    flight, hotel, hotel_cancel, flight_cancel = effects
    assert [(e.provider, e.action) for e in effects] == [
        ("flight", "reserve"),
        ("hotel", "reserve"),
        ("hotel", "cancel"),
        ("flight", "cancel"),
    ]
    assert hotel_cancel.body == {"reservation_id": hotel.resource_id}
    assert flight_cancel.body == {"reservation_id": flight.resource_id}
    assert hotel_cancel.finished_at <= flight_cancel.started_at  # newest first, one at a time
    assert set(stack.sandbox.records.effect_counts_by_key(f"{trip['trip_id']}:").values()) == {1}
    # A refusal is final: the car provider was asked once, not retried.
    assert [c for c in calls(stack, trip["trip_id"]) if c[0] == "car"] == [("car", "reserve", 409)]
    assert status == {
        "trip_id": trip["trip_id"],
        "status": "rolled_back",
        "failed": "car",
        "reason": "HTTP 409 Conflict: injected failure",
        "cancelled": [
            {"provider": "hotel", "reservation_id": hotel.resource_id},
            {"provider": "flight", "reservation_id": flight.resource_id},
        ],
    }


def test_transient_hotel_failure_is_retried_without_rebooking_the_flight(stack: SagaStack) -> None:
    trip = trip_request()
    stack.arm_fault(trip["trip_id"], provider="hotel", action="reserve", mode="fail_times", times=2)

    assert stack.gateway.post("/trips", json=trip).status_code == 202

    assert stack.wait_settled(trip["trip_id"])["status"] == "booked"
    assert calls(stack, trip["trip_id"]) == [
        ("flight", "reserve", 200),
        ("hotel", "reserve", 503),
        ("hotel", "reserve", 503),
        ("hotel", "reserve", 200),
        ("car", "reserve", 200),
    ]
    effects = stack.sandbox.records.effects(key_prefix=f"{trip['trip_id']}:")
    assert [(e.provider, e.action) for e in effects] == [
        ("flight", "reserve"),
        ("hotel", "reserve"),
        ("car", "reserve"),
    ]


def test_provider_down_for_good_rolls_back_once_the_retries_run_out(stack: SagaStack) -> None:
    trip = trip_request()
    stack.arm_fault(trip["trip_id"], provider="hotel", action="reserve", status=503)

    assert stack.gateway.post("/trips", json=trip).status_code == 202
    status = stack.wait_settled(trip["trip_id"])

    assert status["status"] == "rolled_back"
    assert status["failed"] == "hotel"
    assert calls(stack, trip["trip_id"]) == [
        ("flight", "reserve", 200),
        *[("hotel", "reserve", 503)] * 5,  # the first attempt and 4 retries
        ("flight", "cancel", 200),
    ]


def test_twenty_identical_posts_start_one_execution(stack: SagaStack) -> None:
    trip = trip_request()

    async def post_all() -> list[int]:
        async with httpx.AsyncClient(base_url=stack.gateway.base_url) as client:
            responses = await asyncio.gather(*(client.post("/trips", json=trip) for _ in range(20)))
        return [r.status_code for r in responses]

    assert asyncio.run(post_all()) == [202] * 20
    assert stack.wait_settled(trip["trip_id"])["status"] == "booked"

    execution = stack.server.state(trip["trip_id"])
    promises: list[dict[str, Any]] = execution["promises"]  # type: ignore[assignment]
    steps = [f"{trip['trip_id']}:{n}" for n in (1, 2, 3)]
    assert sorted(p["id"] for p in promises) == [trip["trip_id"], *steps]
    assert calls(stack, trip["trip_id"]) == [
        ("flight", "reserve", 200),
        ("hotel", "reserve", 200),
        ("car", "reserve", 200),
    ]


def test_same_trip_id_with_a_different_request_is_409(stack: SagaStack) -> None:
    trip = trip_request()
    changed = copy.deepcopy(trip)
    changed["hotel"]["nights"] = 5
    assert stack.gateway.post("/trips", json=trip).status_code == 202

    conflict = stack.gateway.post("/trips", json=changed)

    assert conflict.status_code == 409
    assert "exists with a different request" in conflict.json()["detail"]
    assert stack.wait_settled(trip["trip_id"])["status"] == "booked"
    hotel = stack.sandbox.records.effects(key_prefix=f"{trip['trip_id']}:2")
    assert [e.body["nights"] for e in hotel] == [3]
    # The original request, posted again after the trip settled, attaches: nothing new runs.
    assert stack.gateway.post("/trips", json=trip).status_code == 202
    assert len(calls(stack, trip["trip_id"])) == 3


def test_unknown_trips_are_404(stack: SagaStack) -> None:
    assert stack.gateway.get(f"/trips/no-such-trip-{secrets.token_hex(4)}").status_code == 404

    # A promise that is not a trip booking is not shown as one.
    other = f"not-a-trip-{secrets.token_hex(4)}"

    async def create_promise() -> None:
        client = Resonate(url=stack.server.url, group="saga-tests")
        try:
            in_a_minute = int(time.time() * 1000) + 60_000
            await client.promises.create(other, in_a_minute, Value(data={"not": "a trip"}), {})
        finally:
            await client.stop()

    asyncio.run(create_promise())
    assert stack.gateway.get(f"/trips/{other}").status_code == 404
    # A step's id (`<trip>:<n>`) is not a trip id at all.
    assert stack.gateway.get("/trips/trip:1").status_code == 422


# -- hostile input -----------------------------------------------------------------------------


def _changed(path: str, value: Any) -> dict[str, Any]:
    """A valid trip request with one field set to `value`, or removed (`REMOVED`)."""
    return changed(trip_request(), path, value)


HOSTILE: dict[str, bytes] = {
    "empty object": as_json({}),
    "array": as_json([trip_request()]),
    "null": as_json(None),
    "string": as_json("LHR-LIS"),
    "number": as_json(42),
    "truncated json": as_json(trip_request())[:40],
    "empty body": b"",
    "missing trip_id": as_json(_changed("trip_id", REMOVED)),
    "missing traveller": as_json(_changed("traveller", REMOVED)),
    "missing car": as_json(_changed("car", REMOVED)),
    "missing flight date": as_json(_changed("flight.departs", REMOVED)),
    "trip_id with colon": as_json(_changed("trip_id", "trip:1")),
    "trip_id empty": as_json(_changed("trip_id", "")),
    "trip_id too long": as_json(_changed("trip_id", "t" * 65)),
    "trip_id number": as_json(_changed("trip_id", 123)),
    "trip_id null": as_json(_changed("trip_id", None)),
    "trip_id path traversal": as_json(_changed("trip_id", "../../etc/passwd")),
    "trip_id unicode": as_json(_changed("trip_id", "trïp-1")),
    "trip_id newline": as_json(_changed("trip_id", "trip-1\n")),
    "name huge": as_json(_changed("traveller.name", "A" * 10_000)),
    "name empty": as_json(_changed("traveller.name", "")),
    "name only spaces": as_json(_changed("traveller.name", "   ")),
    "name NUL byte": as_json(_changed("traveller.name", "Ada\x00Lovelace")),
    "name bidi override": as_json(_changed("traveller.name", "Ada \u202eecalevoL")),
    "name lone surrogate": as_json(_changed("traveller.name", "Ada \ud800")),
    "name array": as_json(_changed("traveller.name", ["Ada"])),
    "traveller array": as_json(_changed("traveller", ["Ada", "ada@example.com"])),
    "email without @": as_json(_changed("traveller.email", "ada.example.com")),
    "airport lowercase": as_json(_changed("flight.origin", "lhr")),
    "airport number": as_json(_changed("flight.origin", 123)),
    "date impossible": as_json(_changed("flight.departs", "2030-02-30")),
    "date words": as_json(_changed("flight.departs", "next tuesday")),
    "nights negative": as_json(_changed("hotel.nights", -1)),
    "nights zero": as_json(_changed("hotel.nights", 0)),
    "nights huge": as_json(_changed("hotel.nights", 10**12)),
    "nights fraction": as_json(_changed("hotel.nights", 2.5)),
    "nights as string": as_json(_changed("hotel.nights", "3")),
    "nights as bool": as_json(_changed("hotel.nights", True)),
    "nights NaN": as_json(_changed("hotel.nights", float("nan"))),
    "car days null": as_json(_changed("car.days", None)),
    "hotel as string": as_json(_changed("hotel", "Lisbon")),
    "extra field": as_json(_changed("price", 0)),
    "extra nested field": as_json(_changed("car.upgrade", True)),
    "deeply nested": b"[" * 5_000 + b"]" * 5_000,
    "body over 16 KiB": as_json(_changed("hotel.city", "A" * 20_000)),
}


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_request_is_rejected_and_nothing_is_stored(stack: SagaStack, body: bytes) -> None:
    promises_before = stack.promise_count()
    provider_calls_before = len(stack.sandbox.records.requests())

    response = stack.gateway.post(
        "/trips", content=body, headers={"Content-Type": "application/json"}
    )

    assert 400 <= response.status_code < 500, response.text
    assert len(response.content) < 2_000  # says what is wrong without echoing the input
    if response.status_code == 422:
        assert response.json()["detail"], "a 422 names the fields that are wrong"
    assert stack.promise_count() == promises_before
    assert len(stack.sandbox.records.requests()) == provider_calls_before

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
import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cookbook import clients
from cookbook.stack import devserver_process, gateway_process, url_of, worker_process
from cookbook.testing.bodies import REMOVED, as_json, changed, malformed_bodies
from cookbook.testing.fixtures import RunningDevServer, RunningSandbox
from cookbook.testing.plaintext import plaintext_found, stored_values
from resonate.error import SerializationError
from resonate.resonate import Resonate
from resonate.types import Value
from saga.workflow import TripRolledBackError

# Short, so that a test can make a provider call time out; not so short that a call the
# sandbox answers late on a loaded machine times out (and is counted twice) in other tests.
PROVIDER_TIMEOUT_SECONDS = 2.0


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

    def arm_fault(self, trip_id: str, **fault: Any) -> str:
        """Make one simulated provider fail, for this trip's calls only; the fault's id."""
        response = clients.post(
            f"{self.sandbox.url}/_admin/faults", json={**fault, "key_prefix": f"{trip_id}:"}
        )
        response.raise_for_status()
        fault_id: str = response.json()["id"]
        return fault_id

    def disarm_fault(self, fault_id: str) -> None:
        clients.delete(f"{self.sandbox.url}/_admin/faults/{fault_id}").raise_for_status()


@pytest.fixture(scope="module")
def stack(sandbox: RunningSandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SagaStack]:
    # Module-scoped (one start-up for ~50 tests); the processes are stopped by pid at the end.
    data_dir = tmp_path_factory.mktemp("devserver")
    with devserver_process(data_dir) as server:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")}
        env = {
            **inherited,
            "RESONATE_URL": url_of(server),
            "PROVIDER_API_URL": sandbox.url,
            # Short, so that a provider call can time out (after landing) within a test.
            "PROVIDER_TIMEOUT_SECONDS": str(PROVIDER_TIMEOUT_SECONDS),
        }
        with (
            worker_process("saga.worker", env),
            gateway_process("saga.gateway", env) as gateway,
            clients.client(base_url=url_of(gateway), timeout=10) as client,
        ):
            yield SagaStack(client, RunningDevServer(server, data_dir, False), sandbox)


# Who travels: the client knows their name and email address, and sends only the reference.
TRAVELLER_ID, TRAVELLER_NAME, TRAVELLER_EMAIL = "cus_5e0b82d4", "Zoë Ångström", "zoe@example.com"
# Her first name as an id would spell it: a `cus_zoe...` or a `trip-zoe-...` names the traveller
# as plainly as her name does, so no stored id or reference may contain it.
FIRST_NAME = "zoe"


def trip_request() -> dict[str, Any]:
    return {
        "trip_id": f"test-{secrets.token_hex(4)}",
        "traveller_id": TRAVELLER_ID,
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
    assert effects[0].body == {"traveller": TRAVELLER_ID, **trip["flight"]}
    assert calls(stack, trip["trip_id"]) == [
        ("flight", "reserve", 200),
        ("hotel", "reserve", 200),
        ("car", "reserve", 200),
    ]


def test_the_server_holds_the_travellers_reference_never_their_name_or_email(
    stack: SagaStack,
) -> None:
    trip = trip_request()

    assert stack.gateway.post("/trips", json=trip).status_code == 202
    assert stack.wait_settled(trip["trip_id"])["status"] == "booked"

    # Everything the server holds for the execution (its promises and its journal), and in it
    # what the workflow stored (each promise's param and value: the trip, and each step's result).
    held = [stack.server.state(trip["trip_id"]), stack.server.journal(trip["trip_id"])]
    stored = json.dumps(stored_values(held), ensure_ascii=False)
    assert TRAVELLER_ID in stored  # the stored trip was decoded, not missed
    assert "@" not in stored  # (the server's own tags hold one: `poll://any@saga`)
    personal = [TRAVELLER_EMAIL, *TRAVELLER_NAME.split()]
    assert plaintext_found(json.dumps(held).encode(), personal) == []
    # Every id the server holds for the trip starts with the trip's id.
    assert FIRST_NAME not in (trip["trip_id"] + stored).lower()
    # The providers got the reference, to resolve it themselves.
    effects = stack.sandbox.records.effects(key_prefix=f"{trip['trip_id']}:")
    assert [(e.provider, e.body["traveller"]) for e in effects] == [
        ("flight", TRAVELLER_ID),
        ("hotel", TRAVELLER_ID),
        ("car", TRAVELLER_ID),
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
        "undo": [
            {"provider": "hotel", "outcome": "cancelled", "reservation_id": hotel.resource_id},
            {"provider": "flight", "outcome": "cancelled", "reservation_id": flight.resource_id},
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
    hotel_down = stack.arm_fault(trip["trip_id"], provider="hotel", action="reserve", status=503)

    assert stack.gateway.post("/trips", json=trip).status_code == 202
    status = stack.wait_settled(trip["trip_id"])

    # The hotel's answer never came: it is cancelled by the key it was requested with, which
    # voids that key at the provider, and then the flight is cancelled.
    requests = stack.sandbox.records.requests(key_prefix=f"{trip['trip_id']}:")
    hotel_key = next(r.idempotency_key for r in requests if r.provider == "hotel")
    assert [(r.provider, r.action, r.status_code, r.body) for r in requests[-2:]] == [
        ("hotel", "cancel", 200, {"reservation_key": hotel_key}),
        ("flight", "cancel", 200, {"reservation_id": _reserved(stack, trip)}),
    ]
    assert calls(stack, trip["trip_id"])[:-2] == [
        ("flight", "reserve", 200),
        *[("hotel", "reserve", 503)] * 4,  # the first attempt and 3 retries
    ]
    assert status["status"] == "rolled_back"
    assert status["failed"] == "hotel"
    assert status["undo"] == [
        {"provider": "hotel", "outcome": "voided"},
        {"provider": "flight", "outcome": "cancelled", "reservation_id": _reserved(stack, trip)},
    ]
    # Were the hotel's request still on its way, it would be refused when it arrived.
    stack.disarm_fault(hotel_down)
    late = clients.post(
        f"{stack.sandbox.url}/hotel/reserve",
        json=requests[1].body,
        headers={"Idempotency-Key": str(hotel_key)},
    )
    assert late.status_code == 409
    assert "cancelled before it arrived" in late.json()["error"]


def test_a_reservation_that_timed_out_but_landed_is_cancelled(stack: SagaStack) -> None:
    trip = trip_request()
    # Every hotel call takes longer than the worker waits: it times out, but the hotel books.
    stack.arm_fault(
        trip["trip_id"],
        provider="hotel",
        action="reserve",
        mode="latency",
        latency_ms=int(PROVIDER_TIMEOUT_SECONDS * 2500),
    )

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
    assert hotel_cancel.body == {"reservation_key": hotel.idempotency_key}
    assert hotel_cancel.response["id"] == hotel.resource_id
    assert flight_cancel.body == {"reservation_id": flight.resource_id}
    # The calls the worker gave up on land late, each one answered from its key. (Waited for,
    # also so that a later test does not count them.)
    deadline = time.monotonic() + 10
    while len(attempts := stack.sandbox.records.requests(key_prefix=hotel.idempotency_key)) < 4:
        assert time.monotonic() < deadline, attempts
        time.sleep(0.1)
    assert [(r.status_code, r.replayed) for r in attempts] == [(200, False), *[(200, True)] * 3]
    assert status["status"] == "rolled_back"
    assert status["failed"] == "hotel"
    assert "ReadTimeout" in status["reason"]
    assert status["undo"] == [
        {"provider": "hotel", "outcome": "cancelled", "reservation_id": hotel.resource_id},
        {"provider": "flight", "outcome": "cancelled", "reservation_id": flight.resource_id},
    ]


def test_a_cancellation_refused_is_reported_and_the_rest_are_still_undone(
    stack: SagaStack,
) -> None:
    trip = trip_request()
    stack.arm_fault(trip["trip_id"], provider="car", action="reserve", status=409)
    stack.arm_fault(trip["trip_id"], provider="hotel", action="cancel", status=409)

    assert stack.gateway.post("/trips", json=trip).status_code == 202
    status = stack.wait_settled(trip["trip_id"])

    effects = stack.sandbox.records.effects(key_prefix=f"{trip['trip_id']}:")
    flight, hotel, _ = effects
    assert [(e.provider, e.action) for e in effects] == [
        ("flight", "reserve"),
        ("hotel", "reserve"),
        ("flight", "cancel"),
    ]
    # A refusal to cancel is final too: asked once, not retried.
    assert [c for c in calls(stack, trip["trip_id"]) if c[:2] == ("hotel", "cancel")] == [
        ("hotel", "cancel", 409)
    ]
    assert status == {
        "trip_id": trip["trip_id"],
        "status": "rollback_incomplete",
        "failed": "car",
        "reason": "HTTP 409 Conflict: injected failure",
        "undo": [
            {
                "provider": "hotel",
                "outcome": "refused",
                "reservation_id": hotel.resource_id,
                "reason": "HTTP 409 Conflict: injected failure",
            },
            {"provider": "flight", "outcome": "cancelled", "reservation_id": flight.resource_id},
        ],
    }


def test_a_workflow_started_with_a_bad_trip_fails_at_once_instead_of_retrying(
    stack: SagaStack,
) -> None:
    # Not through the gateway, which validates: a client that starts `book_trip` directly. The
    # worker cannot decode the trip; retrying cannot help, and the SDK's default policy would
    # retry it 30 times, with doubling delays, before failing it.
    execution_id = f"bad-trip-{secrets.token_hex(4)}"

    async def start() -> str:
        client = Resonate(url=stack.server.url, group="saga-tests")
        try:
            handle = client.options(target="saga").rpc(execution_id, "book_trip", {"trip_id": 1})
            with pytest.raises(SerializationError, match=r"validation errors? for Trip") as failed:
                await asyncio.wait_for(handle.result(), 10)
            return str(failed.value)
        finally:
            await client.stop()

    started = time.monotonic()
    error = asyncio.run(start())

    assert time.monotonic() - started < 10
    assert "trip_id" in error
    assert calls(stack, execution_id) == []


def _reserved(stack: SagaStack, trip: dict[str, Any]) -> str:
    """The flight's reservation id for this trip."""
    effects = stack.sandbox.records.effects(key_prefix=f"{trip['trip_id']}:")
    return next(e.resource_id for e in effects if (e.provider, e.action) == ("flight", "reserve"))


def test_twenty_identical_posts_start_one_execution(stack: SagaStack) -> None:
    trip = trip_request()

    async def post_all() -> list[int]:
        async with clients.async_client(base_url=stack.gateway.base_url) as client:
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
    **malformed_bodies(trip_request()),
    "missing trip_id": as_json(_changed("trip_id", REMOVED)),
    "missing traveller_id": as_json(_changed("traveller_id", REMOVED)),
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
    "city huge": as_json(_changed("hotel.city", "A" * 10_000)),
    "city empty": as_json(_changed("hotel.city", "")),
    "city only spaces": as_json(_changed("hotel.city", "   ")),
    "city NUL byte": as_json(_changed("hotel.city", "Lis\x00bon")),
    "city bidi override": as_json(_changed("hotel.city", "Lis \u202enob")),
    "city lone surrogate": as_json(_changed("hotel.city", "Lisbon \ud800")),
    "city array": as_json(_changed("hotel.city", ["Lisbon"])),
    "traveller_id an email address": as_json(_changed("traveller_id", "ada@example.com")),
    "traveller_id a name": as_json(_changed("traveller_id", "Ada Lovelace")),
    "name and email as before": as_json(
        _changed("traveller", {"name": "Ada Lovelace", "email": "ada@example.com"})
    ),
    "airport lowercase": as_json(_changed("flight.origin", "lhr")),
    "airport number": as_json(_changed("flight.origin", 123)),
    "date impossible": as_json(_changed("flight.departs", "2030-02-30")),
    "date words": as_json(_changed("flight.departs", "next tuesday")),
    "date as Unix seconds": as_json(_changed("flight.departs", 86400)),
    "date as a numeric string": as_json(_changed("flight.departs", "86400")),
    "date with a time": as_json(_changed("hotel.check_in", "2030-05-01T00:00:00")),
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
    executions_before = stack.server.executions()
    provider_calls_before = len(stack.sandbox.records.requests())

    response = stack.gateway.post(
        "/trips", content=body, headers={"Content-Type": "application/json"}
    )

    assert 400 <= response.status_code < 500, response.text
    assert len(response.content) < 2_000  # says what is wrong without echoing the input
    if response.status_code == 422:
        assert response.json()["detail"], "a 422 names the fields that are wrong"
    assert stack.server.executions() == executions_before
    assert len(stack.sandbox.records.requests()) == provider_calls_before


@pytest.mark.parametrize(
    ("path", "value"),
    [("flight.departs", 86400), ("flight.departs", "86400"), ("hotel.check_in", 1.5e9)],
)
def test_a_date_that_is_not_an_iso_string_is_422_naming_the_field(
    stack: SagaStack, path: str, value: Any
) -> None:
    response = stack.gateway.post("/trips", json=_changed(path, value))

    assert response.status_code == 422
    assert response.json()["detail"] == [
        {
            "loc": ["body", *path.split(".")],
            "msg": "Value error, must be an ISO date string, YYYY-MM-DD",
            "type": "value_error",
        }
    ]


@pytest.mark.parametrize(
    "not_a_reference",
    [TRAVELLER_EMAIL, TRAVELLER_NAME, "5e0b82d4"],
    ids=["an email address", "a name", "without cus_"],
)
def test_anything_but_a_traveller_reference_is_422_naming_the_field_and_nothing_starts(
    stack: SagaStack, not_a_reference: str
) -> None:
    executions_before = stack.server.executions()
    provider_calls_before = len(stack.sandbox.records.requests())

    response = stack.gateway.post("/trips", json=_changed("traveller_id", not_a_reference))

    assert response.status_code == 422
    assert response.json()["detail"] == [
        {
            "loc": ["body", "traveller_id"],
            "msg": "String should match pattern '^cus_[A-Za-z0-9]{4,32}$'",
            "type": "string_pattern_mismatch",
        }
    ]
    assert stack.server.executions() == executions_before
    assert len(stack.sandbox.records.requests()) == provider_calls_before


def test_the_openapi_document_declares_every_answer_with_its_body(stack: SagaStack) -> None:
    document = stack.gateway.get("/openapi.json").json()
    schemas = document["components"]["schemas"]

    def answers(path: str, method: str) -> dict[str, str]:
        responses = document["paths"][path][method]["responses"]
        return {
            code: response["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
            for code, response in responses.items()
        }

    assert answers("/trips", "post") == {
        "202": "Accepted",
        "400": "Problem",
        "409": "Problem",
        "413": "Problem",
        "422": "FieldProblems",
    }
    assert answers("/trips/{trip_id}", "get") == {
        "200": "TripStatus",
        "404": "Problem",
        "422": "FieldProblems",
    }
    assert schemas["Problem"]["required"] == ["detail"]
    # The answers given are the answers declared.
    too_big = stack.gateway.post(
        "/trips", json=_changed("hotel.city", "A" * 20_000), headers={"Accept": "*/*"}
    )
    assert too_big.status_code == 413
    assert too_big.headers["content-type"] == "application/json"
    assert set(too_big.json()) == {"detail"}
    streamed = stack.gateway.post(  # no Content-Length: sent in chunks
        "/trips",
        content=iter([b'{"trip_id": "', b"A" * 20_000, b'"}']),
        headers={"Content-Type": "application/json"},
    )
    assert streamed.status_code == 413
    assert streamed.json() == too_big.json()
    unreadable = stack.gateway.post(
        "/trips", content=b"[" * 5_000 + b"]" * 5_000, headers={"Content-Type": "application/json"}
    )
    assert unreadable.status_code in (400, 422)
    assert unreadable.headers["content-type"] == "application/json"

"""Behaviour of the provider sandbox: idempotency, fault injection, records, the process."""

from __future__ import annotations

import asyncio
import os
import re
import selectors
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cookbook import clients
from cookbook.sandbox import SandboxRecords, create_app
from cookbook.stack import sandbox_process, url_of
from cookbook.testing import keepalive

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "sandbox.db"


@pytest.fixture
def records(db_path: Path) -> SandboxRecords:
    return SandboxRecords(db_path)


@pytest.fixture
async def client(db_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(db_path)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as c:
        yield c
    app.state.store.close()


async def post(
    client: httpx.AsyncClient, path: str, body: Any, key: str | None = None
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return await client.post(path, json=body, headers=headers)


async def add_fault(client: httpx.AsyncClient, **spec: Any) -> dict[str, Any]:
    response = await client.post("/_admin/faults", json=spec)
    assert response.status_code == 201, response.text
    fault: dict[str, Any] = response.json()
    return fault


async def test_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_reserve_echoes_body_and_records_one_effect(
    client: httpx.AsyncClient, records: SandboxRecords
) -> None:
    response = await post(client, "/flight/reserve", {"from": "OSL", "to": "LIS", "id": "x"})

    assert response.status_code == 200
    reply = response.json()
    assert re.fullmatch(r"flight_[0-9a-f]{12}", reply["id"])
    # A caller's "id" must not masquerade as the provider's id.
    assert reply | {"id": "?"} == {
        "id": "?",
        "provider": "flight",
        "action": "reserve",
        "status": "reserved",
        "from": "OSL",
        "to": "LIS",
    }
    [effect] = records.effects()
    assert (effect.provider, effect.action, effect.resource_id) == (
        "flight",
        "reserve",
        reply["id"],
    )
    assert effect.response == reply
    assert effect.started_at <= effect.finished_at


@pytest.mark.parametrize(
    ("path", "status"),
    [("/email/send", "delivered"), ("/payment/charge", "succeeded"), ("/api/call", "ok")],
)
async def test_other_actions_succeed(client: httpx.AsyncClient, path: str, status: str) -> None:
    provider = path.split("/")[1]
    response = await post(client, path, {"n": 1})
    assert response.status_code == 200
    assert response.json()["status"] == status
    assert re.fullmatch(rf"{provider}_[0-9a-f]{{12}}", response.json()["id"])


async def test_same_key_replays_stored_response_without_new_effect(
    client: httpx.AsyncClient, records: SandboxRecords
) -> None:
    first = await post(client, "/car/reserve", {"city": "Oslo", "days": 3}, key="k-1")
    # Same JSON object with another key order is the same request.
    again = await client.post(
        "/car/reserve",
        content=b'{"days": 3, "city": "Oslo"}',
        headers={"Idempotency-Key": "k-1"},
    )

    assert first.status_code == again.status_code == 200
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert records.effect_counts_by_key() == {"k-1": 1}
    assert [r.replayed for r in records.requests("k-1")] == [False, True]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/car/reserve", {"city": "Rome"}),
        ("/hotel/reserve", {"city": "Oslo"}),
        ("/email/send", {"city": "Oslo"}),
    ],
)
async def test_key_reused_for_a_different_request_is_409(
    client: httpx.AsyncClient, records: SandboxRecords, path: str, body: dict[str, Any]
) -> None:
    await post(client, "/car/reserve", {"city": "Oslo"}, key="k-1")

    response = await post(client, path, body, key="k-1")

    assert response.status_code == 409
    assert "was used with a different request" in response.json()["error"]
    assert len(records.effects()) == 1
    assert records.requests()[-1].status_code == 409


async def test_idempotency_key_longer_than_255_is_rejected(
    client: httpx.AsyncClient, records: SandboxRecords
) -> None:
    assert (await post(client, "/sms/send", {}, key="k" * 256)).status_code == 400
    assert (await post(client, "/sms/send", {}, key="k" * 255)).status_code == 200
    assert len(records.effects()) == 1


async def test_concurrent_same_key_requests_apply_once(
    client: httpx.AsyncClient, records: SandboxRecords
) -> None:
    # Latency keeps all 20 in flight at once, so they really race for the key.
    await add_fault(client, provider="payment", mode="latency", latency_ms=50)

    responses = await asyncio.gather(
        *(post(client, "/payment/charge", {"amount": 100}, key="charge-1") for _ in range(20))
    )

    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 19
    assert records.effect_counts_by_key() == {"charge-1": 1}
    assert len(records.requests("charge-1")) == 20


async def test_different_keys_run_in_parallel(
    client: httpx.AsyncClient, records: SandboxRecords
) -> None:
    await add_fault(client, provider="api", action="call", mode="latency", latency_ms=200)

    responses = await asyncio.gather(
        *(post(client, "/api/call", {"i": i}, key=f"call-{i}") for i in range(4))
    )

    assert [r.status_code for r in responses] == [200] * 4
    # Proven by the sandbox's own timestamps, not by wall time (which a loaded machine stretches).
    effects = records.effects("call-")
    assert len(effects) == 4
    assert all(e.finished_at - e.started_at >= 0.2 for e in effects)
    # Every interval overlaps every other: the latest start precedes the earliest finish.
    assert max(e.started_at for e in effects) < min(e.finished_at for e in effects)


async def test_fail_times_then_retry_with_same_key_succeeds_once(
    client: httpx.AsyncClient, records: SandboxRecords
) -> None:
    await add_fault(client, provider="car", action="reserve", mode="fail_times", times=2)

    attempts = [
        await post(client, "/car/reserve", {"city": "Oslo"}, key="trip-1") for _ in range(4)
    ]

    assert [r.status_code for r in attempts] == [503, 503, 200, 200]
    assert attempts[0].json() == {
        "error": "injected failure",
        "provider": "car",
        "action": "reserve",
        "attempt": 1,
    }
    assert attempts[1].json()["attempt"] == 2
    # The failures were not cached: attempt 3 executed, attempt 4 replayed it.
    assert attempts[3].headers["Idempotent-Replayed"] == "true"
    assert attempts[3].json() == attempts[2].json()
    assert records.effect_counts_by_key() == {"trip-1": 1}
    requests = records.requests("trip-1")
    assert [(r.status_code, r.injected_fault, r.replayed) for r in requests] == [
        (503, True, False),
        (503, True, False),
        (200, False, False),
        (200, False, True),
    ]


async def test_fail_always_fails_every_matching_request_until_cleared(
    client: httpx.AsyncClient, records: SandboxRecords
) -> None:
    await add_fault(client, provider="email", mode="fail_always", status=500)

    for _ in range(3):
        response = await post(client, "/email/send", {"to": "a@example.com"}, key="mail-1")
        assert response.status_code == 500
    # Other providers are unaffected.
    assert (await post(client, "/sms/send", {"to": "+1"})).status_code == 200
    assert records.effects("mail-1") == []

    assert (await client.delete("/_admin/faults")).json() == {"cleared": 1}
    response = await post(client, "/email/send", {"to": "a@example.com"}, key="mail-1")
    assert response.status_code == 200
    assert records.effect_counts_by_key("mail-") == {"mail-1": 1}


async def test_fault_key_prefix_only_hits_matching_keys(
    client: httpx.AsyncClient, records: SandboxRecords
) -> None:
    fault = await add_fault(client, provider="hotel", mode="fail_always", key_prefix="trip-42")

    assert (await post(client, "/hotel/reserve", {}, key="trip-42-hotel")).status_code == 503
    assert (await post(client, "/hotel/reserve", {}, key="trip-43-hotel")).status_code == 200
    assert (await post(client, "/hotel/reserve", {})).status_code == 200

    listed = (await client.get("/_admin/faults")).json()
    assert [(f["id"], f["hits"]) for f in listed] == [(fault["id"], 1)]
    assert [r.idempotency_key for r in records.requests("trip-42")] == ["trip-42-hotel"]
    assert records.effect_counts_by_key() == {"trip-43-hotel": 1}
    assert len(records.effects()) == 2


async def test_cancel_semantics(client: httpx.AsyncClient, records: SandboxRecords) -> None:
    unknown = await post(client, "/car/cancel", {"reservation_id": "car_000000000000"})
    assert unknown.status_code == 404
    assert "car_000000000000" in unknown.json()["error"]

    reservation_id = (await post(client, "/car/reserve", {"city": "Oslo"})).json()["id"]
    # A reservation belongs to its provider.
    wrong = await post(client, "/hotel/cancel", {"reservation_id": reservation_id})
    assert wrong.status_code == 404

    first = await post(client, "/car/cancel", {"reservation_id": reservation_id}, key="c-1")
    second = await post(client, "/car/cancel", {"reservation_id": reservation_id}, key="c-2")

    assert first.status_code == second.status_code == 200
    assert first.json()["status"] == second.json()["status"] == "cancelled"
    assert first.json()["id"] == reservation_id
    assert "Idempotent-Replayed" not in second.headers
    cancels = [e for e in records.effects() if e.action == "cancel"]
    assert [(e.idempotency_key, e.resource_id) for e in cancels] == [("c-1", reservation_id)]


async def test_cancel_by_key_cancels_the_reservation_that_landed(
    client: httpx.AsyncClient, records: SandboxRecords
) -> None:
    reserved = await post(client, "/hotel/reserve", {"city": "Oslo"}, key="trip-1:2")

    cancelled = await post(client, "/hotel/cancel", {"reservation_key": "trip-1:2"}, key="c-1")
    again = await post(client, "/hotel/cancel", {"reservation_key": "trip-1:2"}, key="c-2")

    assert cancelled.status_code == again.status_code == 200
    assert cancelled.json()["id"] == again.json()["id"] == reserved.json()["id"]
    assert cancelled.json()["status"] == again.json()["status"] == "cancelled"
    cancels = [e for e in records.effects() if e.action == "cancel"]
    assert [(e.idempotency_key, e.resource_id) for e in cancels] == [("c-1", reserved.json()["id"])]
    # A key names one provider's reservation request, not another's.
    other = await post(client, "/car/cancel", {"reservation_key": "trip-1:2"}, key="c-3")
    assert other.status_code == 404


async def test_cancel_by_key_before_the_request_arrives_voids_it(
    client: httpx.AsyncClient, records: SandboxRecords
) -> None:
    voided = await post(client, "/hotel/cancel", {"reservation_key": "trip-2:2"}, key="c-1")
    repeated = await post(client, "/hotel/cancel", {"reservation_key": "trip-2:2"}, key="c-2")

    late = await post(client, "/hotel/reserve", {"city": "Oslo"}, key="trip-2:2")
    retried = await post(client, "/hotel/reserve", {"city": "Oslo"}, key="trip-2:2")

    assert voided.status_code == repeated.status_code == 200
    assert voided.json()["status"] == repeated.json()["status"] == "voided"
    assert late.status_code == retried.status_code == 409
    assert "cancelled before it arrived" in late.json()["error"]
    assert [(e.provider, e.action, e.idempotency_key) for e in records.effects()] == [
        ("hotel", "cancel", "c-1")
    ]
    assert (await post(client, "/hotel/reserve", {"city": "Oslo"}, key="trip-3:2")).is_success


async def test_a_late_request_is_refused_once_its_key_is_voided(
    db_path: Path, records: SandboxRecords
) -> None:
    app = create_app(db_path)
    faults = app.state.faults
    arrived = asyncio.Event()
    count_request = faults.on_request

    def on_request(provider: str, action: str, key: str | None) -> Any:
        arrived.set()
        return count_request(provider, action, key)

    faults.on_request = on_request
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
        # The request reaches the provider and is delayed when its sender gives up and cancels it.
        await add_fault(client, provider="hotel", action="reserve", mode="latency", latency_ms=300)
        late = asyncio.create_task(post(client, "/hotel/reserve", {"city": "Oslo"}, key="trip-4:2"))
        await arrived.wait()

        voided = await post(client, "/hotel/cancel", {"reservation_key": "trip-4:2"}, key="c-1")

        assert voided.json()["status"] == "voided"
        assert (await late).status_code == 409
    app.state.store.close()
    assert [e.action for e in records.effects()] == ["cancel"]


async def test_refund_semantics(client: httpx.AsyncClient, records: SandboxRecords) -> None:
    assert (await post(client, "/payment/refund", {"charge_id": "nope"})).status_code == 404

    charge_id = (await post(client, "/payment/charge", {"amount": 5})).json()["id"]
    first = await post(client, "/payment/refund", {"charge_id": charge_id})
    second = await post(client, "/payment/refund", {"charge_id": charge_id})

    assert first.status_code == second.status_code == 200
    assert first.json()["id"] == second.json()["id"] != charge_id
    assert [e.action for e in records.effects()] == ["charge", "refund"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[1, 2]", "must be a JSON object, got an array"),
        (b'"text"', "must be a JSON object, got a string"),
        (b"null", "must be a JSON object, got null"),
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b'{"amount": NaN}', "not valid JSON"),
    ],
)
async def test_bad_bodies_are_422(
    client: httpx.AsyncClient, records: SandboxRecords, content: bytes, message: str
) -> None:
    response = await client.post("/payment/charge", content=content)

    assert response.status_code == 422
    assert message in response.json()["error"]
    assert records.effects() == []
    assert [r.status_code for r in records.requests()] == [422]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/car/cancel", {}),
        ("/car/cancel", {"reservation_id": 7}),
        ("/car/cancel", {"reservation_id": "car_1", "reservation_key": "k"}),
        ("/car/cancel", {"reservation_key": ""}),
        ("/payment/refund", {}),
    ],
)
async def test_action_specific_fields_are_validated(
    client: httpx.AsyncClient, path: str, body: dict[str, Any]
) -> None:
    response = await post(client, path, body)
    assert response.status_code == 422
    assert response.json()["detail"]


@pytest.mark.parametrize(("path", "names"), [("/bank/transfer", "'bank'"), ("/car/send", "'send'")])
async def test_unknown_provider_or_action_is_404(
    client: httpx.AsyncClient, records: SandboxRecords, path: str, names: str
) -> None:
    response = await post(client, path, {})

    assert response.status_code == 404
    assert names in response.json()["error"]
    assert records.effects() == []


async def test_invalid_fault_is_422_with_field_errors(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/_admin/faults",
        json={"provider": "car", "action": "send", "mode": "latency", "times": 0, "oops": 1},
    )

    assert response.status_code == 422
    fields = {tuple(error["loc"]) for error in response.json()["detail"]}
    assert fields == {
        ("body", "action"),
        ("body", "times"),
        ("body", "latency_ms"),
        ("body", "oops"),
    }
    missing = await client.post("/_admin/faults", json={"mode": "fail_always"})
    assert missing.status_code == 422
    assert (await client.get("/_admin/faults")).json() == []


async def test_admin_record_listing_and_wipe(
    client: httpx.AsyncClient, records: SandboxRecords
) -> None:
    await post(client, "/slack/send", {"text": "a"}, key="run-1:a")
    await post(client, "/slack/send", {"text": "b"}, key="run-2:b")
    await post(client, "/slack/send", {"text": "c"})

    effects = (await client.get("/_admin/effects", params={"key_prefix": "run-1"})).json()
    assert [e["body"] for e in effects] == [{"text": "a"}]
    all_requests = (await client.get("/_admin/requests")).json()
    assert [r["body"] for r in all_requests] == [{"text": t} for t in "abc"]
    assert all_requests[0]["started_at"] <= all_requests[1]["started_at"]

    assert (await client.delete("/_admin/records")).status_code == 200
    assert records.requests() == []
    assert records.effects() == []
    # The idempotency memory went too: the key executes afresh.
    replay = await post(client, "/slack/send", {"text": "a"}, key="run-1:a")
    assert "Idempotent-Replayed" not in replay.headers
    assert records.effect_counts_by_key() == {"run-1:a": 1}


def test_records_reader_refuses_a_missing_database(tmp_path: Path) -> None:
    with pytest.raises(sqlite3.OperationalError):
        SandboxRecords(tmp_path / "missing.db").effects()
    assert not (tmp_path / "missing.db").exists()


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            pytest.fail(f"sandbox printed nothing within {timeout}s")
    return proc.stdout.readline()


def test_runs_as_a_process_and_stops_on_sigterm(tmp_path: Path) -> None:
    db = tmp_path / "process.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cookbook.sandbox", "--port", "0", "--db", str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        line = _read_line(proc, timeout=15)
        match = re.fullmatch(r"sandbox listening on (http://127\.0\.0\.1:(\d+))\n", line)
        assert match, f"unexpected first line {line!r}"
        assert int(match[2]) > 0

        response = clients.post(
            f"{match[1]}/sms/send", json={"to": "+1"}, headers={"Idempotency-Key": "p-1"}
        )
        assert response.status_code == 200
        # Every step of every example calls it on a kept-alive connection.
        assert keepalive.held_back(f"{match[1]}/health") is None

        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    # The records outlive the process.
    assert SandboxRecords(db).effect_counts_by_key() == {"p-1": 1}


def test_a_caller_that_dies_mid_request_is_no_server_error(tmp_path: Path) -> None:
    # A worker SIGKILLed while it sends a request body leaves a half request behind; the sandbox
    # must shrug it off (nothing recorded, no traceback in a demo's output).
    gone = threading.Event()

    def watch(line: str) -> None:
        if "caller gone" in line:
            gone.set()

    with sandbox_process(tmp_path / "sandbox.db", narrate=True, on_line=watch).start() as sandbox:
        url = httpx.URL(url_of(sandbox))
        assert url.port is not None
        with socket.create_connection((url.host, url.port)) as half:
            half.sendall(
                b"POST /email/send HTTP/1.1\r\nHost: sandbox\r\nContent-Type: application/json\r\n"
                b'Idempotency-Key: gone-1\r\nContent-Length: 500\r\n\r\n{"to": '
            )
        assert gone.wait(10), sandbox.tail()
        assert clients.get(f"{url}/health").status_code == 200
        assert "Traceback" not in sandbox.tail(400)
    assert SandboxRecords(tmp_path / "sandbox.db").requests() == []


async def test_a_kill_switch_with_a_body_fires_only_on_a_call_whose_body_matches(
    client: httpx.AsyncClient, victim: subprocess.Popen[bytes]
) -> None:
    switch = {"provider": "api", "pid": victim.pid, "body": {"worker_pid": 7, "phase": "go"}}
    assert (await client.post("/_admin/kill-switches", json=switch)).status_code == 201

    for body in ({"worker_pid": 8, "phase": "go"}, {"worker_pid": 7, "phase": "done"}):
        assert (await post(client, "/api/call", body, key=f"k-{body['worker_pid']}")).is_success
    survived = victim.poll()
    assert (await post(client, "/api/call", {"worker_pid": 7, "phase": "go"}, key="k")).is_success

    assert survived is None, "a call whose body does not match fired the switch"
    assert await asyncio.to_thread(victim.wait, 10) == -signal.SIGKILL

"""webservers end to end: each app's own process, a real dev server and the provider sandbox.

Every test runs for each of the three apps (FastAPI, Flask, Django): it talks to the app over
HTTP only, and asserts on what the receiving systems recorded: the sandbox (each hold and email,
and every request that reached it) and the dev server (which executions exist). One dev server
and one process of each app serve the module; each test uses its own ticket ids, and the
sandbox's records are read by idempotency-key prefix, i.e. by ticket.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cookbook import clients
from cookbook.processes import ManagedProcess
from cookbook.stack import devserver_process, gateway_process, url_of
from cookbook.testing import keepalive
from cookbook.testing.bodies import REMOVED, as_json, changed, malformed_bodies
from cookbook.testing.fixtures import RunningDevServer, RunningSandbox
from cookbook.testing.plaintext import plaintext_found, stored_values
from resonate.resonate import Resonate

APPS = ["fastapi", "flask", "django"]
# A POST waits this long for the booking before it answers 202 (short, for the slow-step test).
WAIT_SECONDS = "2"
BOOKED_EFFECTS = [("inventory", "reserve"), ("email", "send")]
# Who books: the client knows her name and email address, and sends only the reference, which the
# inventory and the email provider resolve.
CUSTOMER_ID, CUSTOMER_NAME, CUSTOMER_EMAIL = "cus_5e0b82d4", "Zoë Ångström", "zoe@example.com"
# Her first name in an id would spell it: a `cus_zoe...` or a `t-zoe-...` names her as plainly as
# her name does, so no stored id or reference may contain it.
FIRST_NAME = "zoe"


@dataclass(frozen=True)
class Site:
    """One app's process, and the systems it talks to."""

    app: str
    http: httpx.Client
    server: RunningDevServer
    sandbox: RunningSandbox

    def effects(self, ticket_id: str) -> list[tuple[str, str]]:
        return [(e.provider, e.action) for e in self.sandbox.records.effects(ticket_id + ":")]

    def provider_calls(self, ticket_id: str) -> int:
        return len(self.sandbox.records.requests(ticket_id + ":"))

    def executions(self) -> int:
        promises: list[object] = self.server.state()["promises"]  # type: ignore[assignment]
        return len(promises)


def app_env(server: RunningDevServer, sandbox: RunningSandbox, **extra: str) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")}
    return {
        **inherited,
        "RESONATE_URL": server.url,
        "PROVIDER_API_URL": sandbox.url,
        "WAIT_SECONDS": WAIT_SECONDS,
        **extra,
    }


def app_process(app: str, env: dict[str, str], name: str = "app") -> ManagedProcess:
    process = gateway_process(f"webservers.{app}_app", env)
    process.name = f"{app}-{name}"
    return process


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDevServer]:
    data_dir = tmp_path_factory.mktemp("devserver")
    with devserver_process(data_dir) as process:
        yield RunningDevServer(process, data_dir, False)


@pytest.fixture(scope="module", params=APPS)
def site(
    request: pytest.FixtureRequest, server: RunningDevServer, sandbox: RunningSandbox
) -> Iterator[Site]:
    app: str = request.param
    with (
        app_process(app, app_env(server, sandbox)) as process,
        clients.client(base_url=url_of(process), timeout=30) as http,
    ):
        yield Site(app, http, server, sandbox)


def new_ticket(**changes: Any) -> dict[str, Any]:
    ticket = {
        "ticket_id": f"t-{secrets.token_hex(6)}",
        "customer_id": CUSTOMER_ID,
        "event_id": "evt_pycon2027",
        "seats": 2,
    }
    return {**ticket, **changes}


def arm_fault(sandbox: RunningSandbox, key_prefix: str, **fault: Any) -> None:
    """Make one simulated provider fail (or slow) the calls whose key starts with `key_prefix`."""
    clients.post(
        f"{sandbox.url}/_admin/faults", json={**fault, "key_prefix": key_prefix}
    ).raise_for_status()


# -- the route runs the function, and answers with its result ----------------------------------


def test_a_booking_is_answered_inline_and_a_repeat_gets_it_without_booking_again(
    site: Site,
) -> None:
    ticket = new_ticket()
    tid = ticket["ticket_id"]

    first = site.http.post("/tickets", json=ticket)

    assert first.status_code == 200, first.text
    holds = site.sandbox.records.effects(tid + ":")
    assert [(e.provider, e.action) for e in holds] == BOOKED_EFFECTS
    assert first.json() == {
        "ticket_id": tid,
        "status": "booked",
        "hold_id": holds[0].resource_id,
        "email_id": holds[1].resource_id,
    }
    calls = site.provider_calls(tid)

    again = site.http.post("/tickets", json=ticket)

    assert (again.status_code, again.json()) == (200, first.json())
    assert site.provider_calls(tid) == calls  # not a single call more: the stored result
    assert site.http.get(f"/tickets/{tid}").json() == first.json()


def test_twenty_concurrent_duplicates_run_one_booking(site: Site) -> None:
    ticket = new_ticket()
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: site.http.post("/tickets", json=ticket), range(20)))

    assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers]
    assert len({a.text for a in answers}) == 1  # the same booking, every time
    assert site.effects(ticket["ticket_id"]) == BOOKED_EFFECTS  # one hold, one email


def test_the_same_ticket_id_with_another_request_is_a_409(site: Site) -> None:
    ticket = new_ticket()
    assert site.http.post("/tickets", json=ticket).status_code == 200

    other = site.http.post("/tickets", json={**ticket, "seats": 5})

    assert other.status_code == 409
    assert "different request" in other.json()["detail"]
    assert site.effects(ticket["ticket_id"]) == BOOKED_EFFECTS


def test_sold_out_is_an_answer_asked_once_and_no_email_goes_out(site: Site) -> None:
    ticket = new_ticket()
    tid = ticket["ticket_id"]
    arm_fault(site.sandbox, tid + ":", provider="inventory", action="reserve", status=409)

    answer = site.http.post("/tickets", json=ticket)

    assert answer.status_code == 200
    assert answer.json()["status"] == "sold_out"
    assert answer.json()["problem"] == "409 injected failure"
    assert site.provider_calls(tid) == 1  # never retried
    assert site.effects(tid) == []


def test_a_booking_that_outlasts_the_wait_is_a_202_and_finishes_in_the_process(
    site: Site,
) -> None:
    ticket = new_ticket()
    tid = ticket["ticket_id"]
    # The email provider takes 3 s; the route waits 2 s (WAIT_SECONDS), then answers 202.
    arm_fault(site.sandbox, tid + ":", provider="email", mode="latency", latency_ms=3000)

    first = site.http.post("/tickets", json=ticket)

    assert first.status_code == 202, first.text
    assert first.headers["Location"] == f"/tickets/{tid}"
    assert first.json()["status"] == "pending"
    # The repeat waits again, and the booking the process went on with lands meanwhile.
    again = site.http.post("/tickets", json=ticket)
    assert (again.status_code, again.json()["status"]) == (200, "booked")
    assert site.http.get(f"/tickets/{tid}").json() == again.json()
    assert site.effects(tid) == BOOKED_EFFECTS


def test_a_hold_that_keeps_failing_is_released_by_its_key_and_the_booking_is_unavailable(
    site: Site,
) -> None:
    if site.app != "fastapi":
        pytest.skip("the function is the same in every app; its retries take 6 s: once is enough")
    ticket = new_ticket()
    tid = ticket["ticket_id"]
    arm_fault(site.sandbox, tid + ":", provider="inventory", action="reserve", status=503)

    first = site.http.post("/tickets", json=ticket)  # retries take 1 + 2 + 3 s: a 202 first
    booking = settled(site.server, tid)

    assert first.status_code == 202
    assert booking["status"] == "unavailable"
    assert "the inventory is unavailable" in booking["problem"]
    holds = [c for c in site.sandbox.records.requests(tid + ":") if c.action == "reserve"]
    assert [c.status_code for c in holds] == [503] * 4  # the first attempt and three retries
    # It may have landed (a 503 says nothing about what the provider did): the hold request's
    # key is voided, so that request holds nothing if it arrives late.
    assert site.effects(tid) == [("inventory", "cancel")]
    assert site.http.get(f"/tickets/{tid}").json()["status"] == "unavailable"


def test_an_unknown_ticket_is_a_404_and_a_malformed_id_a_422(site: Site) -> None:
    assert site.http.get("/tickets/t-never-booked").status_code == 404
    bad = site.http.get("/tickets/bad:id")
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["path", "ticket_id"]


def test_answers_at_once_on_a_kept_alive_connection(site: Site) -> None:
    # Not 40 ms late, as a uvicorn served on a socket of socket.create_server is with Nagle on.
    assert keepalive.held_back(str(site.http.base_url.join("/tickets/t-never-booked"))) is None


# -- hostile input -----------------------------------------------------------------------------


def _changed(path: str, value: Any) -> dict[str, Any]:
    """A valid request with one field set to `value`, or removed (`REMOVED`)."""
    return changed(new_ticket(ticket_id="t-hostile"), path, value)


HOSTILE: dict[str, bytes] = {
    **malformed_bodies(new_ticket()),
    "not json": b"ticket_id=t-1&seats=2",
    "missing ticket_id": as_json(_changed("ticket_id", REMOVED)),
    "missing customer_id": as_json(_changed("customer_id", REMOVED)),
    "missing event_id": as_json(_changed("event_id", REMOVED)),
    "missing seats": as_json(_changed("seats", REMOVED)),
    "ticket_id with colon": as_json(_changed("ticket_id", "t:1")),
    "ticket_id empty": as_json(_changed("ticket_id", "")),
    "ticket_id too long": as_json(_changed("ticket_id", "t" * 65)),
    "ticket_id number": as_json(_changed("ticket_id", 123)),
    "ticket_id path traversal": as_json(_changed("ticket_id", "../../etc/passwd")),
    "ticket_id newline": as_json(_changed("ticket_id", "t-1\n")),
    "ticket_id NUL byte": as_json(_changed("ticket_id", "t-1\x00")),
    "ticket_id lone surrogate": as_json(_changed("ticket_id", "t-\ud800")),
    "customer_id an email address": as_json(_changed("customer_id", CUSTOMER_EMAIL)),
    "customer_id a name": as_json(_changed("customer_id", CUSTOMER_NAME)),
    "customer_id an email after the prefix": as_json(
        _changed("customer_id", "cus_zoe@example.com")
    ),
    "customer_id without prefix": as_json(_changed("customer_id", "5e0b82d4")),
    "event_id a customer": as_json(_changed("event_id", CUSTOMER_ID)),
    "event_id huge": as_json(_changed("event_id", "evt_" + "A" * 10_000)),
    "seats zero": as_json(_changed("seats", 0)),
    "seats negative": as_json(_changed("seats", -1)),
    "seats too many": as_json(_changed("seats", 9)),
    "seats huge": as_json(_changed("seats", 10**30)),
    "seats fraction": as_json(_changed("seats", 1.5)),
    "seats as string": as_json(_changed("seats", "2")),
    "seats as bool": as_json(_changed("seats", True)),
    "seats NaN": as_json(_changed("seats", float("nan"))),
    "seats null": as_json(_changed("seats", None)),
    "extra field": as_json(_changed("discount", 50)),
    "deeply nested": b"[" * 5_000 + b"]" * 5_000,
}


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_bad_body_is_refused_and_nothing_is_started(site: Site, body: bytes) -> None:
    executions = site.executions()

    answer = site.http.post("/tickets", content=body, headers={"Content-Type": "application/json"})

    # 422 naming the fields; a body no JSON parser can take apart (nesting 5,000 deep) may be
    # a plain 400 (FastAPI's own parser recurses, and gives up).
    assert answer.status_code in (400, 422), answer.text
    assert answer.json()["detail"], "it says what is wrong"
    assert len(answer.content) < 2_000  # says what is wrong without echoing the input
    assert site.executions() == executions
    assert site.provider_calls("t-hostile") == 0


# -- personal data: the request names its customer by reference, only the providers know them --

NOT_A_REFERENCE = {
    "an email address": CUSTOMER_EMAIL,
    "a name": CUSTOMER_NAME,
    "an email after the prefix": "cus_zoe@example.com",
}


@pytest.mark.parametrize("value", NOT_A_REFERENCE.values(), ids=NOT_A_REFERENCE.keys())
def test_personal_data_where_the_customer_reference_goes_is_a_422_naming_it(
    site: Site, value: str
) -> None:
    executions = site.executions()
    ticket = new_ticket(customer_id=value)

    answer = site.http.post("/tickets", json=ticket)

    assert answer.status_code == 422, answer.text
    assert [problem["loc"] for problem in answer.json()["detail"]] == [["body", "customer_id"]]
    # Not echoed either, as written or JSON-escaped (Flask and Django escape non-ASCII).
    assert plaintext_found(answer.content, [value]) == []
    assert site.executions() == executions  # nothing started, nothing stored
    assert site.provider_calls(ticket["ticket_id"]) == 0


def test_the_server_holds_the_customers_reference_never_their_name_or_email(site: Site) -> None:
    ticket = new_ticket()
    tid = ticket["ticket_id"]

    assert site.http.post("/tickets", json=ticket).json()["status"] == "booked"

    # Everything the server holds for the booking (its promises and its journal), and in it
    # what the function stored (each promise's param and value: the request, each result).
    held = [site.server.state(tid), site.server.journal(tid)]
    stored = json.dumps(stored_values(held), ensure_ascii=False)
    assert CUSTOMER_ID in stored  # the stored request was decoded, not missed
    assert "@" not in stored  # (the server's own tags hold one: `poll://any@webservers`)
    personal = [CUSTOMER_EMAIL, *CUSTOMER_NAME.split()]
    assert plaintext_found(json.dumps(held).encode(), personal) == []
    # Every id the server holds for the booking starts with the ticket id.
    assert FIRST_NAME not in (tid + stored).lower()
    # The providers got the reference, to resolve it themselves.
    effects = site.sandbox.records.effects(tid + ":")
    assert [(e.provider, e.body.get("customer", e.body.get("to"))) for e in effects] == [
        ("inventory", CUSTOMER_ID),
        ("email", CUSTOMER_ID),
    ]


def test_a_422_names_the_field_and_the_reason(site: Site) -> None:
    answer = site.http.post("/tickets", json=new_ticket(seats=0))

    assert answer.status_code == 422
    assert answer.json()["detail"] == [
        {
            "loc": ["body", "seats"],
            "msg": "Input should be greater than or equal to 1",
            "type": "greater_than_equal",
        }
    ]


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_body_over_16_kib_is_a_413_and_nothing_is_started(site: Site, declared: bool) -> None:
    executions = site.executions()
    body = as_json(new_ticket(event_id="evt_" + "A" * 20_000))

    if declared:
        answer = site.http.post("/tickets", content=body)
    else:
        answer = site.http.post("/tickets", content=iter([body[:8000], body[8000:]]))

    assert answer.status_code == 413, answer.text
    assert "16 KiB" in answer.json()["detail"]
    assert site.executions() == executions


# -- the web process is the worker: a crash is finished by the next web process ----------------


@pytest.mark.parametrize("app", APPS)
def test_a_web_process_killed_mid_booking_is_finished_by_the_next_one(
    app: str, server: RunningDevServer, sandbox: RunningSandbox
) -> None:
    # A group of its own, so that only this test's processes can take the booking over; and a
    # one-second lease, the time a dead process's booking waits before it moves on.
    env = app_env(
        server, sandbox, RESONATE_GROUP=f"webservers-crash-{app}", RESONATE_TTL_SECONDS="1"
    )
    ticket = new_ticket()
    tid = ticket["ticket_id"]
    with app_process(app, env, "first") as first:
        # SIGKILL the process right after the inventory held the seats, before the step's
        # result was recorded: the request dies with it, and the hold exists.
        switch = {"provider": "inventory", "action": "reserve", "pid": first.pid}
        clients.post(f"{sandbox.url}/_admin/kill-switches", json=switch).raise_for_status()
        with pytest.raises(httpx.TransportError):
            clients.post(f"{url_of(first)}/tickets", json=ticket, timeout=30)
        assert first.wait(timeout=10) == -9
    assert [(e.provider, e.action) for e in sandbox.records.effects(tid + ":")] == [
        ("inventory", "reserve")
    ]

    with (
        app_process(app, env, "next") as second,
        clients.client(base_url=url_of(second), timeout=30) as http,
    ):
        # Nobody asks again: once the lease runs out, the server hands the booking to the web
        # process that is running, which finishes it on its own.
        booking = settled(server, tid)
        calls = len(sandbox.records.requests(tid + ":"))
        answer = http.post("/tickets", json=ticket)  # the client's retry gets the stored booking

    assert booking["status"] == "booked"
    holds = sandbox.records.effects(tid + ":")
    assert [(e.provider, e.action) for e in holds] == BOOKED_EFFECTS  # still one hold
    # The hold step ran again under its key, and the inventory answered with the first hold.
    assert booking["hold_id"] == holds[0].resource_id
    stored = {k: v for k, v in booking.items() if v is not None}
    assert (answer.status_code, answer.json()) == (200, {"ticket_id": tid, **stored})
    assert len(sandbox.records.requests(tid + ":")) == calls


def settled(server: RunningDevServer, execution_id: str) -> dict[str, Any]:
    """The execution's result, once it has one: a Resonate listener, not a poll."""

    async def result() -> dict[str, Any]:
        client = Resonate(url=server.url, group="webservers-tests")
        try:
            handle = await client.get(execution_id)
            value: dict[str, Any] = await asyncio.wait_for(handle.result(), 30)
            return value
        finally:
            await client.stop()

    return asyncio.run(result())

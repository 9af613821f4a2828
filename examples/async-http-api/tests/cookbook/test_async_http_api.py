"""async-http-api end to end: a dev server, two workers, two gateways and the provider sandbox.

Every test talks to the gateways over HTTP only, as a client would, and asserts on what the
receiving systems recorded: the sandbox (each warehouse query, stored file and email) and the dev
server (which executions exist). One stack serves the module; each test uses its own jobs, and
reads the sandbox's records by idempotency-key prefix, i.e. by job.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from async_http_api.gateway import job_id_for
from async_http_api.workflow import DOWNLOADS
from cookbook import clients
from cookbook.stack import devserver_process, gateway_process, url_of, worker_process
from cookbook.testing.bodies import REMOVED, as_json, changed, malformed_bodies
from cookbook.testing.fixtures import RunningDevServer, RunningSandbox
from cookbook.testing.plaintext import plaintext_found, stored_values
from resonate.resonate import Resonate
from resonate.types import Value

# Who asks for the reports: the client knows her name and email address, and sends only her
# reference, which the mail system resolves.
USER_ID, USER_NAME, USER_EMAIL = "usr_5e0b82d4", "Zoë Ångström", "zoe@example.com"
# Her first name as an id would spell it: a `usr_zoe...` names her as plainly as her name does,
# so no stored id or reference may contain it.
FIRST_NAME = "zoe"
REQUEST: dict[str, Any] = {
    "report": "sales",
    "period_start": "2026-11-01",
    "period_end": "2026-11-30",
    "format": "csv",
    "user_id": USER_ID,
}


@dataclass(frozen=True)
class Stack:
    gateways: tuple[httpx.Client, httpx.Client]
    server: RunningDevServer
    sandbox: RunningSandbox
    env: dict[str, str]

    @property
    def gateway(self) -> httpx.Client:
        return self.gateways[0]

    def arm(self, job_id: str, **fault: Any) -> str:
        """Make the simulated APIs misbehave for this job's calls only; the fault's id."""
        spec = {"provider": "api", "action": "call", **fault, "key_prefix": f"{job_id}:"}
        response = clients.post(f"{self.sandbox.url}/_admin/faults", json=spec)
        return str(response.raise_for_status().json()["id"])

    def calls(self, job_id: str) -> list[tuple[str, str, int]]:
        """Every call the job made: (system, what, status code), in order."""
        return [
            (r.provider, (r.body or {}).get("operation", r.action), r.status_code)
            for r in self.sandbox.records.requests(key_prefix=f"{job_id}:")
        ]

    def effects(self, job_id: str) -> list[tuple[str, str]]:
        return [
            (e.provider, e.body.get("operation", e.action))
            for e in self.sandbox.records.effects(key_prefix=f"{job_id}:")
        ]


@pytest.fixture(scope="module")
def stack(sandbox: RunningSandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Module-scoped: one start-up for every test; the processes are stopped by pid at the end.
    data_dir = tmp_path_factory.mktemp("devserver")
    with devserver_process(data_dir, fast_recovery=True) as server:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")}
        env = {**inherited, "RESONATE_URL": url_of(server), "PROVIDER_API_URL": sandbox.url}
        with (
            worker_process("async_http_api.worker", env, name="worker-1"),
            worker_process("async_http_api.worker", env, name="worker-2"),
            gateway_process("async_http_api.gateway", env) as first,
            gateway_process("async_http_api.gateway", env) as second,
            clients.client(base_url=url_of(first), timeout=30) as a,
            clients.client(base_url=url_of(second), timeout=30) as b,
        ):
            yield Stack((a, b), RunningDevServer(server, data_dir, True), sandbox, env)


def begin(gateway: httpx.Client, body: dict[str, Any] | None = None, key: str = "") -> str:
    """POST a job (under `key`, if given); the job id."""
    headers = {"Idempotency-Key": key} if key else {}
    accepted = gateway.post("/jobs", json=body or REQUEST, headers=headers)
    assert accepted.status_code == 202, accepted.text
    job_id: str = accepted.json()["job_id"]
    return job_id


def settled(gateway: httpx.Client, job_id: str) -> dict[str, Any]:
    """The job's status once it is no longer pending, by long poll."""
    for _ in range(5):
        status: dict[str, Any] = gateway.get(f"/jobs/{job_id}", params={"wait": 20}).json()
        if status["status"] != "pending":
            return status
    raise AssertionError(f"{job_id} still pending: {status}")


def new_key() -> str:
    return f"test-{secrets.token_hex(6)}"


# -- begin / poll ------------------------------------------------------------------------------


def test_post_answers_202_with_a_status_url_before_the_job_is_done(stack: Stack) -> None:
    key = new_key()
    job_id = job_id_for(key)
    stack.arm(job_id, mode="latency", latency_ms=1500)  # the warehouse's query takes 1.5 s

    accepted = stack.gateway.post("/jobs", json=REQUEST, headers={"Idempotency-Key": key})
    now = stack.gateway.get(f"/jobs/{job_id}")

    assert accepted.status_code == 202
    assert accepted.headers["Location"] == f"/jobs/{job_id}"
    assert accepted.json() == {"job_id": job_id, "status_url": f"/jobs/{job_id}"}
    assert now.status_code == 200
    assert now.json() == {"job_id": job_id, "status": "pending"}
    assert now.headers["Retry-After"] == "1"
    status = settled(stack.gateway, job_id)
    effects = stack.sandbox.records.effects(key_prefix=f"{job_id}:")
    assert [(e.provider, e.body.get("operation", e.action)) for e in effects] == [
        ("api", "query"),
        ("api", "put"),
        ("email", "send"),
    ]
    query, stored, mail = effects
    assert stored.body["object"] == f"reports/{job_id}.csv"
    assert stored.body["result_set"] == query.resource_id
    assert mail.body["to"] == USER_ID
    assert mail.body["link"] == f"{DOWNLOADS}/{stored.resource_id}"
    assert status == {
        "job_id": job_id,
        "status": "done",
        "result": {
            "outcome": "exported",
            "file": f"reports/{job_id}.csv",
            "link": f"{DOWNLOADS}/{stored.resource_id}",
            "emailed": mail.resource_id,
        },
    }


def test_any_gateway_answers_for_a_job_another_one_started(stack: Stack) -> None:
    first, second = stack.gateways

    job_id = begin(first)

    assert settled(second, job_id)["status"] == "done"
    assert first.get(f"/jobs/{job_id}").json() == second.get(f"/jobs/{job_id}").json()


def test_a_long_poll_returns_when_the_job_settles(stack: Stack) -> None:
    key = new_key()
    stack.arm(job_id_for(key), mode="latency", latency_ms=1000)
    job_id = begin(stack.gateway, key=key)

    started = time.monotonic()
    status = stack.gateway.get(f"/jobs/{job_id}", params={"wait": 30}).json()
    took = time.monotonic() - started

    assert status["status"] == "done"
    assert took < 15  # woken by the job's completion, not at the end of its 30 s


def test_a_long_poll_on_a_pending_job_answers_pending_after_its_wait(stack: Stack) -> None:
    key = new_key()
    stack.arm(job_id_for(key), mode="latency", latency_ms=2500)
    job_id = begin(stack.gateway, key=key)

    started = time.monotonic()
    response = stack.gateway.get(f"/jobs/{job_id}", params={"wait": 1})

    assert time.monotonic() - started >= 1
    assert response.json() == {"job_id": job_id, "status": "pending"}
    assert settled(stack.gateway, job_id)["status"] == "done"


@pytest.mark.parametrize("wait", ["-1", "31", "600", "1.5", "five", "", "1e3", "0x10", "NaN"])
def test_a_wait_out_of_bounds_or_not_a_whole_number_is_422(stack: Stack, wait: str) -> None:
    job_id = begin(stack.gateway)

    response = stack.gateway.get(f"/jobs/{job_id}?wait={wait}")

    assert response.status_code == 422
    assert [problem["loc"] for problem in response.json()["detail"]] == [["query", "wait"]]


# -- the failure model -------------------------------------------------------------------------


def test_a_refusal_fails_the_job_with_its_reason_and_is_asked_once(stack: Stack) -> None:
    key = new_key()
    job_id = job_id_for(key)
    stack.arm(job_id, mode="fail_always", status=403)

    begin(stack.gateway, key=key)
    status = settled(stack.gateway, job_id)

    assert status == {
        "job_id": job_id,
        "status": "failed",
        "result": {
            "outcome": "refused",
            "refused_by": "warehouse",
            "reason": "HTTP 403 Forbidden: injected failure",
        },
        "reason": "warehouse refused: HTTP 403 Forbidden: injected failure",
    }
    assert stack.calls(job_id) == [("api", "query", 403)]  # not retried; nothing stored, mailed


def test_a_transient_failure_is_retried_under_the_same_key(stack: Stack) -> None:
    key = new_key()
    job_id = job_id_for(key)
    stack.arm(job_id, mode="fail_times", times=2, status=503)

    begin(stack.gateway, key=key)

    assert settled(stack.gateway, job_id)["status"] == "done"
    assert stack.calls(job_id) == [
        ("api", "query", 503),
        ("api", "query", 503),
        ("api", "query", 200),
        ("api", "put", 200),
        ("email", "send", 200),
    ]
    keys = [r.idempotency_key for r in stack.sandbox.records.requests(key_prefix=f"{job_id}:")]
    assert len(set(keys[:3])) == 1  # one query, asked three times under one key


def test_a_warehouse_down_past_every_retry_fails_the_job_naming_it(stack: Stack) -> None:
    key = new_key()
    job_id = job_id_for(key)
    stack.arm(job_id, mode="fail_always", status=503)

    begin(stack.gateway, key=key)
    status = settled(stack.gateway, job_id)

    assert status == {
        "job_id": job_id,
        "status": "failed",
        "reason": "warehouse: HTTP 503 Service Unavailable: injected failure",
    }
    assert stack.calls(job_id) == [("api", "query", 503)] * 4  # the first attempt and 3 retries


# -- the gateway keeps no state ----------------------------------------------------------------


def test_a_gateway_sigkilled_mid_job_loses_nothing_and_a_new_one_answers(stack: Stack) -> None:
    key = new_key()
    job_id = job_id_for(key)
    stack.arm(job_id, mode="latency", latency_ms=2000)
    with gateway_process("async_http_api.gateway", stack.env) as doomed:
        with clients.client(base_url=url_of(doomed), timeout=10) as client:
            assert begin(client, key=key) == job_id
            assert client.get(f"/jobs/{job_id}").json()["status"] == "pending"
        doomed.kill()
        assert not doomed.alive()

    with (
        gateway_process("async_http_api.gateway", stack.env) as replacement,
        clients.client(base_url=url_of(replacement), timeout=30) as client,
    ):
        assert client.get(f"/jobs/{job_id}").json()["status"] == "pending"
        status = settled(client, job_id)
        # The client repeats its POST (it never saw the first answer): the same job, not a new one.
        again = client.post("/jobs", json=REQUEST, headers={"Idempotency-Key": key})

    assert status["status"] == "done"
    assert again.status_code == 202
    assert again.json()["job_id"] == job_id
    assert stack.effects(job_id) == [("api", "query"), ("api", "put"), ("email", "send")]


def test_twenty_concurrent_posts_with_one_key_start_one_job(stack: Stack) -> None:
    key = new_key()

    async def post_all() -> list[httpx.Response]:
        async def post(base_url: httpx.URL) -> httpx.Response:
            async with clients.async_client(base_url=base_url, timeout=30) as client:
                return await client.post("/jobs", json=REQUEST, headers={"Idempotency-Key": key})

        urls = [stack.gateways[i % 2].base_url for i in range(20)]  # through both gateways
        return await asyncio.gather(*(post(url) for url in urls))

    responses = asyncio.run(post_all())

    assert [r.status_code for r in responses] == [202] * 20
    assert {r.json()["job_id"] for r in responses} == {job_id_for(key)}
    job_id = job_id_for(key)
    assert settled(stack.gateway, job_id)["status"] == "done"
    promises: list[dict[str, Any]] = stack.server.state(job_id)["promises"]  # type: ignore[assignment]
    assert sorted(p["id"] for p in promises) == [job_id, *(f"{job_id}:{n}" for n in (1, 2, 3))]
    assert stack.effects(job_id) == [("api", "query"), ("api", "put"), ("email", "send")]


def test_a_key_reused_for_a_different_request_is_409(stack: Stack) -> None:
    key = new_key()
    job_id = begin(stack.gateway, key=key)

    conflict = stack.gateway.post(
        "/jobs", json={**REQUEST, "report": "inventory"}, headers={"Idempotency-Key": key}
    )

    assert conflict.status_code == 409
    assert conflict.json() == {"detail": "this Idempotency-Key was used for a different request"}
    assert settled(stack.gateway, job_id)["status"] == "done"
    query = stack.sandbox.records.effects(key_prefix=f"{job_id}:1")
    assert [e.body["report"] for e in query] == ["sales"]


def test_without_a_key_every_post_is_a_new_job(stack: Stack) -> None:
    first, second = begin(stack.gateway), begin(stack.gateway)

    assert first != second
    assert settled(stack.gateway, first)["status"] == "done"
    assert settled(stack.gateway, second)["status"] == "done"


def test_unknown_jobs_are_404_and_malformed_ids_422(stack: Stack) -> None:
    unknown = stack.gateway.get(f"/jobs/job-{secrets.token_hex(16)}")
    assert unknown.status_code == 404
    assert set(unknown.json()) == {"detail"}
    # A promise that is not an export job is not shown as one.
    other = f"job-{secrets.token_hex(16)}"

    async def create_promise() -> None:
        client = Resonate(url=stack.server.url, group="async-http-api-tests")
        try:
            in_a_minute = int(time.time() * 1000) + 60_000
            await client.promises.create(other, in_a_minute, Value(data={"not": "a job"}), {})
        finally:
            await client.stop()

    asyncio.run(create_promise())
    assert stack.gateway.get(f"/jobs/{other}").status_code == 404
    for malformed in ("job-1", "job-1:1", f"JOB-{secrets.token_hex(16)}", "../etc/passwd"):
        response = stack.gateway.get(f"/jobs/{malformed}")
        assert response.status_code in (404, 422), malformed
    assert stack.gateway.get(f"/jobs/job-{secrets.token_hex(16)}:1").status_code == 422


# -- personal data: the request names its user by reference; only the mail system knows who --------

NOT_A_REFERENCE: dict[str, dict[str, Any]] = {
    "an email address": {"user_id": USER_EMAIL},
    "a name": {"user_id": USER_NAME},
    "an email after the prefix": {"user_id": "usr_zoe@example.com"},
    "an email instead": {"email": USER_EMAIL},
}
PERSONAL = [USER_EMAIL, *USER_NAME.split()]


@pytest.mark.parametrize("fields", NOT_A_REFERENCE.values(), ids=NOT_A_REFERENCE.keys())
def test_personal_data_where_the_user_reference_goes_is_422_naming_it_and_starts_nothing(
    stack: Stack, fields: dict[str, Any]
) -> None:
    key = new_key()
    request = {k: v for k, v in REQUEST.items() if k != "user_id"} | fields
    executions_before = stack.server.executions()

    response = stack.gateway.post("/jobs", json=request, headers={"Idempotency-Key": key})

    assert response.status_code == 422, response.text
    assert ["body", "user_id"] in [problem["loc"] for problem in response.json()["detail"]]
    assert plaintext_found(response.content, PERSONAL) == []  # not echoed either
    assert stack.server.executions() == executions_before  # nothing started, nothing stored
    assert stack.sandbox.records.requests(key_prefix=f"{job_id_for(key)}:") == []


def test_the_server_holds_the_users_reference_never_their_name_or_email(stack: Stack) -> None:
    job_id = begin(stack.gateway)
    assert settled(stack.gateway, job_id)["status"] == "done"

    # Everything the server holds for the job (its promises and its journal), and in it what
    # the workflow stored (each promise's param and value: the request, and each step's result).
    held = [stack.server.state(job_id), stack.server.journal(job_id)]
    stored = json.dumps(stored_values(held), ensure_ascii=False)
    assert USER_ID in stored  # the stored request was decoded, not missed
    assert "@" not in stored  # (the server's own tags hold one: `poll://any@async-http-api`)
    assert plaintext_found(json.dumps(held).encode(), PERSONAL) == []
    # In no id, reference or value (searched decoded: raw base64 spells three letters by chance).
    assert FIRST_NAME not in (job_id + stored).lower()
    # The mail system got the reference, to resolve it to her address itself.
    effects = stack.sandbox.records.effects(key_prefix=f"{job_id}:")
    assert [e.body["to"] for e in effects if e.provider == "email"] == [USER_ID]


# -- hostile input -----------------------------------------------------------------------------


def _changed(path: str, value: Any) -> dict[str, Any]:
    return changed(REQUEST, path, value)


HOSTILE: dict[str, bytes] = {
    **malformed_bodies(REQUEST),
    "not json": b"report=sales",
    "missing report": as_json(_changed("report", REMOVED)),
    "missing user_id": as_json(_changed("user_id", REMOVED)),
    "missing period_start": as_json(_changed("period_start", REMOVED)),
    "unknown report": as_json(_changed("report", "payroll")),
    "report null": as_json(_changed("report", None)),
    "report number": as_json(_changed("report", 1)),
    "report array": as_json(_changed("report", ["sales"])),
    "report uppercase": as_json(_changed("report", "SALES")),
    "unknown format": as_json(_changed("format", "pdf")),
    "format empty": as_json(_changed("format", "")),
    "user_id without prefix": as_json(_changed("user_id", "5e0b82d4")),
    "user_id huge": as_json(_changed("user_id", "usr_" + "a" * 300)),
    "user_id NUL byte": as_json(_changed("user_id", "usr_5e0b\x0082d4")),
    "user_id bidi override": as_json(_changed("user_id", "usr_5e0b\u202e82d4")),
    "user_id lone surrogate": as_json(_changed("user_id", "usr_5e0b\ud800")),
    "user_id number": as_json(_changed("user_id", 5082)),
    "date impossible": as_json(_changed("period_start", "2026-02-30")),
    "date words": as_json(_changed("period_start", "last monday")),
    "date as Unix seconds": as_json(_changed("period_start", 86400)),
    "date as a numeric string": as_json(_changed("period_end", "86400")),
    "date with a time": as_json(_changed("period_end", "2026-11-30T00:00:00")),
    "date NaN": as_json(_changed("period_end", float("nan"))),
    "end before start": as_json(_changed("period_end", "2026-10-01")),
    "period over a year": as_json(_changed("period_end", "2027-12-01")),
    "extra field": as_json(_changed("priority", "high")),
    "job id smuggled in": as_json(_changed("job_id", "job-" + "0" * 32)),
    "deeply nested": b"[" * 5_000 + b"]" * 5_000,
    "body over 16 KiB": as_json(_changed("user_id", "usr_" + "a" * 20_000)),
}


# Every hostile body is a 422 naming the fields that are wrong (a body that is not JSON too, as
# `json_invalid`), but two, each answered with the `{"detail": "..."}` the OpenAPI document
# declares: JSON nested too deeply to read is a 400, a body over 16 KiB a 413.
NOT_A_422 = {
    "deeply nested": (400, {"detail": "There was an error parsing the body"}),
    "body over 16 KiB": (413, {"detail": "the body is over 16 KiB"}),
}


@pytest.mark.parametrize(("case", "body"), HOSTILE.items(), ids=HOSTILE.keys())
def test_hostile_request_is_rejected_and_nothing_is_stored(
    stack: Stack, case: str, body: bytes
) -> None:
    executions_before = stack.server.executions()
    calls_before = len(stack.sandbox.records.requests())

    response = stack.gateway.post(
        "/jobs", content=body, headers={"Content-Type": "application/json"}
    )

    status, answer = NOT_A_422.get(case, (422, None))
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert len(response.content) < 2_000  # says what is wrong without echoing the input
    if answer is not None:
        assert response.json() == answer
    else:  # `{"detail": [{"loc", "msg", "type"}, ...]}`, one entry per wrong field
        detail = response.json()["detail"]
        assert detail, "a 422 names the fields that are wrong"
        assert all(set(field) == {"loc", "msg", "type"} for field in detail), detail
        if case in ("not json", "truncated json"):
            assert [field["type"] for field in detail] == ["json_invalid"]
    assert stack.server.executions() == executions_before
    assert len(stack.sandbox.records.requests()) == calls_before


@pytest.mark.parametrize("key", ["", "a" * 256, "with space", "tab\tkey", "ключ"])
def test_a_bad_idempotency_key_is_422_naming_the_header(stack: Stack, key: str) -> None:
    executions_before = stack.server.executions()

    response = stack.gateway.post("/jobs", json=REQUEST, headers={b"Idempotency-Key": key.encode()})

    assert response.status_code == 422
    assert [p["loc"] for p in response.json()["detail"]] == [["header", "Idempotency-Key"]]
    assert stack.server.executions() == executions_before


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("period_start", 86400, "Value error, must be an ISO date string, YYYY-MM-DD"),
        ("report", "payroll", "Input should be 'sales', 'inventory' or 'signups'"),
    ],
)
def test_a_bad_field_is_422_naming_it(stack: Stack, path: str, value: Any, message: str) -> None:
    response = stack.gateway.post("/jobs", json=_changed(path, value))

    assert response.status_code == 422
    assert [(p["loc"], p["msg"]) for p in response.json()["detail"]] == [(["body", path], message)]


def test_the_openapi_document_declares_every_answer_with_its_body(stack: Stack) -> None:
    document = stack.gateway.get("/openapi.json").json()

    def answers(path: str, method: str) -> dict[str, str]:
        responses = document["paths"][path][method]["responses"]
        return {
            code: response["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
            for code, response in responses.items()
        }

    assert answers("/jobs", "post") == {
        "202": "Accepted",
        "400": "Problem",
        "409": "Problem",
        "413": "Problem",
        "422": "FieldProblems",
    }
    assert answers("/jobs/{job_id}", "get") == {
        "200": "JobStatus",
        "404": "Problem",
        "422": "FieldProblems",
    }
    streamed = stack.gateway.post(  # no Content-Length: sent in chunks
        "/jobs",
        content=iter([b'{"report": "', b"A" * 20_000, b'"}']),
        headers={"Content-Type": "application/json"},
    )
    assert streamed.status_code == 413
    assert streamed.headers["content-type"] == "application/json"
    assert set(streamed.json()) == {"detail"}

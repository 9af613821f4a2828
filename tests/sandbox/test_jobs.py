"""The sandbox's jobs stand-in: submission and cancel (idempotent, validated), and callbacks that
settle a promise on a real dev server with the SDK's own `promise.settle` request."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cookbook.sandbox import SandboxRecords, create_app
from cookbook.sandbox.jobs import jobs_router
from cookbook.sandbox.store import SandboxStore
from cookbook.testing.bodies import REMOVED, changed
from cookbook.testing.fixtures import RunningDevServer
from fastapi import FastAPI
from resonate.codec import decode_settled
from resonate.error import ApplicationError
from resonate.resonate import Resonate
from resonate.types import Value

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "sandbox.db"


@pytest.fixture
async def client(db_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(db_path)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as c:
        yield c
    app.state.store.close()


class Jobs:
    """The jobs routes alone, with their tasks in view so a test awaits the callbacks."""

    def __init__(self, db_path: Path) -> None:
        self.store = SandboxStore(db_path)
        self.running: set[asyncio.Task[None]] = set()
        app = FastAPI()
        app.include_router(jobs_router(self.store, db_path, running=self.running))
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://sandbox"
        )

    async def settled(self) -> None:
        while self.running:
            await asyncio.gather(*list(self.running))


@pytest.fixture
async def jobs(db_path: Path) -> AsyncIterator[Jobs]:
    jobs = Jobs(db_path)
    yield jobs
    for task in jobs.running:
        task.cancel()
    await jobs.http.aclose()
    jobs.store.close()


@pytest.fixture
async def resonate(devserver: RunningDevServer) -> AsyncIterator[Resonate]:
    client = Resonate(url=devserver.url, group="jobs-tests")
    yield client
    await client.stop()


def submission(url: str = "http://127.0.0.1:9", promise_id: str = "p", **extra: Any) -> Any:
    return {
        "spec": {"task": "report", "day": "2026-12-05"},
        "duration_seconds": 0.05,
        "callback": {"url": url, "promise_id": promise_id},
        "simulate": "succeed",
    } | extra


async def pending_promise(resonate: Resonate, promise_id: str) -> None:
    await resonate.promises.create(promise_id, int(time.time() * 1000) + 60_000, Value(), {})


async def submit(http: httpx.AsyncClient, body: Any, key: str | None = "job-1") -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return await http.post("/jobs/submit", json=body, headers=headers)


# -- submission ---------------------------------------------------------------------------------


async def test_a_submission_without_an_idempotency_key_is_refused(
    client: httpx.AsyncClient, db_path: Path
) -> None:
    response = await submit(client, submission(duration_seconds=3600), key=None)

    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["error"]
    assert SandboxRecords(db_path).effects() == []


HOSTILE: list[tuple[str, Any]] = [
    ("spec", REMOVED),
    ("spec", None),
    ("spec", "report"),
    ("spec", ["report"]),
    ("spec", 7),
    ("duration_seconds", REMOVED),
    ("duration_seconds", 0),
    ("duration_seconds", -1),
    ("duration_seconds", 86_401),
    ("duration_seconds", "5"),
    ("duration_seconds", None),
    ("duration_seconds", True),
    ("callback", REMOVED),
    ("callback", None),
    ("callback", "http://127.0.0.1:8001"),
    ("callback.url", REMOVED),
    ("callback.url", ""),
    ("callback.url", "not a url"),
    ("callback.url", "ftp://127.0.0.1/"),
    ("callback.url", 8001),
    ("callback.url", None),
    ("callback.promise_id", REMOVED),
    ("callback.promise_id", ""),
    ("callback.promise_id", "p" * 256),
    ("callback.promise_id", 42),
    ("callback.promise_id", None),
    ("callback.extra", "x"),
    ("simulate", "explode"),
    ("simulate", ""),
    ("simulate", None),
    ("simulate", 1),
    ("priority", "high"),
]


@pytest.mark.parametrize(("path", "value"), HOSTILE, ids=[f"{p}={v!r}" for p, v in HOSTILE])
async def test_a_bad_submission_is_422_naming_the_field_and_starts_nothing(
    client: httpx.AsyncClient, db_path: Path, path: str, value: Any
) -> None:
    body = changed(submission(duration_seconds=3600), path, value)

    response = await submit(client, body)

    assert response.status_code == 422, response.text
    locations = [".".join(str(part) for part in e["loc"]) for e in response.json()["detail"]]
    assert any(loc.startswith(f"body.{path}") for loc in locations), locations
    assert SandboxRecords(db_path).effects() == []
    assert (await client.get("/_admin/jobs")).json() == []


@pytest.mark.parametrize("raw", [b"", b"[]", b"null", b"{", b'"job"'])
async def test_a_body_that_is_not_a_json_object_is_422(
    client: httpx.AsyncClient, db_path: Path, raw: bytes
) -> None:
    response = await client.post(
        "/jobs/submit",
        content=raw,
        headers={"Idempotency-Key": "k", "Content-Type": "application/json"},
    )

    assert response.status_code == 422
    assert SandboxRecords(db_path).effects() == []


async def test_twenty_concurrent_duplicates_submit_one_job(
    client: httpx.AsyncClient, db_path: Path
) -> None:
    body = submission(duration_seconds=3600, simulate="never_call_back")

    responses = await asyncio.gather(*(submit(client, body, key="dup-1") for _ in range(20)))

    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 19
    assert SandboxRecords(db_path).effect_counts_by_key() == {"dup-1": 1}
    assert len((await client.get("/_admin/jobs")).json()) == 1


async def test_the_same_key_for_a_different_job_is_409(client: httpx.AsyncClient) -> None:
    await submit(client, submission(duration_seconds=3600), key="k-1")

    response = await submit(client, submission(duration_seconds=1800), key="k-1")

    assert response.status_code == 409


async def test_an_oversized_submission_is_413_and_starts_nothing(
    client: httpx.AsyncClient, db_path: Path
) -> None:
    body = submission(duration_seconds=3600, spec={"blob": "x" * 70_000})

    response = await submit(client, body)

    assert response.status_code == 413
    assert SandboxRecords(db_path).effects() == []


# -- cancel -------------------------------------------------------------------------------------


async def test_cancel_stops_a_running_job_once(client: httpx.AsyncClient, db_path: Path) -> None:
    job_id = (await submit(client, submission(duration_seconds=3600))).json()["id"]

    first = await client.post(f"/jobs/{job_id}/cancel", headers={"Idempotency-Key": "c-1"})
    again = await client.post(f"/jobs/{job_id}/cancel", headers={"Idempotency-Key": "c-2"})

    assert (first.status_code, first.json()["status"]) == (200, "cancelled")
    assert (again.status_code, again.json()["status"]) == (200, "cancelled")
    cancels = [e for e in SandboxRecords(db_path).effects() if e.action == "cancel"]
    assert [e.idempotency_key for e in cancels] == ["c-1"]
    assert (await client.get(f"/jobs/{job_id}")).json()["status"] == "cancelled"


async def test_cancel_of_an_unknown_job_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/jobs/job_000000000000/cancel")

    assert response.status_code == 404
    assert (await client.get("/jobs/job_000000000000")).status_code == 404


# -- callbacks, against a real dev server --------------------------------------------------------


async def test_a_finished_job_resolves_its_promise_with_its_output(
    jobs: Jobs, resonate: Resonate, devserver: RunningDevServer
) -> None:
    await pending_promise(resonate, "cb-ok")

    job_id = (await submit(jobs.http, submission(devserver.url, "cb-ok"))).json()["id"]
    await jobs.settled()

    promise = await resonate.promises.get("cb-ok")
    assert promise.state == "resolved"
    assert promise.value.data == {
        "job_id": job_id,
        "status": "succeeded",
        "output": {"task": "report", "day": "2026-12-05"},
    }
    assert (await jobs.http.get(f"/jobs/{job_id}")).json()["status"] == "succeeded"


async def test_a_failed_job_rejects_its_promise_with_a_reason_the_sdk_decodes(
    jobs: Jobs, resonate: Resonate, devserver: RunningDevServer
) -> None:
    await pending_promise(resonate, "cb-fail")

    response = await submit(jobs.http, submission(devserver.url, "cb-fail", simulate="fail"))
    await jobs.settled()

    promise = await resonate.promises.get("cb-fail")
    assert promise.state == "rejected"
    job_id = response.json()["id"]
    assert promise.value.data is not None
    assert promise.value.data["message"].startswith(f"job {job_id} failed")
    # What a workflow awaiting the promise raises (the SDK's own decoding).
    with pytest.raises(ApplicationError, match=f"job {job_id} failed"):
        decode_settled(promise)


async def test_a_second_callback_finds_the_promise_settled_and_changes_nothing(
    jobs: Jobs, resonate: Resonate, devserver: RunningDevServer
) -> None:
    await pending_promise(resonate, "cb-twice")

    body = submission(devserver.url, "cb-twice", simulate="call_back_twice")
    await submit(jobs.http, body)
    await jobs.settled()

    first, second = (await jobs.http.get("/_admin/jobs/callbacks")).json()
    assert second["value"] != first["value"]  # marked, so we can tell which one settled it
    # The server took both without error and answered each with the promise as it was: the
    # one that came second changed nothing.
    assert [(c["http_status"], c["promise_state"]) for c in (first, second)] == [
        (200, "resolved")
    ] * 2
    held = (await resonate.promises.get("cb-twice")).value.data
    assert held in (first["value"], second["value"])


async def test_a_cancelled_job_never_calls_back(
    jobs: Jobs, resonate: Resonate, devserver: RunningDevServer
) -> None:
    await pending_promise(resonate, "cb-cancel")
    job_id = (await submit(jobs.http, submission(devserver.url, "cb-cancel"))).json()["id"]

    await jobs.http.post(f"/jobs/{job_id}/cancel")
    await jobs.settled()

    assert (await resonate.promises.get("cb-cancel")).state == "pending"
    assert (await jobs.http.get("/_admin/jobs/callbacks")).json() == []


async def test_a_callback_to_an_unknown_promise_is_recorded_as_refused(
    jobs: Jobs, devserver: RunningDevServer
) -> None:
    await submit(jobs.http, submission(devserver.url, "no-such-promise"))
    await jobs.settled()

    [callback] = (await jobs.http.get("/_admin/jobs/callbacks")).json()
    assert (callback["http_status"], callback["promise_state"]) == (404, None)


async def test_a_kill_switch_on_jobs_submit_kills_after_the_job_is_submitted(
    client: httpx.AsyncClient, db_path: Path, victim: subprocess.Popen[bytes]
) -> None:
    armed = await client.post(
        "/_admin/kill-switches", json={"provider": "jobs", "action": "submit", "pid": victim.pid}
    )
    assert armed.status_code == 201

    response = await submit(client, submission(duration_seconds=3600))

    assert response.status_code == 200
    assert await asyncio.to_thread(victim.wait, 10) == -signal.SIGKILL
    assert SandboxRecords(db_path).effect_counts_by_key() == {"job-1": 1}

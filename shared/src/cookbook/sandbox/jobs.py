"""The "jobs" provider: a STAND-IN for a long-running-job service (Databricks Jobs, Airflow, ...).

It is not any real service's API, only the shape such services share: submit a job with an
Idempotency-Key and a callback, the job runs for a while on the provider's side, and when it ends
the provider calls back. Here the callback settles a Resonate promise: the provider sends the very
request the SDK's `resonate.promises.resolve(...)` / `.reject(...)` sends (`POST {url}/` with a
`promise.settle` envelope) to the Resonate URL named in the job's callback, and learns that URL
from nowhere else, so a workflow can point it at any Resonate server.

    POST /jobs/submit          Idempotency-Key required; a job spec, a duration and a callback
    GET  /jobs/{job_id}        the job as the provider holds it
    POST /jobs/{job_id}/cancel stop a running job (200); a job that already ended answers 409
                               with how it ended; a repeated cancel is 200 and cancels nothing
    GET  /_admin/jobs/callbacks   every callback the provider decided to send, and its answer

Submissions and cancels go through the sandbox's idempotency store, so they are counted in its
effects like every provider call. The job itself is recorded as a `resources` row (kind "job");
callbacks in the provider's own table. `simulate` is the stand-in's knob for how the job ends:
`succeed`, `fail` (the promise is rejected), `never_call_back` (the job hangs until cancelled)
or `call_back_twice` (the result delivered twice at once, as an at-least-once provider may).

Timers live in the sandbox process: a sandbox restarted while jobs run loses their callbacks.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import signal
import sqlite3
import time
import uuid
from typing import Annotated, Any, Final, Literal

import httpx
from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from cookbook import clients
from cookbook.sandbox.store import (
    IDEMPOTENCY_HEADER,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    ActionResult,
    Incoming,
    JSONObject,
    SandboxStore,
    Transaction,
    canonical_json,
)

PROVIDER: Final = "jobs"
# What the SDK 0.8.1 sends as the protocol version in every envelope head.
PROTOCOL_VERSION: Final = "2026-04-01"
# A callback the Resonate server could not take (down, restarting, 5xx) is sent again, at most
# this often and for at most this long: a server restart takes seconds, not minutes.
CALLBACK_RETRY_SECONDS: Final = (0.1, 0.2, 0.5, 1.0)
CALLBACK_GIVE_UP_SECONDS: Final = 300.0
MAX_SUBMISSION_BYTES: Final = 64 * 1024

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS job_callbacks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    job_key TEXT NOT NULL,
    promise_id TEXT NOT NULL,
    url TEXT NOT NULL,
    nth INTEGER NOT NULL,
    state TEXT NOT NULL,
    value TEXT NOT NULL,
    decided_at REAL NOT NULL,
    sent_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    http_status INTEGER,
    promise_state TEXT,
    error TEXT
);
"""

PromiseId = Annotated[str, StringConstraints(min_length=1, max_length=255)]
IdempotencyKey = Annotated[
    str | None,
    Header(alias=IDEMPOTENCY_HEADER, min_length=1, max_length=MAX_IDEMPOTENCY_KEY_LENGTH),
]


class Callback(BaseModel):
    """Where the job's outcome goes: a Resonate server and the promise to settle there."""

    model_config = ConfigDict(extra="forbid", strict=True)
    url: AnyHttpUrl
    promise_id: PromiseId


class JobSubmission(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    spec: dict[str, Any] = Field(description="the job's own parameters, kept and echoed")
    duration_seconds: float = Field(gt=0, le=86_400)
    callback: Callback
    simulate: Literal["succeed", "fail", "never_call_back", "call_back_twice"] = "succeed"


def settle_envelope(promise_id: str, state: str, value: Any) -> str:
    """The body of the SDK's `promise.settle` request (`Promises.resolve` / `.reject`).

    The value is encoded as the SDK's codec encodes it: JSON, then base64 (no encryptor).
    """
    data = base64.b64encode(json.dumps(value, separators=(",", ":")).encode()).decode("ascii")
    return json.dumps(
        {
            "kind": "promise.settle",
            "head": {"corrId": uuid.uuid4().hex, "version": PROTOCOL_VERSION},
            "data": {"id": promise_id, "state": state, "value": {"data": data}},
        }
    )


class JobRecords:
    """The provider's own records of callbacks, on a connection of its own to the sandbox DB."""

    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self._conn = sqlite3.connect(
            os.fspath(db_path), check_same_thread=False, isolation_level=None, timeout=10.0
        )
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        self._conn.close()

    def finish(self, job_id: str, status: str, callbacks: list[tuple[str, Any]]) -> list[int]:
        """End a running job and record the callbacks it owes, in one transaction.

        Returns the callbacks' seqs; none if the job was no longer running (cancelled).
        Recorded before anything is sent, so the records never trail the promise's settlement.
        """
        now = time.time()
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            row = self._conn.execute(
                "SELECT status, body FROM resources WHERE id = ? AND provider = ?",
                (job_id, PROVIDER),
            ).fetchone()
            if row is None or row[0] != "running":
                self._conn.execute("COMMIT")
                return []
            self._conn.execute(
                "UPDATE resources SET status = ?, updated_at = ? WHERE id = ?",
                (status, now, job_id),
            )
            body = json.loads(row[1])
            seqs = []
            for nth, (state, value) in enumerate(callbacks, start=1):
                cursor = self._conn.execute(
                    "INSERT INTO job_callbacks (job_id, job_key, promise_id, url, nth, state,"
                    " value, decided_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        job_id,
                        body["job_key"],
                        body["callback"]["promise_id"],
                        body["callback"]["url"],
                        nth,
                        state,
                        canonical_json(value),
                        now,
                    ),
                )
                seqs.append(int(cursor.lastrowid or 0))
            self._conn.execute("COMMIT")
            return seqs
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    def pending(self, seq: int) -> tuple[str, str, str, Any] | None:
        row = self._conn.execute(
            "SELECT url, promise_id, state, value FROM job_callbacks WHERE seq = ?", (seq,)
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2], json.loads(row[3]))

    def answered(
        self,
        seq: int,
        *,
        attempts: int,
        http_status: int | None,
        promise_state: str | None,
        error: str | None,
    ) -> None:
        self._conn.execute(
            "UPDATE job_callbacks SET sent_at = ?, attempts = ?, http_status = ?,"
            " promise_state = ?, error = ? WHERE seq = ?",
            (time.time(), attempts, http_status, promise_state, error, seq),
        )

    def jobs(self) -> list[JSONObject]:
        """Every job the provider holds, as `GET /jobs/{id}` shows it."""
        rows = self._conn.execute(
            "SELECT id, status, body FROM resources WHERE provider = ? AND kind = 'job'"
            " ORDER BY created_at",
            (PROVIDER,),
        ).fetchall()
        return [_job_reply(row[0], row[1], json.loads(row[2])) for row in rows]

    def all(self, key_prefix: str | None = None) -> list[dict[str, Any]]:
        cursor = self._conn.execute(
            "SELECT seq, job_id, job_key, promise_id, url, nth, state, value, decided_at,"
            " sent_at, attempts, http_status, promise_state, error FROM job_callbacks"
            " ORDER BY seq"
        )
        rows = cursor.fetchall()
        names = [d[0] for d in cursor.description]
        records = [dict(zip(names, row, strict=True)) for row in rows]
        for record in records:
            record["value"] = json.loads(record["value"])
        if key_prefix is not None:
            records = [r for r in records if str(r["job_key"]).startswith(key_prefix)]
        return records


def _job_reply(job_id: str, status: str, submission: JSONObject) -> JSONObject:
    return {
        "id": job_id,
        "provider": PROVIDER,
        "status": status,
        "spec": submission["spec"],
        "callback": submission["callback"],
        "idempotency_key": submission.get("job_key"),
    }


def _outcome_of(job_id: str, submission: JSONObject) -> list[tuple[str, Any]]:
    """The callbacks a finished job owes: (promise state, value) each."""
    spec = submission["spec"]
    match submission["simulate"]:
        case "fail":
            reason = (
                f"job {job_id} failed: executor lost while running {spec.get('task', 'the task')}"
            )
            # The shape the SDK decodes into an ApplicationError carrying `message`.
            return [("rejected", {"__type": "error", "message": reason})]
        case "call_back_twice":
            result = {"job_id": job_id, "status": "succeeded", "output": spec}
            return [("resolved", result), ("resolved", result | {"delivery": "repeated"})]
        case _:
            return [("resolved", {"job_id": job_id, "status": "succeeded", "output": spec})]


def _fire_kill_switch(request: Request, action: str) -> None:
    """Kill the process an armed kill switch names, after an effect (`make run-... CRASH=`).

    The same rule as the sandbox's provider calls: the first switch for this provider and
    action (or any action) fires, on its nth matching effect.
    """
    switches: list[Any] = getattr(request.app.state, "kill_switches", [])
    for i, switch in enumerate(switches):
        if switch.provider == PROVIDER and switch.action in (None, action):
            if switch.nth > 1:
                switches[i] = switch.model_copy(update={"nth": switch.nth - 1})
                return
            switches.remove(switch)
            os.kill(switch.pid, signal.SIGKILL)
            return


def jobs_router(
    store: SandboxStore,
    db_path: str | os.PathLike[str],
    *,
    narrate: bool = False,
    running: set[asyncio.Task[None]] | None = None,
) -> APIRouter:
    """The jobs provider's routes; include before the sandbox's catch-all provider route.

    `running` receives each job's task while it runs (its timer, then its callbacks), so a test
    can await the jobs instead of polling.
    """
    records = JobRecords(db_path)
    router = APIRouter(tags=["jobs"])
    tasks: set[asyncio.Task[None]] = set() if running is None else running

    def say(line: str) -> None:
        if narrate:
            print(f"jobs: {line}", flush=True)

    async def deliver(seq: int) -> None:
        pending = records.pending(seq)
        if pending is None:
            return
        url, promise_id, state, value = pending
        body = settle_envelope(promise_id, state, value)
        # The SDK's HTTP connection also sends a `resonate:origin` header, which its own docstring
        # calls unused by the server (the name is not a valid HTTP token, and httpx refuses it).
        headers = {"Content-Type": "application/json"}
        deadline = time.monotonic() + CALLBACK_GIVE_UP_SECONDS
        attempts = 0
        async with clients.async_client(timeout=10.0) as http:
            while True:
                attempts += 1
                error: str | None = None
                try:
                    response = await http.post(url.rstrip("/") + "/", content=body, headers=headers)
                    answer = response.json()
                    status = int(answer.get("head", {}).get("status", response.status_code))
                    if status < 500:
                        promise = answer.get("data", {}).get("promise") or {}
                        records.answered(
                            seq,
                            attempts=attempts,
                            http_status=status,
                            promise_state=promise.get("state"),
                            error=None if status < 400 else str(answer.get("data")),
                        )
                        say(
                            f"callback {state} -> promise {promise_id}: server answered {status},"
                            f" the promise is {promise.get('state')}"
                        )
                        return
                    error = f"server answered {status}"
                except (httpx.HTTPError, ValueError) as exc:
                    error = f"{type(exc).__name__}: {exc}"
                if time.monotonic() > deadline:
                    records.answered(
                        seq, attempts=attempts, http_status=None, promise_state=None, error=error
                    )
                    say(f"callback to {promise_id} abandoned after {attempts} attempts: {error}")
                    return
                pause = CALLBACK_RETRY_SECONDS[min(attempts, len(CALLBACK_RETRY_SECONDS)) - 1]
                await asyncio.sleep(pause)

    async def run_job(job_id: str, submission: JSONObject) -> None:
        await asyncio.sleep(submission["duration_seconds"])
        if submission["simulate"] == "never_call_back":
            say(f"{job_id} hangs: it will never call back")
            return
        owed = _outcome_of(job_id, submission)
        status = "failed" if owed[0][0] == "rejected" else "succeeded"
        seqs = records.finish(job_id, status, owed)
        if not seqs:
            return  # cancelled while it ran: a cancelled job calls nobody
        say(f"{job_id} {status}; calling back {len(seqs)} time(s)")
        # A duplicate goes out with the original, as an at-least-once sender's retry can: both
        # reach the server before the woken workflow can finish (which a crash test relies on,
        # since it reads any settle after the run's end as a late write).
        await asyncio.gather(*(deliver(seq) for seq in seqs))

    def start(job_id: str, submission: JSONObject) -> None:
        task = asyncio.get_running_loop().create_task(run_job(job_id, submission))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    @router.post("/jobs/submit")
    async def submit(
        request: Request,
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        # Read and checked here rather than by a typed parameter: an oversized body is refused
        # (413) before it is parsed.
        raw = await request.body()
        if len(raw) > MAX_SUBMISSION_BYTES:
            return JSONResponse(
                {"error": f"a job submission is at most {MAX_SUBMISSION_BYTES} bytes"}, 413
            )
        try:
            submission = JobSubmission.model_validate_json(raw)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            detail = [e | {"loc": ["body", *e["loc"]]} for e in errors]
            return JSONResponse({"error": "invalid request", "detail": detail}, 422)
        if idempotency_key is None:
            return JSONResponse(
                {"error": "Idempotency-Key is required: a job must never be submitted twice"},
                400,
            )
        # The sandbox's faults (`POST /_admin/faults`, provider "jobs"), where the app has them.
        faults = getattr(request.app.state, "faults", None)
        failure = (
            None if faults is None else await faults.inject(PROVIDER, "submit", idempotency_key)
        )
        if failure is not None:
            status, attempt = failure
            return JSONResponse(
                {"error": "injected failure", "provider": PROVIDER, "attempt": attempt},
                status,
            )
        body = submission.model_dump(mode="json")
        body["callback"]["url"] = str(submission.callback.url)
        call = Incoming(PROVIDER, "submit", idempotency_key, body, time.time())

        def create(tx: Transaction) -> ActionResult:
            job_id = f"job_{secrets.token_hex(6)}"
            job = body | {"job_key": idempotency_key}
            tx.create(job_id, PROVIDER, "job", "running", job)
            return ActionResult(200, _job_reply(job_id, "running", job), job_id)

        outcome = store.execute(call, create)
        if outcome.kind == "executed" and outcome.status_code == 200:
            job_id = json.loads(outcome.body)["id"]
            say(
                f"{job_id} submitted (key {idempotency_key}), runs"
                f" {submission.duration_seconds:g}s, calls back promise"
                f" {submission.callback.promise_id}"
            )
            start(job_id, body)
            _fire_kill_switch(request, "submit")
        elif outcome.kind == "replayed":
            say(f"submission {idempotency_key} replayed: the job was not submitted again")
        headers = {"Idempotent-Replayed": "true"} if outcome.kind == "replayed" else None
        return Response(outcome.body, outcome.status_code, headers, "application/json")

    @router.get("/jobs/{job_id}")
    async def get_job(job_id: str) -> JSONResponse:
        for record in records.jobs():
            if record["id"] == job_id:
                return JSONResponse(record)
        return JSONResponse({"error": f"unknown job {job_id!r}"}, 404)

    @router.post("/jobs/{job_id}/cancel")
    async def cancel(
        job_id: str,
        request: Request,
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        call = Incoming(PROVIDER, "cancel", idempotency_key, {"job_id": job_id}, time.time())

        def stop(tx: Transaction) -> ActionResult:
            job = tx.get(job_id)
            if job is None or (job.provider, job.kind) != (PROVIDER, "job"):
                return ActionResult(404, {"error": f"unknown job {job_id!r}"})
            reply = _job_reply(job_id, job.status, job.body)
            if job.status == "cancelled":
                return ActionResult(200, reply)  # a repeated cancel cancels nothing
            if job.status != "running":
                return ActionResult(409, reply | {"error": f"job {job_id} already {job.status}"})
            tx.update(job_id, "cancelled")
            return ActionResult(200, reply | {"status": "cancelled"}, job_id)

        outcome = store.execute(call, stop)
        if outcome.kind == "executed" and outcome.status_code == 200:
            _fire_kill_switch(request, "cancel")
        answer = json.loads(outcome.body)
        say(
            f"cancel {job_id}: {outcome.status_code}, "
            + (answer.get("error") or f"the job is {answer.get('status')}")
            + (" (replayed from its Idempotency-Key)" if outcome.kind == "replayed" else "")
        )
        headers = {"Idempotent-Replayed": "true"} if outcome.kind == "replayed" else None
        return Response(outcome.body, outcome.status_code, headers, "application/json")

    @router.get("/_admin/jobs")
    async def list_jobs() -> list[JSONObject]:
        return records.jobs()

    @router.get("/_admin/jobs/callbacks")
    async def list_callbacks(key_prefix: str | None = None) -> list[dict[str, Any]]:
        return records.all(key_prefix)

    return router

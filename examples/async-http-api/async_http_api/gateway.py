"""`python -m async_http_api.gateway`: begin/poll over HTTP, holding no state of its own.
  POST /jobs            start a report export on the worker group; 202 and the status URL at once
  GET  /jobs/{id}       the job's status now: pending, done (with its result) or failed (why)
  GET  /jobs/{id}?wait=N  the same, but while the job is pending wait up to N seconds (0-30) for
                        it to finish first: a long poll
The job id is chosen here: from the client's `Idempotency-Key` header if it sent one (so a POST
repeated after a lost answer finds the same job), else a fresh random one. The id is the job's
execution id on the Resonate server, where everything about the job lives: any gateway answers
for any job, and a gateway killed and replaced loses nothing.
  RESONATE_URL     the Resonate server (required)
  RESONATE_GROUP   the worker group that runs the jobs (default: async-http-api)
  GATEWAY_HOST     the address to listen on (default 127.0.0.1; 0.0.0.0 in a container)
  GATEWAY_PORT     the port to serve on (default 0: any free port)
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Literal

import uvicorn
from fastapi import (
    APIRouter,
    Depends,
    FastAPI,
    Header,
    HTTPException,
    Path,
    Query,
    Request,
    Response,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from resonate.error import ResonateTimeoutError, ServerError
from resonate.resonate import Resonate
from resonate.types import PromiseRecord

from async_http_api.workflow import ExportRequest, ExportResult

MAX_BODY_BYTES = 16 * 1024  # an export request is well under 1 KiB; anything bigger is a 413
MAX_WAIT_SECONDS = 30  # a long poll answers well within the idle timeout of proxies (60 s)
# A job still running after this is timed out by the Resonate server, and shows failed.
JOB_DEADLINE = timedelta(hours=1)
WORKFLOW = "export_report"

JobId = Annotated[str, Path(pattern=r"^job-[0-9a-f]{32}$", description="as POST /jobs chose it")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=r"^[!-~]{1,255}$",
        description="optional; the same key gives the same job (1-255 visible ASCII characters)",
    ),
]
Wait = Annotated[
    int,
    Query(
        ge=0,
        le=MAX_WAIT_SECONDS,
        description="while the job is pending, wait up to this many seconds for it to finish",
    ),
]


class Accepted(BaseModel):
    job_id: str
    status_url: str


class JobStatus(BaseModel):
    job_id: str
    status: Literal["pending", "done", "failed"]
    result: ExportResult | None = None  # done; failed because a system refused
    reason: str | None = None  # failed: why


class Problem(BaseModel):
    """Every refusal but a 422: what is wrong, in words."""

    detail: str


class FieldProblem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class FieldProblems(BaseModel):
    """A 422: one entry per wrong field (body, header, path or query), the input not echoed."""

    detail: list[FieldProblem]


def _answers(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error answers an operation gives, with their bodies, for the OpenAPI document."""
    described = {
        400: (Problem, "the body could not be read"),
        404: (Problem, "no such job"),
        409: (Problem, "the Idempotency-Key was used for a different request"),
        413: (Problem, f"the body is over {MAX_BODY_BYTES // 1024} KiB"),
        422: (FieldProblems, "the request does not match the schema: which fields, and why"),
    }
    return {
        code: {"model": described[code][0], "description": described[code][1]} for code in codes
    }


def job_id_for(idempotency_key: str | None) -> str:
    """The job's id (its execution id): derived from the client's key, or fresh."""
    if idempotency_key is None:
        return f"job-{secrets.token_hex(16)}"
    return f"job-{hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]}"


@dataclass(frozen=True)
class Workers:
    """How a gateway reaches the jobs: a Resonate client, and the group that runs them."""

    resonate: Resonate
    group: str


def _workers(request: Request) -> Workers:
    workers: Workers = request.app.state.workers
    return workers


WorkersDep = Annotated[Workers, Depends(_workers)]

router = APIRouter()


@router.post("/jobs", status_code=202, responses=_answers(400, 409, 413, 422))
async def begin(
    request: ExportRequest,
    response: Response,
    workers: WorkersDep,
    idempotency_key: IdempotencyKey = None,
) -> Accepted:
    resonate = workers.resonate
    job_id = job_id_for(idempotency_key)
    started = resonate.options(target=workers.group, timeout=JOB_DEADLINE).rpc(
        job_id, WORKFLOW, request.model_dump(mode="json")
    )
    await started.id()  # the job exists on the server: it will run, whatever happens here
    # Starting an id that exists attaches to that job without comparing arguments, so the
    # stored request is compared afterwards: of two racing POSTs with different bodies under
    # one key, one is a 409.
    if idempotency_key is not None and _request_of(await resonate.promises.get(job_id)) != request:
        raise HTTPException(409, "this Idempotency-Key was used for a different request")
    response.headers["Location"] = status_url = f"/jobs/{job_id}"
    return Accepted(job_id=job_id, status_url=status_url)


@router.get(
    "/jobs/{job_id}",
    response_model_exclude_none=True,
    responses={
        200: {
            "description": "the job's status (pending: a `Retry-After` header says when to ask"
            " again)",
            "headers": {"Retry-After": {"schema": {"type": "string"}}},
        },
        **_answers(404, 422),
    },
)
async def poll(job_id: JobId, response: Response, workers: WorkersDep, wait: Wait = 0) -> JobStatus:
    resonate = workers.resonate
    record = await _job(resonate, job_id)
    if record.state == "pending" and wait > 0:
        await _settled_within(resonate, job_id, wait)
        record = await _job(resonate, job_id)
    if record.state == "pending":
        response.headers["Retry-After"] = "1"
        return JobStatus(job_id=job_id, status="pending")
    return await _outcome(resonate, job_id)


def create_app(resonate_url: str, group: str) -> FastAPI:
    # A client in a group of its own: the server never hands it a job.
    resonate = Resonate(url=resonate_url, group="async-http-api-gateway", autostart=False)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        resonate.start()
        yield
        await resonate.stop()

    app = FastAPI(title="report export jobs", lifespan=lifespan)
    app.state.workers = Workers(resonate, group)
    app.include_router(router)
    app.add_middleware(LimitBody)

    @app.exception_handler(RequestValidationError)
    async def field_errors(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Which fields are wrong and why, without echoing the input: it may be huge, or hostile.
        fields = [{"loc": e["loc"], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": fields}, status_code=422)

    return app


async def _job(resonate: Resonate, job_id: str) -> PromiseRecord:
    """The job's execution as the server holds it; 404 if there is none."""
    try:
        record = await resonate.promises.get(job_id)
    except ServerError as exc:
        if exc.code != 404:
            raise
        raise HTTPException(404, f"no job {job_id!r}") from None
    if _request_of(record) is None:  # a promise, but not one of our jobs
        raise HTTPException(404, f"no job {job_id!r}")
    return record


async def _settled_within(resonate: Resonate, job_id: str, seconds: int) -> None:
    """Wait for the job to settle, up to `seconds`: the server tells this gateway when it does.

    The handle listens for the job's completion (no polling); giving up on the wait cancels
    only this request's wait, never the job.
    """
    handle = await resonate.get(job_id)
    with suppress(TimeoutError):
        await asyncio.wait_for(_settled(handle.result()), seconds)


async def _settled(result: Awaitable[Any]) -> None:
    with suppress(Exception):  # a failed job has settled too; its reason is read afterwards
        await result


async def _outcome(resonate: Resonate, job_id: str) -> JobStatus:
    """A settled job's status, from its result or its error (decoded by the SDK)."""
    try:
        value = await (await resonate.get(job_id)).result()
    except ResonateTimeoutError:
        reason = f"the job did not finish within {JOB_DEADLINE}"
        return JobStatus(job_id=job_id, status="failed", reason=reason)
    except Exception as exc:  # a system down past every retry, a bug: what the job raised
        return JobStatus(job_id=job_id, status="failed", reason=str(exc) or type(exc).__name__)
    result = ExportResult.model_validate(value)
    if result.outcome == "refused":
        reason = f"{result.refused_by} refused: {result.reason}"
        return JobStatus(job_id=job_id, status="failed", result=result, reason=reason)
    return JobStatus(job_id=job_id, status="done", result=result)


def _request_of(record: PromiseRecord) -> ExportRequest | None:
    """The request a job was started with; None if the promise is not an export job."""
    param = record.param.data
    if not isinstance(param, dict) or param.get("func") != WORKFLOW:
        return None
    try:
        return ExportRequest.model_validate(param["args"][0])
    except (LookupError, TypeError, ValidationError):
        return None


# ASGI, as the middleware below speaks it.
type Message = MutableMapping[str, Any]
type Receive = Callable[[], Awaitable[Message]]
type Send = Callable[[Message], Awaitable[None]]
type ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]


class LimitBody:
    """A body over MAX_BODY_BYTES is a 413 shaped like every other refusal, `{"detail": ...}`.

    (FastAPI's own `max_body_size` answers it in plain text, a body the OpenAPI document could
    not declare.) A body is at most MAX_BODY_BYTES, so it is read whole before the app sees it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = JSONResponse(
            {"detail": f"the body is over {MAX_BODY_BYTES // 1024} KiB"}, status_code=413
        )
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            await too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_BODY_BYTES:
                await too_large(scope, receive, send)
                return
            more = message.get("more_body", False)
        pending: list[Message] = [{"type": "http.request", "body": b"".join(chunks)}]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)


class _Server(uvicorn.Server):
    """Announces its URL once it accepts connections (the launcher and tests wait for it)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and sockets:
            host, port = sockets[0].getsockname()[:2]
            print(f"async-http-api gateway listening on http://{host}:{port}", flush=True)


def main() -> None:
    resonate_url = os.environ.get("RESONATE_URL")
    if not resonate_url:
        sys.exit(
            "async_http_api.gateway: RESONATE_URL is not set"
            " (start a server, or use `make run-async-http-api`)"
        )
    # Bound here rather than by uvicorn, so that port 0 turns into a port we can announce.
    host = os.environ.get("GATEWAY_HOST", "127.0.0.1")
    sock = socket.create_server((host, int(os.environ.get("GATEWAY_PORT", "0"))))
    # Nagle off, which asyncio does only for sockets made with proto IPPROTO_TCP (these have 0):
    # without it each answer on a kept-alive connection waits 40 ms for a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    app = create_app(resonate_url, os.environ.get("RESONATE_GROUP", "async-http-api"))
    # uvicorn shuts down gracefully on SIGTERM/SIGINT and then raises the signal again: exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    asyncio.run(_Server(uvicorn.Config(app, log_level="warning")).serve(sockets=[sock]))


if __name__ == "__main__":
    main()

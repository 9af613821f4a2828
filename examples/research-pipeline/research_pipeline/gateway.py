"""`python -m research_pipeline.gateway`: start research runs over HTTP, and report on them.
  POST /research             {"topic": ...}: start a run on the worker group; 202 and its status
                             URL at once (a run is several model calls: minutes with a real model)
  GET  /research/{id}        the run's status now: pending, delivered (with the report), refused
                             (which agent, and why) or failed (why)
  GET  /research/{id}?wait=N the same, but while the run is pending wait up to N seconds (0-30)
                             for it to finish first: a long poll
The run's id is chosen here: from the client's `Idempotency-Key` header if it sent one (so a POST
repeated after a lost answer finds the same run instead of paying for a second one), else a
fresh random one. The id is the run's execution id on the Resonate server, where everything
about the run lives: any gateway answers for any run, and a restart loses nothing.
  RESONATE_URL     the Resonate server (required)
  RESONATE_GROUP   the worker group that runs the pipeline (default: research-pipeline)
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

from research_pipeline.workflow import ResearchReport, ResearchRequest

MAX_BODY_BYTES = 16 * 1024  # a request is well under 1 KiB; anything bigger is a 413
MAX_WAIT_SECONDS = 30  # a long poll answers well within the idle timeout of proxies (60 s)
# A run still going after this is timed out by the Resonate server, and shows failed.
RUN_DEADLINE = timedelta(hours=1)
WORKFLOW = "research_topic"

ResearchId = Annotated[
    str, Path(pattern=r"^research-[0-9a-f]{32}$", description="as POST /research chose it")
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=r"^[!-~]{1,255}$",
        description="optional; the same key gives the same run (1-255 visible ASCII characters)",
    ),
]
Wait = Annotated[
    int,
    Query(
        ge=0,
        le=MAX_WAIT_SECONDS,
        description="while the run is pending, wait up to this many seconds for it to finish",
    ),
]


class Accepted(BaseModel):
    research_id: str
    status_url: str


class RunStatus(BaseModel):
    research_id: str
    # delivered: the report reached the channel (approved by the reviewer or not, as it says);
    # refused: an agent's model, or the channel, said no; failed: the run itself failed.
    status: Literal["pending", "delivered", "refused", "failed"]
    report: ResearchReport | None = None  # delivered, refused
    reason: str | None = None  # refused, failed: why


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
        404: (Problem, "no such run"),
        409: (Problem, "the Idempotency-Key was used for a different request"),
        413: (Problem, f"the body is over {MAX_BODY_BYTES // 1024} KiB"),
        422: (FieldProblems, "the request does not match the schema: which fields, and why"),
    }
    return {
        code: {"model": described[code][0], "description": described[code][1]} for code in codes
    }


def research_id_for(idempotency_key: str | None) -> str:
    """The run's id (its execution id): derived from the client's key, or fresh."""
    if idempotency_key is None:
        return f"research-{secrets.token_hex(16)}"
    return f"research-{hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]}"


@dataclass(frozen=True)
class Workers:
    """How a gateway reaches the runs: a Resonate client, and the group that runs them."""

    resonate: Resonate
    group: str


def _workers(request: Request) -> Workers:
    workers: Workers = request.app.state.workers
    return workers


WorkersDep = Annotated[Workers, Depends(_workers)]

router = APIRouter()


@router.post("/research", status_code=202, responses=_answers(400, 409, 413, 422))
async def begin(
    request: ResearchRequest,
    response: Response,
    workers: WorkersDep,
    idempotency_key: IdempotencyKey = None,
) -> Accepted:
    resonate = workers.resonate
    research_id = research_id_for(idempotency_key)
    started = resonate.options(target=workers.group, timeout=RUN_DEADLINE).rpc(
        research_id, WORKFLOW, request.model_dump(mode="json")
    )
    await started.id()  # the run exists on the server: it will run, whatever happens here
    # Starting an id that exists attaches to that run without comparing arguments, so the
    # stored request is compared afterwards: of two racing POSTs with different bodies under
    # one key, one is a 409.
    stored = _request_of(await resonate.promises.get(research_id))
    if idempotency_key is not None and stored != request:
        raise HTTPException(409, "this Idempotency-Key was used for a different request")
    response.headers["Location"] = status_url = f"/research/{research_id}"
    return Accepted(research_id=research_id, status_url=status_url)


@router.get(
    "/research/{research_id}",
    response_model_exclude_none=True,
    responses={
        200: {
            "description": "the run's status (pending: a `Retry-After` header says when to ask"
            " again)",
            "headers": {"Retry-After": {"schema": {"type": "string"}}},
        },
        **_answers(404, 422),
    },
)
async def poll(
    research_id: ResearchId, response: Response, workers: WorkersDep, wait: Wait = 0
) -> RunStatus:
    resonate = workers.resonate
    record = await _run(resonate, research_id)
    if record.state == "pending" and wait > 0:
        await _settled_within(resonate, research_id, wait)
        record = await _run(resonate, research_id)
    if record.state == "pending":
        response.headers["Retry-After"] = "1"
        return RunStatus(research_id=research_id, status="pending")
    return await _outcome(resonate, research_id)


def create_app(resonate_url: str, group: str) -> FastAPI:
    # A client in a group of its own: the server never hands it a run.
    resonate = Resonate(url=resonate_url, group="research-pipeline-gateway", autostart=False)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        resonate.start()
        yield
        await resonate.stop()

    app = FastAPI(title="research pipeline", lifespan=lifespan)
    app.state.workers = Workers(resonate, group)
    app.include_router(router)
    app.add_middleware(LimitBody)

    @app.exception_handler(RequestValidationError)
    async def field_errors(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Which fields are wrong and why, without echoing the input: it may be huge, or hostile.
        fields = [{"loc": e["loc"], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": fields}, status_code=422)

    return app


async def _run(resonate: Resonate, research_id: str) -> PromiseRecord:
    """The run's execution as the server holds it; 404 if there is none."""
    try:
        record = await resonate.promises.get(research_id)
    except ServerError as exc:
        if exc.code != 404:
            raise
        raise HTTPException(404, f"no research run {research_id!r}") from None
    if _request_of(record) is None:  # a promise, but not one of our runs
        raise HTTPException(404, f"no research run {research_id!r}")
    return record


async def _settled_within(resonate: Resonate, research_id: str, seconds: int) -> None:
    """Wait for the run to settle, up to `seconds`: the server tells this gateway when it does.

    The handle listens for the run's completion (no polling); giving up on the wait cancels
    only this request's wait, never the run.
    """
    handle = await resonate.get(research_id)
    with suppress(TimeoutError):
        await asyncio.wait_for(_settled(handle.result()), seconds)


async def _settled(result: Awaitable[Any]) -> None:
    with suppress(Exception):  # a failed run has settled too; its reason is read afterwards
        await result


async def _outcome(resonate: Resonate, research_id: str) -> RunStatus:
    """A settled run's status, from its result or its error (decoded by the SDK)."""
    try:
        value = await (await resonate.get(research_id)).result()
    except ResonateTimeoutError:
        reason = f"the run did not finish within {RUN_DEADLINE}"
        return RunStatus(research_id=research_id, status="failed", reason=reason)
    except Exception as exc:  # a model down past every retry, a bug: what the run raised
        reason = str(exc) or type(exc).__name__
        return RunStatus(research_id=research_id, status="failed", reason=reason)
    report = ResearchReport.model_validate(value)
    if report.outcome == "refused":
        return RunStatus(
            research_id=research_id, status="refused", report=report, reason=report.reason
        )
    return RunStatus(research_id=research_id, status="delivered", report=report)


def _request_of(record: PromiseRecord) -> ResearchRequest | None:
    """The request a run was started with; None if the promise is not a research run."""
    param = record.param.data
    if not isinstance(param, dict) or param.get("func") != WORKFLOW:
        return None
    try:
        return ResearchRequest.model_validate(param["args"][0])
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
            print(f"research-pipeline gateway listening on http://{host}:{port}", flush=True)


def main() -> None:
    resonate_url = os.environ.get("RESONATE_URL")
    if not resonate_url:
        sys.exit(
            "research_pipeline.gateway: RESONATE_URL is not set"
            " (start a server, or use `make run-research-pipeline`)"
        )
    # Bound here rather than by uvicorn, so that port 0 turns into a port we can announce.
    host = os.environ.get("GATEWAY_HOST", "127.0.0.1")
    sock = socket.create_server((host, int(os.environ.get("GATEWAY_PORT", "0"))))
    # Nagle off, which asyncio does only for sockets made with proto IPPROTO_TCP (these have 0):
    # without it each answer on a kept-alive connection waits 40 ms for a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    app = create_app(resonate_url, os.environ.get("RESONATE_GROUP", "research-pipeline"))
    # uvicorn shuts down gracefully on SIGTERM/SIGINT and then raises the signal again: exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    asyncio.run(_Server(uvicorn.Config(app, log_level="warning")).serve(sockets=[sock]))


if __name__ == "__main__":
    main()

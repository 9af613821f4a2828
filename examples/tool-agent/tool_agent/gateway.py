"""`python -m tool_agent.gateway`: start agent runs, read how they ended, answer their questions.

  POST /runs                          {"run_id", "task", "max_model_calls"?}: 202 and a status URL
  GET  /runs/{run_id}                 running, or how the run ended (the answer, the bookings)
  POST /questions/{question_id}/answer {"answer"}: resolves the promise the run waits on

The run id is the execution id, chosen by the client, so a repeated POST attaches to the same run
(a different request under a taken id is a 409). A question id is the id of the promise a run
waits on, posted to chat with the question; the gateway answers only promises that are questions
of an agent run (a latent promise whose parent is one), so it cannot be used to settle anything
else. A question is answered once: the same answer again is a 200, another answer, or one after
the deadline, a 409. The gateway keeps nothing of its own: it reads everything from the Resonate
server, so any number of gateways can serve the same runs.
  RESONATE_URL     the Resonate server (required)
  RESONATE_GROUP   the worker group that runs agents (default: tool-agent)
  GATEWAY_HOST     the address to listen on (default 127.0.0.1; 0.0.0.0 in a container)
  GATEWAY_PORT     the port to serve on (default 0: any free port)
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, StringConstraints, TypeAdapter, ValidationError
from resonate.error import ServerError
from resonate.resonate import Resonate
from resonate.types import PromiseRecord, Value
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tool_agent.workflow import AgentEnded, AgentRequest, RunId

MAX_BODY_BYTES = 16 * 1024  # a task is at most 2,000 characters; anything this big is a 413
# A question id is a promise id the SDK made from a run id: the run id, ':', and step numbers.
QuestionId = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}(:[0-9.]+)+$")
]
Answer = Annotated[
    str,
    StringConstraints(min_length=1, max_length=1000, pattern=r"^[^\p{C}\s](?:[^\p{C}]|\n)*$"),
]


class Accepted(BaseModel):
    run_id: str
    status_url: str


class RunStatus(BaseModel):
    run_id: str
    # running: still at work, or waiting for an answer; answered, gave-up, refused: see
    # AgentEnded; failed: the run itself failed (a provider down through every retry).
    state: Literal["running", "answered", "gave-up", "refused", "failed"]
    answer: str | None = None
    reason: str | None = None
    bookings: list[str] | None = None
    model_calls: int | None = None


class AnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    answer: Answer


class Answered(BaseModel):
    question_id: str
    answer: str


class Problem(BaseModel):
    """A 4xx answer: what is wrong."""

    detail: str


class FieldProblem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class FieldProblems(BaseModel):
    """A 422 answer: one entry per wrong field, the input not echoed."""

    detail: list[FieldProblem]


def _answers(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error answers an operation gives, with their bodies, for the OpenAPI document."""
    described = {
        400: (Problem, "the body could not be read"),
        404: (Problem, "no such run, or no such question"),
        409: (Problem, "the id is taken by a different request, or the question was settled"),
        413: (Problem, f"the body is over {MAX_BODY_BYTES // 1024} KiB"),
        422: (FieldProblems, "the request does not match the schema: which fields, and why"),
    }
    return {
        code: {"model": described[code][0], "description": described[code][1]} for code in codes
    }


@dataclass(frozen=True)
class Workers:
    """How the gateway reaches the runs: a Resonate client, and the group that runs agents."""

    resonate: Resonate
    group: str

    async def get(self, promise_id: str) -> PromiseRecord | None:
        try:
            return await self.resonate.promises.get(promise_id)
        except ServerError as exc:
            if exc.code != 404:
                raise
            return None

    async def run_of(self, run_id: str) -> tuple[PromiseRecord, AgentRequest] | None:
        """The run's promise and the request it was started with; None if it is no agent run."""
        record = await self.get(run_id)
        if record is None:
            return None
        param = record.param.data
        if not isinstance(param, dict) or param.get("func") != "agent":
            return None
        try:
            return record, AgentRequest.model_validate(param["args"][0])
        except (LookupError, TypeError, ValidationError):
            return None


def _workers(request: Request) -> Workers:
    workers: Workers = request.app.state.workers
    return workers


WorkersDep = Annotated[Workers, Depends(_workers)]

router = APIRouter()
_ENDED = TypeAdapter(AgentEnded)


@router.post("/runs", status_code=202, responses=_answers(400, 409, 413, 422))
async def start(run: AgentRequest, response: Response, workers: WorkersDep) -> Accepted:
    # Starting an id that exists attaches to that execution without comparing arguments, so the
    # stored request is compared afterwards: of two racing POSTs with different bodies, one is 409.
    started = workers.resonate.options(target=workers.group).rpc(
        run.run_id, "agent", run.model_dump(mode="json")
    )
    await started.id()
    found = await workers.run_of(run.run_id)
    if found is None or found[1] != run:
        raise HTTPException(409, f"run {run.run_id!r} exists with a different request")
    response.headers["Location"] = status_url = f"/runs/{run.run_id}"
    return Accepted(run_id=run.run_id, status_url=status_url)


@router.get("/runs/{run_id}", response_model_exclude_none=True, responses=_answers(404, 422))
async def status(run_id: Annotated[RunId, Path()], workers: WorkersDep) -> RunStatus:
    found = await workers.run_of(run_id)
    if found is None:
        raise HTTPException(404, f"no run {run_id!r}")
    if found[0].state == "pending":
        return RunStatus(run_id=run_id, state="running")
    try:
        # `get` knows no return type: the outcome comes back as JSON, read here as what it is.
        ended = _ENDED.validate_python(await (await workers.resonate.get(run_id)).result())
    except Exception as exc:  # not an agent's outcome (a provider down for good): a person looks
        return RunStatus(run_id=run_id, state="failed", reason=str(exc))
    return RunStatus(
        run_id=run_id,
        state=ended.state,
        answer=ended.answer,
        reason=ended.reason,
        bookings=ended.bookings,
        model_calls=ended.model_calls,
    )


@router.post("/questions/{question_id}/answer", responses=_answers(400, 404, 409, 413, 422))
async def answer(
    question_id: Annotated[QuestionId, Path()], body: AnswerRequest, workers: WorkersDep
) -> Answered:
    question = await workers.get(question_id)
    if question is None or not await _is_a_question(workers, question):
        raise HTTPException(404, f"no question {question_id!r}")
    value = {"answer": body.answer}
    if question.state == "pending":
        try:
            question = await workers.resonate.promises.resolve(question_id, Value(data=value))
        except ServerError as exc:
            # Some servers refuse to settle a settled promise instead of returning it as it is.
            if exc.code not in (403, 409):
                raise
            question = await workers.resonate.promises.get(question_id)
    if question.state != "resolved":
        raise HTTPException(409, f"question {question_id!r} is closed: nobody answered in time")
    if question.value.data != value:  # answered already, otherwise: the first answer stands
        raise HTTPException(409, f"question {question_id!r} was answered already")
    return Answered(question_id=question_id, answer=body.answer)


async def _is_a_question(workers: Workers, record: PromiseRecord) -> bool:
    """A latent promise (`ctx.promise`) of an agent run: what `ask_human` waits on."""
    if record.tags.get("resonate:external") != "true":
        return False
    parent = record.tags.get("resonate:parent")
    return parent is not None and await workers.run_of(parent) is not None


def create_app(resonate_url: str, group: str) -> FastAPI:
    # A client in a group of its own: the server never hands it workflow work.
    resonate = Resonate(url=resonate_url, group="tool-agent-gateway", autostart=False)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        resonate.start()
        yield
        await resonate.stop()

    app = FastAPI(title="tool-agent gateway", lifespan=lifespan)
    app.state.workers = Workers(resonate, group)
    app.include_router(router)
    app.add_middleware(_BodyLimit)

    @app.exception_handler(RequestValidationError)
    async def field_errors(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Which fields are wrong and why, without echoing the input: it may be huge, or hostile.
        fields = [{"loc": e["loc"], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": fields}, status_code=422)

    return app


class _BodyLimit:
    """Refuses a body over MAX_BODY_BYTES: a 413 with the same JSON body as every other error."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = JSONResponse(
            Problem(detail=f"the body is over {MAX_BODY_BYTES // 1024} KiB").model_dump(), 413
        )
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            await too_large(scope, receive, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            if len(body) > MAX_BODY_BYTES:
                await too_large(scope, receive, send)
                return
            more = message.get("more_body", False)
        whole: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

        async def replay() -> Message:
            return whole.pop() if whole else await receive()

        await self.app(scope, replay, send)


class _Server(uvicorn.Server):
    """Announces its URL once it accepts connections (the launcher and tests wait for it)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and sockets:
            host, port = sockets[0].getsockname()[:2]
            print(f"tool-agent gateway listening on http://{host}:{port}", flush=True)


def main() -> None:
    resonate_url = os.environ.get("RESONATE_URL")
    if not resonate_url:
        sys.exit("tool_agent.gateway: RESONATE_URL is not set (or use `make run-tool-agent`)")
    # Bound here rather than by uvicorn, so that port 0 turns into a port we can announce.
    host = os.environ.get("GATEWAY_HOST", "127.0.0.1")
    sock = socket.create_server((host, int(os.environ.get("GATEWAY_PORT", "0"))))
    # Nagle off, which asyncio does only for sockets made with proto IPPROTO_TCP (these have 0):
    # without it each answer on a kept-alive connection waits 40 ms for a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    app = create_app(resonate_url, os.environ.get("RESONATE_GROUP", "tool-agent"))
    # uvicorn shuts down gracefully on SIGTERM/SIGINT and then raises the signal again: exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    asyncio.run(_Server(uvicorn.Config(app, log_level="warning")).serve(sockets=[sock]))


if __name__ == "__main__":
    main()

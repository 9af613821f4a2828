"""`python -m webservers.fastapi_app`: the booking route in FastAPI; this process is the worker.

FastAPI is asyncio already: the worker starts on uvicorn's event loop (in the lifespan), and a
route awaits the booking directly: `resonate.run(...)` executes `book_tickets` on this same loop,
between requests. Routes and environment: see webservers.service.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from webservers.service import (
    MAX_BODY_BYTES,
    Answer,
    Settings,
    Worker,
    announce,
    book,
    start_worker,
    status,
    too_large,
    unavailable,
)
from webservers.workflow import TicketRequest


class Problem(BaseModel):
    """A 4xx or 5xx answer: what is wrong."""

    detail: str


class FieldProblem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class FieldProblems(BaseModel):
    """A 422 answer: one entry per wrong field, the input not echoed."""

    detail: list[FieldProblem]


class Booked(BaseModel):
    ticket_id: str
    status: str  # booked, sold_out, unavailable; pending (202)
    hold_id: str | None = None
    email_id: str | None = None
    problem: str | None = None
    status_url: str | None = None  # pending: where to ask again


def _answers(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The answers an operation gives, with their bodies, for the OpenAPI document."""
    described = {
        202: (Booked, "still running: ask again at `status_url`"),
        404: (Problem, "no such ticket"),
        409: (Problem, "the ticket id is taken by a different request"),
        413: (Problem, f"the body is over {MAX_BODY_BYTES // 1024} KiB"),
        422: (FieldProblems, "the request does not match the schema: which fields, and why"),
        503: (Problem, "the Resonate server did not answer in time"),
    }
    return {
        code: {"model": described[code][0], "description": described[code][1]} for code in codes
    }


def _worker(request: Request) -> Worker:
    worker: Worker = request.app.state.worker
    return worker


WorkerDep = Annotated[Worker, Depends(_worker)]


def _response(answer: Answer) -> JSONResponse:
    headers = {"Location": answer.location} if answer.location else None
    return JSONResponse(answer.body, answer.status, headers)


router = APIRouter()


@router.post("/tickets", response_model=Booked, responses=_answers(202, 409, 413, 422, 503))
async def book_route(request: TicketRequest, worker: WorkerDep) -> JSONResponse:
    return _response(await book(worker, request))


@router.get("/tickets/{ticket_id}", response_model=Booked, responses=_answers(202, 404, 422, 503))
async def status_route(ticket_id: str, worker: WorkerDep) -> JSONResponse:
    return _response(await status(worker, ticket_id))


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.worker = start_worker(settings)  # on uvicorn's loop, where routes await it
        yield
        await app.state.worker.stop()

    app = FastAPI(title="webservers: FastAPI", lifespan=lifespan)
    app.include_router(router)
    app.add_middleware(_BodyLimit)

    @app.exception_handler(RequestValidationError)
    async def field_errors(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Which fields are wrong and why, without echoing the input: it may be huge, or hostile.
        fields = [{"loc": e["loc"], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": fields[:10]}, status_code=422)

    @app.exception_handler(TimeoutError)
    async def resonate_down(_: Request, exc: TimeoutError) -> JSONResponse:
        return _response(unavailable())

    return app


class _BodyLimit:
    """Refuses a body over MAX_BODY_BYTES: a 413 with the same JSON body as every other error.

    The body is read here, bounded, and handed on whole: it is at most 16 KiB.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answer = too_large()
        refuse = JSONResponse(answer.body, answer.status)
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            await refuse(scope, receive, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            if len(body) > MAX_BODY_BYTES:
                await refuse(scope, receive, send)
                return
            more = message.get("more_body", False)
        whole: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

        async def replay() -> Message:
            return whole.pop() if whole else await receive()

        await self.app(scope, replay, send)


class _Server(uvicorn.Server):
    """Announces itself once it accepts connections (the launcher and tests wait for it)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and sockets:
            host, port = sockets[0].getsockname()[:2]
            announce("fastapi", host, port)


def main() -> None:
    settings = Settings.from_env("webservers.fastapi_app")
    # Bound here rather than by uvicorn, so that port 0 turns into a port we can announce.
    sock = socket.create_server((settings.host, settings.port))
    # Nagle off, which asyncio does only for sockets made with proto IPPROTO_TCP (these have 0):
    # without it each answer on a kept-alive connection waits 40 ms for a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT and then raises the signal again: exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    server = _Server(uvicorn.Config(create_app(settings), log_level="warning"))
    asyncio.run(server.serve(sockets=[sock]))


if __name__ == "__main__":
    main()

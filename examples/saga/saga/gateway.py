"""`python -m saga.gateway`: the HTTP API. `POST /trips` books a trip, `GET /trips/{id}` reports.

It checks each request against the `Trip` model, starts `book_trip` on the worker group with the
trip id as the execution id, and reads the execution back from the Resonate server. It keeps
nothing of its own, so any number of gateways can serve the same trips and a restart loses nothing.
  RESONATE_URL     the Resonate server (required)
  RESONATE_GROUP   the worker group that books trips (default: saga)
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
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from resonate.error import ServerError
from resonate.resonate import Resonate
from resonate.types import PromiseRecord
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from saga.workflow import Trip, TripId, TripRolledBackError

MAX_BODY_BYTES = 16 * 1024  # a trip request is well under 1 KiB; anything bigger is a 413


class Accepted(BaseModel):
    trip_id: str
    status_url: str


class Undo(BaseModel):
    """What became of one reservation when the trip was rolled back (see `Compensation`)."""

    provider: str
    outcome: Literal["cancelled", "voided", "refused", "unreachable"]
    reservation_id: str | None = None
    reason: str | None = None


class TripStatus(BaseModel):
    trip_id: str
    # rolled_back: everything booked was undone; rollback_incomplete: some reservations are
    # still in place (`undo` says which, and why); failed: the workflow itself failed.
    status: Literal["pending", "booked", "rolled_back", "rollback_incomplete", "failed"]
    confirmations: dict[str, str] | None = None  # booked: provider -> reservation id
    failed: str | None = None  # rolled_back, rollback_incomplete: the provider that failed
    reason: str | None = None  # rolled_back, rollback_incomplete, failed: why
    undo: list[Undo] | None = None  # rolled_back, rollback_incomplete: in the order undone


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
        404: (Problem, "no such trip"),
        409: (Problem, "the trip id is taken by a different request"),
        413: (Problem, f"the body is over {MAX_BODY_BYTES // 1024} KiB"),
        422: (FieldProblems, "the request does not match the schema: which fields, and why"),
    }
    return {
        code: {"model": described[code][0], "description": described[code][1]} for code in codes
    }


@dataclass(frozen=True)
class Workers:
    """How the gateway reaches the workflows: a Resonate client, and the group that books trips."""

    resonate: Resonate
    group: str


def _workers(request: Request) -> Workers:
    workers: Workers = request.app.state.workers
    return workers


WorkersDep = Annotated[Workers, Depends(_workers)]


router = APIRouter()


@router.post("/trips", status_code=202, responses=_answers(400, 409, 413, 422))
async def book(trip: Trip, response: Response, workers: WorkersDep) -> Accepted:
    # Starting an id that exists attaches to that execution without comparing arguments, so the
    # stored request is compared afterwards: of two racing POSTs with different bodies, one is 409.
    resonate = workers.resonate
    started = resonate.options(target=workers.group).rpc(
        trip.trip_id, "book_trip", trip.model_dump(mode="json")
    )
    await started.id()
    if _trip_of(await resonate.promises.get(trip.trip_id)) != trip:
        raise HTTPException(409, f"trip {trip.trip_id!r} exists with a different request")
    response.headers["Location"] = status_url = f"/trips/{trip.trip_id}"
    return Accepted(trip_id=trip.trip_id, status_url=status_url)


@router.get("/trips/{trip_id}", response_model_exclude_none=True, responses=_answers(404, 422))
async def status(trip_id: TripId, workers: WorkersDep) -> TripStatus:
    resonate = workers.resonate
    try:
        record = await resonate.promises.get(trip_id)
    except ServerError as exc:
        if exc.code != 404:
            raise
        raise HTTPException(404, f"no trip {trip_id!r}") from None
    if _trip_of(record) is None:
        raise HTTPException(404, f"no trip {trip_id!r}")
    if record.state == "pending":
        return TripStatus(trip_id=trip_id, status="pending")
    try:
        confirmations = await (await resonate.get(trip_id)).result()
    except TripRolledBackError as rolled_back:
        return TripStatus(
            trip_id=trip_id,
            status="rollback_incomplete" if rolled_back.left_in_place else "rolled_back",
            failed=rolled_back.failed,
            reason=rolled_back.reason,
            undo=[Undo.model_validate(asdict(c)) for c in rolled_back.compensations],
        )
    except Exception as exc:  # not a trip outcome (a bug, say): a person must look
        return TripStatus(trip_id=trip_id, status="failed", reason=str(exc))
    return TripStatus(trip_id=trip_id, status="booked", confirmations=confirmations)


def create_app(resonate_url: str, group: str) -> FastAPI:
    # A client in a group of its own: the server never hands it workflow work.
    resonate = Resonate(url=resonate_url, group="saga-gateway", autostart=False)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        resonate.start()
        yield
        await resonate.stop()

    app = FastAPI(title="saga gateway", lifespan=lifespan)
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
    """Refuses a body over MAX_BODY_BYTES: a 413 with the same JSON body as every other error.

    (FastAPI's own `max_body_size` answers a declared Content-Length over the limit in plain
    text, which the OpenAPI document could not describe.) The body is read here, bounded, and
    handed on whole: it is at most 16 KiB.
    """

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


def _trip_of(record: PromiseRecord) -> Trip | None:
    """The trip an execution was started with; None if the execution is not a trip booking."""
    param = record.param.data
    if not isinstance(param, dict) or param.get("func") != "book_trip":
        return None
    try:
        return Trip.model_validate(param["args"][0])
    except (LookupError, TypeError, ValidationError):
        return None


class _Server(uvicorn.Server):
    """Announces its URL once it accepts connections (the launcher and tests wait for it)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and sockets:
            host, port = sockets[0].getsockname()[:2]
            print(f"saga gateway listening on http://{host}:{port}", flush=True)


def main() -> None:
    resonate_url = os.environ.get("RESONATE_URL")
    if not resonate_url:
        sys.exit("saga.gateway: RESONATE_URL is not set (start a server, or use `make run-saga`)")
    # Bound here rather than by uvicorn, so that port 0 turns into a port we can announce.
    host = os.environ.get("GATEWAY_HOST", "127.0.0.1")
    sock = socket.create_server((host, int(os.environ.get("GATEWAY_PORT", "0"))))
    # Nagle off, which asyncio does only for sockets made with proto IPPROTO_TCP (these have 0):
    # without it each answer on a kept-alive connection waits 40 ms for a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    app = create_app(resonate_url, os.environ.get("RESONATE_GROUP", "saga"))
    # uvicorn shuts down gracefully on SIGTERM/SIGINT and then raises the signal again: exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    asyncio.run(_Server(uvicorn.Config(app, log_level="warning")).serve(sockets=[sock]))


if __name__ == "__main__":
    main()

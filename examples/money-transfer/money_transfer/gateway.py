"""`python -m money_transfer.gateway`: the HTTP API. `POST /transfers` starts a transfer,
`GET /transfers/{id}` reports it.

It checks each request against the `TransferRequest` model, starts `transfer` on the worker group
with the transfer id as the execution id (a duplicate POST attaches to the execution it started),
and reads the execution back from the Resonate server. It keeps nothing of its own.
  RESONATE_URL     the Resonate server (required)
  RESONATE_GROUP   the worker group that moves money (default: money-transfer)
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
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from resonate.error import ServerError
from resonate.resonate import Resonate
from resonate.types import PromiseRecord
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from money_transfer.workflow import TransferId, TransferRequest, TransferResult

MAX_BODY_BYTES = 16 * 1024  # a transfer request is about 100 bytes; anything bigger is a 413


class Accepted(BaseModel):
    transfer_id: str
    status_url: str


class TransferStatus(BaseModel):
    transfer_id: str
    # completed: moved; declined: refused at the debit, nothing moved; reversed: refused at the
    # credit, the debit put back; failed: the workflow itself failed (a person must look).
    status: Literal["pending", "completed", "declined", "reversed", "failed"]
    from_account: str
    to_account: str
    amount_cents: int
    reason: str | None = None  # declined, reversed: the ledger's refusal; failed: the error


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
        404: (Problem, "no such transfer"),
        409: (Problem, "the transfer id is taken by a different request"),
        413: (Problem, f"the body is over {MAX_BODY_BYTES // 1024} KiB"),
        422: (FieldProblems, "the request does not match the schema: which fields, and why"),
    }
    return {
        code: {"model": described[code][0], "description": described[code][1]} for code in codes
    }


@dataclass(frozen=True)
class Workers:
    """How the gateway reaches the workflows: a Resonate client, and the group that moves money."""

    resonate: Resonate
    group: str


def _workers(request: Request) -> Workers:
    workers: Workers = request.app.state.workers
    return workers


WorkersDep = Annotated[Workers, Depends(_workers)]


router = APIRouter()


@router.post("/transfers", status_code=202, responses=_answers(400, 409, 413, 422))
async def start_transfer(
    request: TransferRequest, response: Response, workers: WorkersDep
) -> Accepted:
    # Starting an id that exists attaches to that execution without comparing arguments, so the
    # stored request is compared afterwards: of two racing POSTs with different bodies, one is 409.
    resonate = workers.resonate
    started = resonate.options(target=workers.group).rpc(
        request.transfer_id, "transfer", request.model_dump(mode="json")
    )
    await started.id()
    if _request_of(await resonate.promises.get(request.transfer_id)) != request:
        raise HTTPException(
            409, f"transfer {request.transfer_id!r} exists with a different request"
        )
    response.headers["Location"] = status_url = f"/transfers/{request.transfer_id}"
    return Accepted(transfer_id=request.transfer_id, status_url=status_url)


@router.get(
    "/transfers/{transfer_id}", response_model_exclude_none=True, responses=_answers(404, 422)
)
async def status(transfer_id: TransferId, workers: WorkersDep) -> TransferStatus:
    resonate = workers.resonate
    try:
        record = await resonate.promises.get(transfer_id)
    except ServerError as exc:
        if exc.code != 404:
            raise
        raise HTTPException(404, f"no transfer {transfer_id!r}") from None
    request = _request_of(record)
    if request is None:
        raise HTTPException(404, f"no transfer {transfer_id!r}")
    moved = request.model_dump(exclude={"transfer_id"})
    if record.state == "pending":
        return TransferStatus(transfer_id=transfer_id, status="pending", **moved)
    try:
        result = await (await resonate.get(transfer_id)).result()
        outcome = TransferResult.model_validate(result)
    except Exception as exc:  # not a transfer outcome (a bug, say): a person must look
        return TransferStatus(transfer_id=transfer_id, status="failed", reason=str(exc), **moved)
    return TransferStatus(
        transfer_id=transfer_id, status=outcome.status, reason=outcome.reason, **moved
    )


def create_app(resonate_url: str, group: str) -> FastAPI:
    # A client in a group of its own: the server never hands it workflow work.
    resonate = Resonate(url=resonate_url, group="money-transfer-gateway", autostart=False)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        resonate.start()
        yield
        await resonate.stop()

    app = FastAPI(title="money-transfer gateway", lifespan=lifespan)
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


def _request_of(record: PromiseRecord) -> TransferRequest | None:
    """The request an execution was started with; None if the execution is not a transfer."""
    param = record.param.data
    if not isinstance(param, dict) or param.get("func") != "transfer":
        return None
    try:
        return TransferRequest.model_validate(param["args"][0])
    except (LookupError, TypeError, ValidationError):
        return None


class _Server(uvicorn.Server):
    """Announces its URL once it accepts connections (the launcher and tests wait for it)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and sockets:
            host, port = sockets[0].getsockname()[:2]
            print(f"money-transfer gateway listening on http://{host}:{port}", flush=True)


def main() -> None:
    resonate_url = os.environ.get("RESONATE_URL")
    if not resonate_url:
        sys.exit(
            "money_transfer.gateway: RESONATE_URL is not set"
            " (start a server, or use `make run-money-transfer`)"
        )
    # Bound here rather than by uvicorn, so that port 0 turns into a port we can announce.
    host = os.environ.get("GATEWAY_HOST", "127.0.0.1")
    sock = socket.create_server((host, int(os.environ.get("GATEWAY_PORT", "0"))))
    # Nagle off, which asyncio does only for sockets made with proto IPPROTO_TCP (these have 0):
    # without it each answer on a kept-alive connection waits 40 ms for a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    app = create_app(resonate_url, os.environ.get("RESONATE_GROUP", "money-transfer"))
    # uvicorn shuts down gracefully on SIGTERM/SIGINT and then raises the signal again: exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    asyncio.run(_Server(uvicorn.Config(app, log_level="warning")).serve(sockets=[sock]))


if __name__ == "__main__":
    main()

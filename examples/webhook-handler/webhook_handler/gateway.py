"""`python -m webhook_handler.gateway`: the webhook endpoint the payments provider delivers to.

`POST /webhooks/payments` takes one event. In this order:
  1. a body over 64 KiB is a 413;
  2. the `Payments-Signature` header (`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`,
     Stripe's scheme) must carry a signature of these exact bytes under the shared secret, made
     within the last five minutes: otherwise a 400, and nothing is started. The comparison is
     `hmac.compare_digest`, which takes as long for a near miss as for a wild one;
  3. the body must be an event this shop understands (a 422 names the field); an event type it
     does not act on is answered 200 and ignored, as the provider would otherwise retry it;
  4. `handle_payment_event` is started on the worker group with the event id as the execution id.
     A re-delivery of the event attaches to that execution. The answer, 202, comes as soon as the
     execution exists, not when it finishes: the provider's timeout is short, and the work is
     durable from here on. The same event id with different contents is a 409.

`GET /events/{event_id}` reports what became of an event. The gateway keeps nothing of its own.
  RESONATE_URL     the Resonate server (required)
  RESONATE_GROUP   the worker group that handles events (default: webhook-handler)
  WEBHOOK_SECRET   the signing secret shared with the provider (see `signing_secret`)
  GATEWAY_HOST     the address to listen on (default 127.0.0.1; 0.0.0.0 in a container)
  GATEWAY_PORT     the port to serve on (default 0: any free port)
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, StringConstraints, ValidationError
from resonate.error import ServerError
from resonate.resonate import Resonate
from resonate.types import PromiseRecord
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from webhook_handler.steps import data_dir
from webhook_handler.workflow import HANDLED_TYPES, EventId, EventOutcome, PaymentEvent

MAX_BODY_BYTES = 64 * 1024  # a payment event is a few hundred bytes
SIGNATURE_HEADER = "Payments-Signature"
# How old a signature may be. Stripe's default: long enough for clocks a little apart and a slow
# network, short enough that a captured delivery cannot be replayed tomorrow.
TOLERANCE_SECONDS = 300


def signing_secret() -> bytes:
    """The secret deliveries are signed with: WEBHOOK_SECRET, as the provider gave it.

    Without it (a development machine), a random secret kept in the order book's directory,
    readable only by this user, made by whichever process asks first: the demo registers the
    endpoint with it. In production, set WEBHOOK_SECRET from a secret store.
    """
    configured = os.environ.get("WEBHOOK_SECRET")
    if configured:
        return configured.encode()
    path = data_dir() / "signing-secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_secret(path)
    with os.fdopen(descriptor, "w") as file:
        file.write("whsec_" + secrets.token_urlsafe(32))
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    for _ in range(50):  # another process made it a moment ago and may still be writing it
        secret = path.read_bytes().strip()
        if secret:
            return secret
        time.sleep(0.01)
    raise RuntimeError(f"{path} is empty")


def signature_problem(secret: bytes, body: bytes, header: str | None, now: float) -> str | None:
    """Why `header` does not sign `body` (None if it does): Stripe's `t=...,v1=...` scheme."""
    if header is None:
        return f"no {SIGNATURE_HEADER} header"
    timestamp: str | None = None
    signatures: list[bytes] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            timestamp = value
        elif name == "v1":  # several during a secret's rotation: any may match
            signatures.append(value.encode("latin-1", "replace"))
    if timestamp is None or not timestamp.isdigit() or len(timestamp) > 12:
        return f"{SIGNATURE_HEADER} has no timestamp t=<unix seconds>"
    if not signatures:
        return f"{SIGNATURE_HEADER} has no v1 signature"
    if abs(now - int(timestamp)) > TOLERANCE_SECONDS:
        return f"signed at t={timestamp}: outside the {TOLERANCE_SECONDS} s tolerance window"
    signed = timestamp.encode() + b"." + body
    expected = hmac.new(secret, signed, hashlib.sha256).hexdigest().encode()
    if not any(hmac.compare_digest(expected, signature) for signature in signatures):
        return "no v1 signature matches this body"
    return None


class Accepted(BaseModel):
    event_id: str
    status: Literal["accepted", "ignored"]
    status_url: str | None = None


class EventStatus(BaseModel):
    event_id: str
    type: str
    order_id: str
    # done: handled (see outcome); failed: the execution itself failed (a person must look)
    status: Literal["pending", "done", "failed"]
    outcome: EventOutcome | None = None
    reason: str | None = None


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
        200: (Accepted, "an event type this shop does not act on: ignored, nothing started"),
        400: (Problem, "the signature is missing, wrong, or too old: nothing started"),
        404: (Problem, "no such event"),
        409: (Problem, "the event id was delivered before with different contents"),
        413: (Problem, f"the body is over {MAX_BODY_BYTES // 1024} KiB"),
        422: (FieldProblems, "the event does not match the schema: which fields, and why"),
    }
    return {
        code: {"model": described[code][0], "description": described[code][1]} for code in codes
    }


@dataclass(frozen=True)
class Workers:
    """How the gateway reaches the workflows: a Resonate client, the group, the secret."""

    resonate: Resonate
    group: str
    secret: bytes


def _workers(request: Request) -> Workers:
    workers: Workers = request.app.state.workers
    return workers


WorkersDep = Annotated[Workers, Depends(_workers)]

router = APIRouter()

# The body is read raw (the signature is over its exact bytes), so its schema is declared here.
_EVENT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PaymentEvent.model_json_schema()}},
    }
}


@router.post(
    "/webhooks/payments",
    status_code=202,
    responses=_answers(200, 400, 409, 413, 422),
    openapi_extra=_EVENT_BODY,
)
async def receive_event(request: Request, workers: WorkersDep) -> JSONResponse:
    body = await request.body()
    problem = signature_problem(
        workers.secret, body, request.headers.get(SIGNATURE_HEADER), time.time()
    )
    if problem is not None:
        raise HTTPException(400, f"invalid signature: {problem}")
    event = _parse(body)
    if not isinstance(event, PaymentEvent):  # a type this shop does not act on
        ignored = Accepted(event_id=event.id, status="ignored")
        return JSONResponse(ignored.model_dump(exclude_none=True), 200)
    resonate = workers.resonate
    started = resonate.options(target=workers.group).rpc(
        event.id, "handle_payment_event", event.model_dump(mode="json")
    )
    await started.id()
    # Starting an id that exists attaches without comparing arguments: compare them here.
    if _event_of(await resonate.promises.get(event.id)) != event:
        raise HTTPException(409, f"event {event.id!r} was delivered before with other contents")
    status_url = f"/events/{event.id}"
    accepted = Accepted(event_id=event.id, status="accepted", status_url=status_url)
    return JSONResponse(accepted.model_dump(), 202, headers={"Location": status_url})


class _Envelope(BaseModel):
    """What an event of any type must have, even one this shop ignores."""

    id: EventId
    type: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.]{0,63}$")]


def _parse(body: bytes) -> PaymentEvent | _Envelope:
    """The event, or only its envelope for a type not handled here; a 422 if it is wrong."""
    try:
        decoded = json.loads(body)
    except ValueError as exc:  # also invalid UTF-8
        raise RequestValidationError(
            [{"loc": ("body",), "msg": f"not valid JSON: {exc}", "type": "json_invalid"}]
        ) from None
    except RecursionError:
        raise RequestValidationError(
            [{"loc": ("body",), "msg": "nested too deeply", "type": "json_invalid"}]
        ) from None
    handled = not isinstance(decoded, dict) or decoded.get("type") in HANDLED_TYPES
    try:
        if handled:
            return PaymentEvent.model_validate(decoded)
        return _Envelope.model_validate(decoded)
    except ValidationError as exc:
        raise RequestValidationError(_located(exc)) from None


def _located(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": ("body", *e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False)
    ]


@router.get("/events/{event_id}", response_model_exclude_none=True, responses=_answers(404, 422))
async def event_status(event_id: EventId, workers: WorkersDep) -> EventStatus:
    resonate = workers.resonate
    try:
        record = await resonate.promises.get(event_id)
    except ServerError as exc:
        if exc.code != 404:
            raise
        raise HTTPException(404, f"no event {event_id!r}") from None
    event = _event_of(record)
    if event is None:
        raise HTTPException(404, f"no event {event_id!r}")
    seen = EventStatus(
        event_id=event.id, type=event.type, order_id=event.data.order_id, status="pending"
    )
    if record.state == "pending":
        return seen
    try:
        result = await (await resonate.get(event_id)).result()
        outcome = EventOutcome.model_validate(result)
    except Exception as exc:  # not an outcome (a bug, say): a person must look
        return seen.model_copy(update={"status": "failed", "reason": str(exc)})
    return seen.model_copy(update={"status": "done", "outcome": outcome})


def _event_of(record: PromiseRecord) -> PaymentEvent | None:
    """The event an execution was started with; None if the execution is not an event's."""
    param = record.param.data
    if not isinstance(param, dict) or param.get("func") != "handle_payment_event":
        return None
    try:
        return PaymentEvent.model_validate(param["args"][0])
    except (LookupError, TypeError, ValidationError):
        return None


def create_app(resonate_url: str, group: str, secret: bytes) -> FastAPI:
    # A client in a group of its own: the server never hands it workflow work.
    resonate = Resonate(url=resonate_url, group="webhook-handler-gateway", autostart=False)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        resonate.start()
        yield
        await resonate.stop()

    app = FastAPI(title="webhook-handler gateway", lifespan=lifespan)
    app.state.workers = Workers(resonate, group, secret)
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

    The body is read here, bounded, and handed on whole: it is at most 64 KiB.
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


class _Server(uvicorn.Server):
    """Announces its URL once it accepts connections (the launcher and tests wait for it)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and sockets:
            host, port = sockets[0].getsockname()[:2]
            print(f"webhook-handler gateway listening on http://{host}:{port}", flush=True)


def main() -> None:
    resonate_url = os.environ.get("RESONATE_URL")
    if not resonate_url:
        sys.exit(
            "webhook_handler.gateway: RESONATE_URL is not set"
            " (start a server, or use `make run-webhook-handler`)"
        )
    # Bound here rather than by uvicorn, so that port 0 turns into a port we can announce.
    host = os.environ.get("GATEWAY_HOST", "127.0.0.1")
    sock = socket.create_server((host, int(os.environ.get("GATEWAY_PORT", "0"))))
    # Nagle off, which asyncio does only for sockets made with proto IPPROTO_TCP (these have 0):
    # without it each answer on a kept-alive connection waits 40 ms for a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    app = create_app(
        resonate_url, os.environ.get("RESONATE_GROUP", "webhook-handler"), signing_secret()
    )
    # uvicorn shuts down gracefully on SIGTERM/SIGINT and then raises the signal again: exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    asyncio.run(_Server(uvicorn.Config(app, log_level="warning")).serve(sockets=[sock]))


if __name__ == "__main__":
    main()

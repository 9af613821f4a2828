"""`python -m checkout_window.gateway`: the HTTP API. Buy, cancel within the window, look it up.

The purchase id is the execution id: chosen by the client (so a POST repeated after a timeout
attaches to the purchase it started instead of buying twice) or, if it sends none, by the
gateway. A cancellation is delivered by resolving the promise the purchase waits on, which the
workflow names in a window record under an id of the example's own (`<purchase id>.window`).
Everything `GET` shows is read back from the execution (its argument, its window record and the
promise it names, its result): the gateway keeps nothing of its own, so any number of gateways
can serve the same purchases and a restart loses nothing.
  RESONATE_URL              the Resonate server (required)
  RESONATE_GROUP            the worker group that runs purchases (default: checkout-window)
  CHECKOUT_WINDOW_SECONDS   the cancellation window of a purchase that asks for none (default 1800)
  GATEWAY_HOST              the address to listen on (default 127.0.0.1; 0.0.0.0 in a container)
  GATEWAY_PORT              the port to serve on (default 0: any free port)
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from resonate.error import ServerError
from resonate.resonate import Resonate
from resonate.types import PromiseRecord, Value

from checkout_window.steps import window_id
from checkout_window.workflow import (
    CustomerId,
    Item,
    Purchase,
    PurchaseEnded,
    PurchaseId,
)

MAX_BODY_BYTES = 16 * 1024  # a purchase is well under 4 KiB; anything bigger is a 413
MAX_WINDOW_SECONDS = 86_400
# How long a purchase may take after its window closed (charging, with retries, and confirming):
# the execution's own deadline is the window plus this.
AFTER_THE_WINDOW = timedelta(days=1)
# Before the window opens (while the stock is being reserved) there is no promise to cancel
# into; a cancel waits this long for it, then gets a 503.
CANCEL_WAIT_SECONDS = 10.0
CANCEL_POLL_SECONDS = 0.05

_ENDED = TypeAdapter(PurchaseEnded)

type Progress = Literal["reserving", "window-open", "cancelling", "charging"]
type Outcome = Literal[
    "confirmed", "cancelled", "declined", "out-of-stock", "inventory-unavailable", "failed"
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class PurchaseRequest(_Strict):
    purchase_id: PurchaseId | None = Field(
        default=None, description="yours to choose, so that a repeated POST buys once"
    )
    customer_id: CustomerId = Field(
        description="the buyer, by your reference (`cus_...`): never a name or an email address"
    )
    items: Annotated[list[Item], Field(min_length=1, max_length=50)]
    currency: Literal["EUR", "GBP", "USD"]
    cancel_window_seconds: Annotated[int, Field(ge=1, le=MAX_WINDOW_SECONDS)] | None = None


class Accepted(BaseModel):
    purchase_id: str
    status_url: str
    cancel_url: str
    cancel_window_seconds: int


class Cancelled(BaseModel):
    purchase_id: str
    outcome: Literal["cancelled", "already-cancelled"]
    detail: str


class PurchaseView(BaseModel):
    purchase_id: str
    state: Progress | Outcome
    customer_id: str
    items: list[Item]
    currency: str
    total_cents: int
    cancel_window_seconds: int
    window_closes_at: datetime | None = None  # once the window opened
    reservation_id: str | None = None
    charge_id: str | None = None
    reason: str | None = None  # what a provider refused, or why the purchase failed


class Error(BaseModel):
    detail: str


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class FieldErrors(BaseModel):
    detail: list[FieldError]


@dataclass(frozen=True)
class StartedWith:
    """What a purchase was started with, read back from its execution."""

    purchase: Purchase
    window_seconds: int


@dataclass(frozen=True)
class Window:
    """The cancellation promise, as the server holds it: its state and its deadline."""

    cancel: PromiseRecord

    @property
    def closes_at(self) -> datetime:
        return datetime.fromtimestamp(self.cancel.timeout_at / 1000, UTC)


@dataclass(frozen=True)
class Purchases:
    """How the gateway reaches the purchases: a Resonate client and the worker group."""

    resonate: Resonate
    group: str
    default_window_seconds: int

    async def start(self, purchase: Purchase, window_seconds: int) -> None:
        # Starting an id that exists attaches to that execution without comparing arguments, so
        # the stored purchase is compared afterwards: of two racing POSTs with the same id and
        # different bodies, one started the purchase and the other is told.
        timeout = timedelta(seconds=window_seconds) + AFTER_THE_WINDOW
        started = self.resonate.options(target=self.group, timeout=timeout).rpc(
            purchase.purchase_id, "checkout", purchase.model_dump(mode="json"), window_seconds
        )
        await started.id()
        if await self.started_with(purchase.purchase_id) != StartedWith(purchase, window_seconds):
            raise HTTPException(
                409, f"purchase {purchase.purchase_id!r} exists with a different body"
            )

    async def started_with(self, purchase_id: str) -> StartedWith | None:
        root = await self._get(purchase_id)
        return None if root is None else _started_with(root)

    async def window(self, purchase_id: str) -> Window | None:
        """The purchase's cancellation promise; None until the window opened."""
        record = await self._get(window_id(purchase_id))
        match record.value.data if record is not None and record.state == "resolved" else None:
            case {"cancel": str(cancel_id)}:
                return Window(await self.resonate.promises.get(cancel_id))
            case _:
                return None

    async def cancel(self, purchase_id: str) -> Cancelled:
        """Resolve the purchase's cancellation promise, if its window is still open."""
        cancel_id = secrets.token_hex(8)  # unique per request: tells this request if it won
        give_up = time.monotonic() + CANCEL_WAIT_SECONDS
        while time.monotonic() < give_up:
            root = await self.resonate.promises.get(purchase_id)
            window = await self.window(purchase_id)
            if root.state != "pending":
                return await self._cancel_ended(purchase_id, root, window)
            if window is None:  # the stock is still being reserved
                await asyncio.sleep(CANCEL_POLL_SECONDS)
                continue
            cancel = window.cancel
            if cancel.state == "pending":
                cancel = await self._resolve(cancel.id, {"cancel_id": cancel_id})
            match cancel.state:
                case "resolved" if cancel.value.data == {"cancel_id": cancel_id}:
                    return Cancelled(
                        purchase_id=purchase_id,
                        outcome="cancelled",
                        detail="cancelled within the window: the stock is released,"
                        " nothing is charged",
                    )
                case "resolved":
                    return _already_cancelled(purchase_id)
                case _:  # the server timed it out at the window's end
                    raise HTTPException(409, _window_closed(window))
        raise HTTPException(
            503, "the purchase is still reserving stock; try again", headers={"Retry-After": "1"}
        )

    async def _cancel_ended(
        self, purchase_id: str, root: PromiseRecord, window: Window | None
    ) -> Cancelled:
        ended = _ended(root)
        if ended is not None and ended.state == "cancelled":
            return _already_cancelled(purchase_id)
        if ended is not None and ended.state == "confirmed" and window is not None:
            raise HTTPException(409, _window_closed(window))
        what = ended.state if ended is not None else "failed"
        raise HTTPException(409, f"the purchase has ended ({what}): there is nothing to cancel")

    async def view(self, purchase_id: str, started: StartedWith) -> PurchaseView:
        purchase = started.purchase
        view = PurchaseView(
            purchase_id=purchase_id,
            state="reserving",
            customer_id=purchase.customer_id,
            items=purchase.items,
            currency=purchase.currency,
            total_cents=purchase.total_cents,
            cancel_window_seconds=started.window_seconds,
        )
        root = await self.resonate.promises.get(purchase_id)
        window = await self.window(purchase_id)
        if window is not None:
            view = view.model_copy(update={"window_closes_at": window.closes_at})
        match root.state:
            case "resolved":
                ended = _ENDED.validate_python(root.value.data)
                return view.model_copy(
                    update={
                        "state": ended.state,
                        "reservation_id": ended.reservation_id,
                        "charge_id": ended.charge_id,
                        "reason": ended.reason,
                    }
                )
            case "pending":
                return view.model_copy(update={"state": _progress(window)})
            case _:  # e.g. a provider that kept failing after the window: a human must look
                try:
                    await (await self.resonate.get(purchase_id)).result()
                except Exception as exc:
                    return view.model_copy(update={"state": "failed", "reason": str(exc)})
                return view.model_copy(update={"state": "failed", "reason": root.state})

    async def _resolve(self, promise_id: str, value: dict[str, str]) -> PromiseRecord:
        """Resolve a promise; the promise as it ends up, whoever settled it.

        A server may answer a resolve of a settled promise (cancelled by another request, or
        timed out by the server) with the promise as it is, or refuse it: then read it.
        """
        try:
            return await self.resonate.promises.resolve(promise_id, Value(data=value))
        except ServerError as exc:
            if exc.code not in (403, 409):
                raise
            return await self.resonate.promises.get(promise_id)

    async def _get(self, promise_id: str) -> PromiseRecord | None:
        try:
            return await self.resonate.promises.get(promise_id)
        except ServerError as exc:
            if exc.code != 404:
                raise
            return None


def _progress(window: Window | None) -> Progress:
    """Where a purchase that has not ended is: its window decides."""
    if window is None:
        return "reserving"
    match window.cancel.state:
        case "pending":
            return "window-open"
        case "resolved":
            return "cancelling"
        case _:  # timed out: the window closed
            return "charging"


def _already_cancelled(purchase_id: str) -> Cancelled:
    return Cancelled(
        purchase_id=purchase_id,
        outcome="already-cancelled",
        detail="the purchase was already cancelled: nothing more to do",
    )


def _window_closed(window: Window) -> str:
    closed = window.closes_at.isoformat(timespec="seconds")
    return f"the cancellation window closed at {closed}: the purchase goes through"


def _ended(root: PromiseRecord) -> PurchaseEnded | None:
    if root.state != "resolved":
        return None
    try:
        return _ENDED.validate_python(root.value.data)
    except ValidationError:
        return None


def _started_with(record: PromiseRecord) -> StartedWith | None:
    """What an execution was started with; None if it is not a purchase."""
    param = record.param.data
    if not isinstance(param, dict) or param.get("func") != "checkout":
        return None
    match param.get("args"):
        case [dict(purchase), int(window_seconds)]:
            try:
                return StartedWith(Purchase.model_validate(purchase), window_seconds)
            except ValidationError:
                return None
        case _:
            return None


def _purchases(request: Request) -> Purchases:
    purchases: Purchases = request.app.state.purchases
    return purchases


PurchasesDep = Annotated[Purchases, Depends(_purchases)]


async def _started(purchases: Purchases, purchase_id: str) -> StartedWith:
    started = await purchases.started_with(purchase_id)
    if started is None:
        raise HTTPException(404, f"no purchase {purchase_id!r}")
    return started


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI entries of the error answers an operation gives, each with its body."""
    descriptions = {
        400: "the body is JSON too deeply nested to read",
        404: "no such purchase",
        409: "the purchase exists with another body, or can no longer be cancelled",
        413: f"the body is over {MAX_BODY_BYTES // 1024} KiB",
        503: "the stock is still being reserved; try again",
    }
    responses: dict[int | str, dict[str, Any]] = {
        status: {"model": Error, "description": descriptions[status]} for status in statuses
    }
    responses[422] = {"model": FieldErrors, "description": "which fields are wrong, and why"}
    return responses


router = APIRouter()


@router.post("/purchases", status_code=202, responses=_errors(400, 409, 413))
async def buy(body: PurchaseRequest, response: Response, purchases: PurchasesDep) -> Accepted:
    purchase_id = body.purchase_id or f"p-{secrets.token_hex(8)}"
    purchase = Purchase(
        purchase_id=purchase_id,
        customer_id=body.customer_id,
        items=body.items,
        currency=body.currency,
    )
    window_seconds = body.cancel_window_seconds or purchases.default_window_seconds
    await purchases.start(purchase, window_seconds)
    response.headers["Location"] = status_url = f"/purchases/{purchase_id}"
    return Accepted(
        purchase_id=purchase_id,
        status_url=status_url,
        cancel_url=f"{status_url}/cancel",
        cancel_window_seconds=window_seconds,
    )


@router.post("/purchases/{purchase_id}/cancel", responses=_errors(404, 409, 503))
async def cancel(purchase_id: PurchaseId, purchases: PurchasesDep) -> Cancelled:
    await _started(purchases, purchase_id)
    return await purchases.cancel(purchase_id)


@router.get("/purchases/{purchase_id}", response_model_exclude_none=True, responses=_errors(404))
async def status(purchase_id: PurchaseId, purchases: PurchasesDep) -> PurchaseView:
    return await purchases.view(purchase_id, await _started(purchases, purchase_id))


def create_app(resonate_url: str, group: str, default_window_seconds: int) -> FastAPI:
    # A client in a group of its own: the server never hands it workflow work.
    resonate = Resonate(url=resonate_url, group="checkout-window-gateway", autostart=False)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        resonate.start()
        yield
        await resonate.stop()

    app = FastAPI(title="checkout-window gateway", lifespan=lifespan)
    app.state.purchases = Purchases(resonate, group, default_window_seconds)
    app.include_router(router)
    app.add_middleware(LimitBody)

    @app.exception_handler(RequestValidationError)
    async def field_errors(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Which fields are wrong and why, without echoing the input: it may be huge, or hostile.
        fields = [{"loc": e["loc"], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": fields}, status_code=422)

    return app


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
            print(f"checkout-window gateway listening on http://{host}:{port}", flush=True)


def main() -> None:
    resonate_url = os.environ.get("RESONATE_URL")
    if not resonate_url:
        sys.exit(
            "checkout_window.gateway: RESONATE_URL is not set"
            " (start a server, or use `make run-checkout-window`)"
        )
    window_seconds = int(os.environ.get("CHECKOUT_WINDOW_SECONDS", "1800"))
    if not 1 <= window_seconds <= MAX_WINDOW_SECONDS:
        sys.exit(
            f"checkout_window.gateway: CHECKOUT_WINDOW_SECONDS must be 1 to {MAX_WINDOW_SECONDS}"
        )
    # Bound here rather than by uvicorn, so that port 0 turns into a port we can announce.
    host = os.environ.get("GATEWAY_HOST", "127.0.0.1")
    sock = socket.create_server((host, int(os.environ.get("GATEWAY_PORT", "0"))))
    # Nagle off, which asyncio does only for sockets made with proto IPPROTO_TCP (these have 0):
    # without it each answer on a kept-alive connection waits 40 ms for a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    group = os.environ.get("RESONATE_GROUP", "checkout-window")
    app = create_app(resonate_url, group, window_seconds)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT and then raises the signal again: exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    asyncio.run(_Server(uvicorn.Config(app, log_level="warning")).serve(sockets=[sock]))


if __name__ == "__main__":
    main()

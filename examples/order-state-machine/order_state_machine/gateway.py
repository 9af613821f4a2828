"""`python -m order_state_machine.gateway`: the HTTP API of the orders, holding no state of its own.

  POST /orders               start an order's lifecycle; the order id is the execution id
  GET  /orders/{id}          its state and history, read back from the execution itself
  POST /orders/{id}/ship     the warehouse shipped it (the card is charged)
  POST /orders/{id}/deliver  the carrier delivered it
  POST /orders/{id}/cancel   the customer cancels: free before shipping, a refund after

An event reaches the running workflow through the durable promise it waits on: the workflow names
that promise in the status it publishes, and the gateway resolves it with the event. The gateway
reads only promises whose ids the example chose (the order id, its statuses) or was handed (the
wait a status names), never one it would have to guess from the SDK's id scheme. Any number of
gateways can serve the same orders, and a restart loses nothing.
  RESONATE_URL               the Resonate server (required)
  RESONATE_GROUP             the worker group that runs orders (default: order-state-machine)
  GATEWAY_HOST               the address to listen on (default 127.0.0.1; 0.0.0.0 in a container)
  GATEWAY_PORT               the port to serve on (default 0: any free port)
  ORDER_EVENT_WAIT_SECONDS   how long an event waits for an order between states (default 10)
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from resonate.error import ServerError
from resonate.resonate import Resonate
from resonate.types import PromiseRecord, Value

from order_state_machine.steps import STATUS_OF, State
from order_state_machine.workflow import (
    EVENT,
    ORDER_DEADLINE,
    Cancel,
    Deliver,
    EventType,
    HistoryEntry,
    Order,
    OrderId,
    OrderStatus,
    Ship,
    status_id,
)

MAX_BODY_BYTES = 16 * 1024  # an order is well under 4 KiB; anything bigger is a 413


class Accepted(BaseModel):
    order_id: str
    status_url: str


class EventAccepted(Accepted):
    event: EventType


class OrderView(BaseModel):
    order_id: str
    # `failed`: the execution ended without reaching a final state (a provider refused an action
    # it should not refuse, stayed down past every retry, or the order's deadline passed).
    state: State
    accepts: list[EventType]  # the events the order takes now (none while it moves or once final)
    history: list[HistoryEntry]


class Problem(BaseModel):
    """Every refusal but a 422: what is wrong, in words."""

    detail: str


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class FieldErrors(BaseModel):
    """A 422: which fields are wrong and why (the input itself is not echoed)."""

    detail: list[FieldError]


def _answers(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI description of the refusals an endpoint gives, each with its body model."""
    described: dict[int, dict[str, Any]] = {
        400: {"model": Problem, "description": "the body is not JSON that can be read"},
        404: {"model": Problem, "description": "no such order"},
        409: {
            "model": Problem,
            "description": "the order does not take this now (a `Retry-After` header says when"
            " one that is between states may)",
            "headers": {"Retry-After": {"schema": {"type": "string"}}},
        },
        413: {"model": Problem, "description": f"a body over {MAX_BODY_BYTES} bytes"},
        422: {"model": FieldErrors, "description": "fields that are wrong, and why"},
    }
    return {code: described[code] for code in codes}


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
        too_large = JSONResponse({"detail": f"a body is at most {MAX_BODY_BYTES} bytes"}, 413)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > MAX_BODY_BYTES:
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


@dataclass(frozen=True)
class Execution:
    """An order as the Resonate server holds it: its view, and the promise it waits on."""

    view: OrderView
    finished: bool
    waiting_on: str | None


def create_app(resonate_url: str, workers: str, event_wait_seconds: float = 10.0) -> FastAPI:
    # A client in its own group: the server never hands it workflow work.
    resonate = Resonate(url=resonate_url, group="order-state-machine-gateway", autostart=False)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        resonate.start()
        yield
        await resonate.stop()

    app = FastAPI(title="order gateway", lifespan=lifespan)
    app.add_middleware(LimitBody)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Which fields are wrong and why, without echoing the input: it may be huge, or hostile.
        fields = [{"loc": e["loc"], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": fields}, status_code=422)

    @app.post("/orders", status_code=202, responses=_answers(400, 409, 413, 422))
    async def create(order: Order, response: Response) -> Accepted:
        # Starting an id that exists attaches to that execution without comparing arguments, so
        # the stored order is compared afterwards: two racing POSTs cannot both win.
        started = resonate.options(target=workers, timeout=ORDER_DEADLINE).rpc(
            order.order_id, "order_lifecycle", order.model_dump(mode="json")
        )
        await started.id()
        if _order_of(await resonate.promises.get(order.order_id)) != order:
            raise HTTPException(409, f"order {order.order_id!r} exists with a different body")
        response.headers["Location"] = status_url = f"/orders/{order.order_id}"
        return Accepted(order_id=order.order_id, status_url=status_url)

    @app.get("/orders/{order_id}", response_model_exclude_none=True, responses=_answers(404, 422))
    async def status(order_id: OrderId) -> OrderView:
        return (await read_order(resonate, order_id)).view

    events = _answers(400, 404, 409, 413, 422)

    @app.post("/orders/{order_id}/ship", status_code=202, responses=events)
    async def ship(order_id: OrderId, event: Ship) -> EventAccepted:
        return await send_event(resonate, order_id, event, event_wait_seconds)

    @app.post("/orders/{order_id}/deliver", status_code=202, responses=events)
    async def deliver(order_id: OrderId) -> EventAccepted:
        return await send_event(resonate, order_id, Deliver(), event_wait_seconds)

    @app.post("/orders/{order_id}/cancel", status_code=202, responses=events)
    async def cancel(order_id: OrderId, event: Cancel) -> EventAccepted:
        return await send_event(resonate, order_id, event, event_wait_seconds)

    return app


async def send_event(
    resonate: Resonate, order_id: str, event: Ship | Deliver | Cancel, wait_seconds: float
) -> EventAccepted:
    """Resolve the promise the order waits on with `event`, if the order takes it now.

    Everything it decides on is read from the Resonate server, and the one write is the resolve:
    of two requests racing for the same promise, the first to resolve it wins; the other is told.
    """
    # Unique per request, so that of two events racing for one promise, each knows if it won.
    event = event.model_copy(update={"event_id": secrets.token_hex(8)})
    deadline = asyncio.get_running_loop().time() + wait_seconds
    while True:
        execution = await read_order(resonate, order_id)
        state = execution.view.state
        if execution.finished:
            refusal = "can no longer be cancelled" if event.type == "cancel" else "is final"
            raise HTTPException(409, f"order {order_id!r} is {state}: it {refusal}")
        if execution.waiting_on is not None:
            break
        # Between states (a step is running, or a worker died in one): the next wait is near.
        if asyncio.get_running_loop().time() > deadline:
            raise HTTPException(
                409,
                f"order {order_id!r} is {state} and not yet waiting for events; try again",
                headers={"Retry-After": "1"},
            )
        await asyncio.sleep(0.1)
    accepted = execution.view.accepts
    if event.type not in accepted:
        raise HTTPException(
            409, f"order {order_id!r} is {state}: it takes {' or '.join(accepted)} now"
        )
    winner = await resolve_event(resonate, execution.waiting_on, event)
    if winner != event:
        other = winner.type if winner else "unknown"
        raise HTTPException(409, f"order {order_id!r} took another event ({other}) first")
    status_url = f"/orders/{order_id}"
    return EventAccepted(order_id=order_id, event=event.type, status_url=status_url)


async def resolve_event(
    resonate: Resonate, promise_id: str, event: Ship | Deliver | Cancel
) -> Ship | Deliver | Cancel | None:
    """Resolve the promise with `event`; the event it holds afterwards (another one if a
    racing request resolved it first: a settled promise keeps its first value)."""
    try:
        record = await resonate.promises.resolve(
            promise_id, Value(data=event.model_dump(mode="json"))
        )
    except ServerError as exc:
        # Servers may refuse to settle a settled promise instead of returning it as it is.
        if exc.code not in (403, 409):
            raise
        record = await resonate.promises.get(promise_id)
    return _event(record)


async def read_order(resonate: Resonate, order_id: str) -> Execution:
    """The order as its execution and the statuses it published say; 404 if there is none.

    It reads only promises whose ids the example chose: the execution (the order id), the
    statuses the workflow published (`status_id`), and the wait a status names.
    """
    try:
        root = await resonate.promises.get(order_id)
    except ServerError as exc:
        if exc.code != 404:
            raise
        raise HTTPException(404, f"no order {order_id!r}") from None
    if _order_of(root) is None:
        raise HTTPException(404, f"no order {order_id!r}")
    status = await latest_status(resonate, order_id)
    history = [HistoryEntry(state="created", at=_time(root.created_at))]
    history += status.history if status else []
    finished = root.state != "pending"
    if root.state.startswith("rejected"):
        history.append(HistoryEntry(state="failed", at=_time(root.settled_at or root.timeout_at)))
    # The wait the status names, if it is still open: once an event resolved it, the order is
    # between states until it publishes the next one.
    waiting_on = status.waiting_on if status and not finished else None
    if waiting_on is not None and not await _pending(resonate, waiting_on):
        waiting_on = None
    accepts = status.accepts if status and waiting_on else []
    view = OrderView(order_id=root.id, state=history[-1].state, accepts=accepts, history=history)
    return Execution(view, finished, waiting_on)


async def latest_status(resonate: Resonate, order_id: str) -> OrderStatus | None:
    """The newest status the order's workflow published, if any."""
    latest: OrderStatus | None = None
    cursor: str | None = None
    while True:
        page = await resonate.promises.search("resolved", {STATUS_OF: order_id}, 100, cursor)
        for promise in page.promises:
            try:
                status = OrderStatus.model_validate(promise.value.data)
            except ValidationError:
                continue  # not a status: anyone who reaches the server can tag a promise
            mine = status.order_id == order_id and promise.id == status_id(order_id, status.seq)
            if mine and (latest is None or status.seq > latest.seq):
                latest = status
        if (cursor := page.cursor) is None:
            return latest


async def _pending(resonate: Resonate, promise_id: str) -> bool:
    try:
        return (await resonate.promises.get(promise_id)).state == "pending"
    except ServerError as exc:
        if exc.code != 404:
            raise
        return False  # not created yet: the workflow publishes the id just before it waits


def _order_of(record: PromiseRecord) -> Order | None:
    """The order an execution was started with; None if the execution is not an order."""
    param = record.param.data
    if not isinstance(param, dict) or param.get("func") != "order_lifecycle":
        return None
    try:
        return Order.model_validate(param["args"][0])
    except (LookupError, TypeError, ValidationError):
        return None


def _event(promise: PromiseRecord) -> Ship | Deliver | Cancel | None:
    try:
        return EVENT.validate_python(promise.value.data)
    except ValidationError:
        return None  # not an event: the workflow ignored it too


def _time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class _Server(uvicorn.Server):
    """Announces its URL once it accepts connections (the launcher and tests wait for it)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and sockets:
            host, port = sockets[0].getsockname()[:2]
            print(f"order-state-machine gateway listening on http://{host}:{port}", flush=True)


def main() -> None:
    resonate_url = os.environ.get("RESONATE_URL")
    if not resonate_url:
        sys.exit(
            "order_state_machine.gateway: RESONATE_URL is not set "
            "(start a server, or use `make run-order-state-machine`)"
        )
    # Bound here rather than by uvicorn, so that port 0 turns into a port we can announce.
    host = os.environ.get("GATEWAY_HOST", "127.0.0.1")
    sock = socket.create_server((host, int(os.environ.get("GATEWAY_PORT", "0"))))
    # Nagle off, which asyncio does only for sockets made with proto IPPROTO_TCP (these have 0):
    # without it each answer on a kept-alive connection waits 40 ms for a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    app = create_app(
        resonate_url,
        os.environ.get("RESONATE_GROUP", "order-state-machine"),
        float(os.environ.get("ORDER_EVENT_WAIT_SECONDS", "10")),
    )
    # uvicorn shuts down gracefully on SIGTERM/SIGINT and then raises the signal again: exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    asyncio.run(_Server(uvicorn.Config(app, log_level="warning")).serve(sockets=[sock]))


if __name__ == "__main__":
    main()

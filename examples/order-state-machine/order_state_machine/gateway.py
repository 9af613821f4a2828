"""`python -m order_state_machine.gateway`: the HTTP API of the orders, holding no state of its own.

  POST /orders               start an order's lifecycle; the order id is the execution id
  GET  /orders/{id}          its state and history, read back from the execution itself
  POST /orders/{id}/ship     the warehouse shipped it (the card is charged)
  POST /orders/{id}/deliver  the carrier delivered it
  POST /orders/{id}/cancel   the customer cancels: free before shipping, a refund after

An event reaches the running workflow through the durable promise it waits on: the gateway finds
that promise on the Resonate server and resolves it with the event. Any number of gateways can
serve the same orders, and a restart loses nothing.
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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import uvicorn
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, TypeAdapter, ValidationError
from resonate.error import ServerError
from resonate.resonate import Resonate
from resonate.types import PromiseRecord, Value

from order_state_machine.steps import State, Transition
from order_state_machine.workflow import (
    ACCEPTS,
    EVENT,
    Cancel,
    Deliver,
    Event,
    Order,
    OrderId,
    Ship,
)

MAX_BODY_BYTES = 16 * 1024  # an order is well under 4 KiB; anything bigger is a 413
# An order's execution must end within this; one still open then is rejected, and shows failed.
ORDER_DEADLINE = timedelta(days=30)
TRANSITION = TypeAdapter(Transition)  # what a transition step returns, as the journal holds it


class Accepted(BaseModel):
    order_id: str
    status_url: str


class EventAccepted(Accepted):
    event: Literal["ship", "deliver", "cancel"]


# The workflow's states, and one of the view's own: the execution ended without reaching a final
# state (a step gave up, or the order's deadline passed).
type ViewState = State | Literal["failed"]


class HistoryEntry(BaseModel):
    state: ViewState
    at: datetime
    receipt: str | None = None  # the provider's id for the transition's effect
    event: Event | None = None  # the event that caused it


class OrderView(BaseModel):
    order_id: str
    state: ViewState
    accepts: list[str]  # the events the order takes now (none while it moves, none once final)
    history: list[HistoryEntry]


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

    app = FastAPI(title="order gateway", lifespan=lifespan, max_body_size=MAX_BODY_BYTES)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Which fields are wrong and why, without echoing the input: it may be huge, or hostile.
        fields = [{"loc": e["loc"], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": fields}, status_code=422)

    @app.post("/orders", status_code=202, responses={409: {"description": "id in use"}})
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

    @app.get("/orders/{order_id}", response_model_exclude_none=True)
    async def status(order_id: OrderId) -> OrderView:
        return (await read_order(resonate, order_id)).view

    @app.post("/orders/{order_id}/ship", status_code=202)
    async def ship(order_id: OrderId, event: Ship) -> EventAccepted:
        return await send_event(resonate, order_id, event, event_wait_seconds)

    @app.post("/orders/{order_id}/deliver", status_code=202)
    async def deliver(order_id: OrderId) -> EventAccepted:
        return await send_event(resonate, order_id, Deliver(), event_wait_seconds)

    @app.post("/orders/{order_id}/cancel", status_code=202)
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
    accepted = ACCEPTS.get(state, ())
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
    """The order's execution, as the Resonate server has it; 404 if there is none."""
    try:
        root = await resonate.promises.get(order_id)
    except ServerError as exc:
        if exc.code != 404:
            raise
        raise HTTPException(404, f"no order {order_id!r}") from None
    if _order_of(root) is None:
        raise HTTPException(404, f"no order {order_id!r}")
    children: list[PromiseRecord] = []
    cursor: str | None = None
    while True:
        page = await resonate.promises.search(None, {"resonate:origin": order_id}, 100, cursor)
        children += [p for p in page.promises if p.id != order_id]
        if (cursor := page.cursor) is None:
            break
    return _replay(root, sorted(children, key=_position))


def _replay(root: PromiseRecord, children: list[PromiseRecord]) -> Execution:
    """Replay the journal into a view: a finished step is a transition, a resolved promise is an
    event received, a pending promise is the wait the order is in."""
    history = [HistoryEntry(state="created", at=_time(root.created_at))]
    event: Ship | Deliver | Cancel | None = None
    waiting_on = None
    for promise in children:
        if promise.tags.get("resonate:external") == "true":  # a wait for an event
            if promise.state == "pending":
                waiting_on = promise.id
            elif received := _event(promise):
                event = received
        elif promise.state == "resolved":  # a transition step that completed
            at = _time(promise.settled_at or promise.created_at)
            transition = TRANSITION.validate_python(promise.value.data)
            history.append(
                HistoryEntry(state=transition.state, at=at, receipt=transition.receipt, event=event)
            )
            event = None
    finished = root.state != "pending"
    if root.state.startswith("rejected"):
        history.append(HistoryEntry(state="failed", at=_time(root.settled_at or root.timeout_at)))
    state = history[-1].state
    accepts = list(ACCEPTS.get(state, ())) if waiting_on and not finished else []
    view = OrderView(order_id=root.id, state=state, accepts=accepts, history=history)
    return Execution(view, finished, None if finished else waiting_on)


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


def _position(promise: PromiseRecord) -> int:
    return int(promise.id.rpartition(":")[2])  # children are `<order id>:<n>`, n in call order


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

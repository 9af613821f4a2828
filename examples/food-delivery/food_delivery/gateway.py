"""`python -m food_delivery.gateway`: the HTTP API. `POST /orders` places an order, `GET
/orders/{id}` tells where it is.

It checks each order against the `Order` model, starts `deliver_order` on the worker group with
the order id as the execution id, and reads the order back from the Resonate server: the
execution (the order id), and the progress marks its steps set (`<order id>~<stage>`), ids the
example chose, never one made up by the SDK. It keeps nothing of its own, so any number of
gateways can serve the same orders and a restart loses nothing.
  RESONATE_URL     the Resonate server (required)
  RESONATE_GROUP   the worker group that delivers orders (default: food-delivery)
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

from food_delivery.steps import COMPENSATIONS, PIPELINE, PROGRESS_OF, STAGES, Stage, progress_id
from food_delivery.workflow import Order, OrderId

MAX_BODY_BYTES = 16 * 1024  # an order is well under 4 KiB; anything bigger is a 413


class Accepted(BaseModel):
    order_id: str
    status_url: str


class CompensationView(BaseModel):
    """One compensation of a cancelled order: its receipt, or the problem a person must see to."""

    stage: str
    receipt: str | None = None
    problem: str | None = None


class DeliveryView(BaseModel):
    """The workflow's result (`Delivery`), as the execution stores it."""

    status: Literal["delivered", "cancelled"]
    reason: str | None = None
    charge_id: str | None = None
    driver_assignment: str | None = None
    compensations: list[CompensationView] = []


class OrderStatus(BaseModel):
    order_id: str
    # placed: no step has started yet; in_progress: on one of the six steps; cancelling: undoing
    # (refund, tell the restaurant, tell the customer); delivered, cancelled: done; failed: the
    # workflow itself failed, and a person must look (`reason`).
    status: Literal["placed", "in_progress", "cancelling", "delivered", "cancelled", "failed"]
    step: Stage | None = None  # the step it is on, or the last one it reached
    step_number: int | None = None  # which of the six delivery steps that is (1 to 6)
    steps: list[Stage] = []  # every step it reached, in order
    reason: str | None = None  # cancelled, failed: why
    charge_id: str | None = None
    driver_assignment: str | None = None
    compensations: list[CompensationView] | None = None  # cancelled: what was undone


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
        404: (Problem, "no such order"),
        409: (Problem, "the order id is taken by a different order"),
        413: (Problem, f"the body is over {MAX_BODY_BYTES // 1024} KiB"),
        422: (FieldProblems, "the request does not match the schema: which fields, and why"),
    }
    return {
        code: {"model": described[code][0], "description": described[code][1]} for code in codes
    }


@dataclass(frozen=True)
class Workers:
    """How the gateway reaches the workflows: a Resonate client, and the group that runs them."""

    resonate: Resonate
    group: str


def _workers(request: Request) -> Workers:
    workers: Workers = request.app.state.workers
    return workers


WorkersDep = Annotated[Workers, Depends(_workers)]


router = APIRouter()


@router.post("/orders", status_code=202, responses=_answers(400, 409, 413, 422))
async def place(order: Order, response: Response, workers: WorkersDep) -> Accepted:
    # Starting an id that exists attaches to that execution without comparing arguments, so the
    # stored order is compared afterwards: of two racing POSTs with different bodies, one is 409.
    resonate = workers.resonate
    started = resonate.options(target=workers.group).rpc(
        order.order_id, "deliver_order", order.model_dump(mode="json")
    )
    await started.id()
    if _order_of(await resonate.promises.get(order.order_id)) != order:
        raise HTTPException(409, f"order {order.order_id!r} exists with a different order")
    response.headers["Location"] = status_url = f"/orders/{order.order_id}"
    return Accepted(order_id=order.order_id, status_url=status_url)


@router.get("/orders/{order_id}", response_model_exclude_none=True, responses=_answers(404, 422))
async def status(order_id: OrderId, workers: WorkersDep) -> OrderStatus:
    resonate = workers.resonate
    try:
        record = await resonate.promises.get(order_id)
    except ServerError as exc:
        if exc.code != 404:
            raise
        raise HTTPException(404, f"no order {order_id!r}") from None
    if _order_of(record) is None:
        raise HTTPException(404, f"no order {order_id!r}")
    # Read the marks first: a settled execution has set every mark it ever will.
    steps = await progress(resonate, order_id)
    at = steps[-1] if steps else None
    where: dict[str, Any] = {
        "order_id": order_id,
        "step": at,
        "step_number": PIPELINE.index(at) + 1 if at in PIPELINE else None,
        "steps": steps,
    }
    if record.state == "pending":
        if at is None:
            return OrderStatus(status="placed", **where)
        return OrderStatus(status="cancelling" if at in COMPENSATIONS else "in_progress", **where)
    try:
        result = await (await resonate.get(order_id)).result()
        delivery = DeliveryView.model_validate(result)
    except Exception as exc:  # not an outcome of the order (it failed, or a bug): a person looks
        return OrderStatus(status="failed", reason=str(exc), **where)
    return OrderStatus(
        status=delivery.status,
        reason=delivery.reason,
        charge_id=delivery.charge_id,
        driver_assignment=delivery.driver_assignment,
        compensations=delivery.compensations if delivery.status == "cancelled" else None,
        **where,
    )


async def progress(resonate: Resonate, order_id: str) -> list[Stage]:
    """The stages the order's steps reached, in order: the marks they set, found by their tag.

    Only a promise whose id is the mark of a stage counts: anyone who reaches the server can tag
    a promise. An order reaches its stages in the order `STAGES` lists them.
    """
    marks = {progress_id(order_id, stage): stage for stage in STAGES}
    reached: set[Stage] = set()
    cursor: str | None = None
    while True:
        page = await resonate.promises.search("resolved", {PROGRESS_OF: order_id}, 100, cursor)
        reached.update(marks[p.id] for p in page.promises if p.id in marks)
        if (cursor := page.cursor) is None:
            return [stage for stage in STAGES if stage in reached]


def create_app(resonate_url: str, group: str) -> FastAPI:
    # A client in a group of its own: the server never hands it workflow work.
    resonate = Resonate(url=resonate_url, group="food-delivery-gateway", autostart=False)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        resonate.start()
        yield
        await resonate.stop()

    app = FastAPI(title="food-delivery gateway", lifespan=lifespan)
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


def _order_of(record: PromiseRecord) -> Order | None:
    """The order an execution was started with; None if the execution is not an order."""
    param = record.param.data
    if not isinstance(param, dict) or param.get("func") != "deliver_order":
        return None
    try:
        return Order.model_validate(param["args"][0])
    except (LookupError, TypeError, ValidationError):
        return None


class _Server(uvicorn.Server):
    """Announces its URL once it accepts connections (the launcher and tests wait for it)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and sockets:
            host, port = sockets[0].getsockname()[:2]
            print(f"food-delivery gateway listening on http://{host}:{port}", flush=True)


def main() -> None:
    resonate_url = os.environ.get("RESONATE_URL")
    if not resonate_url:
        sys.exit(
            "food_delivery.gateway: RESONATE_URL is not set"
            " (start a server, or use `make run-food-delivery`)"
        )
    # Bound here rather than by uvicorn, so that port 0 turns into a port we can announce.
    host = os.environ.get("GATEWAY_HOST", "127.0.0.1")
    sock = socket.create_server((host, int(os.environ.get("GATEWAY_PORT", "0"))))
    # Nagle off, which asyncio does only for sockets made with proto IPPROTO_TCP (these have 0):
    # without it each answer on a kept-alive connection waits 40 ms for a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    app = create_app(resonate_url, os.environ.get("RESONATE_GROUP", "food-delivery"))
    # uvicorn shuts down gracefully on SIGTERM/SIGINT and then raises the signal again: exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    asyncio.run(_Server(uvicorn.Config(app, log_level="warning")).serve(sockets=[sock]))


if __name__ == "__main__":
    main()

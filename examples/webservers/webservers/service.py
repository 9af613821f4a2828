"""What every app's routes do, whichever framework serves them; each app is a thin layer on this.

  POST /tickets        book seats: 200 and the booking, inline, once the function has run in
                       this process (202 and a Location to poll if it takes over WAIT_SECONDS)
  GET  /tickets/{id}   the booking (200), still running (202), or no such ticket (404)

The web process is the worker: `start_worker` registers `book_tickets` on a Resonate client in
the group every app shares, and `book` runs it with `resonate.run`, which executes it here. If
the process dies mid-booking, the server hands the execution to the next process of the group
once the lease runs out, and that process finishes it from its last checkpoint.

Environment (read once, by `Settings.from_env`):
  RESONATE_URL          the Resonate server (required)
  RESONATE_GROUP        the group the web processes serve (default: webservers)
  RESONATE_TTL_SECONDS  the lease: how long a dead process's booking waits to move on (default 30)
  PROVIDER_API_URL      the inventory and email providers the steps call
  PROVIDER_TIMEOUT_SECONDS  how long one provider call may take (default 10)
  WAIT_SECONDS          how long a POST waits for the booking before answering 202 (default 10)
  GATEWAY_HOST          the address to listen on (default 127.0.0.1; 0.0.0.0 in a container)
  GATEWAY_PORT          the port to serve on (default 0: any free port)
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

import httpx
from pydantic import TypeAdapter, ValidationError
from resonate.error import ServerError
from resonate.resonate import Resonate
from resonate.types import PromiseRecord

from webservers.steps import Providers
from webservers.workflow import WORKFLOW_RETRIES, Booking, TicketRequest, book_tickets

GROUP = "webservers"
MAX_BODY_BYTES = 16 * 1024  # a ticket request is well under 1 KiB; anything bigger is a 413
# Seconds a request waits for the Resonate server to create or read an execution before a 503.
RESONATE_TIMEOUT = 10.0
TICKET_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_REPORTED_ERRORS = 10
MAX_LOCATION_LENGTH = 40

_bookings = TypeAdapter(Booking)


@dataclass(frozen=True)
class Settings:
    resonate_url: str
    group: str
    ttl: timedelta
    provider_url: str
    provider_timeout: float
    wait_seconds: float
    host: str
    port: int

    @classmethod
    def from_env(cls, program: str) -> Settings:
        resonate_url = os.environ.get("RESONATE_URL")
        if not resonate_url:
            sys.exit(
                f"{program}: RESONATE_URL is not set (start a server, or `make run-webservers`)"
            )
        return cls(
            resonate_url=resonate_url,
            group=os.environ.get("RESONATE_GROUP", GROUP),
            ttl=timedelta(seconds=float(os.environ.get("RESONATE_TTL_SECONDS", "30"))),
            provider_url=os.environ.get("PROVIDER_API_URL", "http://127.0.0.1:8100"),
            provider_timeout=float(os.environ.get("PROVIDER_TIMEOUT_SECONDS", "10")),
            wait_seconds=float(os.environ.get("WAIT_SECONDS", "10")),
            host=os.environ.get("GATEWAY_HOST", "127.0.0.1"),
            port=int(os.environ.get("GATEWAY_PORT", "0")),
        )


@dataclass(frozen=True)
class Answer:
    """An HTTP answer, before a framework turns it into its own response object."""

    status: int
    body: dict[str, Any]
    location: str | None = None


@dataclass(frozen=True)
class Worker:
    """This web process as a Resonate worker: the client the routes use, and what it closes."""

    resonate: Resonate
    providers: httpx.AsyncClient
    settings: Settings

    async def stop(self) -> None:
        await self.resonate.stop()
        await self.providers.aclose()


def start_worker(settings: Settings) -> Worker:
    """Make this process a worker of the group. Call it on the event loop the executions are
    to run on: the client, its connection and every execution live on the loop that started it.
    """
    providers = httpx.AsyncClient(base_url=settings.provider_url, timeout=settings.provider_timeout)
    resonate = Resonate(url=settings.resonate_url, group=settings.group, ttl=settings.ttl)
    resonate.with_dependency(Providers(providers))
    resonate.register(book_tickets, retry_policy=WORKFLOW_RETRIES)
    return Worker(resonate, providers, settings)


def announce(framework: str, host: str, port: int) -> None:
    """The line launchers and tests wait for: it is a worker, and where it listens."""
    print(
        f"webservers {framework} app: worker {os.getpid()} ready,"
        f" listening on http://{host}:{port}",
        flush=True,
    )


# -- the routes --------------------------------------------------------------------------------


async def book(worker: Worker, request: TicketRequest) -> Answer:
    """Run the booking here (or attach to the one under this ticket id) and answer with it."""
    resonate = worker.resonate
    # Running an id that exists attaches to that execution: nothing runs again, and the
    # arguments are not compared, so the stored request is compared afterwards: of two racing
    # POSTs with different bodies under one id, one books and the other is a 409.
    handle = resonate.run(request.ticket_id, book_tickets, request)
    await asyncio.wait_for(handle.id(), RESONATE_TIMEOUT)
    stored = await asyncio.wait_for(resonate.promises.get(request.ticket_id), RESONATE_TIMEOUT)
    if _request_of(stored) != request:
        return _problem(409, f"ticket {request.ticket_id!r} exists with a different request")
    try:
        booking = await asyncio.wait_for(handle.result(), worker.settings.wait_seconds)
    except TimeoutError:  # still running, here or (after a crash) in another process
        return _pending(request.ticket_id)
    return _booked(request.ticket_id, booking)


async def status(worker: Worker, ticket_id: str) -> Answer:
    if TICKET_ID.fullmatch(ticket_id) is None:
        return Answer(422, {"detail": [_field(["path", "ticket_id"], "not a ticket id")]})
    resonate = worker.resonate
    try:
        record = await asyncio.wait_for(resonate.promises.get(ticket_id), RESONATE_TIMEOUT)
    except ServerError as exc:
        if exc.code != 404:
            raise
        record = None
    if record is None or _request_of(record) is None:
        return _problem(404, f"no ticket {ticket_id!r}")
    if record.state == "pending":
        return _pending(ticket_id)
    try:
        stored = await (await resonate.get(ticket_id)).result()
    except Exception as exc:  # not a booking outcome (a bug, say): a person must look
        return _problem(500, f"the booking failed: {exc}")
    return _booked(ticket_id, _bookings.validate_python(stored))


def _booked(ticket_id: str, booking: Booking) -> Answer:
    fields = {k: v for k, v in asdict(booking).items() if v is not None}
    return Answer(200, {"ticket_id": ticket_id, **fields})


def _pending(ticket_id: str) -> Answer:
    url = f"/tickets/{ticket_id}"
    return Answer(202, {"ticket_id": ticket_id, "status": "pending", "status_url": url}, url)


def _request_of(record: PromiseRecord) -> TicketRequest | None:
    """The request an execution was started with; None if it is not a booking."""
    param = record.param.data
    if not isinstance(param, dict) or param.get("func") != "book_tickets":
        return None
    try:
        return TicketRequest.model_validate(param["args"][0], strict=False)
    except (LookupError, TypeError, ValidationError):
        return None


# -- request bodies, for the apps that parse their own (Flask, Django) --------------------------


def parse_request(body: bytes) -> TicketRequest | Answer:
    """The ticket request in a JSON body, or the 422 that says which fields are wrong and why."""
    try:
        return TicketRequest.model_validate_json(body)
    except ValidationError as exc:
        return field_errors(exc)


def field_errors(exc: ValidationError) -> Answer:
    """A 422 naming each wrong field (`["body", "seats"]`) and why, without echoing the input:
    it may be huge, or hostile. An unknown key is its own location, so locations are cut
    short, and so is the list."""
    problems = [
        _field(["body", *(_shortened(part) for part in e["loc"])], e["msg"], e["type"])
        for e in exc.errors()[:MAX_REPORTED_ERRORS]
    ]
    return Answer(422, {"detail": problems})


def _field(loc: list[str | int], msg: str, kind: str = "value_error") -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": kind}


def _shortened(part: int | str) -> int | str:
    if isinstance(part, str) and len(part) > MAX_LOCATION_LENGTH:
        return part[:MAX_LOCATION_LENGTH] + "…"
    return part


def too_large() -> Answer:
    return _problem(413, f"the body is over {MAX_BODY_BYTES // 1024} KiB")


def unavailable() -> Answer:
    return _problem(503, "the Resonate server did not answer in time; try again")


def _problem(status: int, detail: str) -> Answer:
    return Answer(status, {"detail": detail})

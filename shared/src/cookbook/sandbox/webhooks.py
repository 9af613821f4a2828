"""The payments provider's webhooks: signed event deliveries to a registered URL, Stripe's way.

A merchant registers an endpoint (a URL and the signing secret it will check). When the sandbox
is told that something happened (`POST /webhooks/events`: a payment succeeded, a charge was
refunded) it delivers each event to every endpoint as a JSON `POST`, signed in the header
`Payments-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" under the secret>`,
the scheme of Stripe's `Stripe-Signature` header. Every attempt is signed afresh, with the time it
is sent, so a receiver can refuse a signature older than its tolerance window (a replay).

It behaves like a real provider, which is to say badly:
  - an answer other than 2xx (or none: a refused connection, a timeout) is delivered again, after
    a delay that doubles, up to `max_attempts` times;
  - a 2xx is sometimes followed by the same event again (`copies_min`..`copies_max` successful
    deliveries per event), after other events;
  - events are delivered out of the order they happened in (`shuffle`), several at a time.
Which events are sent twice and in what order is drawn from `random.Random(seed)`, so a test
that gives the same seed gets the same plan (how the copies interleave with retries and with each
other still depends on timing, as it would).

Events and deliveries are kept in memory: like the fault registry, they are a test's setup and
its evidence, not provider state that must outlive the process. `GET /webhooks/deliveries` lists
every attempt, and `GET /webhooks/idle?wait=<s>` returns as soon as nothing is left to deliver,
so tests wait on an event rather than a sleep.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Final, Literal

import httpx
from fastapi import APIRouter, HTTPException, Query
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

SIGNATURE_HEADER: Final = "Payments-Signature"
# The longest a re-delivery waits, however many attempts failed before it.
MAX_RETRY_DELAY_S: Final = 30.0


def signature_header(secret: str, body: bytes, timestamp: int) -> str:
    """The `Payments-Signature` value for `body` sent at `timestamp` (unix seconds)."""
    signed = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


EventId = Annotated[str, StringConstraints(pattern=r"^evt_[A-Za-z0-9]{1,64}$")]
EventType = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.]{0,63}$")]


class EndpointSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, StringConstraints(pattern=r"^https?://\S+$", max_length=2_000)]
    secret: str = Field(
        min_length=16, max_length=256, description="the key deliveries are signed with"
    )
    max_attempts: int = Field(default=8, ge=1, le=50, description="per delivery, then it is failed")
    retry_delay_ms: int = Field(default=100, ge=0, le=60_000, description="doubles per attempt")
    concurrency: int = Field(default=4, ge=1, le=64, description="deliveries in flight at once")
    timeout_ms: int = Field(default=10_000, ge=1, le=120_000)

    @field_validator("url")
    @classmethod
    def _parses(cls, url: str) -> str:
        try:
            httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise ValueError(f"not a URL: {exc}") from None
        return url


class Endpoint(BaseModel):
    """A registered endpoint, as listed: never with its secret."""

    id: str
    url: str
    max_attempts: int
    retry_delay_ms: int
    concurrency: int
    timeout_ms: int


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: EventId | None = Field(default=None, description="chosen by the caller, or made up")
    type: EventType
    data: dict[str, Any]
    created: int | None = Field(default=None, ge=0, description="unix seconds; default: now")


class EmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[EventIn] = Field(min_length=1, max_length=2_000)
    copies_min: int = Field(default=1, ge=1, le=5, description="successful deliveries per event")
    copies_max: int = Field(default=1, ge=1, le=5)
    shuffle: bool = Field(default=False, description="deliver in a seeded random order")
    seed: int = 0

    @model_validator(mode="after")
    def _copies(self) -> EmitRequest:
        if self.copies_max < self.copies_min:
            raise ValueError("copies_max must be at least copies_min")
        ids = [e.id for e in self.events if e.id is not None]
        if len(ids) != len(set(ids)):
            raise ValueError("events: an id appears twice")
        return self


class Emitted(BaseModel):
    id: str
    type: str
    copies: int


@dataclass
class _Event:
    id: str
    type: str
    body: bytes
    copies: int


@dataclass
class _Registered:
    endpoint: Endpoint
    secret: str
    slots: asyncio.Semaphore


@dataclass
class _Job:
    event: _Event
    endpoint_id: str
    copy: int
    attempt: int = 1


@dataclass(frozen=True)
class Delivery:
    """One attempt to deliver one copy of an event to one endpoint."""

    event_id: str
    event_type: str
    endpoint_id: str
    copy: int
    attempt: int
    outcome: Literal["delivered", "refused", "unreachable"]
    status_code: int | None
    error: str | None
    signed_at: int
    started_at: float
    finished_at: float


@dataclass
class WebhookSender:
    """The deliveries of every event to every endpoint; one per sandbox app.

    `transport` replaces the network (tests hand it an `httpx.MockTransport`).
    """

    narrate: bool = False
    transport: httpx.AsyncBaseTransport | None = None
    _endpoints: dict[str, _Registered] = field(default_factory=dict)
    _events: dict[str, _Event] = field(default_factory=dict)
    _deliveries: list[Delivery] = field(default_factory=list)
    _queue: asyncio.Queue[_Job] | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _timers: dict[int, asyncio.TimerHandle] = field(default_factory=dict)
    _unfinished: int = 0
    _idle: asyncio.Event | None = None
    _client: httpx.AsyncClient | None = None

    # -- registration and emission ---------------------------------------------------------

    def register(self, spec: EndpointSpec) -> Endpoint:
        endpoint = Endpoint(id=f"we_{secrets.token_hex(6)}", **spec.model_dump(exclude={"secret"}))
        self._endpoints[endpoint.id] = _Registered(
            endpoint, spec.secret, asyncio.Semaphore(spec.concurrency)
        )
        return endpoint

    def endpoints(self) -> list[Endpoint]:
        return [r.endpoint for r in self._endpoints.values()]

    def unregister(self, endpoint_id: str) -> bool:
        return self._endpoints.pop(endpoint_id, None) is not None

    def emit(self, request: EmitRequest) -> list[Emitted]:
        """Record the events and plan their deliveries; they start at once, in the background."""
        taken = [e.id for e in request.events if e.id is not None and e.id in self._events]
        if taken:
            raise HTTPException(409, f"event id already emitted: {taken[0]}")
        chooser = random.Random(request.seed)
        now = int(time.time())
        events: list[_Event] = []
        for spec in request.events:
            event_id = spec.id or f"evt_{secrets.token_hex(12)}"
            created = now if spec.created is None else spec.created
            payload = {"id": event_id, "type": spec.type, "created": created, "data": spec.data}
            body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
            copies = chooser.randint(request.copies_min, request.copies_max)
            event = _Event(event_id, spec.type, body, copies)
            self._events[event_id] = event
            events.append(event)
        if request.shuffle:
            chooser.shuffle(events)
        for event in events:
            for endpoint_id in self._endpoints:
                self._enqueue(_Job(event, endpoint_id, copy=1), new=True)
        return [Emitted(id=e.id, type=e.type, copies=e.copies) for e in events]

    # -- evidence --------------------------------------------------------------------------

    def deliveries(self, event_id: str | None = None) -> list[Delivery]:
        return [d for d in self._deliveries if event_id is None or d.event_id == event_id]

    def event(self, event_id: str) -> dict[str, Any] | None:
        event = self._events.get(event_id)
        if event is None:
            return None
        attempts = self.deliveries(event_id)
        return {
            "id": event.id,
            "type": event.type,
            "copies": event.copies,
            "body": json.loads(event.body),
            "delivered": sum(d.outcome == "delivered" for d in attempts),
            "attempts": len(attempts),
        }

    @property
    def pending(self) -> int:
        """Deliveries not yet finished: queued, waiting to be retried, or in flight."""
        return self._unfinished

    async def wait_idle(self, seconds: float) -> bool:
        if self._unfinished == 0:
            return True
        try:
            async with asyncio.timeout(seconds):
                await self._idle_event().wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    # -- the delivery loop -----------------------------------------------------------------

    def _idle_event(self) -> asyncio.Event:
        if self._idle is None:
            self._idle = asyncio.Event()
            if self._unfinished == 0:
                self._idle.set()
        return self._idle

    def _enqueue(self, job: _Job, *, new: bool) -> None:
        if self._queue is None:
            # Made on first use, inside the running loop (the app may be built outside one).
            self._queue = asyncio.Queue()
            self._spawn(self._dispatch(self._queue))
        if new:
            self._unfinished += 1
            self._idle_event().clear()
        self._queue.put_nowait(job)

    def _finished(self) -> None:
        self._unfinished -= 1
        if self._unfinished == 0:
            self._idle_event().set()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch(self, queue: asyncio.Queue[_Job]) -> None:
        while True:
            job = await queue.get()
            registered = self._endpoints.get(job.endpoint_id)
            if registered is None:  # unregistered since: nobody to deliver to
                self._finished()
                continue
            # In queue order, at most `concurrency` at once per endpoint.
            await registered.slots.acquire()
            self._spawn(self._deliver(job, registered))

    async def _deliver(self, job: _Job, registered: _Registered) -> None:
        try:
            delivery = await self._attempt(job, registered)
        finally:
            registered.slots.release()
        self._deliveries.append(delivery)
        if self.narrate:
            answer = delivery.status_code or delivery.error
            print(
                f"webhook {job.event.type} {job.event.id} -> {answer}"
                f" (copy {job.copy}/{job.event.copies}, attempt {job.attempt})",
                flush=True,
            )
        endpoint = registered.endpoint
        if delivery.outcome == "delivered":
            if job.copy < job.event.copies:
                # Sent again although it was taken: after whatever else is queued by now.
                self._enqueue(_Job(job.event, job.endpoint_id, job.copy + 1), new=True)
            self._finished()
        elif job.attempt < endpoint.max_attempts:
            delay = min(endpoint.retry_delay_ms / 1000 * 2 ** (job.attempt - 1), MAX_RETRY_DELAY_S)
            retry = _Job(job.event, job.endpoint_id, job.copy, job.attempt + 1)
            self._timers[id(retry)] = asyncio.get_running_loop().call_later(
                delay, self._retry, retry
            )
        else:
            self._finished()  # given up: the event stays undelivered, as the records show

    def _retry(self, job: _Job) -> None:
        self._timers.pop(id(job), None)
        self._enqueue(job, new=False)

    async def _attempt(self, job: _Job, registered: _Registered) -> Delivery:
        if self._client is None:
            self._client = httpx.AsyncClient(transport=self.transport)
        signed_at = int(time.time())
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature_header(registered.secret, job.event.body, signed_at),
        }
        started_at = time.time()
        status: int | None = None
        error: str | None = None
        try:
            response = await self._client.post(
                registered.endpoint.url,
                content=job.event.body,
                headers=headers,
                timeout=registered.endpoint.timeout_ms / 1000,
            )
            status = response.status_code
        except Exception as exc:  # refused, reset, timed out: no answer at all
            # Whatever went wrong, it was this delivery: the loop goes on with the others.
            error = type(exc).__name__
        outcome: Literal["delivered", "refused", "unreachable"] = (
            "unreachable" if status is None else "delivered" if 200 <= status < 300 else "refused"
        )
        return Delivery(
            event_id=job.event.id,
            event_type=job.event.type,
            endpoint_id=registered.endpoint.id,
            copy=job.copy,
            attempt=job.attempt,
            outcome=outcome,
            status_code=status,
            error=error,
            signed_at=signed_at,
            started_at=started_at,
            finished_at=time.time(),
        )


def webhook_router(sender: WebhookSender) -> APIRouter:
    """The payments provider's webhook API, served beside the other providers."""
    router = APIRouter(prefix="/webhooks", tags=["webhooks"])

    @router.post("/endpoints", status_code=201)
    async def register_endpoint(spec: EndpointSpec) -> Endpoint:
        return sender.register(spec)

    @router.get("/endpoints")
    async def list_endpoints() -> list[Endpoint]:
        return sender.endpoints()

    @router.delete("/endpoints/{endpoint_id}")
    async def remove_endpoint(endpoint_id: str) -> dict[str, str]:
        if not sender.unregister(endpoint_id):
            raise HTTPException(404, f"unknown endpoint {endpoint_id!r}")
        return {"removed": endpoint_id}

    @router.post("/events", status_code=202)
    async def emit_events(request: EmitRequest) -> dict[str, Any]:
        emitted = sender.emit(request)
        return {"events": [e.model_dump() for e in emitted], "endpoints": len(sender.endpoints())}

    @router.get("/events/{event_id}")
    async def get_event(event_id: str) -> dict[str, Any]:
        event = sender.event(event_id)
        if event is None:
            raise HTTPException(404, f"unknown event {event_id!r}")
        return event

    @router.get("/deliveries")
    async def list_deliveries(event_id: str | None = None) -> list[dict[str, Any]]:
        return [asdict(d) for d in sender.deliveries(event_id)]

    @router.get("/idle")
    async def idle(wait: Annotated[float, Query(ge=0, le=60)] = 0) -> dict[str, Any]:
        """Whether every delivery is finished; waits up to `wait` seconds for it to be."""
        return {"idle": await sender.wait_idle(wait), "pending": sender.pending}

    return router

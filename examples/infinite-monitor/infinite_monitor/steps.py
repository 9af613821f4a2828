"""The steps: probe the services, read the stop flag, send an alert, start the next generation.

A probe's answer is an observation, not a failure: a service that answers 5xx, times out,
refuses the connection or answers what cannot be decoded is *down*, and the step returns that as
a value. It is never retried
within the iteration: the next iteration, one interval later, is the retry.

Each probe carries an Idempotency-Key chosen by the example, `<monitor>/<service>/<iteration>`:
the same probe of the same iteration, sent again after a crash, is answered with what the service
said the first time, so a replayed iteration sees what the first attempt saw. (The sandbox stores
only answers it acted on; a probe it failed is probed again, for real.)

An alert is an effect a person reads, so it is keyed by the step's durable id: a worker that dies
after Slack took the alert but before the step's result was checkpointed runs the step again with
the same key, and Slack answers from the key instead of posting twice. Slack being down (a 5xx,
408, 429, a timeout, a 2xx whose body is not its answer) makes the step raise, and its retry
policy sends it again with that key.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

import httpx
from resonate.context import Context
from resonate.error import ServerError
from resonate.resonate import Resonate

# Client errors that say "not now" rather than "no": Request Timeout and Too Many Requests.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})
NOT_FOUND = 404

type Health = Literal["up", "down"]


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the services and Slack, shared by every step (a worker dependency)."""

    client: httpx.AsyncClient


@dataclass(frozen=True)
class Launcher:
    """What starts a generation: this worker's Resonate client and the group that runs monitors."""

    resonate: Resonate
    group: str


@dataclass(frozen=True)
class Carried:
    """What one generation hands to the next: everything the monitor knows, and nothing else."""

    monitor: str  # the monitor's name: the first generation's execution id
    generation: int
    iteration: int  # iterations done so far, over every generation
    states: dict[str, Health]
    alerts_undelivered: int = 0


@dataclass(frozen=True)
class Alert:
    """One state change as it went to Slack: its message id, or why it could not go."""

    service: str
    became: Health
    iteration: int
    message_id: str | None = None
    refusal: str | None = None


@dataclass(frozen=True)
class Observation:
    """What one iteration saw: too late to start, a stop request, or each service's health."""

    too_late: bool = False  # the generation's deadline cannot hold what it has left to do
    stop_requested: bool = False
    states: dict[str, Health] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)


class SlackUnavailableError(Exception):
    """Slack did not take the alert now; another attempt may succeed."""


def stop_flag_id(monitor: str) -> str:
    """The promise an operator creates to stop a monitor (`demo stop`, or any client)."""
    return f"{monitor}-stop"


def generation_id(monitor: str, generation: int) -> str:
    """The execution id of a generation: the monitor's own name for the first, then `-gen-<n>`."""
    return monitor if generation == 1 else f"{monitor}-gen-{generation}"


def probe_key(monitor: str, service: str, iteration: int) -> str:
    """The Idempotency-Key of one probe. Zero-padded, so a key prefix selects iterations."""
    return f"{monitor}/{service}/{iteration:08d}"


async def observe(
    ctx: Context, monitor: str, services: list[str], iteration: int, start_by: int | None = None
) -> Observation:
    """One iteration's look at the world: too late to start? asked to stop? If not, probe.

    `start_by` (ms since the epoch, on a generation's first look) is the latest moment its
    deadline lets it begin: later, the generation would die at its deadline before it is done.
    """
    if start_by is not None and time.time() * 1000 > start_by:
        return Observation(too_late=True)
    if await _stop_requested(ctx.get_dependency(Launcher).resonate, monitor):
        return Observation(stop_requested=True)
    providers = ctx.get_dependency(Providers)

    async def probe(service: str) -> tuple[str, Health, str]:
        try:
            response = await providers.client.post(
                "/api/call",
                json={"health_check": service, "iteration": iteration},
                headers={"Idempotency-Key": probe_key(monitor, service, iteration)},
            )
        except (httpx.TransportError, httpx.DecodingError) as exc:  # no answer it can read
            return service, "down", type(exc).__name__
        if response.is_success:
            return service, "up", ""
        return service, "down", f"answered {response.status_code}"

    answers = await asyncio.gather(*(probe(service) for service in services))
    return Observation(
        states={service: health for service, health, _ in answers},
        reasons={service: why for service, health, why in answers if health == "down"},
    )


async def _stop_requested(resonate: Resonate, monitor: str) -> bool:
    """Whether an operator asked this monitor to stop: its stop promise exists."""
    try:
        await resonate.promises.get(stop_flag_id(monitor))
    except ServerError as exc:
        if exc.code == NOT_FOUND:
            return False
        raise  # the server did not answer: the step's retry policy asks again
    return True


async def send_alert(
    ctx: Context, monitor: str, service: str, became: Health, iteration: int, reason: str
) -> Alert:
    text = f"[{monitor}] {service} is {became.upper()}" + (f" ({reason})" if reason else "")
    print(f"alert #{iteration}: {text}", flush=True)
    providers = ctx.get_dependency(Providers)
    try:
        response = await providers.client.post(
            "/slack/send",
            json={"channel": "#oncall", "text": text, "service": service, "became": became},
            headers={"Idempotency-Key": ctx.info.id},
        )
    # No answer, or one that could not be decoded: it may have posted; the key makes a retry safe.
    except (httpx.TransportError, httpx.DecodingError) as exc:
        raise SlackUnavailableError(f"{service} {became}: {type(exc).__name__}") from exc
    if response.is_server_error or response.status_code in RETRYABLE_CLIENT_ERRORS:
        raise SlackUnavailableError(f"{service} {became}: answered {response.status_code}")
    if response.is_client_error:
        return Alert(service, became, iteration, refusal=f"{response.status_code} refused")
    try:
        return Alert(service, became, iteration, message_id=response.json()["id"])
    except (ValueError, LookupError, TypeError) as exc:
        # A 2xx that is not Slack's answer (a proxy's HTML page, a cut-off body) says nothing
        # about what it did: not a bug that stops the monitor, but an alert that may have posted.
        raise SlackUnavailableError(
            f"{service} {became}: answered {response.status_code} without its id"
        ) from exc


async def start_generation(
    ctx: Context,
    carried: Carried,
    services: list[str],
    interval_seconds: int,
    generation_length: int,
    max_iterations: int | None,
    deadline: timedelta,
) -> str:
    """Start the next generation as a fresh execution; idempotent, because its id is chosen."""
    launcher = ctx.get_dependency(Launcher)
    next_id = generation_id(carried.monitor, carried.generation)
    # An id that exists already is that execution: run again after a crash, this step starts
    # nothing new, and the arguments it sends (the same ones) are ignored.
    handle = launcher.resonate.options(target=launcher.group, timeout=deadline).rpc(
        next_id, "monitor", services, interval_seconds, generation_length, max_iterations, carried
    )
    return await handle.id()

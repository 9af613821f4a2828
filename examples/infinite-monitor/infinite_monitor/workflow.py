"""The durable workflow: probe, alert on a change, sleep, repeat; forever, in generations.

Every resume of a workflow replays its history from the top, and the history of a loop grows by
a few promises per iteration: a monitor that never ends would replay for ever longer. So a monitor
is a chain of executions, *generations*: each runs at most `generation_length` iterations, then
starts the next one as a fresh execution with what it knows (the last known states, the iteration
count) and ends. The next id is chosen, `<monitor>-gen-<n>`, so starting it is idempotent: a
generation that dies while handing over starts the same successor again, never a second one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from resonate.context import Context
from resonate.retry import Exponential

from infinite_monitor.steps import (
    Alert,
    Carried,
    Health,
    SlackUnavailableError,
    observe,
    send_alert,
    start_generation,
)

# An alert must reach someone: Slack that cannot take it now (a 5xx, a 429, no answer) is asked
# again with the same key, 6 retries, 2 s doubling to 30 s, about two minutes, which rides out a
# restart or a rate-limit window. After that the alert is counted as undelivered (it may have
# landed) and the monitor goes on: a monitor that dies because Slack is down watches nothing.
ALERT_RETRIES = Exponential(delay=1, factor=2, max_retries=6, max_delay=30)
# Observing (reading the stop flag, then probing) and starting the next generation talk to the
# Resonate server: a server that is restarting answers again within seconds. 5 retries, 2 s
# doubling to 16 s (about 45 s). A probe itself never raises (a failed probe is a "down"): the
# next iteration is its retry, and a retried observation sends each probe again with its key.
SERVER_RETRIES = Exponential(delay=1, factor=2, max_retries=5, max_delay=16)

# Iterations per generation. Each iteration adds two promises (its observation, its sleep) and
# one per alert, and every resume replays the generation so far, sending the server again the
# create of every sleep it passed: 100 keeps a resume to about a hundred requests, whatever the
# monitor's age.
GENERATION_LENGTH = 100
MAX_GENERATION_LENGTH = 1000
MAX_SERVICES = 10
MAX_INTERVAL_SECONDS = 24 * 3600
# A generation's deadline: its iterations' sleeps, plus a day for the probes, alerts and retries.
# The SDK ends a sleep, and the execution, at the execution's deadline, so the deadline must
# outlive every sleep: a generation that reaches it dies there, with no successor and no alert.
# The hand-over starts each successor with this deadline, and a client must start the first
# generation with it (`timeout=generation_deadline(...)`): one started without (a day, the SDK's
# default) or with less is refused at its first look when its deadline cannot hold its sleeps
# and an hour more (DEADLINE_MARGIN_MIN), rather than dying silently days later.
DEADLINE_MARGIN = timedelta(days=1)
DEADLINE_MARGIN_MIN = timedelta(hours=1)
SERVICE_NAME = re.compile(r"[a-z][a-z0-9-]{0,39}")

type EndReason = Literal["continued", "stopped", "max-iterations"]


@dataclass(frozen=True)
class GenerationEnd:
    """How one generation ended, with what the monitor knew then."""

    monitor: str
    generation: int
    iterations: int  # over every generation so far
    states: dict[str, Health]
    reason: EndReason
    alerts: list[Alert]  # sent by this generation
    alerts_undelivered: int  # over every generation so far
    continued_as: str | None = None


class InvalidMonitorError(ValueError):
    """The arguments, or the deadline, describe no monitor this workflow runs; nothing was probed
    or sent."""


def monitor_problem(
    services: object, interval_seconds: object, generation_length: object, max_iterations: object
) -> str | None:
    """What is wrong with a monitor's arguments, naming the argument; None when nothing is."""
    if not isinstance(services, list) or not 0 < len(services) <= MAX_SERVICES:
        return f"services: must be a list of 1 to {MAX_SERVICES} service names"
    for service in services:
        if not isinstance(service, str) or not SERVICE_NAME.fullmatch(service):
            return (
                f"services: {service!r} is not a service name (a lowercase letter, then up to 39"
                " lowercase letters, digits or dashes)"
            )
    if len(set(services)) != len(services):
        return "services: a service is named twice"
    for name, value, low, high in (
        ("interval_seconds", interval_seconds, 1, MAX_INTERVAL_SECONDS),
        ("generation_length", generation_length, 1, MAX_GENERATION_LENGTH),
    ):
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{name}: must be a whole number, got {value!r}"
        if not low <= value <= high:
            return f"{name}: must be between {low} and {high}, got {value}"
    if max_iterations is not None and (
        not isinstance(max_iterations, int)
        or isinstance(max_iterations, bool)
        or max_iterations < 1
    ):
        return (
            f"max_iterations: must be a whole number of at least 1, or none, got {max_iterations!r}"
        )
    return None


def generation_deadline(interval_seconds: int, generation_length: int) -> timedelta:
    """How long one generation may run: the deadline to start each generation with."""
    return timedelta(seconds=interval_seconds * generation_length) + DEADLINE_MARGIN


async def monitor(
    ctx: Context,
    services: list[str],
    interval_seconds: int,
    generation_length: int = GENERATION_LENGTH,
    max_iterations: int | None = None,
    carried: Carried | None = None,
) -> GenerationEnd:
    problem = monitor_problem(services, interval_seconds, generation_length, max_iterations)
    if problem is not None:
        raise InvalidMonitorError(problem)
    # The first generation's own id names the monitor: an id its client chose.
    known = carried or Carried(ctx.info.id, 1, 0, dict.fromkeys(services, "up"))
    alerts: list[Alert] = []
    undelivered = known.alerts_undelivered
    iteration, states = known.iteration, dict(known.states)

    def end(reason: EndReason, continued_as: str | None = None) -> GenerationEnd:
        return GenerationEnd(
            known.monitor,
            known.generation,
            iteration,
            states,
            reason,
            alerts,
            undelivered,
            continued_as,
        )

    # The latest moment this generation can begin and still sleep its sleeps before its deadline
    # (see DEADLINE_MARGIN). The observation step compares it with its clock: a replay sees the
    # answer the first look got.
    sleeps = generation_length
    if max_iterations is not None:
        sleeps = min(sleeps, max_iterations - known.iteration)
    needs = timedelta(seconds=interval_seconds * sleeps) + DEADLINE_MARGIN_MIN
    start_by = ctx.info.timeout_at - needs // timedelta(milliseconds=1)

    server = ctx.options(retry_policy=SERVER_RETRIES)
    done_here = 0  # iterations run by this generation
    while True:
        # Continue as new: the next generation starts fresh with what this one knows, and this
        # one ends, so no execution's history holds more than `generation_length` iterations.
        if done_here == generation_length:
            successor = Carried(known.monitor, known.generation + 1, iteration, states, undelivered)
            deadline = generation_deadline(interval_seconds, generation_length)
            next_id = await server.run(
                start_generation,
                successor,
                services,
                interval_seconds,
                generation_length,
                max_iterations,
                deadline,
            )
            return end("continued", next_id)
        # Each iteration first asks whether to go on: a bound reached, or the stop flag set.
        if max_iterations is not None and iteration >= max_iterations:
            return end("max-iterations")
        # A generation's first look also asks whether it can still finish before its deadline.
        first_look = done_here == 0
        seen = await server.run(
            observe, known.monitor, services, iteration + 1, start_by if first_look else None
        )
        if seen.too_late:
            raise InvalidMonitorError(
                f"timeout: this generation needs {needs} before its deadline (its {sleeps}"
                f" sleeps of {interval_seconds} s and a margin) and has less; start it with"
                " timeout=generation_deadline(interval_seconds, generation_length)"
            )
        if seen.stop_requested:
            return end("stopped")
        iteration += 1
        for service in services:  # an alert per state change, none while a state holds
            became = seen.states[service]
            if became == states[service]:
                continue
            states[service] = became
            try:
                alerts.append(
                    await ctx.options(retry_policy=ALERT_RETRIES).run(
                        send_alert,
                        known.monitor,
                        service,
                        became,
                        iteration,
                        seen.reasons.get(service, ""),
                    )
                )
            except SlackUnavailableError:
                undelivered += 1
        await ctx.sleep(timedelta(seconds=interval_seconds))
        done_here += 1

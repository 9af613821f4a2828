"""The nightly report, and the schedule that starts it at every cron tick.

The Resonate server owns the schedule: at each tick it creates a promise whose id is the
schedule's id and the tick's time, and routes it to a worker of the group as a fresh execution of
`nightly_report`. Nothing in a worker keeps time, so any number of workers can run, none of them
needs to be up at the tick, and a tick is one execution however many there are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from resonate.context import Context
from resonate.error import ServerError
from resonate.resonate import Resonate, ResonateSchedule
from resonate.retry import Exponential

from schedule.steps import Refused, gather_figures, read_clock, send_report

GROUP = "schedule"
SCHEDULE_ID = "nightly-report"
NIGHTLY = "0 0 * * *"  # every day at 00:00 UTC (the server reads cron in UTC)
DISTRIBUTION_LIST = "finance-team"
# A schedule's arguments are stored in plaintext on the server and copied into every tick: the
# report goes to a list by name, which the mailer expands, never to people's addresses.
LIST_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# How long after its tick a run may still finish, retries included. Past it the tick's promise
# times out and the report is not sent late; it also bounds every step's own timeout. Half a day:
# a report about last night read the next afternoon is still worth sending, one a day late is not.
PROMISE_TIMEOUT = timedelta(hours=12)
MILLISECOND = timedelta(milliseconds=1)  # the server stores the promise timeout in milliseconds

# Nobody waits for a nightly report at midnight, so a provider that is down gets time: 24
# retries, 2 s doubling to at most 5 minutes apart (about an hour and a half), well inside
# PROMISE_TIMEOUT. Then the run fails and the tick shows as rejected; the next tick still runs.
# Delays are whole seconds: the SDK's policies take `int`. A refusal is never retried.
NIGHTLY_RETRIES = Exponential(delay=1, factor=2, max_retries=24, max_delay=300)


@dataclass(frozen=True)
class Report:
    """What one tick's run did: `sent` (with the figures' export), `sent-without-figures` (the
    figures API refused; a notice saying why was sent), or `undelivered` (the mailer refused)."""

    report_id: str  # the tick's execution id
    status: str
    as_of: str
    figures: str | None = None
    message_id: str | None = None
    reason: str | None = None


async def nightly_report(ctx: Context, distribution_list: str) -> Report:
    report_id = ctx.info.id  # this tick's own id, chosen by the server: one per tick
    as_of = await ctx.run(read_clock)
    retried = ctx.options(retry_policy=NIGHTLY_RETRIES)
    figures = await retried.run(gather_figures, as_of)
    sent = await retried.run(send_report, report_id, distribution_list, as_of, figures)
    export = figures if isinstance(figures, str) else None
    if isinstance(sent, Refused):
        return Report(report_id, "undelivered", as_of, export, reason=sent.reason)
    if isinstance(figures, Refused):
        return Report(report_id, "sent-without-figures", as_of, None, sent, figures.reason)
    return Report(report_id, "sent", as_of, export, sent)


class ScheduleRefusedError(ValueError):
    """The Resonate server would not create the schedule; the message says which field and why."""


async def create_nightly_schedule(
    resonate: Resonate,
    cron: str = NIGHTLY,
    schedule_id: str = SCHEDULE_ID,
    distribution_list: str = DISTRIBUTION_LIST,
) -> ResonateSchedule:
    """Create the schedule, or find it there: at every tick of `cron` (UTC), the server starts
    `nightly_report(distribution_list)` on a worker of GROUP as a fresh execution.

    The server checks the cron expression; one it cannot read is refused with a 400 naming the
    field, raised here as ScheduleRefusedError, as is a distribution list that is not a list's
    name (checked here, before anything is sent). Creating an id that exists returns that schedule
    unchanged, whatever was sent: a different cron, distribution list or promise timeout is
    refused here rather than silently ignored (delete the schedule to change it).
    """
    if not LIST_NAME.fullmatch(distribution_list):
        raise ScheduleRefusedError(
            f"schedule {schedule_id!r}: invalid field 'distribution_list':"
            f" {distribution_list!r} is not a list name (lowercase letters, digits and dashes,"
            " e.g. 'finance-team'); it is stored in plaintext, so never people's addresses"
        )
    try:
        schedule = await resonate.options(target=GROUP).schedule(
            schedule_id,
            cron,
            "nightly_report",
            args=(distribution_list,),
            promise_timeout=PROMISE_TIMEOUT,
        )
    except ServerError as refused:
        if refused.code == 400:
            raise ScheduleRefusedError(f"schedule {schedule_id!r}: {refused.message}") from refused
        raise
    # The server answers a create for an existing id with the schedule it has, ignoring what was
    # sent: compare the stored cron, arguments and promise timeout with those sent, so a change
    # (another list, or PROMISE_TIMEOUT edited in a new deploy) is refused, not silently dropped.
    stored = await resonate.schedules.get(schedule_id)
    task = resonate.schedules.codec.decode(stored.promise_param)  # as `schedule()` encoded it
    changed = [
        f"{field} {had!r}, not {asked!r}"
        for field, had, asked in [
            ("cron", stored.cron, cron),
            ("args", task.get("args"), [distribution_list]),
            ("promise timeout (ms)", stored.promise_timeout, PROMISE_TIMEOUT // MILLISECOND),
        ]
        if had != asked
    ]
    if changed:
        raise ScheduleRefusedError(
            f"schedule {schedule_id!r} exists with {'; '.join(changed)}:"
            " delete it first to change it"
        )
    return schedule

"""`python -m schedule.demo`: a nightly report on an every-minute schedule, three ticks, then off.

It shows a cron expression the server refuses, creates the schedule (every minute instead of
every midnight, so that it fires during the demo), narrates each tick's run as the server starts
it, deletes the schedule, and shows that nothing fires after that. Last, it asks the mailer's
sandbox for its own records: one email per tick. In real time the ticks come a minute apart; with
`SKIP_TIME=1` the dev server fires each one as soon as the previous report is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from resonate.error import ServerError
from resonate.resonate import Resonate
from resonate.types import PromiseRecord

from schedule.workflow import (
    DISTRIBUTION_LIST,
    GROUP,
    NIGHTLY,
    SCHEDULE_ID,
    ScheduleRefusedError,
    create_nightly_schedule,
)

TICKS = 3
EVERY_MINUTE = "* * * * *"
EVERY_TEN_SECONDS = "*/10 * * * * *"  # a seconds field: finer than the server's cron dialect
POLL_SECONDS = 0.05


def _clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S UTC")


async def _ticks(resonate: Resonate) -> list[PromiseRecord]:
    """The executions the schedule has started, oldest first (the server tags each one)."""
    found: list[PromiseRecord] = []
    cursor: str | None = None
    while True:
        page = await resonate.promises.search(None, {"resonate:schedule": SCHEDULE_ID}, 100, cursor)
        found += page.promises
        if page.cursor is None:
            return sorted(found, key=lambda p: (p.created_at, p.id))
        cursor = page.cursor


async def _report(resonate: Resonate, n: int, tick: PromiseRecord) -> None:
    # This client did not register `nightly_report`, so the report arrives as plain JSON.
    report: dict[str, Any] = await (await resonate.get(tick.id)).result()
    print(
        f"✓ tick {n}: {report['status']}, as of {report['as_of']}:"
        f" figures {report['figures']}, email {report['message_id']}",
        flush=True,
    )


def _fired(n: int, tick: PromiseRecord) -> None:
    print(f"⏰ tick {n} fired at {_clock(tick.created_at)}: execution {tick.id}", flush=True)


async def main() -> None:
    # A client, not a worker: it joins its own group so it is never handed a report to run.
    resonate = Resonate(url=os.environ["RESONATE_URL"], group="schedule-clients")
    seen: list[str] = []
    try:
        print(f"→ a schedule every ten seconds, {EVERY_TEN_SECONDS!r} (a seconds field)?")
        try:
            await create_nightly_schedule(resonate, EVERY_TEN_SECONDS)
        except ScheduleRefusedError as refused:
            print(f"✗ refused by the server: {refused}", flush=True)

        before = {t.id for t in await _ticks(resonate)}  # an earlier demo's, on a kept server
        await create_nightly_schedule(resonate, EVERY_MINUTE)
        print(
            f"→ schedule {SCHEDULE_ID!r} created: {EVERY_MINUTE!r} (every minute, UTC), standing"
            f" in for {NIGHTLY!r}; at every tick the server starts"
            f" nightly_report({DISTRIBUTION_LIST!r}) on group {GROUP!r} as a fresh execution",
            flush=True,
        )
        due = (int(time.time()) // 60 + 1) * 60
        print(
            f"· waiting for {TICKS} ticks; in real time the first is due at"
            f" {_clock(due * 1000)} (SKIP_TIME=1 skips the wait)",
            flush=True,
        )
        # Ticks are independent executions: one can start while another is still running.
        reports: list[asyncio.Task[None]] = []
        while len(seen) < TICKS:
            fresh = [t for t in await _ticks(resonate) if t.id not in before and t.id not in seen]
            for tick in fresh[: TICKS - len(seen)]:
                seen.append(tick.id)
                _fired(len(seen), tick)
                reports.append(asyncio.create_task(_report(resonate, len(seen), tick)))
            await asyncio.sleep(POLL_SECONDS)
        await asyncio.gather(*reports)

        print(f"→ deleting schedule {SCHEDULE_ID!r}", flush=True)
        await resonate.schedules.delete(SCHEDULE_ID)
        try:
            await resonate.schedules.get(SCHEDULE_ID)
        except ServerError as gone:
            print(f"✓ the server has no such schedule any more ({gone})", flush=True)
        # A tick that fired before the deletion still runs to the end.
        for tick in [t for t in await _ticks(resonate) if t.id not in before | set(seen)]:
            seen.append(tick.id)
            _fired(len(seen), tick)
            print("· it fired before the deletion, and runs to the end", flush=True)
            await _report(resonate, len(seen), tick)
        # No event says "a tick did not come": wait out one more gap between ticks, and look.
        ticks = [t for t in await _ticks(resonate) if t.id in seen]
        gap = (ticks[-1].created_at - ticks[-2].created_at) / 1000
        await asyncio.sleep(gap + 2)
        later = [t.id for t in await _ticks(resonate) if t.id not in before | set(seen)]
        print(
            f"✓ {gap + 2:.1f}s later (the last two ticks fired {gap:.1f}s apart):"
            f" {len(later)} new ticks; {len(seen)} ticks ran in all",
            flush=True,
        )
    finally:
        # Whatever happened, leave no schedule firing on a server that outlives the demo.
        with contextlib.suppress(ServerError):
            await resonate.schedules.delete(SCHEDULE_ID)
        await resonate.stop()

    # The sandbox's admin API (a demo-only view): what did the mailer send?
    async with httpx.AsyncClient(base_url=os.environ["PROVIDER_API_URL"]) as sandbox:
        response = await sandbox.get("/_admin/effects", params={"key_prefix": SCHEDULE_ID + "-"})
        # Each email names the tick it reports on (`report`): keep this demo's.
        emails = [e for e in response.json() if e["body"].get("report") in seen]
    print(f"  the mailer's own records: {len(emails)} emails for {len(seen)} ticks", flush=True)
    for email in emails:
        body = email["body"]
        print(f"  {email['resource_id']}  {body['subject']}  (report {body['report']})")


if __name__ == "__main__":
    asyncio.run(main())

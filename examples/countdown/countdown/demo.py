"""`python -m countdown.demo [COUNT EVERY]`: run one countdown and show when each push arrived.

COUNT notifications, one every EVERY (`2s`, `90m`, `1h`, `1d`, or whole seconds); also read from
the environment as COUNT and EVERY, so `make run-countdown COUNT=3 EVERY=5s` works. Without
them: ten notifications one hour apart when the server skips time (`make run-countdown
SKIP_TIME=1`), else four notifications two seconds apart, in real time.

Bad arguments are refused here, before anything starts, with the same check the workflow makes.
At the end the demo asks the push service (the sandbox) when each notification arrived, and the
Resonate server how much waiting it skipped, if any.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from dataclasses import dataclass
from datetime import timedelta

import httpx
from resonate.resonate import Resonate

from countdown.steps import format_duration
from countdown.workflow import countdown_problem

SUBSCRIBER = "subscriber-42"
REAL_TIME = ("4", "2s")
SKIPPING_TIME = ("10", "1h")
# The execution must outlive its last sleep: the SDK ends a sleep at its workflow's deadline.
DEADLINE_MARGIN = timedelta(hours=1)
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION = re.compile(r"^(?P<amount>[0-9]+)(?P<unit>[smhd]?)$")


@dataclass(frozen=True)
class Plan:
    count: int
    interval_seconds: int

    @property
    def total_seconds(self) -> int:
        return self.count * self.interval_seconds


def parse_plan(argv: list[str], environ: dict[str, str]) -> Plan:
    """The countdown asked for, or SystemExit naming what is wrong (before anything starts)."""
    if len(argv) not in (0, 2):
        raise SystemExit("usage: python -m countdown.demo [COUNT EVERY], e.g. 10 1h")
    skipping = bool(environ.get("SKIP_TIME"))
    default_count, default_every = SKIPPING_TIME if skipping else REAL_TIME
    count_text, every_text = argv or (
        environ.get("COUNT", default_count),
        environ.get("EVERY", default_every),
    )
    if not re.fullmatch(r"[0-9]+", count_text.strip()):
        raise SystemExit(f"countdown refused: COUNT must be a whole number, got {count_text!r}")
    match = DURATION.match(every_text.strip())
    if match is None:
        raise SystemExit(
            "countdown refused: EVERY must be a duration like 2s, 90m, 1h or 1d, "
            f"got {every_text!r}"
        )
    plan = Plan(int(count_text), int(match["amount"]) * UNITS[match["unit"] or "s"])
    problem = countdown_problem(SUBSCRIBER, plan.count, plan.interval_seconds)
    if problem is not None:
        raise SystemExit(f"countdown refused: {problem}")
    return plan


async def main(plan: Plan) -> None:
    # A client, not a worker: it joins its own group so it is never handed workflow work.
    resonate = Resonate(url=os.environ["RESONATE_URL"], group="countdown-clients")
    execution_id = f"countdown-{int(time.time())}"
    every, total = format_duration(plan.interval_seconds), format_duration(plan.total_seconds)
    print(
        f"→ countdown({SUBSCRIBER}, {plan.count} notifications, one every {every}, {total} in all)"
        f" as execution {execution_id}"
    )
    if os.environ.get("SKIP_TIME"):
        print(
            "  time skipping: the dev server fires each sleep as soon as the workflow waits on it"
        )
    timeout = timedelta(seconds=plan.total_seconds) + DEADLINE_MARGIN
    started = time.perf_counter()
    handle = resonate.options(target="countdown", timeout=timeout).rpc(
        execution_id, "countdown", SUBSCRIBER, plan.count, plan.interval_seconds
    )
    # This client did not register `countdown`, so each notification arrives as plain JSON.
    notifications = await handle.result()
    wall = time.perf_counter() - started
    root = await resonate.promises.get(execution_id)
    await resonate.stop()
    sent = sum(n["receipt"] is not None for n in notifications)
    print(f"✓ {sent} of {plan.count} notifications sent, in {wall:.1f}s of wall time")
    for notification in notifications:
        if notification["refusal"] is not None:
            print(f"✗ {notification['position']} refused: {notification['refusal']}")

    # The sandbox's admin API (a demo-only view): when did each push reach the service?
    async with httpx.AsyncClient(base_url=os.environ["PROVIDER_API_URL"]) as sandbox:
        response = await sandbox.get("/_admin/effects", params={"key_prefix": execution_id + ":"})
        effects = response.json()
    print("  the push service's own records, one per notification:")
    for n, effect in enumerate(effects):
        gap = (
            f"  {effect['started_at'] - effects[n - 1]['started_at']:.2f}s after the last"
            if n
            else ""
        )
        body = effect["body"]
        position = f"{body['position']}/{body['of']}"
        print(f"  {position:>5}  {effect['resource_id']}  {body['message']:<9}{gap}".rstrip())

    # The workflow's own deadline was set when it started. Time skipping moves pending deadlines
    # earlier instead of moving the clock: the distance it moved is the waiting that was skipped.
    requested_deadline_ms = root.created_at + int(timeout.total_seconds() * 1000)
    skipped_seconds = (requested_deadline_ms - root.timeout_at) // 1000
    if skipped_seconds > 0:
        print(
            f"  the server skipped {format_duration(skipped_seconds)} of sleeping: the workflow's "
            f"deadline moved that much earlier, the clocks did not move"
        )


if __name__ == "__main__":
    asyncio.run(main(parse_plan(sys.argv[1:], dict(os.environ))))

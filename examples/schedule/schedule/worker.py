"""`python -m schedule.worker`: a worker process that runs each tick's `nightly_report`.

A worker does not keep time: the Resonate server fires the schedule and hands each tick to one
live worker of the group. Everything it needs comes from the environment, so the same code runs
against the cookbook's dev server and the official Resonate server:
  RESONATE_URL          the Resonate server (required)
  RESONATE_GROUP        the worker group the schedule targets (default: schedule)
  RESONATE_TTL_SECONDS  task lease; a dead worker's report moves on after at most this long
  PROVIDER_API_URL      the figures API and the mailer the steps call
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta

import httpx
from resonate.resonate import Resonate
from resonate.retry import Never

from schedule.steps import Providers
from schedule.workflow import GROUP, nightly_report


async def main() -> None:
    if not os.environ.get("RESONATE_URL"):
        sys.exit(
            "schedule.worker: RESONATE_URL is not set (start a server, or `make run-schedule`)"
        )
    async with httpx.AsyncClient(
        base_url=os.environ.get("PROVIDER_API_URL", "http://127.0.0.1:8100"), timeout=10
    ) as client:
        resonate = Resonate(
            url=os.environ["RESONATE_URL"],
            group=os.environ.get("RESONATE_GROUP", GROUP),
            ttl=timedelta(seconds=float(os.environ.get("RESONATE_TTL_SECONDS", "30"))),
        )
        resonate.with_dependency(Providers(client))
        # The workflow itself is never retried; its steps are, each by its own policy. The SDK's
        # default (30 retries, doubling) would retry a body that fails before its first step (bad
        # arguments, a bug) for hours, holding its lease, to fail the same way every time.
        resonate.register(nightly_report, retry_policy=Never())
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"schedule worker {os.getpid()} ready", flush=True)
        await stop.wait()
        await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())

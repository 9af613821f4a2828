"""`python -m infinite_monitor.worker`: a worker process that executes `monitor` generations.

Everything it needs comes from the environment, so the same code runs against the cookbook's
dev server and the official Resonate server:
  RESONATE_URL          the Resonate server (required)
  RESONATE_GROUP        the worker group monitors run on (default: infinite-monitor); each
                        generation starts the next one on this group
  RESONATE_TTL_SECONDS  task lease; a dead worker's work moves on after at most this long
  PROVIDER_API_URL      the services probed, and Slack
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

from infinite_monitor.steps import Launcher, Providers
from infinite_monitor.workflow import monitor


async def main() -> None:
    if not os.environ.get("RESONATE_URL"):
        sys.exit(
            "infinite_monitor.worker: RESONATE_URL is not set"
            " (start a server, or `make run-infinite-monitor`)"
        )
    group = os.environ.get("RESONATE_GROUP", "infinite-monitor")
    async with httpx.AsyncClient(
        base_url=os.environ.get("PROVIDER_API_URL", "http://127.0.0.1:8100"), timeout=10
    ) as client:
        resonate = Resonate(
            url=os.environ["RESONATE_URL"],
            group=group,
            ttl=timedelta(seconds=float(os.environ.get("RESONATE_TTL_SECONDS", "30"))),
        )
        resonate.with_dependency(Providers(client))
        resonate.with_dependency(Launcher(resonate, group))
        # The workflow itself is never retried; its steps are, each by its own policy. The SDK's
        # default (30 retries, doubling) would retry a body that fails before its first step (bad
        # arguments, a bug) for hours, holding its lease, to fail the same way every time.
        resonate.register(monitor, retry_policy=Never())
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"infinite-monitor worker {os.getpid()} ready", flush=True)
        await stop.wait()
        await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())

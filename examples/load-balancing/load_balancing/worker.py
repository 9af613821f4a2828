"""`python -m load_balancing.worker`: one worker of the group; runs the `job`s it is given.

Environment: RESONATE_URL (required), RESONATE_GROUP (default: load-balancing),
RESONATE_TTL_SECONDS (its lease: how long the group waits for it after it dies), PROVIDER_API_URL,
JOB_WORK_SECONDS (how long a job's work takes, default 1).
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

from load_balancing.steps import Providers
from load_balancing.workflow import job


async def main() -> None:
    if not os.environ.get("RESONATE_URL"):
        sys.exit(
            "load_balancing.worker: RESONATE_URL is not set"
            " (start a server, or `make run-load-balancing`)"
        )
    async with httpx.AsyncClient(
        base_url=os.environ.get("PROVIDER_API_URL", "http://127.0.0.1:8100"), timeout=10
    ) as client:
        resonate = Resonate(
            url=os.environ["RESONATE_URL"],
            group=os.environ.get("RESONATE_GROUP", "load-balancing"),
            ttl=timedelta(seconds=float(os.environ.get("RESONATE_TTL_SECONDS", "30"))),
        )
        resonate.with_dependency(Providers(client))
        # The workflow itself is never retried; its steps are, each by its own policy. The SDK's
        # default (30 retries, doubling) would retry a body that fails before its first step (bad
        # arguments, a bug) for hours, holding its lease, to fail the same way every time.
        resonate.register(job, retry_policy=Never())
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"load-balancing worker {os.getpid()} ready", flush=True)
        await stop.wait()
        await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())

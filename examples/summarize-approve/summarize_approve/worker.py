"""`python -m summarize_approve.worker`: a worker process that executes `run` workflows until stopped.

Environment: RESONATE_URL (required), RESONATE_GROUP (default: summarize-approve), RESONATE_TTL_SECONDS,
PROVIDER_API_URL.
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

from summarize_approve.steps import Providers
from summarize_approve.workflow import run


async def main() -> None:
    if not os.environ.get("RESONATE_URL"):
        sys.exit(
            "summarize_approve.worker: RESONATE_URL is not set (start a server, or `make run-summarize-approve`)"
        )
    async with httpx.AsyncClient(
        base_url=os.environ.get("PROVIDER_API_URL", "http://127.0.0.1:8100"), timeout=10
    ) as client:
        resonate = Resonate(
            url=os.environ["RESONATE_URL"],
            group=os.environ.get("RESONATE_GROUP", "summarize-approve"),
            ttl=timedelta(seconds=float(os.environ.get("RESONATE_TTL_SECONDS", "30"))),
        )
        resonate.with_dependency(Providers(client))
        # The workflow itself is never retried; its steps are, each by its own policy. The SDK's
        # default (30 retries, doubling) would retry a body that fails before its first step (bad
        # arguments, a bug) for hours, holding its lease, to fail the same way every time.
        resonate.register(run, retry_policy=Never())
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"summarize-approve worker {os.getpid()} ready", flush=True)
        await stop.wait()
        await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())

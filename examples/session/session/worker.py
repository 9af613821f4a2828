"""`python -m session.worker`: a worker process that executes `session` workflows until stopped.

Everything it needs comes from the environment, so the same code runs against the cookbook's
dev server and the official Resonate server:
  RESONATE_URL          the Resonate server (required)
  RESONATE_GROUP        the worker group clients send work to (default: session)
  RESONATE_TTL_SECONDS  task lease; a dead worker's sessions move on after at most this long
  PROVIDER_API_URL      the identity provider's API the steps call
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

from session.steps import Providers, Server
from session.workflow import session

GROUP = "session"


async def main() -> None:
    if not os.environ.get("RESONATE_URL"):
        sys.exit(
            "session.worker: RESONATE_URL is not set (start a server, or use `make run-session`)"
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
        resonate.with_dependency(Server(resonate))
        # The workflow itself is never retried. Once it made its first durable call it could not
        # be anyway (the SDK retries only bodies that made none); before that, the only thing that
        # can raise is bad arguments, which fail the same way every time: the SDK's default would
        # retry them 30 times with doubling delays, holding the lease. Transient provider failures
        # are retried step by step, by the steps' own policy (RETRIES in workflow.py).
        resonate.register(session, retry_policy=Never())
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"session worker {os.getpid()} ready", flush=True)
        await stop.wait()
        await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())

"""`python -m checkout_window.worker`: a worker process that executes `checkout` workflows.

Everything it needs comes from the environment, so the same code runs against the cookbook's
dev server and the official Resonate server:
  RESONATE_URL          the Resonate server (required)
  RESONATE_GROUP        the worker group clients send work to (default: checkout-window)
  RESONATE_TTL_SECONDS  task lease; a dead worker's purchases move on after at most this long
  PROVIDER_API_URL      the inventory, payment and email APIs the steps call
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta

import httpx
from resonate.resonate import Resonate

from checkout_window.steps import Providers, Server
from checkout_window.workflow import WORKFLOW_RETRIES, checkout

GROUP = "checkout-window"


async def main() -> None:
    if not os.environ.get("RESONATE_URL"):
        sys.exit(
            "checkout_window.worker: RESONATE_URL is not set"
            " (start a server, or use `make run-checkout-window`)"
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
        # Never retried as a whole (see WORKFLOW_RETRIES); its steps retry transient failures by
        # their own policies (STEP_RETRIES and RELEASE_RETRIES in workflow.py).
        resonate.register(checkout, retry_policy=WORKFLOW_RETRIES)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"checkout-window worker {os.getpid()} ready", flush=True)
        await stop.wait()
        await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())

"""`python -m order_state_machine.worker`: a worker process that runs orders until stopped.

Everything it needs comes from the environment, so the same code runs against the cookbook's
dev server and the official Resonate server:
  RESONATE_URL          the Resonate server (required)
  RESONATE_GROUP        the worker group clients send work to (default: order-state-machine)
  RESONATE_TTL_SECONDS  task lease; a dead worker's work moves on after at most this long
  PROVIDER_API_URL      the email, payment and push providers the steps call
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta

import httpx
from resonate.resonate import Resonate

from order_state_machine.steps import Providers, StatusBoard
from order_state_machine.workflow import WORKFLOW_RETRIES, order_lifecycle

GROUP = "order-state-machine"


async def main() -> None:
    if not os.environ.get("RESONATE_URL"):
        sys.exit(
            "order_state_machine.worker: RESONATE_URL is not set "
            "(start a server, or use `make run-order-state-machine`)"
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
        resonate.with_dependency(StatusBoard(resonate))
        # Explicit, or the SDK's default would retry a failing workflow 30 times (see workflow.py).
        resonate.register(order_lifecycle, retry_policy=WORKFLOW_RETRIES)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"order-state-machine worker {os.getpid()} ready", flush=True)
        await stop.wait()
        await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())

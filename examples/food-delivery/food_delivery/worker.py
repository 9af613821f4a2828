"""`python -m food_delivery.worker`: a worker process that delivers orders until stopped.

Everything it needs comes from the environment, so the same code runs against the cookbook's
dev server and the official Resonate server:
  RESONATE_URL          the Resonate server (required)
  RESONATE_GROUP        the worker group clients send work to (default: food-delivery)
  RESONATE_TTL_SECONDS  task lease; a dead worker's orders move on after at most this long
  PROVIDER_API_URL      the payment, restaurant, dispatch and notification providers
  PROVIDER_TIMEOUT_SECONDS  how long one provider call may take (default 10); a call that takes
                        longer counts as a transient failure that may have landed
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta

import httpx
from resonate.resonate import Resonate

from food_delivery.steps import ProgressBoard, Providers
from food_delivery.workflow import WORKFLOW_RETRIES, deliver_order

GROUP = "food-delivery"


async def main() -> None:
    if not os.environ.get("RESONATE_URL"):
        sys.exit(
            "food_delivery.worker: RESONATE_URL is not set"
            " (start a server, or use `make run-food-delivery`)"
        )
    async with httpx.AsyncClient(
        base_url=os.environ.get("PROVIDER_API_URL", "http://127.0.0.1:8100"),
        timeout=float(os.environ.get("PROVIDER_TIMEOUT_SECONDS", "10")),
    ) as client:
        resonate = Resonate(
            url=os.environ["RESONATE_URL"],
            group=os.environ.get("RESONATE_GROUP", GROUP),
            ttl=timedelta(seconds=float(os.environ.get("RESONATE_TTL_SECONDS", "30"))),
        )
        resonate.with_dependency(Providers(client))
        resonate.with_dependency(ProgressBoard(resonate))
        resonate.register(deliver_order, retry_policy=WORKFLOW_RETRIES)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"food-delivery worker {os.getpid()} ready", flush=True)
        await stop.wait()
        await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())

"""`python -m tiered_batch.worker`: a worker process that executes `process_batch` workflows.

Everything it needs comes from the environment, so the same code runs against the cookbook's
dev server and the official Resonate server:
  RESONATE_URL          the Resonate server (required)
  RESONATE_GROUP        the worker group clients send work to (default: tiered-batch)
  RESONATE_TTL_SECONDS  task lease; a dead worker's work moves on after at most this long
  PROVIDER_API_URL      the provider API the jobs call
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

from tiered_batch.steps import Providers
from tiered_batch.workflow import process_batch

GROUP = "tiered-batch"


async def main() -> None:
    if not os.environ.get("RESONATE_URL"):
        sys.exit(
            "tiered_batch.worker: RESONATE_URL is not set"
            " (start a server, or use `make run-tiered-batch`)"
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
        # A body that fails before its first durable call counts as a leaf to the SDK, which
        # would retry it (by default 30 times, doubling, holding its lease). A batch rejected by
        # validation fails the same way every time, so it must fail at once. (Once a workflow has
        # made a durable call, the SDK never retries it anyway: only its steps are retried.)
        resonate.register(process_batch, retry_policy=Never())
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"tiered-batch worker {os.getpid()} ready", flush=True)
        await stop.wait()
        await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())

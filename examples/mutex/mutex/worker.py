"""`python -m mutex.worker`: a worker process that runs coordinators and waiters until stopped.

Environment: RESONATE_URL (required), RESONATE_GROUP (default: mutex), RESONATE_TTL_SECONDS,
MUTEX_DB (the report generator's records; default .cookbook/mutex/reports.db).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta

from resonate.resonate import Resonate
from resonate.retry import Never

from mutex.steps import Hub, report_store
from mutex.workflow import contend, coordinator, use_resource


async def main() -> None:
    if not os.environ.get("RESONATE_URL"):
        sys.exit("mutex.worker: RESONATE_URL is not set (start a server, or `make run-mutex`)")
    resonate = Resonate(
        url=os.environ["RESONATE_URL"],
        group=os.environ.get("RESONATE_GROUP", "mutex"),
        ttl=timedelta(seconds=float(os.environ.get("RESONATE_TTL_SECONDS", "30"))),
    )
    resonate.with_dependency(Hub(resonate))
    store = report_store()
    store.connect().close()  # the table exists before the first use, for whoever reads it
    resonate.with_dependency(store)
    # Workflows are never retried; their steps are, each by its own policy. The SDK's default
    # (30 retries, doubling) would retry a body that fails before its first step (bad
    # arguments, a bug) for hours, to fail the same way every time.
    for workflow in (contend, coordinator, use_resource):
        resonate.register(workflow, retry_policy=Never())
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print(f"mutex worker {os.getpid()} ready", flush=True)
    await stop.wait()
    await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())

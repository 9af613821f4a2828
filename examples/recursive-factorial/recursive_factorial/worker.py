"""`python -m recursive_factorial.worker`: a worker that computes factorial levels until stopped.

Environment: RESONATE_URL (required), RESONATE_GROUP (default: recursive-factorial; each level
starts the one below on this group, so any worker of the group may compute it),
RESONATE_TTL_SECONDS.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta

from resonate.resonate import Resonate
from resonate.retry import Never

from recursive_factorial.steps import MAX_N, Workers
from recursive_factorial.workflow import factorial


async def main() -> None:
    if not os.environ.get("RESONATE_URL"):
        sys.exit(
            "recursive_factorial.worker: RESONATE_URL is not set"
            " (start a server, or `make run-recursive-factorial`)"
        )
    group = os.environ.get("RESONATE_GROUP", "recursive-factorial")
    resonate = Resonate(
        url=os.environ["RESONATE_URL"],
        group=group,
        ttl=timedelta(seconds=float(os.environ.get("RESONATE_TTL_SECONDS", "30"))),
        # A level waits for the one below inside a step, holding its task; the SDK's default cap
        # of 64 tasks per process would leave level 65 of a chain waiting for a slot that the
        # levels above it never free: 200! hangs. Each n is one promise, however many callers
        # ask, so at most MAX_N + 1 levels (n..0) wait at once in the whole group; this cap lets
        # a single worker hold all of them. Their leases are kept by one heartbeat request.
        max_concurrent_tasks=MAX_N + 1,
    )
    resonate.with_dependency(Workers(resonate, group))
    # A level is never retried as a whole: its only failure before its first step is a bad n,
    # which fails the same way every time. The SDK's default (30 retries, doubling) would hold
    # its lease for hours to learn that; its step has its own policy (ASK_RETRIES).
    resonate.register(factorial, retry_policy=Never())
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print(f"recursive-factorial worker {os.getpid()} ready", flush=True)
    await stop.wait()
    await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())

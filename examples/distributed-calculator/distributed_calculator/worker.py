"""`python -m distributed_calculator.worker`: a worker for the parse pool, the ops pool, or both.

A Resonate instance belongs to one group (the constructor takes one `group`, and the instance
listens on that group's address only), so a process that serves both pools runs one instance per
pool. In production each pool is its own deployment, scaled on its own:
`CALCULATOR_POOLS=parse` on the parse workers, `CALCULATOR_POOLS=ops` on the ops workers. The
default, both, is the one-process setup `make run-distributed-calculator` and the crash harness use.

Environment:
  RESONATE_URL          the Resonate server (required)
  CALCULATOR_POOLS      parse, ops, or parse,ops (default)
  RESONATE_TTL_SECONDS  task lease; a dead worker's work moves on after at most this long
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta

from resonate.resonate import Resonate
from resonate.retry import Never

from distributed_calculator.steps import apply
from distributed_calculator.workflow import OPS_POOL, PARSE_POOL, calculate, evaluate

POOLS = {"parse": PARSE_POOL, "ops": OPS_POOL}


def serve(pool: str, url: str, ttl: timedelta) -> Resonate:
    resonate = Resonate(url=url, group=POOLS[pool], ttl=ttl)
    if pool == "parse":
        # Workflows are never retried: one that fails before its first call (a malformed
        # expression sent past the client) would fail the same way on every attempt.
        resonate.register(calculate, retry_policy=Never())
        resonate.register(evaluate, retry_policy=Never())
    else:
        # Exact arithmetic in memory cannot fail for a transient reason: an exception is a bug
        # that would repeat on every attempt. (A worker that dies mid-step is not a retry: its
        # lease lapses and another ops worker runs the step again.)
        resonate.register(apply, retry_policy=Never())
    return resonate


async def main() -> None:
    url = os.environ.get("RESONATE_URL")
    if not url:
        sys.exit(
            "distributed_calculator.worker: RESONATE_URL is not set"
            " (start a server, or `make run-distributed-calculator`)"
        )
    pools = [p.strip() for p in os.environ.get("CALCULATOR_POOLS", "parse,ops").split(",")]
    unknown = [p for p in pools if p not in POOLS]
    if unknown or not pools:
        sys.exit(f"distributed_calculator.worker: CALCULATOR_POOLS: unknown pool(s) {unknown}")
    ttl = timedelta(seconds=float(os.environ.get("RESONATE_TTL_SECONDS", "30")))
    instances = [serve(pool, url, ttl) for pool in pools]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    groups = ", ".join(POOLS[p] for p in pools)
    print(f"distributed-calculator worker {os.getpid()} ready (pools: {groups})", flush=True)
    await stop.wait()
    for resonate in instances:
        await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())

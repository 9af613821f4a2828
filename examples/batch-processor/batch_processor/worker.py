"""`python -m batch_processor.worker`: a worker process that executes `process_items` jobs.

Everything it needs comes from the environment, so the same code runs against the cookbook's
dev server and the official Resonate server:
  RESONATE_URL              the Resonate server (required)
  RESONATE_GROUP            the worker group clients send work to (default: batch-processor)
  RESONATE_TTL_SECONDS      task lease; a dead worker's job moves on after at most this long
  BATCH_PROCESSOR_DATA_DIR  where the sink (sink.db) lives (default: .cookbook/batch-processor)
  BATCH_WORK_MS             the simulated I/O time of one batch (default: 50)
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta

from resonate.resonate import Resonate
from resonate.retry import Never

from batch_processor.sink import Sink, sink_path
from batch_processor.steps import Processing
from batch_processor.workflow import process_items

GROUP = "batch-processor"


async def main() -> None:
    if not os.environ.get("RESONATE_URL"):
        sys.exit(
            "batch_processor.worker: RESONATE_URL is not set"
            " (start a server, or use `make run-batch-processor`)"
        )
    resonate = Resonate(
        url=os.environ["RESONATE_URL"],
        group=os.environ.get("RESONATE_GROUP", GROUP),
        ttl=timedelta(seconds=float(os.environ.get("RESONATE_TTL_SECONDS", "30"))),
    )
    work_seconds = float(os.environ.get("BATCH_WORK_MS", "50")) / 1000
    resonate.with_dependency(Processing(Sink(sink_path(os.environ)), work_seconds))
    # A body that fails before its first durable call counts as a leaf to the SDK, which would
    # retry it (by default 30 times, doubling, holding its lease). A job refused by validation
    # fails the same way every time, so it must fail at once. Batches retry by their own policy.
    resonate.register(process_items, retry_policy=Never())
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print(f"batch-processor worker {os.getpid()} ready", flush=True)
    await stop.wait()
    await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())

"""`python -m kafka_worker.worker`: a worker process that executes `delete_user_data` workflows.

It never talks to Kafka: the consumer hands each record over to Resonate, and any worker of the
group executes it. Everything it needs comes from the environment:
  RESONATE_URL           the Resonate server (required)
  RESONATE_GROUP         the worker group the consumer sends work to (default: kafka-worker)
  RESONATE_TTL_SECONDS   task lease; a dead worker's work moves on after at most this long
  PROVIDER_API_URL       the service told about each completed deletion
  KAFKA_WORKER_DATA_DIR  the user-data store, shared by every worker (see store.py)
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta

import httpx
from resonate.resonate import Resonate

from kafka_worker.steps import Providers
from kafka_worker.store import UserData, data_dir
from kafka_worker.workflow import WORKFLOW_RETRY, delete_user_data

GROUP = "kafka-worker"


async def main() -> None:
    if not os.environ.get("RESONATE_URL"):
        sys.exit(
            "kafka_worker.worker: RESONATE_URL is not set "
            "(start a server, or use `make run-kafka-worker`)"
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
        resonate.with_dependency(UserData(data_dir()))
        resonate.register(delete_user_data, retry_policy=WORKFLOW_RETRY)  # see workflow.py
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"kafka-worker worker {os.getpid()} ready", flush=True)
        await stop.wait()
        await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())

"""`python -m async_http_api.worker`: one worker of the group that runs `export_report` jobs.

Start as many as you like: the group is where `POST /jobs` sends work, and the Resonate server
gives each job to one live worker of it (and to another when that one dies mid-job).
Everything it needs comes from the environment:
  RESONATE_URL          the Resonate server (required)
  RESONATE_GROUP        the worker group the gateways send jobs to (default: async-http-api)
  RESONATE_TTL_SECONDS  task lease; a dead worker's job moves on after at most this long
  PROVIDER_API_URL      the warehouse, storage and mail APIs the steps call
  PROVIDER_TIMEOUT_SECONDS  how long one call may take (default 10); a call that takes longer is
                        a transient failure that may have landed
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta

import httpx
from resonate.resonate import Resonate

from async_http_api.steps import Systems
from async_http_api.workflow import WORKFLOW_RETRIES, export_report

GROUP = "async-http-api"


async def main() -> None:
    if not os.environ.get("RESONATE_URL"):
        sys.exit(
            "async_http_api.worker: RESONATE_URL is not set"
            " (start a server, or use `make run-async-http-api`)"
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
        resonate.with_dependency(Systems(client))
        resonate.register(export_report, retry_policy=WORKFLOW_RETRIES)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"async-http-api worker {os.getpid()} ready", flush=True)
        await stop.wait()
        await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())

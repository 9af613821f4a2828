"""`python -m job_callback.worker`: a worker that executes `run_job` workflows until stopped.

Environment: RESONATE_URL (required; also the server jobs call back to), RESONATE_GROUP (default:
job-callback), RESONATE_TTL_SECONDS, PROVIDER_API_URL (the jobs service: the cookbook's sandbox).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta

import httpx
from resonate.resonate import Resonate

from job_callback.steps import CallbackServer, Services
from job_callback.workflow import WORKFLOW_RETRIES, run_job


async def main() -> None:
    resonate_url = os.environ.get("RESONATE_URL")
    if not resonate_url:
        sys.exit(
            "job_callback.worker: RESONATE_URL is not set"
            " (start a server, or `make run-job-callback`)"
        )
    async with httpx.AsyncClient(
        base_url=os.environ.get("PROVIDER_API_URL", "http://127.0.0.1:8100"), timeout=10
    ) as jobs:
        resonate = Resonate(
            url=resonate_url,
            group=os.environ.get("RESONATE_GROUP", "job-callback"),
            ttl=timedelta(seconds=float(os.environ.get("RESONATE_TTL_SECONDS", "30"))),
        )
        # Jobs call back to the server this worker uses: the URL travels in each job's callback.
        resonate.with_dependency(Services(jobs, resonate_url))
        # The workflow rejects the callback of a job that was never started, with this client.
        resonate.with_dependency(CallbackServer(resonate))
        resonate.register(run_job, retry_policy=WORKFLOW_RETRIES)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"job-callback worker {os.getpid()} ready", flush=True)
        await stop.wait()
        await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())

"""`python -m job_callback.demo`: four jobs, four endings, narrated.

Each job runs on the jobs service (the sandbox's stand-in for a Databricks/Airflow-style API),
which calls back by settling the workflow's promise on the Resonate server.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import httpx
from resonate.resonate import Resonate

from job_callback.job import Job
from job_callback.workflow import run_timeout

CASES: list[tuple[str, str, dict[str, Any]]] = [
    (
        "succeeds",
        "The job runs 2 s and calls back with its output; the workflow wakes and returns it.",
        {"simulate": "succeed", "callback_timeout_seconds": 60},
    ),
    (
        "fails",
        "The job fails and rejects the promise; the workflow submits it once more (a new job,"
        " a new key), it fails again, and the workflow gives up: a value, not an error.",
        {"simulate": "fail", "callback_timeout_seconds": 60},
    ),
    (
        "never-calls-back",
        "The job hangs. The promise times out after 4 s; the workflow cancels the job.",
        {"simulate": "never_call_back", "callback_timeout_seconds": 4},
    ),
    (
        "calls-back-twice",
        "The job delivers its callback twice, at once. Whichever the server takes second finds"
        " the promise settled: nothing changes.",
        {"simulate": "call_back_twice", "callback_timeout_seconds": 60},
    ),
]


async def main() -> None:
    resonate = Resonate(url=os.environ["RESONATE_URL"], group="job-callback-clients")
    jobs_url = os.environ.get("PROVIDER_API_URL", "http://127.0.0.1:8100")
    stamp = int(time.time())
    try:
        for case, story, knobs in CASES:
            execution_id = f"job-callback-{case}-{stamp}"
            job = {"name": "nightly-revenue", "params": {"day": "2026-12-05"}}
            job |= {"duration_seconds": 2} | knobs
            print(f"\n== {case}: {story}")
            print(f"→ run_job as execution {execution_id}")
            started = time.perf_counter()
            # Its deadline holds every attempt's wait for a callback, and the cancel after it.
            timeout = run_timeout(Job.model_validate(job))
            handle = resonate.options(target="job-callback", timeout=timeout).rpc(
                execution_id, "run_job", job
            )
            ended = await handle.result()
            print(f"✓ after {time.perf_counter() - started:.1f}s: {ended}")
        # The last duplicate callback may still be on its way: its answer is read below.
        async with httpx.AsyncClient(base_url=jobs_url) as http:
            jobs = (await http.get("/_admin/jobs")).json()
            callbacks = (await http.get("/_admin/jobs/callbacks")).json()
        print("\nWhat the jobs service recorded (its own records, not the workflow's):")
        for record in jobs:
            if f"-{stamp}:" in str(record["idempotency_key"]):
                print(
                    f"  {record['id']}  {record['status']:<9}  submitted with key"
                    f" {record['idempotency_key']}"
                )
        for callback in callbacks:
            if f"-{stamp}:" in callback["promise_id"]:
                status, state = callback["http_status"], callback["promise_state"]
                answer = "not answered yet"
                if status is not None:
                    answer = f"the server answered {status}: the promise is {state}"
                print(
                    f"  callback #{callback['nth']} of {callback['job_id']}:"
                    f" {callback['state']:<8} -> {answer}"
                )
    finally:
        await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())

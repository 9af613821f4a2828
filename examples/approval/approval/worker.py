"""`python -m approval.worker`: a worker process that executes `expense_claim` workflows.

Everything it needs comes from the environment, so the same code runs against the cookbook's
dev server and the official Resonate server:
  RESONATE_URL               the Resonate server (required)
  RESONATE_GROUP             the worker group clients send work to (default: approval)
  RESONATE_TTL_SECONDS       task lease; a dead worker's claims move on after at most this long
  PROVIDER_API_URL           the email, chat and payment APIs the steps call
  APPROVAL_LINK_SECRET(_FILE) the secret decision links are signed with (see links.py)
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta

import httpx
from resonate.resonate import Resonate

from approval.links import SecretError, signer_from_environment
from approval.steps import Providers
from approval.workflow import WORKFLOW_RETRIES, expense_claim

GROUP = "approval"


async def main() -> None:
    if not os.environ.get("RESONATE_URL"):
        sys.exit(
            "approval.worker: RESONATE_URL is not set (start a server, or `make run-approval`)"
        )
    try:
        signer = signer_from_environment()
    except SecretError as exc:
        sys.exit(f"approval.worker: {exc}")
    async with httpx.AsyncClient(
        base_url=os.environ.get("PROVIDER_API_URL", "http://127.0.0.1:8100"), timeout=10
    ) as client:
        resonate = Resonate(
            url=os.environ["RESONATE_URL"],
            group=os.environ.get("RESONATE_GROUP", GROUP),
            ttl=timedelta(seconds=float(os.environ.get("RESONATE_TTL_SECONDS", "30"))),
        )
        resonate.with_dependency(Providers(client))
        resonate.with_dependency(signer)
        # Never retried as a whole (see WORKFLOW_RETRIES); its steps retry transient failures by
        # their own policy (STEP_RETRIES in workflow.py).
        resonate.register(expense_claim, retry_policy=WORKFLOW_RETRIES)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"approval worker {os.getpid()} ready; links signed with {signer.source}", flush=True)
        await stop.wait()
        await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())

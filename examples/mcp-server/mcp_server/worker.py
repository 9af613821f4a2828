"""`python -m mcp_server.worker`: a worker process that runs the MCP tools' workflows until stopped.

The MCP server does not run them: it is a client of Resonate, so a crash of the MCP server (a
desktop app closed, a process killed) loses no work, and a crash of a worker loses none either.

Environment: RESONATE_URL (required), RESONATE_GROUP (default: mcp-server), RESONATE_TTL_SECONDS,
PROVIDER_API_URL, INVOICE_APPROVER (who decides on invoices, default grace@example.com), and the
model's: OPENAI_BASE_URL, OPENAI_API_KEY, OPENAI_MODEL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta

import httpx
import openai
from resonate.resonate import Resonate

from mcp_server.steps import Approver, Model, Providers
from mcp_server.workflow import WORKFLOW_RETRIES, invoice_approval, weather_report

# A completion that has not come back in 60 s is treated as lost (the step raises, and the retry
# policy asks again under the same key); the lease (RESONATE_TTL_SECONDS) is kept alive by the
# SDK's heartbeat meanwhile.
MODEL_TIMEOUT_SECONDS = 60.0
# The demo's approver. example.com is reserved and receives no mail (RFC 2606): a deployment that
# forgets INVOICE_APPROVER asks nobody, and its invoices expire unpaid.
DEFAULT_APPROVER = "grace@example.com"


async def main() -> None:
    missing = [v for v in ("RESONATE_URL", "OPENAI_MODEL") if not os.environ.get(v)]
    if missing:
        sys.exit(f"mcp_server.worker: {', '.join(missing)} not set (or `make run-mcp-server`)")
    # max_retries=0: Resonate's retry policy owns retries, each one a journaled attempt. The
    # client reads OPENAI_BASE_URL and OPENAI_API_KEY from the environment.
    model = openai.AsyncOpenAI(max_retries=0, timeout=MODEL_TIMEOUT_SECONDS)
    async with httpx.AsyncClient(
        base_url=os.environ.get("PROVIDER_API_URL", "http://127.0.0.1:8100"), timeout=10
    ) as client:
        resonate = Resonate(
            url=os.environ["RESONATE_URL"],
            group=os.environ.get("RESONATE_GROUP", "mcp-server"),
            ttl=timedelta(seconds=float(os.environ.get("RESONATE_TTL_SECONDS", "30"))),
        )
        resonate.with_dependency(Providers(client))
        resonate.with_dependency(Model(model, os.environ["OPENAI_MODEL"]))
        # Who approves is set here, where the workflows run, never by the AI client (`Approver`).
        resonate.with_dependency(Approver(os.environ.get("INVOICE_APPROVER", DEFAULT_APPROVER)))
        resonate.register(weather_report, retry_policy=WORKFLOW_RETRIES)
        resonate.register(invoice_approval, retry_policy=WORKFLOW_RETRIES)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"mcp-server worker {os.getpid()} ready", flush=True)
        await stop.wait()
        await resonate.stop()
    await model.close()


if __name__ == "__main__":
    asyncio.run(main())

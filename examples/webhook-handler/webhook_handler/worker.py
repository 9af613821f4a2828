"""`python -m webhook_handler.worker`: a worker process that handles payment events until stopped.
Any number of workers, on one machine, share one order book file.

Everything it needs comes from the environment:
  RESONATE_URL              the Resonate server (required)
  RESONATE_GROUP            the worker group the gateway sends events to (default: webhook-handler)
  RESONATE_TTL_SECONDS      task lease; a dead worker's events move on after at most this long
  PROVIDER_API_URL          the warehouse and email providers (default: http://127.0.0.1:8100)
  WEBHOOK_HANDLER_DATA_DIR  the order book's directory (default: $TMPDIR/webhook-handler-data)
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta

import httpx
from resonate.resonate import Resonate

from webhook_handler.steps import OrderBook, Providers, data_dir
from webhook_handler.workflow import WORKFLOW_RETRIES, deliver_in_order, handle_payment_event

GROUP = "webhook-handler"


async def main() -> None:
    if not os.environ.get("RESONATE_URL"):
        sys.exit(
            "webhook_handler.worker: RESONATE_URL is not set"
            " (start a server, or use `make run-webhook-handler`)"
        )
    book = OrderBook.at(data_dir())
    async with httpx.AsyncClient(
        base_url=os.environ.get("PROVIDER_API_URL", "http://127.0.0.1:8100"), timeout=10
    ) as client:
        resonate = Resonate(
            url=os.environ["RESONATE_URL"],
            group=os.environ.get("RESONATE_GROUP", GROUP),
            ttl=timedelta(seconds=float(os.environ.get("RESONATE_TTL_SECONDS", "30"))),
        )
        resonate.with_dependency(Providers(client))
        resonate.with_dependency(book)
        resonate.register(handle_payment_event, retry_policy=WORKFLOW_RETRIES)
        resonate.register(deliver_in_order, retry_policy=WORKFLOW_RETRIES)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"webhook-handler worker {os.getpid()} ready (order book {book.path})", flush=True)
        await stop.wait()
        await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())

"""`python -m money_transfer.worker`: a worker process that executes `transfer` workflows until
stopped. Any number of workers, on one machine, share one ledger file.

Everything it needs comes from the environment:
  RESONATE_URL             the Resonate server (required)
  RESONATE_GROUP           the worker group clients send transfers to (default: money-transfer)
  RESONATE_TTL_SECONDS     task lease; a dead worker's transfers move on after at most this long
  MONEY_TRANSFER_DATA_DIR  the ledger's directory (default: $TMPDIR/money-transfer-data)
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

from resonate.resonate import Resonate

from money_transfer.steps import Ledger
from money_transfer.workflow import WORKFLOW_RETRIES, transfer

GROUP = "money-transfer"


def data_dir() -> Path:
    """Where the ledger lives: MONEY_TRANSFER_DATA_DIR, shared by every worker on this machine."""
    default = Path(tempfile.gettempdir()) / "money-transfer-data"
    return Path(os.environ.get("MONEY_TRANSFER_DATA_DIR", default))


async def main() -> None:
    if not os.environ.get("RESONATE_URL"):
        sys.exit(
            "money_transfer.worker: RESONATE_URL is not set"
            " (start a server, or use `make run-money-transfer`)"
        )
    ledger = Ledger.at(data_dir())
    resonate = Resonate(
        url=os.environ["RESONATE_URL"],
        group=os.environ.get("RESONATE_GROUP", GROUP),
        ttl=timedelta(seconds=float(os.environ.get("RESONATE_TTL_SECONDS", "30"))),
    )
    resonate.with_dependency(ledger)
    resonate.register(transfer, retry_policy=WORKFLOW_RETRIES)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print(f"money-transfer worker {os.getpid()} ready (ledger {ledger.path})", flush=True)
    await stop.wait()
    await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())

"""`python -m wlrf.worker`: a worker process that executes `open_account` workflows until stopped.

Everything it needs comes from the environment, so the same code runs against the cookbook's
dev server and the official Resonate server:
  RESONATE_URL            the Resonate server (required)
  RESONATE_GROUP          the worker group clients send work to (default: wlrf)
  RESONATE_TTL_SECONDS    task lease; a dead worker's work moves on after at most this long
  TIGERBEETLE_ADDRESS     the TigerBeetle cluster (e.g. 127.0.0.1:3000); unset: the stand-in
  TIGERBEETLE_CLUSTER_ID  default 0
  WLRF_DATA_DIR           where the SQLite files live (default .cookbook/wlrf)
  REFERENCE_DB, LEDGER_STANDIN_DB   the two files, if not in WLRF_DATA_DIR
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta

from resonate.resonate import Resonate
from resonate.retry import Never

from wlrf.ledger import LedgerUnavailableError
from wlrf.steps import open_stores
from wlrf.workflow import open_account

GROUP = "wlrf"


async def main() -> None:
    if not os.environ.get("RESONATE_URL"):
        sys.exit("wlrf.worker: RESONATE_URL is not set (start a server, or use `make run-wlrf`)")
    stores = open_stores()
    try:
        # Fail now, clearly, rather than on the first account: an unreachable TigerBeetle
        # would otherwise make every ledger step wait and retry.
        await stores.ledger.lookup_accounts([1])
    except LedgerUnavailableError as exc:
        await stores.ledger.close()
        sys.exit(
            f"wlrf.worker: {exc}. Is it running? (Unset TIGERBEETLE_ADDRESS to use the stand-in.)"
        )
    print(f"system of record:    {stores.ledger.description}", flush=True)
    print(f"system of reference: SQLite at {stores.reference.path}", flush=True)
    resonate = Resonate(
        url=os.environ["RESONATE_URL"],
        group=os.environ.get("RESONATE_GROUP", GROUP),
        ttl=timedelta(seconds=float(os.environ.get("RESONATE_TTL_SECONDS", "30"))),
    )
    resonate.with_dependency(stores)
    # The workflow itself is never retried; its steps are, each by its own policy. A request it
    # refuses before its first step (a ledger or code out of range) would fail the same way on
    # every attempt, and the SDK's default (30 retries, doubling) would hold its lease for hours.
    resonate.register(open_account, retry_policy=Never())
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print(f"wlrf worker {os.getpid()} ready", flush=True)
    await stop.wait()
    await resonate.stop()
    await stores.ledger.close()


if __name__ == "__main__":
    asyncio.run(main())

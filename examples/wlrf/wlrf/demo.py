"""`python -m wlrf.demo`: open two accounts - one the ledger accepts, one it refuses - and read
both back, record first."""

from __future__ import annotations

import asyncio
import os
import time

from resonate.resonate import Resonate

from wlrf.steps import Stores, open_stores
from wlrf.workflow import read_account, validate


async def open_and_read(
    resonate: Resonate, stores: Stores, execution_id: str, holder_id: str, ledger: int
) -> None:
    print(f"→ open_account({holder_id!r}, ledger={ledger}, code=1) as execution {execution_id}")
    # Checked before it is sent: the server keeps every argument it is sent, in plaintext.
    validate(holder_id, ledger, 1)
    handle = resonate.options(target="wlrf").rpc(execution_id, "open_account", holder_id, ledger, 1)
    try:
        await handle.result()
        print("✓ workflow done")
    except Exception as exc:
        print(f"✗ workflow failed: {type(exc).__name__}: {exc}")
    row = await stores.reference.opened_by(execution_id)
    assert row is not None, "the reference row is written before anything can fail"
    print(f"· reference table: account {row.account_id} for {row.holder_id} is {row.status!r}")
    account = await read_account(stores, row.account_id)
    if account is None:
        print("· read first: the ledger has no such account, so it does not exist (not shown)")
    else:
        print(
            f"· read first: the ledger has it - {account.holder_id}, ledger {account.ledger}, "
            f"balance {account.balance}"
        )


async def main() -> None:
    # A client, not a worker: it joins its own group so it is never handed workflow work.
    resonate = Resonate(url=os.environ["RESONATE_URL"], group="wlrf-clients")
    stores = open_stores()
    try:
        stamp = int(time.time())
        # Customers by reference, as the bank's customer system knows them: their names stay there.
        await open_and_read(resonate, stores, f"wlrf-1-{stamp}", "cus_7f3a9c21", 840)
        # Ledger 0 is invalid in TigerBeetle: the record refuses, after the reference row exists.
        await open_and_read(resonate, stores, f"wlrf-2-{stamp}", "cus_b04e6d58", 0)
    finally:
        await resonate.stop()
        await stores.ledger.close()


if __name__ == "__main__":
    asyncio.run(main())

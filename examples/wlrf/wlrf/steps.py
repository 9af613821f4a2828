"""The leaves of the workflow: each one writes to one of the two systems, idempotently.

A step that dies after its write but before its checkpoint runs again on another worker, so
every write must be safe to repeat: the reference row is inserted only if absent, and the ledger
answers a repeated create with `exists`, which counts as success.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import tigerbeetle as tb
from resonate.context import Context

from wlrf.ledger import Ledger, connect_ledger
from wlrf.reference import ReferenceStore

DEFAULT_DATA_DIR = ".cookbook/wlrf"


@dataclass(frozen=True)
class Stores:
    """The system of reference and the system of record (a worker dependency)."""

    reference: ReferenceStore
    ledger: Ledger


def open_stores(environ: Mapping[str, str] = os.environ) -> Stores:
    # Relative to the working directory, so every worker started from the same place - the
    # one that crashed and the one that takes over - shares the same files.
    data_dir = Path(environ.get("WLRF_DATA_DIR") or DEFAULT_DATA_DIR)
    reference = ReferenceStore(Path(environ.get("REFERENCE_DB") or data_dir / "reference.db"))
    standin = Path(environ.get("LEDGER_STANDIN_DB") or data_dir / "ledger-standin.db")
    return Stores(reference, connect_ledger(environ, standin))


class LedgerRefusedError(Exception):
    """The system of record refused the account for good: retrying cannot change its answer."""


def require_account(status: str) -> None:
    """Map the ledger's answer: the account is there, or the workflow fails without retrying."""
    if status in ("created", "exists"):  # `exists`: an earlier attempt created it
        return
    if status.startswith("exists_with_different_"):
        raise LedgerRefusedError(
            f"the ledger has an account with this id but other fields ({status}): "
            "the request changed or ids collide; needs a human, not a retry"
        )
    raise LedgerRefusedError(f"the ledger refused the account: {status}")


async def new_account_id(ctx: Context) -> str:
    # Decimal text: the id is a 128-bit integer, more than JSON numbers carry safely.
    account_id = str(tb.id())
    print(f"account id {account_id} generated", flush=True)
    return account_id


async def write_reference(
    ctx: Context, account_id: str, holder_id: str, ledger: int, code: int
) -> None:
    stores = ctx.get_dependency(Stores)
    # The execution id records which request opened the account.
    await stores.reference.write_pending(account_id, ctx.info.origin_id, holder_id, ledger, code)
    print(f"reference: account for {holder_id} written as pending", flush=True)


async def create_ledger_account(ctx: Context, account_id: str, ledger: int, code: int) -> str:
    """The ledger's answer as a value, not an exception: a refusal must not be retried."""
    stores = ctx.get_dependency(Stores)
    account = tb.Account(
        id=int(account_id),
        ledger=ledger,
        code=code,
        flags=tb.AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS,  # a customer cannot overdraw
    )
    (result,) = await stores.ledger.create_accounts([account])
    status = result.status.name.lower()
    print(f"ledger: create_accounts -> {status}", flush=True)
    return status


async def activate_reference(ctx: Context, account_id: str) -> None:
    await ctx.get_dependency(Stores).reference.mark_active(account_id)
    print("reference: account marked active", flush=True)

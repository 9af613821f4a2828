"""Write Last, Read First: one account in two systems, without a distributed transaction.

The ledger (TigerBeetle) is the system of record: an account exists if and only if the ledger
has it. The reference table (SQLite) holds what people see. Writing the record LAST means that
whenever the workflow stops, the worst leftover is a reference row without a ledger account;
reading the record FIRST makes such a row invisible. So no interleaving of crashes, retries and
reads ever shows an account that does not exist, and nothing needs to be rolled back.
"""

from __future__ import annotations

from dataclasses import dataclass

from resonate.context import Context
from resonate.retry import Exponential

from wlrf.steps import (
    Stores,
    activate_reference,
    create_ledger_account,
    new_account_id,
    require_account,
    write_reference,
)

# Transient failures (a locked database, a ledger that did not answer) are retried a few
# times; a refusal by the ledger is a value, checked below, and never retried.
STEP_RETRIES = Exponential(delay=1, factor=2, max_retries=4, max_delay=10)  # 2, 4, 8, 10 s


async def open_account(ctx: Context, holder: str, ledger: int, code: int) -> None:
    step = ctx.options(retry_policy=STEP_RETRIES)
    # Generated once and journaled: a resumed execution reuses it, so both systems get one id.
    account_id = await step.run(new_account_id)
    # Write first: the system of reference, as pending (invisible to readers).
    await step.run(write_reference, account_id, holder, ledger, code)
    # Write last: the system of record. From here on the account exists.
    status = await step.run(create_ledger_account, account_id, ledger, code)
    require_account(status)
    await step.run(activate_reference, account_id)


@dataclass(frozen=True)
class Account:
    account_id: str
    holder: str
    ledger: int
    code: int
    balance: int


async def read_account(stores: Stores, account_id: str) -> Account | None:
    """Read First: ask the system of record whether the account exists, then add the details."""
    found = await stores.ledger.lookup_accounts([int(account_id)])
    if not found:
        return None  # whatever the reference table holds: pending, or left by a failed attempt
    details = await stores.reference.get(account_id)
    if details is None:
        raise RuntimeError(
            f"ledger account {account_id} has no reference row: written out of order"
        )
    ledger_account = found[0]
    return Account(
        account_id,
        details.holder,
        ledger_account.ledger,
        ledger_account.code,
        ledger_account.credits_posted - ledger_account.debits_posted,
    )

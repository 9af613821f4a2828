"""Write Last, Read First: one account in two systems, without a distributed transaction.

The ledger (TigerBeetle) is the system of record: an account exists if and only if the ledger
has it. The reference table (SQLite) holds what people see. Writing the record LAST means that
whenever the workflow stops, the worst leftover is a reference row without a ledger account;
reading the record FIRST makes such a row invisible. So no interleaving of crashes, retries and
reads ever shows an account that does not exist, and nothing needs to be rolled back.
"""

from __future__ import annotations

import re
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

# Transient failures (a locked database, a ledger that did not answer within its 5 s timeout)
# are retried 4 times, 2, 4, 8 and 10 s apart: about half a minute, enough for a TigerBeetle
# replica to fail over or a SQLite writer to finish; then the execution fails, naming the step.
# Every write is idempotent, so a retry after a timeout that did land is answered `exists`. A
# refusal by the ledger is a value, checked below, and never retried.
STEP_RETRIES = Exponential(delay=1, factor=2, max_retries=4, max_delay=10)


# The holder, by reference: the bank's customer system holds the name. The Resonate server
# stores the execution's arguments in plaintext, so they carry no name or email address.
HOLDER_ID = re.compile(r"cus_[A-Za-z0-9]{4,32}")
# TigerBeetle's field sizes: `ledger` is a u32 and `code` a u16.
LEDGER_MAX = 2**32 - 1
CODE_MAX = 2**16 - 1


def validate(holder_id: str, ledger: int, code: int) -> None:
    """A bad request (a holder by name, a value the ledger cannot hold) writes nothing."""
    problems: list[str] = []
    if not (isinstance(holder_id, str) and HOLDER_ID.fullmatch(holder_id)):
        # Not the value itself: the server stores this error too, as the execution's result.
        problems.append(
            "holder_id is not a customer reference (cus_ and 4 to 32 letters or digits)"
        )
    problems += [
        f"{name} {value} is outside 0..{top}"
        for name, value, top in (("ledger", ledger, LEDGER_MAX), ("code", code, CODE_MAX))
        if not 0 <= value <= top
    ]
    if problems:
        raise ValueError("invalid account: " + "; ".join(problems))


async def open_account(ctx: Context, holder_id: str, ledger: int, code: int) -> None:
    # Before the first step: a bad request writes nothing, and fails at once.
    validate(holder_id, ledger, code)
    step = ctx.options(retry_policy=STEP_RETRIES)
    # Generated once and journaled: a resumed execution reuses it, so both systems get one id.
    account_id = await step.run(new_account_id)
    # Write first: the system of reference, as pending (invisible to readers).
    await step.run(write_reference, account_id, holder_id, ledger, code)
    # Write last: the system of record. From here on the account exists.
    status = await step.run(create_ledger_account, account_id, ledger, code)
    require_account(status)
    await step.run(activate_reference, account_id)


@dataclass(frozen=True)
class Account:
    account_id: str
    holder_id: str  # the customer system's reference: it resolves the name
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
        details.holder_id,
        ledger_account.ledger,
        ledger_account.code,
        ledger_account.credits_posted - ledger_account.debits_posted,
    )

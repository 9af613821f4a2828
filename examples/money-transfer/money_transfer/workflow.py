"""The durable workflow: move an amount from one account to another, or put it back.

Two ledger operations, each a checkpointed step: debit the source, credit the destination. A debit
the ledger refuses (insufficient funds, a frozen account) ends the transfer as `declined`: nothing
moved. A credit the ledger refuses (the destination is frozen or unknown) is answered with a third
step, the reversal of the debit, and the transfer ends as `reversed`: the money is back where it
was. A crash anywhere resumes where it stopped, and a step that runs again (a replay, a retry after
a lost answer) is a no-op in the ledger: see steps.py.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)
from resonate.context import Context
from resonate.retry import Exponential, Never

from money_transfer.steps import credit, debit, reverse_debit

# The transfer id becomes the execution id, and Resonate ids may not contain ':' (it names steps).
TransferId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
AccountId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")]
# Integer cents: a float cannot hold 0.10 exactly. Up to 10,000,000.00 in one transfer.
Cents = Annotated[int, Field(ge=1, le=1_000_000_000)]


class TransferRequest(BaseModel):
    """What `POST /transfers` accepts, and what `transfer` moves."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    transfer_id: TransferId
    from_account: AccountId
    to_account: AccountId
    amount_cents: Cents

    @field_validator("to_account")
    @classmethod
    def _not_to_itself(cls, to_account: str, info: ValidationInfo) -> str:
        if to_account == info.data.get("from_account"):
            raise ValueError("must differ from from_account")
        return to_account


type Status = Literal["completed", "declined", "reversed"]


class TransferResult(BaseModel):
    """completed: moved; declined: the debit was refused, nothing moved; reversed: the credit was
    refused and the debit was put back. `reason` is the ledger's refusal."""

    status: Status
    reason: str | None = None


# A step fails only when the ledger itself does (the disk, a lock held past the 30 s busy timeout):
# retried 5 times, 2 to 16 s apart (about 30 s), which rides out a long checkpoint or a restart of
# the volume. A refusal is an outcome the step returns, never an exception, so it is not retried.
STEP_RETRIES = Exponential(delay=1, factor=2, max_retries=5, max_delay=16)
# The workflow body calls no ledger itself: what fails before its first step (a request that does
# not decode, a bug) fails the same way every time, so it is not retried.
WORKFLOW_RETRIES = Never()


async def transfer(ctx: Context, request: TransferRequest) -> TransferResult:
    transfer_id = ctx.info.id  # the execution id: the gateway starts it with request.transfer_id
    step = ctx.options(retry_policy=STEP_RETRIES)
    amount = request.amount_cents
    debited = await step.run(debit, transfer_id, request.from_account, amount)
    if debited != "applied":
        return TransferResult(status="declined", reason=debited)
    credited = await step.run(credit, transfer_id, request.to_account, amount)
    if credited == "applied":
        return TransferResult(status="completed")
    # The destination refused the money: give it back to the source, as an operation of its own.
    await step.run(reverse_debit, transfer_id, request.from_account, amount)
    return TransferResult(status="reversed", reason=credited)

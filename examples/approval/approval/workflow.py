"""The durable workflow: an expense claim checked, decided by a person through a link, then paid.

The claim is one execution, keyed by the claim id. It checks the claim against the expense
policy, then creates a latent promise (the approver's decision) whose timeout is the decision
deadline, emails the approver two signed links (approve, reject) that name that promise, and
awaits it. Nothing runs while the approver thinks, for hours or days: no worker holds the
claim, and the deadline is kept by the server with the promise. The gateway resolves the promise
when the approver confirms on the page a link opens; when the deadline passes first, the server
times the promise out by itself, which wakes the workflow on its escalation branch.

The promise settles once, one way, so every replay takes the same branch: an approval the
gateway confirmed is paid, a decision it refused as too late (409) is escalated.

A refusal is a value, never retried: a claim against the policy ends `refused` (the employee is
told why); a payment the provider refuses (a 4xx) ends `payment-refused`. Only a provider that
is down or silent is asked again. A message (an email, the chat message to finance) still failing
after its retries does not fail the claim: the claim ends as it would have, and says so.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from resonate.context import Context
from resonate.error import ApplicationError
from resonate.retry import Exponential, Never

from approval.steps import (
    ProviderUnavailableError,
    Refused,
    ask_approver,
    check_policy,
    escalate,
    notify_employee,
    pay,
)

# -- the claim: checked by the gateway, and again whenever a worker decodes it ------------------

# Visible text: no control or format characters, no leading or trailing whitespace.
Description = Annotated[
    str,
    StringConstraints(max_length=500, pattern=r"^[^\p{C}\s](?:[^\p{C}]*[^\p{C}\s])?$"),
]
# The claim id becomes the execution id; Resonate ids may not contain ':' (it names steps).
ClaimId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
# The claim names the employee and the approver by reference, a staff user id, never by name or
# email address: the Resonate server stores the claim as the execution's argument, in plaintext,
# readable by anyone who can read the server. The email and payment providers resolve the id.
StaffId = Annotated[str, StringConstraints(pattern=r"^usr_[A-Za-z0-9]{4,32}$")]
type Category = Literal["travel", "lodging", "meals", "equipment", "training"]
type Currency = Literal["EUR", "GBP", "USD"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Claim(_Strict):
    claim_id: ClaimId
    employee_id: StaffId
    approver_id: StaffId
    category: Category
    amount_cents: Annotated[int, Field(ge=1, le=10_000_000)]
    currency: Currency
    description: Description

    @property
    def amount(self) -> str:
        return f"{self.amount_cents / 100:,.2f} {self.currency}"


# -- what a claim ends as ----------------------------------------------------------------------

type State = Literal[
    "paid", "rejected", "refused", "escalated", "payment-refused", "payment-unconfirmed"
]


@dataclass(frozen=True)
class ClaimEnded:
    """What a finished claim returns: also what `GET /claims/{id}` shows once it ended."""

    state: State
    payment_id: str | None = None  # the payment provider's id, once paid
    note: str | None = None  # what the approver wrote with their decision
    reason: str | None = None  # why the policy refused it, or what went wrong
    unsent: str | None = None  # a message to the employee or finance that may not have gone out


# -- the workflow ------------------------------------------------------------------------------

# An email, a chat message or the payment that fails transiently (a 5xx, 408, 429, a timeout, a
# lost connection) is retried after 2, 4, 8, 16 and 30 s, then every 30 s: eight retries in
# about three minutes, long enough for a provider's restart or a rate limit to pass. Every retry
# sends the same Idempotency-Key, so a payment that timed out but went through is not made twice.
# A refusal is never retried: the steps return it. Whole seconds: the SDK's policies count in
# seconds.
STEP_RETRIES = Exponential(delay=1, factor=2, max_retries=8, max_delay=30)
# The workflow itself is never retried: once it made a durable call the SDK would not retry it
# anyway, and before that the only thing that can fail is decoding its argument, which no retry
# fixes. The SDK's default (30 retries, doubling) would hold the claim's lease for hours.
WORKFLOW_RETRIES = Never()


async def expense_claim(
    ctx: Context, claim: Claim, decide_within_seconds: int, links_url: str
) -> ClaimEnded:
    step = ctx.options(retry_policy=STEP_RETRIES)
    # The verdict is checkpointed: a policy changed while the claim waits changes nothing for it.
    problems = await step.run(check_policy, claim)
    if problems:
        reason = "; ".join(problems)
        why = f"It breaks the policy: {reason}."
        unsent = await _unsent(step.run(notify_employee, claim, "refused", why))
        return ClaimEnded("refused", reason=reason, unsent=unsent)

    # The approver's decision, put here by the gateway, with the decision deadline as timeout.
    decision = ctx.promise(timeout=timedelta(seconds=decide_within_seconds))
    try:
        asked = await step.run(
            ask_approver, claim, await decision.id(), decide_within_seconds, links_url
        )
    except ProviderUnavailableError:
        # Out of retries, but the last call may have sent the links, and a click on them must
        # not find the claim ended: wait for the decision all the same. If none comes, the
        # deadline escalates the claim, as for an approver who did not answer.
        asked = None
    if isinstance(asked, Refused):  # nobody was asked: waiting for the deadline would be pointless
        why = f"the approver could not be emailed ({asked.reason})"
        unsent = await _unsent(step.run(escalate, claim, why))
        return ClaimEnded("escalated", reason=asked.reason, unsent=unsent)
    try:
        decided = await decision
    except ApplicationError:  # timed out at the deadline (nothing else rejects it)
        decided = None

    match decided:
        case {"decision": "approve", **rest}:
            note = _note(rest)
            try:
                paid = await step.run(pay, claim)
            except ProviderUnavailableError as unknown:
                # Out of retries, and the last call may have paid: never pay again blindly. A
                # person checks the provider's record of the key.
                why = f"payment unconfirmed ({unknown}); check key {unknown.idempotency_key}"
                unsent = await _unsent(step.run(escalate, claim, why))
                return ClaimEnded(
                    "payment-unconfirmed", note=note, reason=str(unknown), unsent=unsent
                )
            if isinstance(paid, Refused):
                told = step.run(notify_employee, claim, "approved, but not paid", paid.reason)
                unsent = await _unsent(told)
                return ClaimEnded("payment-refused", note=note, reason=paid.reason, unsent=unsent)
            unsent = await _unsent(step.run(notify_employee, claim, "approved and paid", note))
            return ClaimEnded("paid", payment_id=paid, note=note, unsent=unsent)
        case {"decision": "reject", **rest}:
            note = _note(rest)
            unsent = await _unsent(step.run(notify_employee, claim, "rejected", note))
            return ClaimEnded("rejected", note=note, unsent=unsent)
        case None:
            why = f"no decision from {claim.approver_id} in time"
            unsent = await _unsent(step.run(escalate, claim, why))
            return ClaimEnded("escalated", reason="no decision before the deadline", unsent=unsent)
        case _:  # resolved by something other than the gateway: never pay on a value we misread
            unsent = await _unsent(step.run(escalate, claim, "the decision could not be read"))
            return ClaimEnded("escalated", reason="the decision could not be read", unsent=unsent)


async def _unsent(message: Awaitable[str | Refused]) -> str | None:
    """Await a message step: None once it is sent; refused, or out of retries, what went wrong.

    A message is not worth failing the claim for: what the claim did before it (a payment, above
    all) has landed, and failing would lose it from the claim's outcome. The outcome reports the
    message instead: refused (a 4xx, say an address the provider rejects), it was not sent and
    nobody was told; out of retries, its last call may have gone out, and the key is what a
    person looks up.
    """
    try:
        sent = await message
    except ProviderUnavailableError as unknown:
        return f"the message may not have been sent: {unknown} (key {unknown.idempotency_key})"
    if isinstance(sent, Refused):  # a final no: the employee or finance was not told
        return f"the message was not sent: {sent.reason}"
    return None


def _note(rest: dict[object, object]) -> str | None:
    note = rest.get("note")
    return note if isinstance(note, str) and note else None

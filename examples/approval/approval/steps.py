"""The steps: the policy check, the emails, the escalation and the payment.

Each provider call carries an Idempotency-Key from the step's durable id, which is stable across
retries and crashes: a step that runs again after a crash (the provider acted, the result was
never checkpointed) sends the same key, and the provider answers with what it did the first time
instead of emailing or paying twice.

A provider can fail in two ways, and the steps keep them apart:
  transient  a 5xx, 408, 429, a timeout, a dropped connection, or a 2xx whose body is not the
             answer (a proxy's HTML page, a cut-off or garbled body): it may pass, and the call
             may have landed. The step raises `ProviderUnavailableError`, and the SDK runs it
             again after a backoff (the retry policy the workflow passes with the call), under
             the same key.
  refusal    any other 4xx: asking again gets the same answer. The step returns `Refused`
             instead of raising (SDK 0.8.1 retries every exception a step raises), so it is
             checkpointed once and never retried.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from resonate.context import Context

from approval.links import Link, LinkSigner

if TYPE_CHECKING:  # the workflow module imports this one; steps only annotate with its models
    from approval.workflow import Claim

# Client errors that say "not now" rather than "no": Request Timeout and Too Many Requests.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})

# The expense policy: the most one claim of a category may be, in cents of any currency.
LIMITS_CENTS = {
    "travel": 500_000,
    "lodging": 300_000,
    "meals": 15_000,
    "equipment": 200_000,
    "training": 300_000,
}
ESCALATION_CHANNEL = "#finance-approvals"


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the third-party APIs, shared by every step (a worker dependency)."""

    client: httpx.AsyncClient


@dataclass(frozen=True)
class Refused:
    """The provider said no (a 4xx other than 408 and 429): asking again gets the same answer."""

    status: int
    reason: str


class ProviderUnavailableError(Exception):
    """The provider did not answer now; another attempt may succeed.

    Carries the Idempotency-Key the step sent: once the retries ran out, a call that timed out
    may still have acted, and the key is how to find what it did.
    """

    def __init__(self, message: str, idempotency_key: str) -> None:
        super().__init__(message, idempotency_key)  # what pickle rebuilds the error from
        self.idempotency_key = idempotency_key

    def __str__(self) -> str:
        return str(self.args[0])


async def check_policy(ctx: Context, claim: Claim) -> list[str]:
    """What the claim breaks in the expense policy; empty if nothing."""
    print(f"{claim.claim_id}: checking {claim.amount} of {claim.category}", flush=True)
    problems = []
    limit = LIMITS_CENTS[claim.category]
    if claim.amount_cents > limit:
        problems.append(f"{claim.category} claims are limited to {limit / 100:,.2f}")
    if claim.approver_id == claim.employee_id:  # ids compare exactly: they are opaque, as issued
        problems.append("nobody approves their own claim")
    return problems


async def ask_approver(
    ctx: Context, claim: Claim, decision_id: str, decide_within_seconds: int, links_url: str
) -> str | Refused:
    """Email the approver a signed approve link and a signed reject link; the message id.

    The links are signed here, from the worker's secret, and are not returned: the Resonate
    server keeps the message id, never a link that could decide the claim."""
    print(f"{claim.claim_id}: asking {claim.approver_id} (step {ctx.info.id})", flush=True)
    signer = ctx.get_dependency(LinkSigner)
    approve, reject = (
        f"{links_url.rstrip('/')}/decisions/{signer.token(Link(claim.claim_id, decision_id, d))}"
        for d in ("approve", "reject")
    )
    text = (
        f"{claim.employee_id} claims {claim.amount} for {claim.category}:"
        f" {claim.description}\n\n"
        f"Approve: {approve}\n"
        f"Reject:  {reject}\n\n"
        f"Each link opens a page that asks you to confirm. Without a decision within"
        f" {_duration(decide_within_seconds)} the claim goes to finance."
    )
    body = {
        "to": claim.approver_id,  # the email provider resolves the reference
        "subject": f"Expense claim {claim.claim_id}: {claim.amount} to approve",
        "text": text,
    }
    return await _call(ctx, "/email/send", body)


async def notify_employee(
    ctx: Context, claim: Claim, outcome: str, detail: str | None
) -> str | Refused:
    """Tell the employee how their claim ended; the message id, or the provider's refusal."""
    print(f"{claim.claim_id}: telling {claim.employee_id}: {outcome}", flush=True)
    text = f"Your claim of {claim.amount} for {claim.category} was {outcome}."
    body = {
        "to": claim.employee_id,
        "subject": f"Expense claim {claim.claim_id}: {outcome}",
        "text": f"{text}\n\n{detail}" if detail else text,
    }
    return await _call(ctx, "/email/send", body)


async def escalate(ctx: Context, claim: Claim, why: str) -> str | Refused:
    """Hand the claim to finance's channel for a person; the message id, or the refusal."""
    print(f"{claim.claim_id}: escalating to {ESCALATION_CHANNEL}: {why}", flush=True)
    text = (
        f"Expense claim {claim.claim_id} ({claim.employee_id}, {claim.amount}, "
        f"{claim.category}) needs a person: {why}."
    )
    return await _call(ctx, "/slack/send", {"channel": ESCALATION_CHANNEL, "text": text})


async def pay(ctx: Context, claim: Claim) -> str | Refused:
    """Pay the employee back: the provider's payment id, or its refusal."""
    print(f"{claim.claim_id}: paying {claim.amount} (step {ctx.info.id})", flush=True)
    body = {
        "payee": claim.employee_id,  # the provider pays the account it holds for the id
        "amount_cents": claim.amount_cents,
        "currency": claim.currency,
        "description": f"expense claim {claim.claim_id}",
    }
    # The sandbox's payment provider calls a payout a charge; a real payouts API has its own name.
    return await _call(ctx, "/payment/charge", body)


async def _call(ctx: Context, path: str, body: dict[str, Any]) -> str | Refused:
    """The provider's id for what it did, or its refusal as a value; a transient failure raises."""
    providers = ctx.get_dependency(Providers)
    key = ctx.info.id
    try:
        response = await providers.client.post(path, json=body, headers={"Idempotency-Key": key})
    # No answer, or one that cannot be decoded: it may have acted; the key makes a retry safe.
    except (httpx.TransportError, httpx.DecodingError) as exc:
        raise ProviderUnavailableError(f"{path}: {type(exc).__name__}", key) from exc
    status = response.status_code
    if status >= 500 or status in RETRYABLE_CLIENT_ERRORS:
        print(f"{path} answered {status}; the step will be retried", flush=True)
        raise ProviderUnavailableError(f"{path}: answered {status}", key)
    if response.is_error:
        return Refused(status, f"{path} refused: {status} {_error(response)}")
    try:
        resource_id: str = response.json()["id"]
    # A 2xx without its id (a proxy's page) does not say what the provider did: it may have acted.
    except (ValueError, LookupError, TypeError) as exc:
        raise ProviderUnavailableError(
            f"{path}: answered {status} without a readable 'id'", key
        ) from exc
    return resource_id


def _error(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    return str(error) if error else response.reason_phrase


def _duration(seconds: int) -> str:
    if seconds % 86_400 == 0:
        days = seconds // 86_400
        return f"{days} day{'s' * (days != 1)}"
    if seconds % 3_600 == 0:
        hours = seconds // 3_600
        return f"{hours} hour{'s' * (hours != 1)}"
    return f"{seconds} seconds"

"""The steps: calls to the payment, fraud and email providers, and the version marker.

Each provider call carries an Idempotency-Key from the step's durable id (`ctx.info.id`), which is
stable across retries and crashes: a step that runs again after a crash, or after a timeout whose
request did land, gets the provider's original answer instead of charging or emailing twice. A
refusal (a 4xx other than 408 and 429: a declined card, a fraud hold) would be the same on every
attempt, so it is returned as a value and never retried; a provider that is down, overloaded or
silent (a 5xx, 408, 429, a timeout, a dropped connection, a 2xx whose body is not its answer) may
answer the next attempt, so the step raises and its retry policy tries again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import httpx
from resonate.context import Context
from resonate.resonate import Resonate
from resonate.types import Value

# Client errors that say "not now" rather than "no": Request Timeout and Too Many Requests.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})

# The tag of a renewal's version marker; its value is the version the renewal runs on. Operators
# find the renewals still running on a version by it (see versioning.inflight).
VERSION_TAG = "renewal-version"
# The tag naming the renewal a marker belongs to: its execution id.
RENEWAL_TAG = "renewal-id"
# The customer, by reference: the Resonate server stores the subscription as the renewal's
# argument, readable by anyone who can read the server, so it never carries an email address or
# a name; the email provider resolves the reference to the address. Matched whole (`fullmatch`:
# a `$` would let a trailing newline through).
CUSTOMER_ID = re.compile(r"cus_[A-Za-z0-9]{4,32}")


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the third-party APIs, shared by every step (a worker dependency)."""

    client: httpx.AsyncClient


@dataclass(frozen=True)
class Server:
    """The worker's own Resonate client, for the version markers (a worker dependency)."""

    resonate: Resonate


@dataclass(frozen=True)
class Subscription:
    subscription_id: str
    customer_id: str  # `cus_...`: who to email, by reference
    plan: str
    amount_cents: int
    currency: str
    # When the renewal falls due, from the moment the renewal starts. Hours in production; the
    # demo uses seconds, and the crash matrix runs on a dev server that skips time.
    renews_in_seconds: int

    def __post_init__(self) -> None:
        # Checked where a starter builds one, before anything reaches the server, and again
        # where a worker decodes the argument (the SDK builds it with msgspec, which runs this):
        # a start that bypassed the class does no step. The message leaves the value out, as
        # the server keeps a refused renewal's error.
        if not CUSTOMER_ID.fullmatch(self.customer_id):
            raise ValueError("customer_id: not a customer reference like 'cus_4f9a01c2'")


@dataclass(frozen=True)
class Answer:
    """What a provider did: acted (its receipt id) or refused (why)."""

    receipt: str | None = None
    refusal: str | None = None


class ProviderUnavailableError(Exception):
    """The provider did not act now; another attempt may succeed."""


def marker_id(renewal_id: str) -> str:
    """The id of a renewal's version marker. Starters build renewal ids from a subscription id
    and a period, never with a '~', so no renewal's id is another renewal's marker id."""
    return f"{renewal_id}~version"


async def mark_version(ctx: Context, renewal_id: str, version: int, deadline_ms: int) -> None:
    """Record, under an id and tags this example chooses, which version a renewal runs on.

    A pending marker whose renewal is still pending means "a renewal is in flight on this
    version": an operator retires a version once `versioning.inflight` lists none. (A renewal
    that failed or was cancelled leaves its marker pending, but needs no code.) It lives as long
    as the renewal may (`deadline_ms`, the renewal's own deadline: a step's is a day at most).
    Creating a promise that exists returns it unchanged, so a re-run after a crash is harmless.
    """
    print(f"renewal {renewal_id} runs on version {version}", flush=True)
    await ctx.get_dependency(Server).resonate.promises.create(
        marker_id(renewal_id),
        deadline_ms,
        Value(data={"version": version}),
        {VERSION_TAG: str(version), RENEWAL_TAG: renewal_id},
    )


async def unmark_version(ctx: Context, renewal_id: str) -> None:
    """Settle the marker: this renewal no longer needs its version's code."""
    promises = ctx.get_dependency(Server).resonate.promises
    # Read first: after a crash this step may run again, and a settled marker needs nothing more.
    if (await promises.get(marker_id(renewal_id))).state == "pending":
        await promises.resolve(marker_id(renewal_id), Value(data={"done": True}))


async def send_email(ctx: Context, subscription: Subscription, template: str) -> Answer:
    print(f"email {template!r} to {subscription.customer_id} (step {ctx.info.id})", flush=True)
    body = {"to": subscription.customer_id, "template": template, "plan": subscription.plan}
    return await _call(ctx, "/email/send", body)


async def check_fraud(ctx: Context, subscription: Subscription) -> Answer:
    """Ask the fraud service whether to charge. A refusal (a 4xx) is its hold, not an error."""
    print(f"fraud check for {subscription.subscription_id} (step {ctx.info.id})", flush=True)
    body = {"op": "fraud_check", "subscription": subscription.subscription_id}
    return await _call(ctx, "/api/call", body)


async def charge_card(ctx: Context, subscription: Subscription) -> Answer:
    amount = f"{subscription.amount_cents / 100:.2f} {subscription.currency}"
    print(f"charging {amount} for {subscription.subscription_id} (step {ctx.info.id})", flush=True)
    body = {
        "subscription": subscription.subscription_id,
        "amount_cents": subscription.amount_cents,
        "currency": subscription.currency,
    }
    return await _call(ctx, "/payment/charge", body)


async def _call(ctx: Context, path: str, body: dict[str, Any]) -> Answer:
    providers = ctx.get_dependency(Providers)
    try:
        response = await providers.client.post(
            path, json=body, headers={"Idempotency-Key": ctx.info.id}
        )
    # Timed out, reset, or an answer that could not be decoded: it may have acted, and the key
    # makes a retry safe.
    except (httpx.TransportError, httpx.DecodingError) as exc:
        raise ProviderUnavailableError(f"{path}: {type(exc).__name__}") from exc
    if response.is_server_error or response.status_code in RETRYABLE_CLIENT_ERRORS:
        raise ProviderUnavailableError(f"{path}: answered {response.status_code}")
    if response.is_client_error:
        return Answer(refusal=f"{response.status_code} {_reason(response)}")
    try:
        return Answer(receipt=str(response.json()["id"]))
    except (ValueError, LookupError, TypeError) as exc:
        # A 2xx without its id (a proxy's HTML page, a cut-off body) says nothing of what the
        # provider did: like a timeout, it may have acted, and the retry's key gets the answer.
        raise ProviderUnavailableError(
            f"{path}: HTTP {response.status_code} without a readable 'id'"
        ) from exc


def _reason(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.reason_phrase

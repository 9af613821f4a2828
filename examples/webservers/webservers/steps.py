"""The steps: each acts once on a third-party API, with an Idempotency-Key from its durable id.

The key is stable across retries and crashes, so a step that runs again (after a crash of the web
process, or after a timeout whose request did land) gets the provider's original answer instead
of holding the seats, or sending the tickets, twice. Which provider does what:
  inventory  hold seats for an event; release a hold by the key it was requested with
  email      send the tickets to the customer

A provider answers in three ways, and the steps keep them apart:
  yes      2xx: the provider's id for what it did (a hold, a message).
  no       any 4xx but 408 and 429 (the event is sold out: the inventory's 409). Asking again
           cannot change it, so the step returns it as a value (`Outcome.refusal`), which is
           checkpointed: after a crash the workflow sees the same no without asking again.
  not now  5xx, 408, 429, a timeout, a dropped connection, or a 2xx whose body is not the
           answer (a proxy's HTML page): it may pass, and the call may have landed. The step
           raises `ProviderUnavailableError` (with the call's key), and the SDK runs it again
           under the retry policy the workflow gives with the call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from resonate.context import Context

if TYPE_CHECKING:  # the workflow module imports this one; steps only annotate with its model
    from webservers.workflow import TicketRequest

# Client errors that say "not now" rather than "no": Request Timeout and Too Many Requests.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the third-party APIs, shared by every step (a process dependency)."""

    client: httpx.AsyncClient


@dataclass(frozen=True)
class Outcome:
    """What the provider did: acted (its id for what it did), or refused (why)."""

    receipt: str | None = None
    refusal: str | None = None


class ProviderUnavailableError(Exception):
    """A provider call failed in a way that may pass; the step is retried.

    `idempotency_key` is the call's key: when the retries run out the call may still have
    landed, and the provider can be asked to undo whatever that key did.
    """

    def __init__(self, message: str, idempotency_key: str) -> None:
        super().__init__(message, idempotency_key)  # what pickle rebuilds the error from
        self.message = message
        self.idempotency_key = idempotency_key

    def __str__(self) -> str:
        return self.message


async def hold_seats(ctx: Context, request: TicketRequest) -> Outcome:
    body = {"event": request.event_id, "seats": request.seats, "customer": request.customer_id}
    return await _act(ctx, "/inventory/reserve", body)


async def release_hold(ctx: Context, hold_key: str) -> Outcome:
    """Release whatever the hold request with this key did: it kept failing, so whether it
    landed is unknown. The inventory cancels the hold if it exists, or voids the key so that
    the request, if it is still on its way, never holds anything."""
    return await _act(ctx, "/inventory/cancel", {"reservation_key": hold_key})


async def email_tickets(ctx: Context, request: TicketRequest, hold_id: str) -> Outcome:
    # To the customer by reference: the email provider knows the address, the Resonate server
    # (which stores this request as the execution's argument) never does.
    body = {
        "to": request.customer_id,
        "subject": f"Your {request.seats} seat(s) for {request.event_id}",
        "hold": hold_id,
    }
    return await _act(ctx, "/email/send", body)


async def _act(ctx: Context, path: str, body: dict[str, Any]) -> Outcome:
    providers = ctx.get_dependency(Providers)
    key = ctx.info.id
    try:
        response = await providers.client.post(path, json=body, headers={"Idempotency-Key": key})
    # Timed out, refused, reset, or an answer that could not be decoded: the call may have landed.
    except (httpx.TransportError, httpx.DecodingError) as exc:
        raise ProviderUnavailableError(f"{path}: {type(exc).__name__}", key) from exc
    if response.is_server_error or response.status_code in RETRYABLE_CLIENT_ERRORS:
        raise ProviderUnavailableError(f"{path}: answered {response.status_code}", key)
    if response.is_client_error:  # the provider's final answer
        return Outcome(refusal=f"{response.status_code} {_reason(response)}")
    try:
        receipt: str = response.json()["id"]
    except (ValueError, LookupError, TypeError) as exc:
        # A 2xx without its id (a proxy's HTML page, a cut-off body) says nothing of what the
        # provider did: like a timeout, it may have landed, and the retry's key gets the answer.
        raise ProviderUnavailableError(
            f"{path}: HTTP {response.status_code} without a readable 'id'", key
        ) from exc
    return Outcome(receipt=receipt)


def _reason(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.reason_phrase

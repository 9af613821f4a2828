"""The steps: reserve or cancel with the flight, hotel and car providers (third-party APIs).

Each call carries an Idempotency-Key: the step's durable id, which is stable across retries and
crashes. If this process dies after a provider booked but before the step's result was
checkpointed, the step runs again on another worker, sends the same key, and the provider answers
with the original booking instead of booking twice.

A provider can answer in three ways, and the steps keep them apart:
  yes        2xx: the reservation id (or the cancellation).
  no         any 4xx but 408 and 429, e.g. "no availability": asking again cannot help. The step
             returns a `Refused` value instead of raising, because SDK 0.8.1 retries every
             exception a step raises (it has no non-retryable error), and a value is also
             checkpointed: after a crash, the workflow sees the same refusal without asking again.
  not now    5xx, 408, 429, a timeout, a dropped connection, or a 2xx whose body is not the
             answer (a proxy's HTML page, a cut-off or garbled body): it may pass, and the call may
             have landed (none of these says what the provider did). The step raises
             `ProviderUnavailableError`, and the SDK runs it again under the retry policy the
             workflow gives with the call. If the retries run out, the error tells the workflow
             the call's key: its outcome is unknown, and the key is how to undo it all the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import httpx
from resonate.context import Context


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the third-party APIs, shared by every step (a worker dependency)."""

    client: httpx.AsyncClient


@dataclass(frozen=True)
class Refused:
    """A provider's final no."""

    provider: str
    reason: str


class ProviderUnavailableError(Exception):
    """A provider call failed in a way that may pass; the step is retried.

    When the retries run out, the call may still have landed: the workflow has the provider undo
    whatever the step's key (its durable id) did.
    """


@dataclass(frozen=True)
class Reservation:
    """Something to undo if the trip fails: a booking, or a call that may have booked."""

    provider: str
    id: str | None = None  # confirmed: the provider's reservation id
    # Unconfirmed: the reservation call's Idempotency-Key. It kept failing or timing out, so the
    # provider may hold a reservation whose id never reached us.
    request_key: str | None = None


@dataclass(frozen=True)
class Compensation:
    """What undoing one reservation came to."""

    provider: str
    # cancelled  the reservation existed and is cancelled
    # voided     the reservation call never arrived; the provider will refuse it if it ever does
    # refused    the provider will not cancel it (a 4xx): it is still booked
    # unreachable  the cancellation kept failing through every retry (the provider was down, or
    #              a bug): it may still be booked
    outcome: Literal["cancelled", "voided", "refused", "unreachable"]
    reservation_id: str | None = None
    reason: str | None = None  # refused, unreachable: the provider's answer, or the error

    @property
    def undone(self) -> bool:
        return self.outcome in ("cancelled", "voided")


async def reserve(ctx: Context, provider: str, request: dict[str, Any]) -> str | Refused:
    """Book with one provider: its reservation id, or its refusal."""
    print(f"reserving {provider} (step {ctx.info.id})", flush=True)
    response = await _post(ctx, f"/{provider}/reserve", request)
    if response.is_error:
        refusal = Refused(provider, _describe(response))
        print(f"{provider} refused: {refusal.reason}", flush=True)
        return refusal
    reservation_id: str = _field(response, "id")
    return reservation_id


async def cancel(ctx: Context, reservation: Reservation) -> Compensation:
    """Undo one reservation: by its id, or, unconfirmed, by the key it was requested with.

    Cancelling twice succeeds, and so does cancelling by a key whose call never arrived: the
    provider then voids the key, so that the call is refused if it arrives late.
    """
    provider = reservation.provider
    if reservation.id is not None:
        which = {"reservation_id": reservation.id}
        print(f"cancelling {provider} {reservation.id} (step {ctx.info.id})", flush=True)
    else:
        which = {"reservation_key": str(reservation.request_key)}
        print(
            f"cancelling {provider} whatever key {reservation.request_key} booked"
            f" (step {ctx.info.id})",
            flush=True,
        )
    response = await _post(ctx, f"/{provider}/cancel", which)
    if response.is_error:  # a final no: the reservation stays, and a person must see to it
        refusal = _describe(response)
        print(f"{provider} will not cancel: {refusal}", flush=True)
        return Compensation(provider, "refused", reservation.id, refusal)
    if _field(response, "status") == "voided":
        return Compensation(provider, "voided")
    return Compensation(provider, "cancelled", str(_field(response, "id")))


async def _post(ctx: Context, path: str, body: dict[str, Any]) -> httpx.Response:
    """POST with the step's idempotency key; a transient failure raises, to be retried."""
    providers = ctx.get_dependency(Providers)
    headers = {"Idempotency-Key": ctx.info.id}
    try:
        response = await providers.client.post(path, json=body, headers=headers)
    # Timed out, refused, reset, or an answer that could not be decoded: the call may have landed.
    except (httpx.TransportError, httpx.DecodingError) as exc:
        print(f"{path}: {type(exc).__name__} (transient: may have landed)", flush=True)
        raise ProviderUnavailableError(f"{path}: {type(exc).__name__}") from exc
    if response.is_server_error or response.status_code in (408, 429):
        print(f"{path} answered {response.status_code} (transient)", flush=True)
        raise ProviderUnavailableError(f"{path}: {_describe(response)}")
    return response


def _field(response: httpx.Response, name: str) -> Any:
    """`name` from a 2xx's JSON body.

    A 2xx whose body does not hold it (an HTML page from a proxy, a cut-off answer) says nothing
    about what the provider did, and the call may have landed: it is transient, like a timeout.
    The step is retried with the same key, and the provider answers what it did; if the retries
    run out, the workflow undoes the call by that key. Raised as anything else, it would read as
    a bug in the step.
    """
    try:
        return response.json()[name]
    except (ValueError, LookupError, TypeError) as exc:
        path = response.request.url.path
        print(f"{path} answered {response.status_code} without its {name} (transient)", flush=True)
        raise ProviderUnavailableError(
            f"{path}: HTTP {response.status_code} without a readable {name!r}"
        ) from exc


def _describe(response: httpx.Response) -> str:
    try:
        detail = str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        detail = response.text[:200]
    return f"HTTP {response.status_code} {response.reason_phrase}: {detail}"

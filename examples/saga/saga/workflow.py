"""The durable workflow: book a flight, a hotel and a car for a trip, or undo what was booked.

A saga. Each reservation is a checkpointed step. When a provider says no for good, or keeps
failing through every retry, or a step fails with a bug, the reservations already made are
cancelled, newest first, each cancellation a checkpointed step of its own, and the trip fails with
`TripRolledBackError`. A call that kept failing may still have booked: it is cancelled too, by the
key it was sent with. A cancellation that fails is reported, and the others still run. A crash
anywhere, also halfway through the cancellations, resumes where it stopped: a worker that picks
the trip up replays the workflow from the top and gets every finished step from the journal
instead of calling the provider again.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from resonate.context import Context
from resonate.retry import Exponential, Linear, Never

from saga.steps import (
    Compensation,
    ProviderUnavailableError,
    Refused,
    Reservation,
    cancel,
    reserve,
)

# -- the trip request: checked by the gateway, and again whenever a worker decodes it ----------

# Visible text: no control or format characters, no leading or trailing whitespace.
Text = Annotated[
    str,
    StringConstraints(max_length=100, pattern=r"^[^\p{C}\s](?:[^\p{C}]*[^\p{C}\s])?$"),
]
Airport = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]


def _iso_date(value: object) -> object:
    # JSON has no dates, so a date arrives as a string, and pydantic's lax date parsing would also
    # take a number (or a numeric string) as Unix seconds: `"departs": 86400` is 1970-01-02.
    # Only an ISO calendar date gets through; a `date` made in Python passes as it is.
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
        raise ValueError("must be an ISO date string, YYYY-MM-DD")
    return value


Day = Annotated[date, Field(strict=False), BeforeValidator(_iso_date)]
Count = Annotated[int, Field(ge=1, le=30)]  # nights, rental days
# The trip id becomes the execution id, and Resonate ids may not contain ':' (it names steps).
TripId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
# The trip names its traveller by reference, never by name or email address: the Resonate server
# stores the trip as the execution's argument, in plaintext, readable by anyone who can read the
# server. The providers resolve the reference.
TravellerId = Annotated[str, StringConstraints(pattern=r"^cus_[A-Za-z0-9]{4,32}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Flight(_Strict):
    origin: Airport
    destination: Airport
    departs: Day


class Hotel(_Strict):
    city: Text
    check_in: Day
    nights: Count


class Car(_Strict):
    pickup: Text
    days: Count


class Trip(_Strict):
    """A trip request: what `POST /trips` accepts, and what `book_trip` books."""

    trip_id: TripId
    traveller_id: TravellerId
    flight: Flight
    hotel: Hotel
    car: Car

    def requests(self) -> list[tuple[str, dict[str, Any]]]:
        """What to ask each provider for, in booking order."""
        choices: list[tuple[str, BaseModel]] = [
            ("flight", self.flight),
            ("hotel", self.hotel),
            ("car", self.car),
        ]
        return [
            (provider, {"traveller": self.traveller_id, **choice.model_dump(mode="json")})
            for provider, choice in choices
        ]


class TripRolledBackError(Exception):
    """The trip could not be booked, and what was booked for it was undone as far as it could be.

    `compensations` says, newest first, what became of each reservation made or perhaps made:
    cancelled, voided (the call never arrived and never will), or still in place (`left_in_place`:
    the provider refused to cancel, or kept failing), which a person must see to.

    The workflow raises it; the SDK stores it with the execution (pickled) and raises it again
    wherever the execution is awaited, so the gateway can tell what failed and what was undone.
    """

    def __init__(self, failed: str, reason: str, compensations: list[Compensation]) -> None:
        super().__init__(failed, reason, compensations)  # what pickle rebuilds the error from
        self.failed = failed
        self.reason = reason
        self.compensations = compensations

    @property
    def left_in_place(self) -> list[Compensation]:
        return [c for c in self.compensations if not c.undone]

    def __str__(self) -> str:
        undone = ", then ".join(
            f"{c.outcome} {c.provider} {c.reservation_id or ''}".rstrip()
            for c in self.compensations
        )
        return (
            f"trip rolled back: {self.failed} failed ({self.reason}); {undone or 'nothing to undo'}"
        )


# -- the workflow ------------------------------------------------------------------------------

# The SDK takes retry delays in whole seconds: `Linear` waits 1, 2, 3 s before the retries.
# A booking the traveller is waiting for retries a transient failure three times, over about 6 s:
# a provider's restart or a short overload passes; one that is down for longer is not waited for,
# and the trip is rolled back.
RESERVE_RETRIES = Linear(delay=1, max_retries=3)
# A cancellation gives up much later (2, 4, 8 ... 256 s, then 300 s: about 28 minutes): until it
# succeeds, the traveller holds a reservation they will pay for. When it does give up, the
# reservation is reported as left in place, and the remaining cancellations still run.
CANCEL_RETRIES = Exponential(delay=1, factor=2, max_retries=12, max_delay=300)
# The workflow itself calls no provider: what fails before its first step (a trip argument that
# does not decode, or a bug) fails the same way every time. The SDK default would retry it 30
# times with doubling delays while holding the lease; the worker registers it with this instead.
WORKFLOW_RETRIES = Never()


async def book_trip(ctx: Context, trip: Trip) -> dict[str, str]:
    booking = ctx.options(retry_policy=RESERVE_RETRIES)
    booked: dict[str, str] = {}  # provider -> reservation id, in booking order
    to_undo: list[Reservation] = []  # what a failure must undo, in booking order
    for provider, request in trip.requests():
        reserving = booking.run(reserve, provider, request)
        # The step's durable id is the Idempotency-Key its calls send (`ctx.info.id` in the step).
        key = await reserving.id()
        try:
            outcome = await reserving
        except Exception as failed:
            # Failing after every retry (a provider down, or a bug: a provider's answer is a value
            # or ProviderUnavailableError), the call may still have booked: it is cancelled by its
            # key (a key whose call never arrived is voided: harmless), and what is booked is
            # undone. A saga that stopped at an error no one foresaw would leave the traveller
            # paying for a flight. (The SDK's own signals, suspension and platform failure, are
            # BaseExceptions: this does not catch them.)
            to_undo.append(Reservation(provider, request_key=key))
            outcome = Refused(provider, _why(failed))
        if isinstance(outcome, Refused):
            compensations = await undo(ctx, to_undo)
            raise TripRolledBackError(provider, outcome.reason, compensations)
        booked[provider] = outcome
        to_undo.append(Reservation(provider, id=outcome))
    return booked


async def undo(ctx: Context, reservations: list[Reservation]) -> list[Compensation]:
    """Cancel each reservation, newest first; one that cannot be undone does not stop the rest."""
    undoing = ctx.options(retry_policy=CANCEL_RETRIES)
    compensations: list[Compensation] = []
    for reservation in reversed(reservations):
        try:
            compensations.append(await undoing.run(cancel, reservation))
        # After every retry: report it, and go on. Whatever it was, a provider down or a bug (see
        # book_trip), the remaining reservations must still be cancelled.
        except Exception as failing:
            compensations.append(
                Compensation(reservation.provider, "unreachable", reservation.id, _why(failing))
            )
    return compensations


def _why(error: Exception) -> str:
    """A provider's failure says what it was; any other error is named by its type."""
    return str(error) if isinstance(error, ProviderUnavailableError) else repr(error)

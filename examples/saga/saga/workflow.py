"""The durable workflow: book a flight, a hotel and a car for a trip, or undo what was booked.

A saga. Each reservation is a checkpointed step. When a provider says no for good, the
reservations already made are cancelled, newest first, each cancellation a checkpointed step of
its own, and the trip fails with `TripRolledBackError`. A crash anywhere, also halfway through
the cancellations, resumes where it stopped: a worker that picks the trip up replays the workflow
from the top and gets every finished step from the journal instead of calling the provider again.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from resonate.context import Context
from resonate.retry import Exponential

from saga.steps import ProviderUnavailableError, Refused, cancel, reserve

# -- the trip request: checked by the gateway, and again whenever a worker decodes it ----------

# Visible text: no control or format characters, no leading or trailing whitespace.
Text = Annotated[
    str,
    StringConstraints(max_length=100, pattern=r"^[^\p{C}\s](?:[^\p{C}]*[^\p{C}\s])?$"),
]
Airport = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
# JSON has no dates: an ISO string ("2030-05-01") is the one value not taken strictly as typed.
Day = Annotated[date, Field(strict=False)]
Count = Annotated[int, Field(ge=1, le=30)]  # nights, rental days
# The trip id becomes the execution id, and Resonate ids may not contain ':' (it names steps).
TripId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Traveller(_Strict):
    name: Text
    email: Annotated[
        str, StringConstraints(max_length=254, pattern=r"^[^@\s\p{C}]+@[^@\s\p{C}]+\.[^@\s\p{C}]+$")
    ]


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
    traveller: Traveller
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
            (provider, {"traveller": self.traveller.name, **choice.model_dump(mode="json")})
            for provider, choice in choices
        ]


class TripRolledBackError(Exception):
    """The trip could not be booked, and every reservation made for it was cancelled.

    The workflow raises it; the SDK stores it with the execution (pickled) and raises it again
    wherever the execution is awaited, so the gateway can tell what failed and what was undone.
    """

    def __init__(self, failed: str, reason: str, cancelled: list[tuple[str, str]]) -> None:
        super().__init__(failed, reason, cancelled)  # what pickle rebuilds the error from
        self.failed = failed
        self.reason = reason
        self.cancelled = cancelled  # (provider, reservation id), in the order they were undone

    def __str__(self) -> str:
        undone = ", then ".join(f"{provider} {id_}" for provider, id_ in self.cancelled)
        return f"trip rolled back: {self.failed} failed ({self.reason}); cancelled {undone or '-'}"


# -- the workflow ------------------------------------------------------------------------------

# Transient failures are retried in place after 0.2, 0.4, 0.8 and 1.6 s; then the step gives up.
# (The SDK annotates retry delays as whole seconds, but sleeps for fractions of one too.)
RESERVE_RETRIES = Exponential(delay=0.1, factor=2, max_retries=4, max_delay=2)  # type: ignore[arg-type]
# A cancellation gives up much later (after about 20 s here; hours in production): until it
# succeeds, the traveller holds a reservation they will pay for.
CANCEL_RETRIES = Exponential(delay=0.1, factor=2, max_retries=8, max_delay=5)  # type: ignore[arg-type]


async def book_trip(ctx: Context, trip: Trip) -> dict[str, str]:
    booking = ctx.options(retry_policy=RESERVE_RETRIES)
    undoing = ctx.options(retry_policy=CANCEL_RETRIES)
    booked: dict[str, str] = {}  # provider -> reservation id, in booking order
    for provider, request in trip.requests():
        try:
            outcome = await booking.run(reserve, provider, request)
        except ProviderUnavailableError as exc:  # still failing after every retry: as good as a no
            outcome = Refused(provider, str(exc))
        if isinstance(outcome, Refused):
            undo = list(reversed(booked.items()))
            for done, reservation_id in undo:
                await undoing.run(cancel, done, reservation_id)
            raise TripRolledBackError(provider, outcome.reason, undo)
        booked[provider] = outcome
    return booked

"""The durable function every app runs in-process: book seats for an event, email the tickets.

Two checkpoints, each with one effect on a provider: hold the seats, then email the tickets. A
web route runs it with `resonate.run(ticket_id, book_tickets, request)`: the web process is the
worker, so it executes right there, and the route answers with what it returns. The ticket id is
the execution id: a request repeated with it gets the stored booking, and books nothing again.

A sold-out event is an answer, not a failure: the booking ends `sold_out`, a value. A provider
that is down is retried in place; a hold that keeps failing may have landed, so it is released
by its key and the booking ends `unavailable`; tickets that cannot be emailed are reported in the
booking (the seats are held, and the HTTP answer carries the hold's id anyway).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from resonate.context import Context
from resonate.retry import Exponential, Linear, Never

from webservers.steps import ProviderUnavailableError, email_tickets, hold_seats, release_hold

# The ticket id becomes the execution id: Resonate ids may not contain ':' (it names steps).
TicketId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
# References, never a name or an email address: the Resonate server stores the request as the
# execution's argument, readable by anyone who can read the server.
CustomerId = Annotated[str, StringConstraints(pattern=r"^cus_[A-Za-z0-9]{4,32}$")]
EventId = Annotated[str, StringConstraints(pattern=r"^evt_[A-Za-z0-9]{4,32}$")]


class TicketRequest(BaseModel):
    """What `POST /tickets` accepts in every app, and what `book_tickets` books."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    ticket_id: TicketId
    customer_id: CustomerId
    event_id: EventId
    seats: Annotated[int, Field(ge=1, le=8)]


@dataclass(frozen=True)
class Booking:
    """The function's result: what the route answers with, now or on any repeat."""

    status: Literal["booked", "sold_out", "unavailable"]
    hold_id: str | None = None  # booked: the inventory's id for the held seats
    email_id: str | None = None  # booked: the email provider's id for the tickets sent
    problem: str | None = None  # sold_out, unavailable: why; booked: why no email went out


# The SDK takes retry delays in whole seconds: `Linear` waits 1, 2 and 3 s before the retries.
# The customer's HTTP request is waiting on these steps: a provider's restart or a burst of 503s
# is worth six seconds; one that is down for longer is an outage, and the booking ends
# (unavailable, or booked without the email) rather than holding the request any longer.
STEP_RETRIES = Linear(delay=1, max_retries=3)
# Releasing a hold that may have landed keeps trying for longer (2, 4, 8 ... 60 s: about five
# minutes): until it goes through, seats may be held for nobody. The request has had its answer
# by then (the route stops waiting and answers 202), the process finishes the release alone.
RELEASE_RETRIES = Exponential(delay=1, factor=2, max_retries=8, max_delay=60)
# The function itself calls no provider: what fails before its first step (a request that does
# not decode, or a bug) fails the same way every time. The SDK default would retry it 30 times
# with doubling delays while holding the lease; every app registers it with this instead.
WORKFLOW_RETRIES = Never()


async def book_tickets(ctx: Context, request: TicketRequest) -> Booking:
    step = ctx.options(retry_policy=STEP_RETRIES)
    try:
        held = await step.run(hold_seats, request)
    except ProviderUnavailableError as unknown:  # failing after every retry: it may have landed
        problem = f"the inventory is unavailable ({unknown})"
        undo = ctx.options(retry_policy=RELEASE_RETRIES)
        try:
            released = await undo.run(release_hold, unknown.idempotency_key)
        except ProviderUnavailableError as failing:  # a person must see to it
            return Booking(
                "unavailable", problem=f"{problem}; releasing it kept failing: {failing}"
            )
        if released.refusal is not None:
            problem += f"; releasing whatever it held was refused: {released.refusal}"
        return Booking("unavailable", problem=problem)
    if held.refusal is not None:  # "sold out": an answer, not an outage
        return Booking("sold_out", problem=held.refusal)
    assert held.receipt is not None
    try:
        emailed = await step.run(email_tickets, request, held.receipt)
    except ProviderUnavailableError as failing:  # the seats are held: report it, do not undo
        return Booking("booked", hold_id=held.receipt, problem=f"tickets not emailed: {failing}")
    if emailed.refusal is not None:
        return Booking("booked", held.receipt, problem=f"tickets not emailed: {emailed.refusal}")
    return Booking("booked", held.receipt, emailed.receipt)

"""The domain, pure: a bank account's events, its projection, and the fold between them.

No I/O and no Resonate here. The workflow applies `apply` one event per durable step; tests
compare what the workflow produced with `fold` over the same events.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

# An event as it arrives from the stream: a JSON object such as {"type": "deposited", "amount": 50}.
# It is validated by `apply`, never trusted: a malformed event is rejected, not applied.
type Event = dict[str, Any]

EVENT_TYPES = ("opened", "deposited", "withdrew", "closed")


@dataclass(frozen=True)
class Rejection:
    sequence: int  # the event's position in the stream, from 1
    reason: str


@dataclass(frozen=True)
class Account:
    """The projection: the account's state after the events so far."""

    status: Literal["unopened", "open", "closed"] = "unopened"
    owner: str = ""
    balance: int = 0  # whole units (e.g. cents): money is never a float
    applied: int = 0  # how many events changed the account
    rejections: tuple[Rejection, ...] = ()


def apply(account: Account, sequence: int, event: Event) -> Account:
    """The account after one event: changed by a valid event, or with the rejection recorded."""
    decided = _decide(account, event)
    if isinstance(decided, str):
        return replace(account, rejections=(*account.rejections, Rejection(sequence, decided)))
    return replace(decided, applied=account.applied + 1)


def fold(events: Iterable[Event]) -> Account:
    """The projection of a whole stream, in one go."""
    account = Account()
    for sequence, event in enumerate(events, start=1):
        account = apply(account, sequence, event)
    return account


def _decide(account: Account, event: Event) -> Account | str:
    """The changed account, or why the event cannot be applied to it."""
    kind = event.get("type")
    if kind not in EVENT_TYPES:
        return f"unknown event type {kind!r}"
    if account.status == "closed":
        return "the account is closed"
    if kind == "opened":
        owner = event.get("owner")
        if account.status == "open":
            return "the account is already open"
        if not isinstance(owner, str) or not owner.strip():
            return "an opening needs an owner"
        return replace(account, status="open", owner=owner)
    if account.status != "open":
        return "the account is not open yet"
    if kind == "closed":
        return replace(account, status="closed")
    amount = event.get("amount")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        return f"amount {amount!r} is not a positive whole number"
    if kind == "deposited":
        return replace(account, balance=account.balance + amount)
    if amount > account.balance:
        return f"withdrawing {amount} exceeds the balance of {account.balance}"
    return replace(account, balance=account.balance - amount)

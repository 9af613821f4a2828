"""The steps, and the order book that puts one order's events in order.

Each event is its own execution (its id is the event's id), so the events of one order run side
by side, in any order, on any worker. What they share is the order book: a SQLite database this
example owns, where each event is applied to its order in one transaction (BEGIN IMMEDIATE takes
the write lock first, so two events of one order are applied one after the other, never
interleaved). The book decides:

  payment_succeeded   fulfil, unless the order is already refunded (the refund overtook the
                      payment) or another payment event already claimed its fulfilment. Claiming
                      writes down the Idempotency-Key the warehouse call will carry (the step's
                      durable id) *before* the call is made.
  charge_refunded     mark the order refunded, and hand back the fulfilment's key, if one was
                      claimed: the refund cancels by that key, whether or not the warehouse call
                      has arrived yet (the warehouse voids a key whose call never came, and refuses
                      the call if it comes later).

So whichever of the two events is applied first, the order ends either fulfilled and not
refunded, or refunded with no live fulfilment; and a refund is never lost for arriving early.

Every applied event is a row of `applied_events`, keyed by the event id, with the step that
applied it. A step that runs again (a crash after the commit, a retry) finds its own row and
returns the same decision; a second execution of the same event (the event started under another
id) finds a row that is not its own and applies nothing.

The warehouse (fulfilment) and the email provider are third-party APIs: every call carries an
Idempotency-Key, the step's durable id (`ctx.info.id`), the same on every retry and replay. A
refusal (a 4xx other than 408 and 429) is returned as a value and never retried; a provider that
is down, overloaded or silent (or answers a 2xx whose body is not its answer) makes the step
raise, and its retry policy tries again.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx
from resonate.context import Context

# Client errors that say "not now" rather than "no": Request Timeout and Too Many Requests.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id        TEXT PRIMARY KEY,
    refunded_by     TEXT,   -- the refund event, once one was applied
    fulfilment_key  TEXT,   -- the warehouse call's Idempotency-Key, once fulfilment was claimed
    fulfilled_by    TEXT    -- the payment event that claimed it
);
CREATE TABLE IF NOT EXISTS applied_events (
    event_id  TEXT PRIMARY KEY,   -- once per event, whichever execution applies it
    step_id   TEXT NOT NULL,      -- the step that applied it: its own re-run finds it
    order_id  TEXT NOT NULL,
    type      TEXT NOT NULL,
    decision  TEXT NOT NULL,
    fulfilment_key TEXT           -- payment: the key it claimed, refund: the key to cancel
);
"""

type Decision = Literal[
    "fulfil",  # payment: this event claimed the fulfilment
    "already_refunded",  # payment: the refund came first; nothing to ship
    "already_fulfilled",  # payment: another payment event of this order claimed it
    "cancel_fulfilment",  # refund: a fulfilment was claimed; cancel it by its key
    "nothing_to_cancel",  # refund: it overtook the payment; the payment will not fulfil
    "already_refunded_by_other",  # refund: another refund event of this order came first
    "duplicate",  # this event was applied by another execution
]


@dataclass(frozen=True)
class Applied:
    """What the order book decided for one event."""

    decision: Decision
    fulfilment_key: str | None = None


def data_dir() -> Path:
    """Where the order book lives: WEBHOOK_HANDLER_DATA_DIR, shared by every worker here."""
    default = Path(tempfile.gettempdir()) / "webhook-handler-data"
    return Path(os.environ.get("WEBHOOK_HANDLER_DATA_DIR", default))


@dataclass(frozen=True)
class OrderBook:
    """The order book's file; each call opens its own connection (steps run on worker threads)."""

    path: Path

    @classmethod
    def at(cls, directory: Path) -> OrderBook:
        directory.mkdir(parents=True, exist_ok=True)
        book = cls(directory / "orders.db")
        with book._transaction() as db:  # several workers may start at once: one creates
            for statement in SCHEMA.split(";"):  # executescript would commit first
                db.execute(statement)
        return book

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: transactions are begun explicitly. BEGIN IMMEDIATE takes the write
        # lock up front: two events of one order are applied one after the other.
        with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # an applied event survives a power cut
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def apply_payment(self, event_id: str, order_id: str, step_id: str) -> Applied:
        with self._transaction() as db:
            return apply_payment_to(db, event_id, order_id, step_id)

    def apply_refund(self, event_id: str, order_id: str, step_id: str) -> Applied:
        with self._transaction() as db:
            return apply_refund_to(db, event_id, order_id, step_id)

    def applied_events(self, order_id: str | None = None) -> list[tuple[str, str, str]]:
        """(event id, type, decision) of every applied event, or of one order's, in order."""
        query = "SELECT event_id, type, decision, order_id FROM applied_events ORDER BY rowid"
        with closing(sqlite3.connect(self.path, timeout=30)) as db:
            rows = db.execute(query).fetchall()
        return [(e, t, d) for e, t, d, o in rows if order_id is None or o == order_id]


def apply_payment_to(db: sqlite3.Connection, event_id: str, order_id: str, step_id: str) -> Applied:
    """Claim the order's fulfilment for this step's warehouse call, unless it must not ship.

    Runs inside the order book's write transaction: no other event of the order is applied
    between the read and the write.
    """
    earlier = _applied(db, event_id, step_id)
    if earlier is not None:
        return earlier
    refunded_by, claimed_key = _order(db, order_id)
    if refunded_by is not None:
        applied = Applied("already_refunded")
    elif claimed_key is not None:
        applied = Applied("already_fulfilled")
    else:
        # The key is written down before the call is made: a refund can cancel it by this key
        # from now on, whether or not the call has reached the warehouse.
        applied = Applied("fulfil", step_id)
        db.execute(
            "UPDATE orders SET fulfilment_key = ?, fulfilled_by = ? WHERE order_id = ?",
            (step_id, event_id, order_id),
        )
    _record(db, event_id, step_id, order_id, "payment_succeeded", applied)
    return applied


def apply_refund_to(db: sqlite3.Connection, event_id: str, order_id: str, step_id: str) -> Applied:
    """Mark the order refunded (for good: a later payment event ships nothing); hand back the
    key of the fulfilment to cancel, if one was claimed."""
    earlier = _applied(db, event_id, step_id)
    if earlier is not None:
        return earlier
    refunded_by, claimed_key = _order(db, order_id)
    if refunded_by is not None:
        applied = Applied("already_refunded_by_other")
    else:
        db.execute("UPDATE orders SET refunded_by = ? WHERE order_id = ?", (event_id, order_id))
        if claimed_key is None:
            applied = Applied("nothing_to_cancel")
        else:
            applied = Applied("cancel_fulfilment", claimed_key)
    _record(db, event_id, step_id, order_id, "charge_refunded", applied)
    return applied


def _applied(db: sqlite3.Connection, event_id: str, step_id: str) -> Applied | None:
    """The decision already made for this event: this step's own (a re-run), or a duplicate's."""
    row = db.execute(
        "SELECT step_id, decision, fulfilment_key FROM applied_events WHERE event_id = ?",
        (event_id,),
    ).fetchone()
    if row is None:
        return None
    applied_by, decision, key = row
    return Applied(decision, key) if applied_by == step_id else Applied("duplicate")


def _order(db: sqlite3.Connection, order_id: str) -> tuple[str | None, str | None]:
    db.execute("INSERT OR IGNORE INTO orders (order_id) VALUES (?)", (order_id,))
    refunded_by, key = db.execute(
        "SELECT refunded_by, fulfilment_key FROM orders WHERE order_id = ?", (order_id,)
    ).fetchone()
    return refunded_by, key


def _record(
    db: sqlite3.Connection,
    event_id: str,
    step_id: str,
    order_id: str,
    event_type: str,
    applied: Applied,
) -> None:
    db.execute(
        "INSERT INTO applied_events (event_id, step_id, order_id, type, decision, fulfilment_key)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (event_id, step_id, order_id, event_type, applied.decision, applied.fulfilment_key),
    )


# -- the steps -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the third-party APIs, shared by every step (a worker dependency)."""

    client: httpx.AsyncClient


class ProviderUnavailableError(Exception):
    """The provider did not answer yes or no; another attempt may. The call may have landed."""


@dataclass(frozen=True)
class Fulfilment:
    """What a payment event came to.

    fulfilled   the warehouse reserved the order's stock for shipping (`shipment_id`)
    skipped     the order book said not to ship (`decision`: refunded first, or already claimed)
    voided      the refund overtook this call: the warehouse refused a key it had voided
    refused     the warehouse said no (out of stock, say): `reason`
    """

    status: Literal["fulfilled", "skipped", "voided", "refused"]
    decision: Decision
    shipment_id: str | None = None
    reason: str | None = None


async def fulfil_order(
    ctx: Context, event_id: str, order_id: str, amount: int, currency: str
) -> Fulfilment:
    """Claim the order's fulfilment in the order book, then ask the warehouse to ship it."""
    book = ctx.get_dependency(OrderBook)
    key = ctx.info.id
    applied = await asyncio.to_thread(book.apply_payment, event_id, order_id, key)
    if applied.decision != "fulfil":
        print(f"{event_id}: order {order_id} not shipped ({applied.decision})", flush=True)
        return Fulfilment("skipped", applied.decision)
    print(f"{event_id}: shipping order {order_id} (key {key})", flush=True)
    body = {"order_id": order_id, "amount": amount, "currency": currency}
    response = await _post(ctx, "/inventory/reserve", body)
    if response.status_code == 409:  # the refund voided this key before the call arrived
        print(f"{event_id}: the warehouse refused: the refund cancelled it first", flush=True)
        return Fulfilment("voided", applied.decision, reason=_reason(response))
    if response.is_client_error:
        return Fulfilment("refused", applied.decision, reason=_reason(response))
    return Fulfilment("fulfilled", applied.decision, shipment_id=str(_field(response, "id")))


async def apply_refund(ctx: Context, event_id: str, order_id: str) -> Applied:
    """Mark the order refunded in the order book: what there is to cancel, if anything."""
    book = ctx.get_dependency(OrderBook)
    applied = await asyncio.to_thread(book.apply_refund, event_id, order_id, ctx.info.id)
    print(f"{event_id}: order {order_id} refunded ({applied.decision})", flush=True)
    return applied


@dataclass(frozen=True)
class Cancellation:
    """cancelled: the shipment was stopped; voided: its call had not arrived, and never will act;
    refused: the warehouse will not cancel (shipped already, say): `reason`."""

    status: Literal["cancelled", "voided", "refused"]
    reason: str | None = None


async def cancel_fulfilment(ctx: Context, order_id: str, fulfilment_key: str) -> Cancellation:
    """Stop the order's shipment, by the key its warehouse call was made with."""
    print(f"cancelling the shipment of order {order_id} (key {fulfilment_key})", flush=True)
    body = {"reservation_key": fulfilment_key, "order_id": order_id}
    response = await _post(ctx, "/inventory/cancel", body)
    if response.is_client_error:
        return Cancellation("refused", _reason(response))
    return Cancellation("voided" if _field(response, "status") == "voided" else "cancelled")


async def send_refund_notice(ctx: Context, order_id: str, amount: int, currency: str) -> str:
    """Tell the customer the money is on its way back: the email provider's message id.

    The address is the shop's to look up from the order id: no personal data goes through the
    Resonate server in the workflow's arguments.
    """
    body = {
        "template": "refund_issued",
        "order_id": order_id,
        "amount": amount,
        "currency": currency,
    }
    response = await _post(ctx, "/email/send", body)
    if response.is_client_error:
        return f"refused: {_reason(response)}"
    return str(_field(response, "id"))


async def _post(ctx: Context, path: str, body: Mapping[str, object]) -> httpx.Response:
    """POST with the step's idempotency key; a transient failure raises, to be retried."""
    providers = ctx.get_dependency(Providers)
    try:
        response = await providers.client.post(
            path, json=dict(body), headers={"Idempotency-Key": ctx.info.id}
        )
    # Timed out, reset, or an answer that could not be decoded: it may have acted, and the key
    # makes a retry safe.
    except (httpx.TransportError, httpx.DecodingError) as exc:
        raise ProviderUnavailableError(f"{path}: {type(exc).__name__}") from exc
    if response.is_server_error or response.status_code in RETRYABLE_CLIENT_ERRORS:
        raise ProviderUnavailableError(f"{path}: answered {response.status_code}")
    return response


def _field(response: httpx.Response, name: str) -> object:
    """`name` from a 2xx's JSON body.

    A 2xx without it (a proxy's HTML page, a cut-off body) says nothing of what the provider did,
    and the call may have landed: it is transient, like a timeout, and the retry's key gets the
    provider's answer.
    """
    try:
        return response.json()[name]
    except (ValueError, LookupError, TypeError) as exc:
        path = response.request.url.path
        raise ProviderUnavailableError(
            f"{path}: HTTP {response.status_code} without a readable {name!r}"
        ) from exc


def _reason(response: httpx.Response) -> str:
    try:
        return f"{response.status_code} {response.json()['error']}"
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code} {response.reason_phrase}"

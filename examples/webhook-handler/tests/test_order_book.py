"""The order book alone: each event applied once, and one order's events in either order."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from webhook_handler.steps import Applied, OrderBook


def test_a_step_that_runs_again_gets_its_decision_and_another_execution_gets_nothing(
    tmp_path: Path,
) -> None:
    book = OrderBook.at(tmp_path)

    first = book.apply_payment("evt_1", "order-1", "evt_1:1")
    again = book.apply_payment("evt_1", "order-1", "evt_1:1")
    elsewhere = book.apply_payment("evt_1", "order-1", "other-execution:1")

    assert first == again == Applied("fulfil", "evt_1:1")
    assert elsewhere == Applied("duplicate")
    assert book.applied_events("order-1") == [("evt_1", "payment_succeeded", "fulfil")]


def test_a_refund_is_final_whichever_event_comes_first(tmp_path: Path) -> None:
    book = OrderBook.at(tmp_path)

    assert book.apply_refund("evt_r1", "order-1", "evt_r1:1") == Applied("nothing_to_cancel")
    assert book.apply_payment("evt_p1", "order-1", "evt_p1:1") == Applied("already_refunded")

    assert book.apply_payment("evt_p2", "order-2", "evt_p2:1") == Applied("fulfil", "evt_p2:1")
    assert book.apply_refund("evt_r2", "order-2", "evt_r2:1") == Applied(
        "cancel_fulfilment", "evt_p2:1"
    )
    assert book.apply_payment("evt_p3", "order-2", "evt_p3:1") == Applied("already_refunded")


def test_one_orders_events_applied_at_once_from_many_threads_end_consistent(
    tmp_path: Path,
) -> None:
    book = OrderBook.at(tmp_path)
    chooser = random.Random(14)
    calls = []
    for n in range(60):
        order = f"order-{n}"
        calls += [
            (book.apply_payment, f"evt_p{n}", order, f"evt_p{n}:1"),
            (book.apply_refund, f"evt_r{n}", order, f"evt_r{n}:1"),
            (book.apply_payment, f"evt_q{n}", order, f"evt_q{n}:1"),  # a second payment event
        ]
    chooser.shuffle(calls)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda call: (call[1], call[0](*call[1:])), calls))

    decided = dict(results)
    for n in range(60):
        refund = decided[f"evt_r{n}"]
        payments = [decided[f"evt_p{n}"], decided[f"evt_q{n}"]]
        claimed = [p for p in payments if p.decision == "fulfil"]
        assert len(claimed) <= 1, n
        if claimed:  # shipped first: the refund cancels exactly that shipment
            assert refund == Applied("cancel_fulfilment", claimed[0].fulfilment_key), n
        else:  # the refund came first: neither payment ships
            assert refund == Applied("nothing_to_cancel"), n
            assert {p.decision for p in payments} == {"already_refunded"}, n
    assert len(book.applied_events()) == len(calls)

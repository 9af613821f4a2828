"""Message routing: anycast, unicast, holding, and re-sending what a dying stream swallowed."""

from __future__ import annotations

import logging

import pytest
from cookbook.devserver import router as router_module
from cookbook.devserver.router import Router, Subscriber

EXECUTE = '{"kind":"execute","data":{"task":{"id":"t","version":0}}}'
UNBLOCK = '{"kind":"unblock","data":{"promise":{"id":"p"}}}'


def test_anycast_goes_to_one_live_member_and_unicast_to_its_pid() -> None:
    router = Router()
    a, b = router.subscribe("workers", "a"), router.subscribe("workers", "b")
    router.publish("poll://any@workers", EXECUTE)
    router.publish("poll://uni@workers/b", UNBLOCK)
    assert a.queue.qsize() + b.queue.qsize() == 2
    assert b.queue.get_nowait()[1] in (EXECUTE, UNBLOCK)


def test_messages_for_an_absent_group_are_held_until_a_member_connects() -> None:
    router = Router()
    router.publish("poll://any@workers", EXECUTE)
    assert router.held_count() == 1
    late = router.subscribe("workers", "late")
    assert late.queue.get_nowait() == ("poll://any@workers", EXECUTE)
    assert router.held_count() == 0


def test_a_broken_stream_resends_recent_group_work_but_not_its_own_unicast() -> None:
    router = Router()
    dying = router.subscribe("workers", "dying")
    dying.sent.extend(
        [
            (0.0, "poll://any@workers", "old"),
            (9.0, "poll://any@workers", EXECUTE),
            (9.5, "poll://uni@workers/dying", UNBLOCK),
        ]
    )
    resend = dying.lately_sent_to_the_group(now=10.0, window=5.0)
    assert resend == [("poll://any@workers", EXECUTE)]

    router.unsubscribe(dying, resend)
    survivor = router.subscribe("workers", "survivor")
    assert survivor.queue.get_nowait() == ("poll://any@workers", EXECUTE)


def test_subscriber_sent_history_is_bounded() -> None:
    subscriber = Subscriber("workers", "p")
    for i in range(1000):
        subscriber.sent.append((float(i), "poll://any@workers", EXECUTE))
    assert len(subscriber.sent) == 256


def test_a_message_re_sent_while_held_is_held_once() -> None:
    router = Router()
    for _ in range(3):
        router.publish("poll://any@workers", EXECUTE)
    assert router.held_count() == 1
    late = router.subscribe("workers", "late")
    assert late.queue.qsize() == 1


def test_held_messages_are_bounded_with_one_warning_per_crossing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = Router()
    bound = router_module.MAX_HELD_PER_ADDRESS

    def flood(first: int) -> None:
        for i in range(first, first + bound + 2):
            router.publish("poll://any@orders", f'{{"kind":"execute","n":{i}}}')

    with caplog.at_level(logging.WARNING, logger=router_module.__name__):
        flood(0)
    assert router.held_count() == bound
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "'orders'" in warnings[0]
    assert f"holding {bound} messages" in warnings[0]

    # A worker drains the backlog (the newest are kept); the next flood warns again.
    worker = router.subscribe("orders", "w")
    assert worker.queue.qsize() == bound
    assert worker.queue.get_nowait()[1] == '{"kind":"execute","n":2}'
    router.unsubscribe(worker, [])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=router_module.__name__):
        flood(100_000)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_messages_for_a_pid_gone_for_good_are_forgotten() -> None:
    now = [0.0]
    router = Router(forget_absent_pid_after=60.0, clock=lambda: now[0])
    gone = router.subscribe("workers", "gone")
    router.unsubscribe(gone, [])
    router.publish("poll://uni@workers/gone", UNBLOCK)
    router.publish("poll://uni@workers/never-seen", UNBLOCK)
    router.publish("poll://any@workers", EXECUTE)  # work for the group is not a pid's

    now[0] = 59.0
    assert router.held_count() == 3
    now[0] = 61.0
    assert router.held_count() == 1
    assert router.subscribe("workers", "gone").queue.get_nowait() == ("poll://any@workers", EXECUTE)


def test_a_pid_that_comes_back_in_time_gets_what_was_held_for_it() -> None:
    now = [0.0]
    router = Router(forget_absent_pid_after=60.0, clock=lambda: now[0])
    router.unsubscribe(router.subscribe("workers", "back"), [])
    router.publish("poll://uni@workers/back", UNBLOCK)
    now[0] = 59.0
    back = router.subscribe("workers", "back")
    now[0] = 1000.0
    assert back.queue.get_nowait() == ("poll://uni@workers/back", UNBLOCK)
    assert router.held_count() == 0

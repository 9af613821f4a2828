"""Message routing: anycast, unicast, holding, and re-sending what a dying stream swallowed."""

from __future__ import annotations

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

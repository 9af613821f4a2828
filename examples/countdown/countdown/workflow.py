"""The durable workflow: count down N intervals, with a push notification at the end of each.

Each interval is a durable sleep: a promise on the Resonate server whose deadline is fixed when
the sleep starts. No worker holds the countdown in memory between two notifications, so a worker
can die in the middle of a ten-hour countdown and another one carries on at the same deadlines;
each notification is a step whose Idempotency-Key is its durable id, so it is sent exactly once.
"""

from __future__ import annotations

from datetime import timedelta

from resonate.context import Context
from resonate.retry import Exponential

from countdown.steps import Notification, send_push

# One execution holds two promises per notification, and every resume replays its whole history,
# so a countdown is kept to a size whose replay stays short. A longer one is several executions
# (see the limits in the README).
MAX_NOTIFICATIONS = 1000
MAX_INTERVAL_SECONDS = 30 * 24 * 3600
MAX_TOTAL_SECONDS = 366 * 24 * 3600
MAX_SUBSCRIBER_LENGTH = 100

# A push service that cannot take a notification now (a 5xx, a 429, no answer) is asked again
# with the same key: 5 retries, 2 s doubling to 30 s, about a minute, which rides out a restart or
# a 429 window. A notification later than that is news to nobody, so the countdown then fails,
# naming the step, rather than silently skipping it. A refusal (another 4xx) is never retried.
PUSH_RETRIES = Exponential(delay=1, factor=2, max_retries=5, max_delay=30)


class InvalidCountdownError(ValueError):
    """The arguments describe no countdown this workflow runs; nothing was sent or slept."""


def countdown_problem(subscriber: object, count: object, interval_seconds: object) -> str | None:
    """What is wrong with a countdown's arguments, naming the argument; None when nothing is."""
    if not isinstance(subscriber, str) or not 0 < len(subscriber) <= MAX_SUBSCRIBER_LENGTH:
        return (
            f"subscriber: must be a non-empty string of at most {MAX_SUBSCRIBER_LENGTH} characters"
        )
    if not isinstance(count, int) or isinstance(count, bool):
        return f"count: must be a whole number of notifications, got {count!r}"
    if not 1 <= count <= MAX_NOTIFICATIONS:
        return f"count: must be between 1 and {MAX_NOTIFICATIONS} notifications, got {count}"
    if not isinstance(interval_seconds, int) or isinstance(interval_seconds, bool):
        return f"interval_seconds: must be a whole number of seconds, got {interval_seconds!r}"
    if not 1 <= interval_seconds <= MAX_INTERVAL_SECONDS:
        return (
            f"interval_seconds: must be between 1 and {MAX_INTERVAL_SECONDS} (30 days), "
            f"got {interval_seconds}"
        )
    if count * interval_seconds > MAX_TOTAL_SECONDS:
        return (
            f"count x interval_seconds: the countdown would run {count * interval_seconds} s, "
            f"more than {MAX_TOTAL_SECONDS} (366 days)"
        )
    return None


async def countdown(
    ctx: Context, subscriber: str, count: int, interval_seconds: int
) -> list[Notification]:
    problem = countdown_problem(subscriber, count, interval_seconds)
    if problem is not None:
        raise InvalidCountdownError(problem)  # before the first sleep: nothing starts
    push = ctx.options(retry_policy=PUSH_RETRIES)
    notifications: list[Notification] = []
    for position in range(1, count + 1):
        await ctx.sleep(timedelta(seconds=interval_seconds))
        remaining_seconds = (count - position) * interval_seconds
        notification = await push.run(send_push, subscriber, position, count, remaining_seconds)
        notifications.append(notification)
    return notifications

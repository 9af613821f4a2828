"""The dev server's cron dialect: 5-field standard cron in UTC, as the official server reads it.

Times are epoch milliseconds, as everywhere in the protocol. Cron instants fall on whole
minutes, so second resolution is exact.
"""

from __future__ import annotations

from datetime import UTC, datetime

from cronsim import CronSim, CronSimError


def cron_error(expression: object) -> str | None:
    """Why `expression` is not a 5-field cron expression, or None when it is one."""
    if not isinstance(expression, str):
        return "must be a string"
    if len(expression.split()) != 5:
        # cronsim also takes a 6-field form with seconds; the official server does not.
        return f"{expression!r} must have 5 fields (minute hour day-of-month month day-of-week)"
    try:
        next(CronSim(expression, _at(0)))
    except (CronSimError, StopIteration) as exc:
        return f"{expression!r} is not a cron expression: {exc or 'it never fires'}"
    return None


def next_tick_after(expression: str, ms: int) -> int:
    """The first cron instant strictly after `ms`."""
    # CronSim truncates to the second and answers strictly after it; instants are whole
    # seconds, so strictly after the truncated second is strictly after `ms` too.
    return _ms(next(CronSim(expression, _at(ms // 1000))))


def latest_tick_at_or_before(expression: str, ms: int) -> int:
    """The last cron instant at or before `ms` (reverse iteration is strictly before its start)."""
    return _ms(next(CronSim(expression, _at(ms // 1000 + 1), reverse=True)))


def _at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp()) * 1000

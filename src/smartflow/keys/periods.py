"""Budget periods, calendar-aligned in the configured time zone.

A period's spend lives under a key named by its id (``2026-12-05``,
``2026-W49``, ``2026-12``, ``lifetime``), so a new period starts at zero by
itself: no reset job, and nothing to get wrong when one is missed. The old
period's key expires a while after its end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

PERIODS = ("daily", "weekly", "monthly", "lifetime")
# How long a finished period's spend stays readable (reporting, debugging).
KEEP_AFTER_END_S = 35 * 86400


@dataclass(frozen=True, slots=True)
class Period:
    id: str
    ends_at: datetime | None  # None: lifetime

    def seconds_left(self, now: datetime) -> float | None:
        if self.ends_at is None:
            return None
        return max(0.0, (self.ends_at - now).total_seconds())

    def key_ttl_s(self, now: datetime) -> int:
        """How long the period's spend key must live (0: forever)."""
        left = self.seconds_left(now)
        if left is None:
            return 0
        return int(left) + KEEP_AFTER_END_S


class PeriodClock:
    """Which period ``now`` is in, for each kind of budget period."""

    __slots__ = ("_current", "_zone")

    def __init__(self, timezone: str = "UTC") -> None:
        self._zone = ZoneInfo(timezone)
        # kind -> (period, its end as a unix time): zone arithmetic costs more
        # than a call's whole admission, and a period lasts at least a day.
        self._current: dict[str, tuple[Period, float]] = {}

    def current(self, kind: str) -> Period:
        """The period of ``kind`` now; cached until it ends."""
        cached = self._current.get(kind)
        if cached is not None and time.time() < cached[1]:
            return cached[0]
        period = self.period(kind)
        ends = period.ends_at.timestamp() if period.ends_at is not None else float("inf")
        self._current[kind] = (period, ends)
        return period

    def now(self) -> datetime:
        return datetime.now(self._zone)

    def day_id(self, now: datetime | None = None) -> str:
        local = (now or self.now()).astimezone(self._zone)
        return local.strftime("%Y-%m-%d")

    def period(self, kind: str, now: datetime | None = None) -> Period:
        local = (now or self.now()).astimezone(self._zone)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        if kind == "daily":
            return Period(local.strftime("%Y-%m-%d"), _next_midnight(midnight, 1))
        if kind == "weekly":
            year, week, weekday = local.isocalendar()
            start = midnight - timedelta(days=weekday - 1)
            return Period(f"{year}-W{week:02d}", _next_midnight(start, 7))
        if kind == "monthly":
            first = midnight.replace(day=1)
            following = (first.replace(year=first.year + 1, month=1) if first.month == 12
                         else first.replace(month=first.month + 1))
            return Period(local.strftime("%Y-%m"), _aware(following))
        return Period("lifetime", None)


def _next_midnight(start: datetime, days: int) -> datetime:
    # Adding days to the wall clock, then re-reading the zone, keeps midnight
    # at midnight across a DST change (a day is 23 or 25 hours then).
    naive = start.replace(tzinfo=None) + timedelta(days=days)
    return _aware(naive.replace(tzinfo=start.tzinfo))


def _aware(moment: datetime) -> datetime:
    # Round trip through UTC so the offset is the one valid at that wall time.
    zone = moment.tzinfo
    assert zone is not None
    return moment.astimezone(UTC).astimezone(zone)


def reset_header_value(period: Period) -> str:
    """``x-smartflow-budget-reset``: the period's end as ISO 8601 UTC, or ``never``."""
    if period.ends_at is None:
        return "never"
    return period.ends_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

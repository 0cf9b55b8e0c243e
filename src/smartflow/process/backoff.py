"""When to start a replacement process, and when crashing means stop trying.

The first death in a quiet period is replaced at once (a one-off crash must
heal fast); each further death within `window_s` doubles the wait, up to
`max_delay_s`. `limit` deaths within `window_s` is a crash loop.

A value, not an object that changes: the arbiter's plan computes the next
one from the last, so tests can drive it with made-up clocks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from smartflow.config import SupervisorSettings

FIRST_BACKOFF_S = 0.1


@dataclass(frozen=True, slots=True)
class RestartBackoff:
    limit: int
    window_s: float
    max_delay_s: float
    deaths: tuple[float, ...] = ()      # within the window, as of the last death
    next_spawn_at: float = 0.0          # monotonic; no replacement before this

    @classmethod
    def from_settings(cls, supervisor: SupervisorSettings) -> RestartBackoff:
        return cls(
            limit=supervisor.crash_loop_restarts,
            window_s=supervisor.crash_loop_window,
            max_delay_s=supervisor.restart_backoff_max,
        )

    def _within_window(self, now: float) -> tuple[float, ...]:
        return tuple(death for death in self.deaths if now - death <= self.window_s)

    def after_death(self, now: float) -> RestartBackoff:
        """This backoff with one more death at `now`."""
        deaths = (*self._within_window(now), now)
        recent = len(deaths)
        delay_s = 0.0 if recent <= 1 else min(FIRST_BACKOFF_S * 2 ** (recent - 2), self.max_delay_s)
        return dataclasses.replace(
            self, deaths=deaths, next_spawn_at=max(self.next_spawn_at, now + delay_s)
        )

    def is_crash_loop(self, now: float) -> bool:
        return self.limit > 0 and len(self._within_window(now)) >= self.limit

    @property
    def recent_deaths(self) -> int:
        return len(self.deaths)

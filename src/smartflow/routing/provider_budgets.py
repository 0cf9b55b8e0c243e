"""Daily spend caps per provider (``[routing.provider_daily_budgets]``,
``SMARTFLOW_PROVIDER_BUDGETS=openai:100,anthropic:50``).

Each call's cost is added to its provider's total for the day in Redis
(nano-USD, one INCRBY, off the request path). The worker whose addition
crosses a threshold (80%, 100% by default) is the one that raises the alert,
so each fires once a day whatever the number of workers; the one that
crosses 100% also announces it on the routing channel, so every worker
skips that provider from its next call on. The day is the calendar day in
``[budgets] timezone``; a new day is a new key, so the cap resets by itself.

A cap is a brake, not a reservation: calls already in flight when it is
reached still finish and are billed, so the day's total can pass the cap
by what those calls cost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from smartflow.keys.money import NANO_PER_USD
from smartflow.keys.periods import PeriodClock
from smartflow.store.fast_client import Script, StoreClient
from smartflow.store.keyspace import ROUTING_CHANNEL, provider_spend

SPEND_KEY_TTL_S = 3 * 86400

_ADD_SPEND = Script("""
local total = redis.call('INCRBY', KEYS[1], ARGV[1])
if total == tonumber(ARGV[1]) then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if total >= tonumber(ARGV[3]) and total - tonumber(ARGV[1]) < tonumber(ARGV[3]) then
  redis.call('PUBLISH', ARGV[4], ARGV[5])
end
return total
""")

# (provider, share of the cap reached, spend usd, cap usd)
ThresholdCallback = Callable[[str, float, float, float], None]


class ProviderBudgets:
    def __init__(self, client: StoreClient, caps: Mapping[str, float], clock: PeriodClock,
                 thresholds: tuple[float, ...], *,
                 spawn: Callable[[Any], None], on_threshold: ThresholdCallback | None = None
                 ) -> None:
        self._client = client
        self._caps = {provider: round(usd * NANO_PER_USD) for provider, usd in caps.items()}
        self._clock = clock
        self._thresholds = tuple(sorted(thresholds))
        self._spawn = spawn
        self._on_threshold = on_threshold
        self._capped: dict[str, str] = {}  # provider -> the day it is capped for

    @property
    def enabled(self) -> bool:
        return bool(self._caps)

    def caps(self) -> dict[str, float]:
        return {provider: nano / NANO_PER_USD for provider, nano in self._caps.items()}

    def is_capped(self, provider: str) -> bool:
        day = self._capped.get(provider)
        return day is not None and day == self._clock.day_id()

    def mark_capped(self, provider: str, day: str) -> None:
        if provider in self._caps and day == self._clock.day_id():
            self._capped[provider] = day

    def record(self, provider: str, usd: float) -> None:
        cap = self._caps.get(provider)
        nano = round(usd * NANO_PER_USD)
        if cap is None or nano <= 0:
            return
        self._spawn(self._add(provider, nano, cap))

    async def _add(self, provider: str, nano: int, cap: int) -> None:
        day = self._clock.day_id()
        key = provider_spend(provider, day)
        total = int(await self._client.run_script(
            _ADD_SPEND, (key,), (nano, SPEND_KEY_TTL_S, cap, ROUTING_CHANNEL,
                                 f"capped:{provider}:{day}")))
        before = total - nano
        if total >= cap:
            self._capped[provider] = day
        if self._on_threshold is not None and cap > 0:
            for share in self._thresholds:
                line = share * cap
                if before < line <= total:
                    self._on_threshold(provider, share, total / NANO_PER_USD,
                                       cap / NANO_PER_USD)

    async def spend_today(self) -> dict[str, float]:
        day = self._clock.day_id()
        spend: dict[str, float] = {}
        for provider in self._caps:
            key = provider_spend(provider, day)
            raw = await self._client.execute("GET", key, key=key)
            spend[provider] = int(raw or 0) / NANO_PER_USD
        return spend

    async def sync(self) -> None:
        """Learn caps reached before this worker started (or a lost message)."""
        day = self._clock.day_id()
        for provider, cap in self._caps.items():
            key = provider_spend(provider, day)
            raw = await self._client.execute("GET", key, key=key)
            if int(raw or 0) >= cap:
                self._capped[provider] = day
            elif self._capped.get(provider) == day:
                del self._capped[provider]

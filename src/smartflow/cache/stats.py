"""Cache accounting: hits, misses and estimated cost saved.

Per tier, model, key and team, kept in Redis (``sf:cache:stats``, one hash
of counters that every worker and node adds to) for ``GET /api/cache/stats``
and dashboards, and per outcome, tier, model and team in Prometheus
(``smartflow_cache_requests_total``, ``smartflow_cache_saved_usd_total``;
keys stay out of Prometheus: thousands of keys would be thousands of series).

Nothing is written on the request path: a call adds to plain dicts, and a
loop task flushes them about once a second (Redis) and with every flush
(Prometheus).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

from smartflow.cache.entries import STATS_KEY
from smartflow.store.fast_client import StoreClient

logger = logging.getLogger("smartflow.cache")

FLUSH_INTERVAL_S = 1.0
TIERS = ("l1", "l3", "l2")


class _PromCounters:
    """The Prometheus side, created on first flush (multiprocess mode files)."""

    def __init__(self) -> None:
        from prometheus_client import Counter

        self.requests = Counter("smartflow_cache_requests_total",
                                "Cache lookups by outcome (hit, miss) and tier.",
                                ["outcome", "tier", "model", "team"])
        self.saved = Counter("smartflow_cache_saved_usd_total",
                             "Estimated provider cost saved by cache hits (USD).",
                             ["tier", "model", "team"])


class CacheStats:
    __slots__ = ("_counts", "_prom", "_prom_pending", "_saved", "_store", "_task")

    def __init__(self, store: StoreClient | None) -> None:
        self._store = store
        self._counts: defaultdict[str, int] = defaultdict(int)
        self._saved: defaultdict[str, float] = defaultdict(float)
        self._prom_pending: defaultdict[tuple[str, str, str, str], list[float]] = \
            defaultdict(lambda: [0, 0.0])
        self._prom: _PromCounters | None = None
        self._task: asyncio.Task[None] | None = None

    def count(self, outcome: str, tier: str, model: str, key_id: str | None,
              team_id: str | None, saved_usd: float = 0.0) -> None:
        """``outcome``: hit or miss; ``tier``: l1, l3, l2 (a miss: "")."""
        counts = self._counts
        name = f"{outcome}:{tier}" if tier else outcome
        counts[name] += 1
        counts[f"model:{model}|{name}"] += 1
        if key_id:
            counts[f"key:{key_id}|{outcome}"] += 1
        if team_id:
            counts[f"team:{team_id}|{outcome}"] += 1
        if saved_usd > 0:
            saved = self._saved
            saved["saved_usd"] += saved_usd
            saved[f"saved_usd:{tier}"] += saved_usd
            saved[f"model:{model}|saved_usd"] += saved_usd
            if key_id:
                saved[f"key:{key_id}|saved_usd"] += saved_usd
            if team_id:
                saved[f"team:{team_id}|saved_usd"] += saved_usd
        pending = self._prom_pending[(outcome, tier, model, team_id or "")]
        pending[0] += 1
        pending[1] += saved_usd

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            await self.flush()

    async def flush(self) -> None:
        self._flush_prometheus()
        store = self._store
        if store is None or not (self._counts or self._saved):
            return
        counts, saved = self._counts, self._saved
        self._counts, self._saved = defaultdict(int), defaultdict(float)
        try:
            await asyncio.gather(
                *(store.execute("HINCRBY", STATS_KEY, name, str(n), key=STATS_KEY)
                  for name, n in counts.items()),
                *(store.execute("HINCRBYFLOAT", STATS_KEY, name, repr(usd), key=STATS_KEY)
                  for name, usd in saved.items()))
        except Exception as exc:  # noqa: BLE001 - counters are best effort; calls go on
            logger.warning("cache stats not written (%s: %s)", type(exc).__name__, exc)

    def _flush_prometheus(self) -> None:
        if not self._prom_pending:
            return
        pending, self._prom_pending = self._prom_pending, defaultdict(lambda: [0, 0.0])
        try:
            prom = self._prom
            if prom is None:
                prom = self._prom = _PromCounters()
            for (outcome, tier, model, team), (n, usd) in pending.items():
                prom.requests.labels(outcome, tier or "none", model, team).inc(n)
                if usd > 0:
                    prom.saved.labels(tier, model, team).inc(usd)
        except Exception as exc:  # noqa: BLE001 - a metrics failure never costs a call
            logger.warning("cache metrics not written (%s: %s)", type(exc).__name__, exc)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        await self.flush()


def summarize(raw: dict[str, str]) -> dict[str, Any]:
    """The stats hash as ``GET /api/cache/stats`` shows it."""
    totals: dict[str, Any] = {"hits": 0, "misses": 0, "saved_usd": 0.0,
              "by_tier": {tier: {"hits": 0, "saved_usd": 0.0} for tier in TIERS}}
    groups: dict[str, dict[str, dict[str, Any]]] = {"model": {}, "key": {}, "team": {}}

    def bucket(kind: str, name: str) -> dict[str, Any]:
        return groups[kind].setdefault(name, {"hits": 0, "misses": 0, "saved_usd": 0.0,
                                              "by_tier": {}})

    for field, value in raw.items():
        owner, _, metric = field.rpartition("|")
        number = float(value)
        if owner:
            kind, _, name = owner.partition(":")
            if kind not in groups:
                continue
            row = bucket(kind, name)
            if metric == "saved_usd":
                row["saved_usd"] += number
            elif metric == "miss":
                row["misses"] += int(number)
            elif metric.startswith("hit"):
                row["hits"] += int(number)
                tier = metric.partition(":")[2]
                if tier:
                    row["by_tier"][tier] = row["by_tier"].get(tier, 0) + int(number)
            continue
        if metric == "miss":
            totals["misses"] += int(number)
        elif metric.startswith("hit:"):
            tier = metric[4:]
            totals["hits"] += int(number)
            totals["by_tier"].setdefault(tier, {"hits": 0, "saved_usd": 0.0})["hits"] += int(number)
        elif metric == "saved_usd":
            totals["saved_usd"] += number
        elif metric.startswith("saved_usd:"):
            tier = metric[10:]
            totals["by_tier"].setdefault(tier, {"hits": 0, "saved_usd": 0.0})["saved_usd"] += number
    lookups = totals["hits"] + totals["misses"]
    totals["hit_rate"] = totals["hits"] / lookups if lookups else 0.0
    return {**totals, "by_model": groups["model"], "by_key": groups["key"],
            "by_team": groups["team"]}

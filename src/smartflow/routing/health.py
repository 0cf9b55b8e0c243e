"""What every worker knows about each deployment's health, shared through Redis.

* Cooldowns (a circuit breaker): failures a deployment answers are counted
  in Redis; ``cooldown_failures`` of them with no success between (within
  ``cooldown_window``) take it out of rotation on every worker and node for
  ``cooldown_time``. The worker whose report trips it publishes the fact on
  the routing channel; the others learn it from there (and from a periodic
  read, should a message be lost). When the time is up the deployment is on
  probation: its next calls are the probe, and one failure takes it out
  again at once, while a success clears it.
* Latency: each attempt's time to first byte feeds a per-deployment EMA of
  the mean and variance in Redis (p95 ~ mean + 1.645 sd), written in
  batches off the request path; workers read the group's figures back
  every half second and apply their own samples at once in between.
* In-flight counts for ``least_connections``: one Lua call per routed call
  picks the least loaded deployment over all live workers and counts the
  call; the release is sent without waiting. Each worker rewrites its own
  counts every few seconds, so a count a dead worker left behind, or a lost
  release, stops mattering.

Nothing here is awaited on a successful call's path except the
least-connections pick, which only that strategy's groups pay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from smartflow.config import RoutingSettings
from smartflow.store.fast_client import Script, StoreClient
from smartflow.store.keyspace import (
    ROUTING_CHANNEL,
    deployment_cooldown,
    deployment_failures,
    least_connections_counts,
    least_connections_seen,
    routing_latency,
)

logger = logging.getLogger("smartflow.routing")

LATENCY_ALPHA = 0.3
LATENCY_FLUSH_S = 0.25
LATENCY_REFRESH_S = 0.5
SYNC_INTERVAL_S = 2.0
WORKER_STALE_S = 15.0
P95_Z = 1.645

_REPORT_FAILURE = Script("""
local cool = redis.call('GET', KEYS[2])
if cool then return tonumber(cool) end
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n >= tonumber(ARGV[1]) then
  local ms = tonumber(ARGV[3])
  local until_ms = tonumber(ARGV[4]) + ms
  redis.call('SET', KEYS[2], until_ms, 'PX', ms)
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[5], 'cool:' .. ARGV[6] .. ':' .. until_ms)
  return until_ms
end
return 0
""")

_OBSERVE_LATENCY = Script("""
local alpha = tonumber(ARGV[1])
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local x = tonumber(ARGV[i + 1])
  local m = tonumber(redis.call('HGET', KEYS[1], id .. ':m'))
  local v = 0
  if m then
    v = tonumber(redis.call('HGET', KEYS[1], id .. ':v')) or 0
    local d = x - m
    m = m + alpha * d
    v = (1 - alpha) * (v + alpha * d * d)
  else
    m = x
  end
  redis.call('HSET', KEYS[1], id .. ':m', tostring(m), id .. ':v', tostring(v),
             id .. ':t', ARGV[2])
end
return 1
""")

_PICK_LEAST = Script("""
local now = tonumber(ARGV[1])
local stale = tonumber(ARGV[2])
local me = ARGV[3]
local alive = {}
local known = {}
local seen = redis.call('HGETALL', KEYS[2])
for i = 1, #seen, 2 do
  local age = now - tonumber(seen[i + 1])
  if age <= stale then alive[seen[i]] = true end
  if age > 4 * stale then redis.call('HDEL', KEYS[2], seen[i]) else known[seen[i]] = true end
end
alive[me] = true
local load = {}
local counts = redis.call('HGETALL', KEYS[1])
for i = 1, #counts, 2 do
  local field = counts[i]
  local bar = string.find(field, '|', 1, true)
  if bar then
    local worker = string.sub(field, bar + 1)
    if alive[worker] then
      local id = string.sub(field, 1, bar - 1)
      load[id] = (load[id] or 0) + tonumber(counts[i + 1])
    elseif not known[worker] then
      redis.call('HDEL', KEYS[1], field)
    end
  end
end
local best = nil
local best_load = nil
for i = 4, #ARGV do
  local l = load[ARGV[i]] or 0
  if best == nil or l < best_load then best = ARGV[i]; best_load = l end
end
redis.call('HINCRBY', KEYS[1], best .. '|' .. me, 1)
redis.call('HSET', KEYS[2], me, now)
return best
""")


def p95_of(mean: float, variance: float) -> float:
    return mean + P95_Z * math.sqrt(max(variance, 0.0))


class DeploymentHealth:
    """One worker's view of deployment health (see the module docstring)."""

    def __init__(self, client: StoreClient, settings: RoutingSettings, *,
                 on_cooldown: Callable[[str, float], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._settings = settings
        self._on_cooldown = on_cooldown
        self._clock = clock
        self._worker = secrets.token_hex(6)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cooling: dict[str, float] = {}  # deployment -> until (epoch seconds)
        self._probation: set[str] = set()
        self._suspect: set[str] = set()  # failed since its last success: a success must say so
        self._latency: dict[str, tuple[float, float]] = {}  # deployment -> (mean, variance)
        self._pending_latency: list[str] = []
        self._latency_flush: asyncio.TimerHandle | None = None
        self._in_flight: dict[tuple[str, str], int] = {}  # (group, deployment) -> this worker's
        self._watched: tuple[str, ...] = ()  # deployments whose cooldown keys are re-read
        self._latency_groups = False
        self._lc_groups: set[str] = set()
        self._loop_task: asyncio.Task[None] | None = None

    # -- set-up ----------------------------------------------------------------

    def watch(self, deployment_ids: Iterable[str], *, latency: bool,
              least_connections: Iterable[str]) -> None:
        """What the periodic sync covers (called when the groups change)."""
        self._watched = tuple(dict.fromkeys(deployment_ids))
        self._latency_groups = latency
        self._lc_groups = set(least_connections)

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._sync_loop())

    async def aclose(self) -> None:
        task, self._loop_task = self._loop_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._latency_flush is not None:
            self._latency_flush.cancel()
        pending = list(self._tasks)
        if pending:
            await asyncio.wait(pending, timeout=1.0)

    # -- cooldowns -------------------------------------------------------------

    def is_available(self, deployment_id: str, now: float) -> bool:
        until = self._cooling.get(deployment_id)
        if until is None:
            return True
        if now < until:
            return False
        del self._cooling[deployment_id]
        self._probation.add(deployment_id)
        return True

    def cooling_until(self, deployment_id: str) -> float | None:
        until = self._cooling.get(deployment_id)
        return until if until is not None and self._clock() < until else None

    def set_cooldown(self, deployment_id: str, until: float) -> None:
        """A cooldown learnt from Redis (a message, a sync, a report's answer)."""
        if until > self._clock() and self._cooling.get(deployment_id) != until:
            first = deployment_id not in self._cooling
            self._cooling[deployment_id] = until
            self._probation.discard(deployment_id)
            if first and self._on_cooldown is not None:
                self._on_cooldown(deployment_id, until)

    def report_failure(self, deployment_id: str) -> None:
        self._suspect.add(deployment_id)
        settings = self._settings
        threshold = 1 if deployment_id in self._probation else settings.cooldown_failures
        self.spawn(self._report(deployment_id, threshold))

    def report_success(self, deployment_id: str) -> None:
        self._probation.discard(deployment_id)
        if deployment_id in self._suspect:
            self._suspect.discard(deployment_id)
            key = deployment_failures(deployment_id)
            self.spawn(self._client.execute("DEL", key, key=key))

    async def _report(self, deployment_id: str, threshold: int) -> None:
        settings = self._settings
        now_ms = int(self._clock() * 1000)
        until_ms = await self._client.run_script(
            _REPORT_FAILURE,
            (deployment_failures(deployment_id), deployment_cooldown(deployment_id)),
            (threshold, max(1, int(settings.cooldown_window * 1000)),
             max(1, int(settings.cooldown_time * 1000)), now_ms, ROUTING_CHANNEL,
             deployment_id))
        if until_ms:
            self.set_cooldown(deployment_id, int(until_ms) / 1000)

    # -- latency ---------------------------------------------------------------

    def observe_latency(self, deployment_id: str, seconds: float) -> None:
        found = self._latency.get(deployment_id)
        if found is None:
            self._latency[deployment_id] = (seconds, 0.0)
        else:
            mean, variance = found
            delta = seconds - mean
            self._latency[deployment_id] = (
                mean + LATENCY_ALPHA * delta,
                (1 - LATENCY_ALPHA) * (variance + LATENCY_ALPHA * delta * delta))
        self._pending_latency += (deployment_id, f"{seconds:.6f}")
        if self._latency_flush is None:
            self._latency_flush = asyncio.get_running_loop().call_later(
                LATENCY_FLUSH_S, self._flush_latency)

    def p95(self, deployment_id: str) -> float | None:
        found = self._latency.get(deployment_id)
        return None if found is None else p95_of(*found)

    def _flush_latency(self) -> None:
        self._latency_flush = None
        pending, self._pending_latency = self._pending_latency, []
        if pending:
            key = routing_latency()
            self.spawn(self._client.run_script(
                _OBSERVE_LATENCY, (key,),
                (LATENCY_ALPHA, int(self._clock() * 1000), *pending)))

    async def _refresh_latency(self) -> None:
        key = routing_latency()
        raw = await self._client.execute("HGETALL", key, key=key)
        values: dict[str, dict[str, float]] = {}
        for index in range(0, len(raw or ()), 2):
            field = raw[index].decode() if isinstance(raw[index], bytes) else str(raw[index])
            deployment_id, _, part = field.rpartition(":")
            with contextlib.suppress(ValueError):
                values.setdefault(deployment_id, {})[part] = float(raw[index + 1])
        for deployment_id, parts in values.items():
            if "m" in parts:
                self._latency[deployment_id] = (parts["m"], parts.get("v", 0.0))

    # -- least connections -----------------------------------------------------

    async def pick_least_loaded(self, group: str, ordered_ids: list[str]) -> str:
        """Atomically: the least loaded of ``ordered_ids`` (ties: the first), counted."""
        now_ms = int(self._clock() * 1000)
        picked = await self._client.run_script(
            _PICK_LEAST, (least_connections_counts(group), least_connections_seen(group)),
            (now_ms, int(WORKER_STALE_S * 1000), self._worker, *ordered_ids))
        chosen = picked.decode() if isinstance(picked, bytes) else str(picked)
        key = (group, chosen)
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        return chosen

    def release(self, group: str, deployment_id: str) -> None:
        key = (group, deployment_id)
        left = self._in_flight.get(key, 0) - 1
        self._in_flight[key] = max(left, 0)
        counts = least_connections_counts(group)
        self.spawn(self._client.execute("HINCRBY", counts, f"{deployment_id}|{self._worker}",
                                        -1, key=counts))

    async def _sync_least_connections(self) -> None:
        now_ms = int(self._clock() * 1000)
        for group in self._lc_groups:
            counts = least_connections_counts(group)
            seen = least_connections_seen(group)
            mine = [(f"{deployment}|{self._worker}", count)
                    for (name, deployment), count in self._in_flight.items() if name == group]
            if mine:
                await self._client.execute("HSET", counts, *[x for pair in mine for x in pair],
                                           key=counts)
            await self._client.execute("HSET", seen, self._worker, now_ms, key=seen)

    # -- background ------------------------------------------------------------

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run ``work`` off the request path; a failure is logged, never raised."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            logger.debug("routing state update failed: %s: %s", type(exc).__name__, exc)

    async def _sync_cooldowns(self) -> None:
        for deployment_id in self._watched:
            key = deployment_cooldown(deployment_id)
            until_ms = await self._client.execute("GET", key, key=key)
            if until_ms is not None:
                self.set_cooldown(deployment_id, int(until_ms) / 1000)

    async def _sync_loop(self) -> None:
        last_sync = 0.0
        while True:
            try:
                if self._latency_groups:
                    await self._refresh_latency()
                now = time.monotonic()
                if now - last_sync >= SYNC_INTERVAL_S:
                    last_sync = now
                    await self._sync_cooldowns()
                    await self._sync_least_connections()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis blips: try again next round
                logger.debug("routing sync failed: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(LATENCY_REFRESH_S)

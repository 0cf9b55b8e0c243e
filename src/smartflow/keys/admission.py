"""Admitting a virtual key's call: budgets, rate limits and concurrency, exactly.

One Lua script checks and reserves, atomically, for each scope of the call
(its key, its team, its user):

1. the scope's record still has the revision the worker cached (else the
   worker refreshes and retries: a block, delete or change made anywhere is
   seen on the next call), and the key is not blocked;
2. reservations whose worker died are expired;
3. ``max_parallel_requests`` (live reservations), the budget (spend this
   period + held reservations + this call's worst case <= max budget), RPM
   (a sliding log of admissions in the last 60 s) and TPM (tokens per
   second over the last 60 s) all have room;
4. only then, the call's worst-case cost is held, its admission logged in
   the RPM window and its estimated prompt tokens in the TPM window.

After the call, a second script commits the actual cost, releases the rest
of the hold, corrects the TPM window to the actual tokens, and adds to the
spend ledger. It runs in the background: the caller does not wait for it.

On one Redis the scopes go to one script call (one round trip, atomic across
scopes). On a Redis Cluster each scope lives in its own slot, so each is
reserved by its own call, sent together; if one refuses, the holds already
granted are released. That can refuse a call that a single Redis would have
admitted (two calls racing for the last dollar of a team can both lose), but
it can never overshoot: every hold is atomic in its own slot.

Time comes from Redis (``TIME``), so workers and nodes with drifting clocks
still share one window.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from smartflow.keys.money import to_nano, to_usd
from smartflow.keys.periods import Period, PeriodClock, reset_header_value
from smartflow.keys.records import Limits
from smartflow.store.fast_client import Script, StoreClient
from smartflow.store.keyspace import SCOPE_KEY, SCOPE_TEAM, SCOPE_USER, ScopeKeys, ScopeKind

logger = logging.getLogger("smartflow.keys")

LEDGER_TTL_S = 400 * 86400
# A call running longer than this has left the TPM window its estimate went
# into; its correction would be subtracted from a window it was never in.
TPM_WINDOW_S = 60

_KEYS_PER_SCOPE = 6
_ARGS_PER_SCOPE = 9

_ADMIT = Script("""
local call_id = ARGV[1]
local hold_ms = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local sec = tonumber(t[1])
local n = #KEYS / 6
local out = {1}
for i = 0, n - 1 do
  local k = i * 6
  local a = 3 + i * 9
  local rec, resv, resx, spend = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local rpm, tpm = KEYS[k + 5], KEYS[k + 6]
  local state = redis.call('HMGET', rec, 'rev', 'blocked')
  if not state[1] then return {0, i, 'gone', 0, 0, 0} end
  if state[1] ~= ARGV[a] then return {0, i, 'stale', 0, 0, 0} end
  if ARGV[a + 1] == '1' and state[2] == '1' then return {0, i, 'blocked', 0, 0, 0} end
  local expired = redis.call('ZRANGEBYSCORE', resx, '-inf', now, 'LIMIT', 0, 100)
  for _, id in ipairs(expired) do
    local held = redis.call('HGET', resv, id)
    if held then
      redis.call('HDEL', resv, id)
      redis.call('HINCRBY', resv, '~total', -tonumber(held))
    end
    redis.call('ZREM', resx, id)
  end
  local parallel = tonumber(ARGV[a + 6])
  if parallel > 0 and redis.call('ZCARD', resx) >= parallel then
    return {0, i, 'parallel', parallel, 0, 1000}
  end
  local amount = tonumber(ARGV[a + 2])
  local max = tonumber(ARGV[a + 3])
  local budget_left = -1
  if max >= 0 then
    local spent = tonumber(redis.call('GET', spend) or '0')
    local held = tonumber(redis.call('HGET', resv, '~total') or '0')
    budget_left = max - spent - held
    if amount > budget_left then return {0, i, 'budget', max, budget_left, 0} end
    budget_left = budget_left - amount
  end
  local rpm_limit = tonumber(ARGV[a + 4])
  local rpm_left, rpm_reset = -1, 0
  if rpm_limit > 0 then
    redis.call('ZREMRANGEBYSCORE', rpm, '-inf', now - 60000)
    local used = redis.call('ZCARD', rpm)
    local oldest = redis.call('ZRANGE', rpm, 0, 0, 'WITHSCORES')
    if used >= rpm_limit then
      return {0, i, 'rpm', rpm_limit, 0, tonumber(oldest[2]) + 60000 - now}
    end
    rpm_left = rpm_limit - used - 1
    if oldest[2] then rpm_reset = tonumber(oldest[2]) + 60000 - now else rpm_reset = 60000 end
  end
  local tpm_limit = tonumber(ARGV[a + 5])
  local tpm_left, tpm_reset = -1, 0
  if tpm_limit > 0 then
    local buckets = redis.call('HGETALL', tpm)
    local used, oldest = 0, sec
    for j = 1, #buckets, 2 do
      local s = tonumber(buckets[j])
      if s <= sec - 60 then
        redis.call('HDEL', tpm, buckets[j])
      else
        used = used + tonumber(buckets[j + 1])
        if s < oldest then oldest = s end
      end
    end
    if used >= tpm_limit then
      return {0, i, 'tpm', tpm_limit, 0, (oldest + 60) * 1000 - now}
    end
    tpm_left = tpm_limit - used
    tpm_reset = (oldest + 60) * 1000 - now
  end
  out[#out + 1] = budget_left
  out[#out + 1] = rpm_left
  out[#out + 1] = rpm_reset
  out[#out + 1] = tpm_left
  out[#out + 1] = tpm_reset
end
for i = 0, n - 1 do
  local k = i * 6
  local a = 3 + i * 9
  redis.call('ZADD', KEYS[k + 3], now + hold_ms, call_id)
  if ARGV[a + 2] ~= '0' then
    redis.call('HSET', KEYS[k + 2], call_id, ARGV[a + 2])
    redis.call('HINCRBY', KEYS[k + 2], '~total', ARGV[a + 2])
  end
  if tonumber(ARGV[a + 4]) > 0 then
    redis.call('ZADD', KEYS[k + 5], now, call_id)
    redis.call('PEXPIRE', KEYS[k + 5], 61000)
  end
  if tonumber(ARGV[a + 5]) > 0 and ARGV[a + 7] ~= '0' then
    redis.call('HINCRBY', KEYS[k + 6], sec, ARGV[a + 7])
    redis.call('EXPIRE', KEYS[k + 6], 120)
  end
end
return out
""")

_RELEASE = Script("""
for i = 0, #KEYS / 2 - 1 do
  local resv, resx = KEYS[i * 2 + 1], KEYS[i * 2 + 2]
  local held = redis.call('HGET', resv, ARGV[1])
  if held then
    redis.call('HDEL', resv, ARGV[1])
    redis.call('HINCRBY', resv, '~total', -tonumber(held))
  end
  redis.call('ZREM', resx, ARGV[1])
end
return 1
""")

# KEYS per scope: resv, resx, spend, tpm, ledger. ARGV: call id, model,
# actual nano-USD, TPM correction, prompt tokens, completion tokens, counts
# a request ("1"/"0"), then per scope: spend key TTL (0: none), has TPM.
_COMMIT = Script("""
local sec = tonumber(redis.call('TIME')[1])
local call_id, model, actual = ARGV[1], ARGV[2], ARGV[3]
for i = 0, #KEYS / 5 - 1 do
  local k = i * 5
  local a = 8 + i * 2
  local resv, resx, spend, tpm, ledger = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4],
    KEYS[k + 5]
  local held = redis.call('HGET', resv, call_id)
  if held then
    redis.call('HDEL', resv, call_id)
    redis.call('HINCRBY', resv, '~total', -tonumber(held))
  end
  redis.call('ZREM', resx, call_id)
  if actual ~= '0' then
    redis.call('INCRBY', spend, actual)
    if ARGV[a] ~= '0' then redis.call('EXPIRE', spend, ARGV[a]) end
  end
  if ARGV[a + 1] == '1' and ARGV[4] ~= '0' then
    redis.call('HINCRBY', tpm, sec, ARGV[4])
    redis.call('EXPIRE', tpm, 120)
  end
  if ARGV[7] == '1' then
    redis.call('HINCRBY', ledger, model .. '|usd', actual)
    redis.call('HINCRBY', ledger, model .. '|req', 1)
    redis.call('HINCRBY', ledger, model .. '|pt', ARGV[5])
    redis.call('HINCRBY', ledger, model .. '|ct', ARGV[6])
    redis.call('EXPIRE', ledger, 34560000)
  end
end
return 1
""")


@dataclass(frozen=True, slots=True)
class Scope:
    """One budget holder of a call: its key, its team or its user."""

    kind: ScopeKind
    id: str
    rev: int
    limits: Limits
    keys: ScopeKeys

    @classmethod
    def of(cls, kind: ScopeKind, scope_id: str, rev: int, limits: Limits) -> Scope:
        return cls(kind, scope_id, rev, limits, ScopeKeys(kind, scope_id))


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the script said no, and for which scope."""

    scope: Scope
    reason: str  # gone, stale, blocked, parallel, budget, rpm, tpm
    limit: int
    remaining: int
    retry_ms: int


@dataclass(slots=True)
class Grant:
    """What a call holds; released or committed exactly once."""

    call_id: str
    scopes: tuple[Scope, ...]
    amount_nano: int
    estimated_tokens: int
    started_s: float
    headers: list[tuple[str, str]] = field(default_factory=list)
    settled: bool = False


def worst_case_nano(prices: Any, prompt_tokens: int, max_output_tokens: int) -> int:
    """The most a call can cost: every prompt token and every allowed output token."""
    usd = (prices.per_request + prompt_tokens * prices.input_per_mtok / 1e6
           + max_output_tokens * prices.output_per_mtok / 1e6)
    return max(0, math.ceil(usd * 1e9 - 1e-6))


class Admission:
    """Reserve, commit and release against the scopes of a call."""

    def __init__(self, client: StoreClient, clock: PeriodClock, *, cluster: bool,
                 hold_s: float) -> None:
        self._client = client
        self._clock = clock
        self._cluster = cluster
        self._hold_ms = str(int(hold_s * 1000))
        self._pending: set[asyncio.Task[None]] = set()

    async def reserve(self, call_id: str, scopes: Sequence[Scope], amount_nano: int,
                      estimated_tokens: int, started_s: float,
                      check_blocked: Scope | None = None) -> Grant | Refusal:
        now = self._clock.now()
        periods = [self._clock.period(scope.limits.budget_period, now) for scope in scopes]
        if not self._cluster or len(scopes) == 1:
            reply = await self._run_admit(call_id, scopes, periods, amount_nano,
                                          estimated_tokens, check_blocked)
            if isinstance(reply, Refusal):
                return reply
            replies = [reply]
        else:
            results = await asyncio.gather(*(
                self._run_admit(call_id, (scope,), (period,), amount_nano, estimated_tokens,
                                check_blocked)
                for scope, period in zip(scopes, periods, strict=True)),
                return_exceptions=True)
            granted = [scope for scope, result in zip(scopes, results, strict=True)
                       if isinstance(result, list)]
            failure = next((r for r in results if not isinstance(r, list)), None)
            if failure is not None:
                if granted:
                    await self._release(call_id, granted)
                if isinstance(failure, BaseException):
                    raise failure
                return failure
            replies = [r for r in results if isinstance(r, list)]
        grant = Grant(call_id, tuple(scopes), amount_nano, estimated_tokens, started_s)
        grant.headers = _grant_headers(scopes, periods, replies, now)
        return grant

    async def _run_admit(self, call_id: str, scopes: Sequence[Scope],
                         periods: Sequence[Period], amount_nano: int, estimated_tokens: int,
                         check_blocked: Scope | None) -> list[Any] | Refusal:
        keys: list[str] = []
        args: list[str | int] = [call_id, self._hold_ms]
        amount = str(amount_nano)
        tokens = str(estimated_tokens)
        for scope, period in zip(scopes, periods, strict=True):
            scope_keys = scope.keys
            keys += (scope_keys.rec, scope_keys.resv, scope_keys.resx,
                     scope_keys.spend(period.id), scope_keys.rpm, scope_keys.tpm)
            limits = scope.limits
            args += (str(scope.rev), "1" if scope is check_blocked else "0", amount,
                     str(to_nano(limits.max_budget)) if limits.max_budget is not None else "-1",
                     str(limits.rpm_limit or 0), str(limits.tpm_limit or 0),
                     str(limits.max_parallel_requests or 0), tokens, "0")
        reply = await self._client.run_script(_ADMIT, keys, args)
        if reply[0] == 1:
            return list(reply[1:])
        index, reason, limit, remaining, retry_ms = reply[1:6]
        reason = reason.decode() if isinstance(reason, bytes) else str(reason)
        return Refusal(scopes[int(index)], reason, int(limit), int(remaining), int(retry_ms))

    async def _release(self, call_id: str, scopes: Sequence[Scope]) -> None:
        if self._cluster:
            await asyncio.gather(*(
                self._client.run_script(_RELEASE, [s.keys.resv, s.keys.resx], [call_id])
                for s in scopes))
        else:
            keys = [name for s in scopes for name in (s.keys.resv, s.keys.resx)]
            await self._client.run_script(_RELEASE, keys, [call_id])

    def settle_later(self, grant: Grant, *, model: str, cost_usd: float, prompt_tokens: int,
                     completion_tokens: int, counts_request: bool, elapsed_s: float) -> None:
        """Commit the actual cost and release the hold, without the caller waiting."""
        if grant.settled:
            return
        grant.settled = True
        task = asyncio.get_running_loop().create_task(self._settle(
            grant, model, to_nano(cost_usd), prompt_tokens, completion_tokens, counts_request,
            elapsed_s))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _settle(self, grant: Grant, model: str, actual_nano: int, prompt_tokens: int,
                      completion_tokens: int, counts_request: bool, elapsed_s: float) -> None:
        now = self._clock.now()
        day = self._clock.day_id(now)
        used_tokens = prompt_tokens + completion_tokens
        correction = (used_tokens - grant.estimated_tokens if elapsed_s < TPM_WINDOW_S
                      else used_tokens)
        base_args = [grant.call_id, model or "-", str(actual_nano), str(correction),
                     str(prompt_tokens), str(completion_tokens), "1" if counts_request else "0"]
        groups = ([grant.scopes] if not self._cluster
                  else [(scope,) for scope in grant.scopes])
        try:
            for group in groups:
                keys: list[str] = []
                args = list(base_args)
                for scope in group:
                    period = self._clock.period(scope.limits.budget_period, now)
                    scope_keys = scope.keys
                    keys += (scope_keys.resv, scope_keys.resx, scope_keys.spend(period.id),
                             scope_keys.tpm, scope_keys.ledger(day))
                    args += (str(period.key_ttl_s(now)),
                             "1" if scope.limits.tpm_limit else "0")
                await self._client.run_script(_COMMIT, keys, args)
        except Exception as exc:  # noqa: BLE001 - the hold expires by itself
            logger.warning("could not commit spend of call %s (%s: %s); its hold expires "
                           "after the reservation TTL", grant.call_id, type(exc).__name__, exc)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait for commits still in flight (worker shutdown)."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout_s)


def _duration(ms: int) -> str:
    """OpenAI's reset format: ``1s``, ``6m0s``, ``20ms``."""
    ms = max(0, int(ms))
    if ms < 1000:
        return f"{ms}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest}s"


def _grant_headers(scopes: Sequence[Scope], periods: Sequence[Period],
                   replies: Sequence[Sequence[Any]], now: datetime) -> list[tuple[str, str]]:
    """Rate-limit and budget headers from the tightest scope of each kind."""
    values = [v for reply in replies for v in reply]
    headers: list[tuple[str, str]] = []
    best_requests: tuple[int, int, int] | None = None
    best_tokens: tuple[int, int, int] | None = None
    best_budget: tuple[int, float, Period] | None = None
    for index, (scope, period) in enumerate(zip(scopes, periods, strict=True)):
        budget_left, rpm_left, rpm_reset, tpm_left, tpm_reset = values[index * 5:index * 5 + 5]
        limits = scope.limits
        if limits.rpm_limit and rpm_left >= 0 and (
                best_requests is None or rpm_left < best_requests[1]):
            best_requests = (limits.rpm_limit, int(rpm_left), int(rpm_reset))
        if limits.tpm_limit and tpm_left >= 0 and (
                best_tokens is None or tpm_left < best_tokens[1]):
            best_tokens = (limits.tpm_limit, int(tpm_left), int(tpm_reset))
        if limits.max_budget is not None and budget_left >= 0 and (
                best_budget is None or budget_left < best_budget[0]):
            best_budget = (int(budget_left), limits.max_budget, period)
    if best_requests is not None:
        headers += [("x-ratelimit-limit-requests", str(best_requests[0])),
                    ("x-ratelimit-remaining-requests", str(best_requests[1])),
                    ("x-ratelimit-reset-requests", _duration(best_requests[2]))]
    if best_tokens is not None:
        headers += [("x-ratelimit-limit-tokens", str(best_tokens[0])),
                    ("x-ratelimit-remaining-tokens", str(best_tokens[1])),
                    ("x-ratelimit-reset-tokens", _duration(best_tokens[2]))]
    if best_budget is not None:
        remaining, limit, period = best_budget
        headers += budget_headers(limit, to_usd(remaining), period, now)
    return headers


def budget_headers(limit_usd: float, remaining_usd: float, period: Period,
                   now: datetime) -> list[tuple[str, str]]:
    return [("x-smartflow-budget-limit", _usd(limit_usd)),
            ("x-smartflow-budget-remaining", _usd(max(0.0, remaining_usd))),
            ("x-smartflow-budget-reset", reset_header_value(period, now))]


def refusal_headers(refusal: Refusal, clock: PeriodClock) -> list[tuple[str, str]]:
    """The headers of a 429: Retry-After, and the refused limit's own trio."""
    retry_s = max(1, math.ceil(refusal.retry_ms / 1000)) if refusal.retry_ms > 0 else None
    reason = refusal.reason
    headers: list[tuple[str, str]] = []
    if reason == "budget":
        now = clock.now()
        period = clock.period(refusal.scope.limits.budget_period, now)
        headers += budget_headers(to_usd(refusal.limit), to_usd(refusal.remaining), period, now)
        left = period.seconds_left(now)
        if left is not None:
            retry_s = max(1, math.ceil(left))
    elif reason == "rpm":
        headers += [("x-ratelimit-limit-requests", str(refusal.limit)),
                    ("x-ratelimit-remaining-requests", "0"),
                    ("x-ratelimit-reset-requests", _duration(refusal.retry_ms))]
    elif reason == "tpm":
        headers += [("x-ratelimit-limit-tokens", str(refusal.limit)),
                    ("x-ratelimit-remaining-tokens", "0"),
                    ("x-ratelimit-reset-tokens", _duration(refusal.retry_ms))]
    if retry_s is not None:
        headers.append(("retry-after", str(retry_s)))
    return headers


def _usd(value: float) -> str:
    return f"{value:.9f}".rstrip("0").rstrip(".") or "0"


SCOPE_NAMES = {SCOPE_KEY: "key", SCOPE_TEAM: "team", SCOPE_USER: "user"}

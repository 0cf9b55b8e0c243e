"""Admitting a virtual key's call: budgets, rate limits and concurrency, exactly.

One Lua script checks and holds, atomically, for each scope of a call (its
key, its team, its user):

1. the scope's record still has the revision the worker cached (else the
   worker refreshes and retries: a block, delete or change made anywhere is
   seen on the next call), and the key is not blocked;
2. holds of calls whose worker died are expired (holds are kept per
   admission minute, so a minute older than the reservation TTL is dropped
   whole);
3. ``max_parallel_requests`` (calls in flight), the budget (spend this
   period + held + this call's worst case <= max budget), RPM and TPM
   (per-second counts over the last 60 s) all have room;
4. only then, the call's worst-case cost is held and it is counted in the
   rate windows.

After the call a second script commits the actual cost, releases the hold,
corrects the TPM window to the actual tokens, and adds to the spend ledger.

Both run in batches: every admission a worker asks for in one event-loop
turn goes to Redis as one script call (one round trip, one script run, the
scopes' state read and written once for the batch), and settlements are
gathered after the answers went out (while a worker is busy, one script per
SETTLE_INTERVAL_S at most). Far from its limits a scope is served from a
lease: room held in Redis for many calls, renewed in the background before it
runs out (see ``Lease``). The caller never waits for a commit. That is what
keeps a virtual key within a few percent of the master key's throughput: per
call, Redis does a few table operations inside one script instead of a dozen
commands.

On one Redis all scopes go to the same script call, atomic across scopes.
On a Redis Cluster each scope lives in its own slot, so each is held by its
own call, sent together; if one refuses, what the others granted is given
back. That can refuse a call that one Redis would have admitted (two calls
racing for a team's last dollar can both lose), but it can never overshoot:
every hold is atomic in its own slot.

Time comes from Redis (``TIME``), so workers and nodes whose clocks drift
still share one window.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from smartflow.keys.money import NANO_PER_USD, to_nano, to_usd
from smartflow.keys.periods import Period, PeriodClock, reset_header_value
from smartflow.keys.records import Limits
from smartflow.store.fast_client import Script, StoreClient
from smartflow.store.keyspace import SCOPE_KEY, SCOPE_TEAM, SCOPE_USER, ScopeKeys, ScopeKind

logger = logging.getLogger("smartflow.keys")

LEDGER_TTL_S = 400 * 86400
# A lease is room for this many calls like the one that asked for it, taken
# only while the limit has this many leases' worth of room left; it goes back
# after LEASE_S whatever remains of it. Once LEASE_RENEW_AT of it is used the
# next one is asked for in the background (no call waits for it), sized to
# last about LEASE_TARGET_S at the rate this one was used, within
# [LEASE_CALLS, LEASE_MAX_CALLS]: a busy worker renews a few times a second.
LEASE_CALLS = 256
LEASE_MAX_CALLS = 4096
LEASE_TARGET_S = 0.25
LEASE_RENEW_AT = 0.75
LEASE_HEADROOM = 16
LEASE_S = 1.0
HEADER_REFRESH_CALLS = 16
# Settlements wait SETTLE_DELAY_S to travel together: the answers have gone
# out already. While a worker is busy (its last settle carried at least
# SETTLE_BUSY_CALLS calls) one settle script starts at most every
# SETTLE_INTERVAL_S and settles every call that ended meanwhile: each script
# run costs the worker a write, a wake-up and a reply to parse, and Redis a
# script run, whatever its size. A hold is released (and spend shows in the
# admin API) at most that much later; it never lets a budget overshoot. A quiet
# worker settles each call SETTLE_DELAY_S after it ends.
SETTLE_DELAY_S = 0.002
SETTLE_INTERVAL_S = 0.05
SETTLE_BUSY_CALLS = 8
# Admissions per script call at most: a bound on one script's run time in
# Redis (others wait while it runs).
MAX_BATCH = 256
# A call running longer than this has left the TPM window its estimate went
# into; its correction would be subtracted from a window it was never in.
TPM_WINDOW_S = 60

# KEYS, per scope: rec, st, rpm, tpm.
# ARGV: scope count, hold TTL (s); per scope: rev, check blocked ("1"/"0"),
# period id, max budget (nano, -1: none), rpm, tpm, parallel (0: none); then
# the request count; per request: amount (nano), tokens, calls (1, or a
# lease's size: RPM counts that many, and TPM must fit the tokens whole), its
# scope count, and the 1-based indexes of its scopes.
# Reply, per request: {1, minute, second, then per scope of the request:
# budget left, rpm left, rpm reset ms, tpm left, tpm reset ms} (-1: no such
# limit), or {0, scope index, reason, limit, remaining, retry ms}.
_ADMIT = Script("""
local t = redis.call('TIME')
local sec = tonumber(t[1])
local ms = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local minute = math.floor(sec / 60)
local ttl_min = math.ceil(tonumber(ARGV[2]) / 60)
local function window(key, limit)
  local w = {used = 0, min = sec, cur = 0}
  if limit <= 0 then return w end
  local r = redis.call('HMGET', key, 'total', 'min', 'b:' .. sec)
  local oldest = tonumber(r[2] or sec)
  if sec - oldest >= 60 then
    redis.call('DEL', key)
    return w
  end
  local used = tonumber(r[1] or '0')
  while oldest <= sec - 60 do
    local field = 'b:' .. oldest
    local v = redis.call('HGET', key, field)
    if v then
      used = used - tonumber(v)
      redis.call('HDEL', key, field)
    end
    oldest = oldest + 1
  end
  w.used, w.min, w.cur = used, oldest, tonumber(r[3] or '0')
  return w
end
local scopes = {}
local a = 3
for s = 1, tonumber(ARGV[1]) do
  local k = (s - 1) * 4
  local sc = {st = KEYS[k + 2], rpm_key = KEYS[k + 3], tpm_key = KEYS[k + 4],
    pid = ARGV[a + 2], max = tonumber(ARGV[a + 3]), rpm = tonumber(ARGV[a + 4]),
    tpm = tonumber(ARGV[a + 5]), parallel = tonumber(ARGV[a + 6])}
  local r = redis.call('HMGET', KEYS[k + 1], 'rev', 'blocked')
  if not r[1] then sc.bad = 'gone'
  elseif r[1] ~= ARGV[a] then sc.bad = 'stale'
  elseif ARGV[a + 1] == '1' and r[2] == '1' then sc.bad = 'blocked'
  else
    local st = redis.call('HMGET', sc.st, 'pid', 'spend', 'held', 'inflight', 'hmin',
      'hb:' .. minute, 'hn:' .. minute)
    sc.new_period = st[1] ~= sc.pid
    sc.spend = sc.new_period and 0 or tonumber(st[2] or '0')
    sc.held = tonumber(st[3] or '0')
    sc.inflight = tonumber(st[4] or '0')
    local hmin = tonumber(st[5] or minute)
    if sc.inflight <= 0 and sc.held <= 0 then hmin = minute end
    local steps = 0
    while hmin <= minute - ttl_min and steps < 256 do
      local b = redis.call('HMGET', sc.st, 'hb:' .. hmin, 'hn:' .. hmin)
      if b[1] or b[2] then
        sc.held = sc.held - tonumber(b[1] or '0')
        sc.inflight = sc.inflight - tonumber(b[2] or '0')
        redis.call('HDEL', sc.st, 'hb:' .. hmin, 'hn:' .. hmin)
      end
      hmin = hmin + 1
      steps = steps + 1
    end
    sc.hmin = hmin
    sc.hb = tonumber(st[6] or '0')
    sc.hn = tonumber(st[7] or '0')
    sc.r = window(sc.rpm_key, sc.rpm)
    sc.t = window(sc.tpm_key, sc.tpm)
  end
  scopes[s] = sc
  a = a + 7
end
local out = {}
local count = tonumber(ARGV[a])
a = a + 1
for i = 1, count do
  local amount, tokens, calls = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local n = tonumber(ARGV[a + 3])
  local refusal = nil
  for j = 1, n do
    local index = tonumber(ARGV[a + 3 + j])
    local sc = scopes[index]
    if sc.bad then
      refusal = {0, index, sc.bad, 0, 0, 0}
    elseif sc.parallel > 0 and sc.inflight >= sc.parallel then
      refusal = {0, index, 'parallel', sc.parallel, 0, 1000}
    elseif sc.max >= 0 and amount > sc.max - sc.spend - sc.held then
      refusal = {0, index, 'budget', sc.max, sc.max - sc.spend - sc.held, 0}
    elseif sc.rpm > 0 and sc.r.used + calls > sc.rpm then
      refusal = {0, index, 'rpm', sc.rpm, 0, (sc.r.min + 60) * 1000 - ms}
    elseif sc.tpm > 0 and (sc.t.used >= sc.tpm or (calls > 1 and sc.t.used + tokens > sc.tpm)) then
      refusal = {0, index, 'tpm', sc.tpm, 0, (sc.t.min + 60) * 1000 - ms}
    end
    if refusal then break end
  end
  if refusal then
    out[i] = refusal
  else
    local res = {1, minute, sec}
    for j = 1, n do
      local sc = scopes[tonumber(ARGV[a + 3 + j])]
      sc.held = sc.held + amount
      sc.hb = sc.hb + amount
      sc.inflight = sc.inflight + 1
      sc.hn = sc.hn + 1
      sc.used = true
      local budget_left, rpm_left, tpm_left = -1, -1, -1
      if sc.max >= 0 then budget_left = sc.max - sc.spend - sc.held end
      if sc.rpm > 0 then
        sc.r.used = sc.r.used + calls
        sc.r.cur = sc.r.cur + calls
        rpm_left = sc.rpm - sc.r.used
      end
      if sc.tpm > 0 then
        tpm_left = sc.tpm - sc.t.used
        sc.t.used = sc.t.used + tokens
        sc.t.cur = sc.t.cur + tokens
      end
      res[#res + 1] = budget_left
      res[#res + 1] = rpm_left
      res[#res + 1] = (sc.r.min + 60) * 1000 - ms
      res[#res + 1] = tpm_left
      res[#res + 1] = (sc.t.min + 60) * 1000 - ms
    end
    out[i] = res
  end
  a = a + 4 + n
end
for s = 1, #scopes do
  local sc = scopes[s]
  if not sc.bad then
    if sc.used or sc.new_period then
      redis.call('HSET', sc.st, 'pid', sc.pid, 'spend', sc.spend, 'held', sc.held,
        'inflight', sc.inflight, 'hmin', sc.hmin, 'hb:' .. minute, sc.hb,
        'hn:' .. minute, sc.hn)
    end
    if sc.rpm > 0 and sc.used then
      redis.call('HSET', sc.rpm_key, 'total', sc.r.used, 'min', sc.r.min, 'b:' .. sec, sc.r.cur)
      redis.call('EXPIRE', sc.rpm_key, 61)
    end
    if sc.tpm > 0 and sc.used then
      redis.call('HSET', sc.tpm_key, 'total', sc.t.used, 'min', sc.t.min, 'b:' .. sec, sc.t.cur)
      redis.call('EXPIRE', sc.tpm_key, 61)
    end
  end
end
return out
""")

# KEYS, per scope: st, rpm, tpm, ledger. ARGV: scope count; per scope: period
# id, spend to add (nano), TPM correction (tokens, now), then the holds to
# release as a count and (minute, nano, calls) triples, then RPM/TPM counts
# to take back (a refused call's, on a cluster) as a count and (second,
# requests, tokens) triples, then the ledger rows as a count and (model,
# nano, requests, prompt tokens, completion tokens) tuples.
_SETTLE = Script("""
local sec = tonumber(redis.call('TIME')[1])
local function take_back(key, second, amount)
  if amount == 0 then return end
  local r = redis.call('HMGET', key, 'min', 'b:' .. second)
  if r[1] and tonumber(r[1]) <= second and r[2] then
    redis.call('HINCRBY', key, 'b:' .. second, -amount)
    redis.call('HINCRBY', key, 'total', -amount)
  end
end
local a = 2
for s = 1, tonumber(ARGV[1]) do
  local k = (s - 1) * 4
  local st, rpm, tpm, ledger = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local pid, add, correction = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  local cur = redis.call('HMGET', st, 'pid', 'spend', 'held', 'inflight', 'hmin')
  local spend = (cur[1] == pid) and tonumber(cur[2] or '0') or 0
  local held, inflight = tonumber(cur[3] or '0'), tonumber(cur[4] or '0')
  local hmin = tonumber(cur[5] or '0')
  local fields = {}
  for _ = 1, tonumber(ARGV[a]) do
    local m, nano, calls = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    a = a + 3
    if m >= hmin then  -- else that minute's holds already expired, and were dropped
      local b = redis.call('HMGET', st, 'hb:' .. m, 'hn:' .. m)
      local hb = tonumber(b[1] or '0') - nano
      local hn = tonumber(b[2] or '0') - calls
      held = held - nano
      inflight = inflight - calls
      if hn <= 0 then
        redis.call('HDEL', st, 'hb:' .. m, 'hn:' .. m)
      else
        fields[#fields + 1] = 'hb:' .. m
        fields[#fields + 1] = hb
        fields[#fields + 1] = 'hn:' .. m
        fields[#fields + 1] = hn
      end
    end
  end
  a = a + 1
  if held < 0 then held = 0 end
  if inflight < 0 then inflight = 0 end
  redis.call('HSET', st, 'pid', pid, 'spend', spend + add, 'held', held,
    'inflight', inflight, unpack(fields))
  for _ = 1, tonumber(ARGV[a]) do
    local second = tonumber(ARGV[a + 1])
    take_back(rpm, second, tonumber(ARGV[a + 2]))
    take_back(tpm, second, tonumber(ARGV[a + 3]))
    a = a + 3
  end
  a = a + 1
  if correction ~= 0 and redis.call('EXISTS', tpm) == 1 then
    redis.call('HINCRBY', tpm, 'b:' .. sec, correction)
    redis.call('HINCRBY', tpm, 'total', correction)
    redis.call('EXPIRE', tpm, 61)
  end
  local rows = tonumber(ARGV[a])
  for _ = 1, rows do
    local model = ARGV[a + 1]
    redis.call('HINCRBY', ledger, model .. '|usd', ARGV[a + 2])
    redis.call('HINCRBY', ledger, model .. '|req', ARGV[a + 3])
    redis.call('HINCRBY', ledger, model .. '|pt', ARGV[a + 4])
    redis.call('HINCRBY', ledger, model .. '|ct', ARGV[a + 5])
    a = a + 5
  end
  if rows > 0 then redis.call('EXPIRE', ledger, 34560000) end
  a = a + 1
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
    keys: ScopeKeys = field(compare=False)
    # Which scope this is, whatever revision a worker holds of it: a batch
    # must send each scope's state once, or its writes would clash.
    ref: tuple[str, str] = field(compare=False, default=("", ""))
    # What the call path asks of the limits on every call, worked out once.
    needs_cost: bool = field(compare=False, default=False)
    needs_tokens: bool = field(compare=False, default=False)
    rpm_text: str = field(compare=False, default="")
    tpm_text: str = field(compare=False, default="")

    @classmethod
    def of(cls, kind: ScopeKind, scope_id: str, rev: int, limits: Limits) -> Scope:
        return cls(kind, scope_id, rev, limits, ScopeKeys(kind, scope_id), (kind, scope_id),
                   limits.max_budget is not None, bool(limits.tpm_limit),
                   str(limits.rpm_limit or ""), str(limits.tpm_limit or ""))


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

    scopes: tuple[Scope, ...]
    amount_nano: int
    estimated_tokens: int
    # per scope: the minute its hold is filed under and the second it was
    # counted in (each from its own Redis node's clock on a cluster)
    marks: tuple[tuple[int, int], ...]
    headers: list[tuple[str, str]] = field(default_factory=list)
    settled: bool = False
    leases: tuple[Lease, ...] = ()  # the leases it was served from, if any
    lease_view: tuple[int, int, int, int, int] = (-1, -1, 0, -1, 0)  # for a lease's grant


@dataclass(slots=True, eq=False)
class Lease:
    """Room a worker holds in Redis for a scope, to admit calls without a round trip.

    Taken only while the scope's limits have ample room (see ``LEASE_HEADROOM``):
    near a limit every call is admitted by the script itself. The room is a
    real hold (and a real RPM/TPM count), so a lease can make another worker
    refuse early but never lets a scope overshoot.
    """

    scope: Scope
    nano_left: int
    calls_left: int | None  # None: the scope has no RPM limit
    tokens_left: int | None  # None: no TPM limit
    minute: int
    second: int
    expires_s: float  # monotonic
    view: tuple[int, int, int, int, int]  # the script's figures when it was granted
    size: int = LEASE_CALLS  # calls it was granted for
    granted_s: float = 0.0  # monotonic
    outstanding: int = 0  # calls served from it not yet settled
    returned: bool = False
    served: int = 0
    headers: list[tuple[str, str]] | None = None  # its calls' rate-limit headers, reused
    # What a call served from it alone holds, built once: its grant's marks and leases.
    marks: tuple[tuple[int, int], ...] = ()
    alone: tuple[Lease, ...] = ()
    renew_at: int = 0  # served calls at which the next lease is asked for
    tokens_granted: int = 0  # TPM tokens it took (its ``tokens_left`` when granted)
    # What its calls that ended since the last settle owe, summed as they end
    # (``Admission.settle_later``): the next settle adds it to the scope's.
    spend: int = 0  # nano, actual cost
    released: int = 0  # nano, their worst cases: back into the lease's minute
    correction: int = 0  # TPM tokens used minus estimated
    ledger: dict[str, list[int]] = field(default_factory=dict)  # model -> [nano, req, pt, ct]
    owes: bool = False  # in the admission's list of leases to settle

    def __post_init__(self) -> None:
        self.marks = ((self.minute, self.second),)
        self.alone = (self,)
        self.renew_at = max(1, int(self.size * LEASE_RENEW_AT))
        self.tokens_granted = self.tokens_left or 0

    def fits(self, amount: int, tokens: int) -> bool:
        """Whether one more call of ``amount`` and ``tokens`` fits in what is left."""
        calls_left, tokens_left = self.calls_left, self.tokens_left
        return not (self.nano_left < amount or (calls_left is not None and calls_left < 1)
                    or (tokens_left is not None and tokens_left < tokens))

    def draw(self, amount: int, tokens: int) -> None:
        """One call's share out of the lease (which ``fits`` it)."""
        self.nano_left -= amount
        self.outstanding += 1
        self.served += 1
        if self.calls_left is not None:
            self.calls_left -= 1
        if self.tokens_left is not None:
            self.tokens_left -= tokens


def _next_size(lease: Lease) -> int:
    """The calls the next lease is for: what this one served per second, times
    LEASE_TARGET_S."""
    elapsed = max(time.monotonic() - lease.granted_s, 1e-3)
    return min(LEASE_MAX_CALLS, max(LEASE_CALLS, int(lease.served / elapsed * LEASE_TARGET_S)))


def _roomy(limits: Limits, room: tuple[int, int, int], size: int, size_nano: int,
           size_tokens: int, headroom: int = LEASE_HEADROOM) -> bool:
    """Whether a scope with ``room`` (budget in nano, requests, tokens left; -1
    where it has no such limit) has ``headroom`` times a lease of ``size``
    calls (``size_nano``, ``size_tokens``): one more than a lease takes.
    A scope with a cap on calls in flight is never leased."""
    budget, calls, tokens = room
    return not (limits.max_parallel_requests
                or (limits.max_budget is not None and budget < headroom * size_nano)
                or (limits.rpm_limit and calls < headroom * size)
                or (limits.tpm_limit and tokens < headroom * size_tokens))


def worst_case_nano(prices: Any, prompt_tokens: int, max_output_tokens: int) -> int:
    """The most a call can cost: every prompt token and every allowed output token."""
    usd = (prices.per_request + prompt_tokens * prices.input_per_mtok / 1e6
           + max_output_tokens * prices.output_per_mtok / 1e6)
    return max(0, math.ceil(usd * 1e9 - 1e-6))


@dataclass(slots=True)
class _Ask:
    scopes: Sequence[Scope]
    amount: int
    tokens: int
    check_blocked: Scope | None
    future: asyncio.Future[Grant | Refusal]
    calls: int = 1  # a lease asks for many at once


@dataclass(slots=True)
class AdmissionCounts:
    """What admission did since the metrics last took these (plain ints: the
    calls bump them, ``telemetry.keys_metrics`` exports them once a second)."""

    leased: int = 0  # calls admitted from leases (counted when a lease goes back)
    by_redis: int = 0  # calls admitted by the script itself
    leases: int = 0
    refused: dict[tuple[str, str], int] = field(default_factory=dict)  # (scope, reason)

    def take(self) -> AdmissionCounts:
        taken = AdmissionCounts(self.leased, self.by_redis, self.leases, self.refused)
        self.leased = self.by_redis = self.leases = 0
        self.refused = {}
        return taken


# Refusals a caller sees (the others make the worker refresh its records and retry).
_COUNTED_REFUSALS = frozenset({"budget", "rpm", "tpm", "parallel", "blocked"})


@dataclass(slots=True)
class _Settlement:
    """What one scope gets back and is charged in one settle batch."""

    spend: int = 0
    correction: int = 0
    holds: dict[int, list[int]] = field(default_factory=dict)  # minute -> [nano, calls]
    take_back: dict[int, list[int]] = field(default_factory=dict)  # second -> [req, tokens]
    ledger: dict[str, list[int]] = field(default_factory=dict)  # model -> [nano, req, pt, ct]


class Admission:
    """Reserve, commit and release against the scopes of a call, in batches."""

    def __init__(self, client: StoreClient, clock: PeriodClock, *, cluster: bool,
                 hold_s: float) -> None:
        self._client = client
        self._clock = clock
        self._cluster = cluster
        self._hold_s = str(math.ceil(hold_s))
        self._asks: list[_Ask] = []
        self._settlements: dict[tuple[str, str], tuple[Scope, _Settlement]] = {}
        # calls admitted by Redis over since the last settle: (grant, model,
        # cost, tokens in and out, whether it counts as a request, its
        # duration), see settle_later
        self._ended: list[tuple[Grant, str, float, int, int, bool, float]] = []
        self._owing: list[Lease] = []  # leases with calls that ended since the last settle
        self._ended_count = 0  # calls that ended since the last settle
        self._flush_scheduled = False
        self._settle_scheduled = False
        self._last_settle_s = -math.inf  # loop time the last settle script started
        self._busy = False  # the last settle carried SETTLE_BUSY_CALLS calls or more
        # One batch of each kind in flight at a time: what arrives meanwhile
        # goes in the next batch (an admission's the moment the current one
        # returns, a settlement's after SETTLE_INTERVAL_S). At low load a call
        # goes alone, at once; under load batches grow by themselves, and with
        # them the calls each script run serves.
        self._admitting = False
        self._settling = False
        self._tasks: set[asyncio.Task[Any]] = set()
        # Leases are used only while this worker hears of every change to the
        # records (``keys.revocations``): a lease skips the revision check.
        self._leasing = False
        self._leases: dict[tuple[str, str], Lease] = {}
        self._lease_asked: set[tuple[str, str]] = set()
        self._sweep_scheduled = False
        self.counts = AdmissionCounts()

    # -- admission ----------------------------------------------------------------

    async def reserve(self, scopes: Sequence[Scope], amount_nano: int, estimated_tokens: int,
                      check_blocked: Scope | None = None) -> Grant | Refusal:
        grant = self.from_leases(scopes, amount_nano, estimated_tokens)
        if grant is not None:
            return grant
        return await self.ask(scopes, amount_nano, estimated_tokens, check_blocked)

    async def ask(self, scopes: Sequence[Scope], amount_nano: int, estimated_tokens: int,
                  check_blocked: Scope | None = None) -> Grant | Refusal:
        """Admission by Redis (in this turn's batch), without trying leases."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Grant | Refusal] = loop.create_future()
        self._asks.append(_Ask(scopes, amount_nano, estimated_tokens, check_blocked, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush_asks)
        return await future

    def _flush_asks(self) -> None:
        self._flush_scheduled = False
        if self._admitting or not self._asks:
            return
        asks = self._asks[:MAX_BATCH]
        del self._asks[:MAX_BATCH]
        self._admitting = True
        if self._cluster:
            task = self._spawn(self._admit_per_scope(asks))
        else:
            task = self._spawn(self._admit_batch(asks, asks_scopes=None))
        task.add_done_callback(self._admitted)

    def _admitted(self, _task: asyncio.Task[Any]) -> None:
        self._admitting = False
        self._flush_asks()

    def _spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _admit_batch(self, asks: list[_Ask],
                           asks_scopes: list[Sequence[Scope]] | None) -> list[Any] | None:
        """One script call for ``asks``; resolves their futures unless
        ``asks_scopes`` is given (then the raw replies are returned)."""
        scope_index: dict[tuple[str, str], int] = {}
        keys: list[str] = []
        args: list[str | int] = ["", self._hold_s]
        checked = {ask.check_blocked.ref for ask in asks if ask.check_blocked is not None}
        requests: list[str | int] = []
        for position, ask in enumerate(asks):
            scopes = asks_scopes[position] if asks_scopes is not None else ask.scopes
            requests += (ask.amount, ask.tokens, ask.calls, len(scopes))
            for scope in scopes:
                ref = scope.ref
                index = scope_index.get(ref)
                if index is None:
                    index = scope_index[ref] = len(scope_index) + 1
                    scope_keys = scope.keys
                    keys += (scope_keys.rec, scope_keys.st, scope_keys.rpm, scope_keys.tpm)
                    limits = scope.limits
                    args += (scope.rev, "1" if ref in checked else "0",
                             self._clock.current(limits.budget_period).id,
                             to_nano(limits.max_budget) if limits.max_budget is not None
                             else -1,
                             limits.rpm_limit or 0, limits.tpm_limit or 0,
                             limits.max_parallel_requests or 0)
                requests.append(index)
        args[0] = len(scope_index)
        args.append(len(asks))
        args += requests
        try:
            replies = await self._client.run_script(_ADMIT, keys, args)
        except Exception as exc:
            if asks_scopes is not None:
                raise
            for ask in asks:
                if not ask.future.done():
                    ask.future.set_exception(exc)
            return None
        if asks_scopes is not None:
            return list(replies)
        for ask, reply in zip(asks, replies, strict=True):
            if not ask.future.done():
                mark = (int(reply[1]), int(reply[2])) if reply[0] == 1 else (0, 0)
                ask.future.set_result(self._result(ask, reply, (mark,) * len(ask.scopes)))
            if self._leasing and reply[0] == 1:
                self._consider_leases(ask, reply[3:])
        return None

    async def _admit_per_scope(self, asks: list[_Ask]) -> None:
        """Cluster: each scope in its own slot, so one call per scope; a call
        refused by one scope gives back what the others granted it."""
        by_scope: dict[tuple[str, str], tuple[Scope, list[int]]] = {}
        for position, ask in enumerate(asks):
            for scope in ask.scopes:
                by_scope.setdefault(scope.ref, (scope, []))[1].append(position)
        groups = list(by_scope.values())
        try:
            results = await asyncio.gather(*(
                self._admit_batch([asks[p] for p in positions], [(scope,)] * len(positions))
                for scope, positions in groups))
        except Exception as exc:  # noqa: BLE001 - every waiting call gets the failure
            for ask in asks:
                if not ask.future.done():
                    ask.future.set_exception(exc)
            return
        reply_of: dict[tuple[int, tuple[str, str]], list[Any]] = {}
        for (scope, positions), replies in zip(groups, results, strict=True):
            assert replies is not None
            for position, reply in zip(positions, replies, strict=True):
                reply_of[(position, scope.ref)] = reply
        for position, ask in enumerate(asks):
            replies = [reply_of[(position, scope.ref)] for scope in ask.scopes]
            refused_at = next((i for i, reply in enumerate(replies) if reply[0] != 1), None)
            if refused_at is None:
                merged: list[Any] = [1, 0, 0]
                for reply in replies:
                    merged += reply[3:8]
                marks = tuple((int(reply[1]), int(reply[2])) for reply in replies)
                result = self._result(ask, merged, marks)
            else:
                refused = replies[refused_at]
                result = self._result(ask, [0, refused_at + 1, *refused[2:]], ())
                for scope, reply in zip(ask.scopes, replies, strict=True):
                    if reply[0] == 1:
                        self._give_back(scope, ask, int(reply[1]), int(reply[2]))
            if not ask.future.done():
                ask.future.set_result(result)
            if self._leasing and refused_at is None:
                self._consider_leases(ask, merged[3:])

    def _result(self, ask: _Ask, reply: Sequence[Any],
                marks: tuple[tuple[int, int], ...]) -> Grant | Refusal:
        scopes = ask.scopes
        if reply[0] == 1:
            grant = Grant(tuple(scopes), ask.amount, ask.tokens, marks)
            if ask.calls == 1:
                grant.headers = self._grant_headers(scopes, reply[3:])
                self.counts.by_redis += 1
            else:
                grant.lease_view = tuple(int(v) for v in reply[3:8])  # type: ignore[assignment]
            return grant
        _ok, index, reason, limit, remaining, retry_ms = reply[:6]
        if isinstance(reason, bytes):
            reason = reason.decode()
        refusal = Refusal(scopes[int(index) - 1], str(reason), int(limit), int(remaining),
                          int(retry_ms))
        if ask.calls == 1 and refusal.reason in _COUNTED_REFUSALS:
            counted = (SCOPE_NAMES[refusal.scope.kind], refusal.reason)
            self.counts.refused[counted] = self.counts.refused.get(counted, 0) + 1
        return refusal

    def _grant_headers(self, scopes: Sequence[Scope], values: Sequence[Any]
                       ) -> list[tuple[str, str]]:
        """OpenAI's rate-limit headers from the tightest scope. (The budget's
        state is in the refusal's headers and in the admin API, not on every
        answer: three more headers per call are a measurable cost.)"""
        headers: list[tuple[str, str]] = []
        requests: tuple[int, int, int] | None = None
        tokens: tuple[int, int, int] | None = None
        for index, scope in enumerate(scopes):
            limits = scope.limits
            base = index * 5
            if limits.rpm_limit:
                left = int(values[base + 1])
                if requests is None or left < requests[1]:
                    requests = (limits.rpm_limit, left, int(values[base + 2]))
            if limits.tpm_limit:
                left = int(values[base + 3])
                if tokens is None or left < tokens[1]:
                    tokens = (limits.tpm_limit, left, int(values[base + 4]))
        if requests is not None:
            headers += (("x-ratelimit-limit-requests", str(requests[0])),
                        ("x-ratelimit-remaining-requests",
                         str(min(max(0, requests[1]), requests[0]))),
                        ("x-ratelimit-reset-requests", _duration(requests[2])))
        if tokens is not None:
            headers += (("x-ratelimit-limit-tokens", str(tokens[0])),
                        ("x-ratelimit-remaining-tokens", str(min(max(0, tokens[1]), tokens[0]))),
                        ("x-ratelimit-reset-tokens", _duration(tokens[2])))
        return headers

    def _give_back(self, scope: Scope, ask: _Ask, minute: int, second: int) -> None:
        entry = self._settlement(scope)
        hold = entry.holds.setdefault(minute, [0, 0])
        hold[0] += ask.amount
        hold[1] += 1
        back = entry.take_back.setdefault(second, [0, 0])
        back[0] += 1 if scope.limits.rpm_limit else 0
        back[1] += ask.tokens if scope.limits.tpm_limit else 0
        self._schedule_settle()

    # -- leases ---------------------------------------------------------------------

    def set_leasing(self, enabled: bool) -> None:
        """Turn leasing on (the worker hears every record change) or off (it may
        not: every lease goes back and calls go to Redis one by one)."""
        self._leasing = enabled
        if not enabled:
            for lease in list(self._leases.values()):
                self._return_lease(lease)

    def revoke(self, ref: tuple[str, str]) -> None:
        """A record changed: its scope's lease goes back; the next call goes to
        Redis, which checks the new revision."""
        lease = self._leases.get(ref)
        if lease is not None:
            self._return_lease(lease)

    def from_leases(self, scopes: Sequence[Scope], amount: int, tokens: int) -> Grant | None:
        """The call admitted from this worker's leases, or None (ask Redis)."""
        leases = self._leases
        if not leases:
            return None
        now = time.monotonic()
        if len(scopes) == 1:  # a key alone: the common case, without the lists
            lease = leases.get(scopes[0].ref)
            if lease is None or not self._has_room(lease, scopes[0], amount, tokens, now):
                return None
            lease.draw(amount, tokens)
            served = lease.served
            if served == lease.renew_at:
                self._renew(lease, amount, tokens)
            # The remaining-counts a leased call reports are estimates anyway
            # (other workers' use is unseen): refreshed every few calls.
            headers = lease.headers
            if headers is None or served % HEADER_REFRESH_CALLS == 0:
                headers = lease.headers = self._lease_headers((lease,))
            return Grant(scopes if scopes.__class__ is tuple else tuple(scopes), amount,
                         tokens, lease.marks, headers, False, lease.alone)
        found: list[Lease] = []
        for scope in scopes:
            lease = leases.get(scope.ref)
            if lease is None or not self._has_room(lease, scope, amount, tokens, now):
                return None
            found.append(lease)
        for lease in found:
            lease.draw(amount, tokens)
            if lease.served == lease.renew_at:
                self._renew(lease, amount, tokens)
        return Grant(tuple(scopes), amount, tokens, tuple([lease.marks[0] for lease in found]),
                     self._lease_headers(found), False, tuple(found))

    def _has_room(self, lease: Lease, scope: Scope, amount: int, tokens: int,
                  now: float) -> bool:
        """Whether ``lease`` can serve this call: still current (else it goes
        back) and not used up (else the call goes to Redis, and renews it)."""
        if lease.scope.rev != scope.rev or now >= lease.expires_s:
            self._return_lease(lease)
            return False
        return lease.fits(amount, tokens)

    def _lease_headers(self, found: Sequence[Lease]) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        requests_best: tuple[str, int, int] | None = None
        tokens_best: tuple[str, int, int] | None = None
        for lease in found:
            view = lease.view
            limits = lease.scope.limits
            if lease.calls_left is not None:
                # the script's figure counts the lease's calls as made already
                left = min(max(0, view[1] + lease.calls_left), limits.rpm_limit or 0)
                if requests_best is None or left < requests_best[1]:
                    requests_best = (lease.scope.rpm_text, left, view[2])
            if lease.tokens_left is not None:
                # ... but not its tokens: only those drawn are used
                left = min(max(0, view[3] - lease.tokens_granted + lease.tokens_left),
                           limits.tpm_limit or 0)
                if tokens_best is None or left < tokens_best[1]:
                    tokens_best = (lease.scope.tpm_text, left, view[4])
        if requests_best is not None:
            headers += (("x-ratelimit-limit-requests", requests_best[0]),
                        ("x-ratelimit-remaining-requests", str(requests_best[1])),
                        ("x-ratelimit-reset-requests", _duration(requests_best[2])))
        if tokens_best is not None:
            headers += (("x-ratelimit-limit-tokens", tokens_best[0]),
                        ("x-ratelimit-remaining-tokens", str(tokens_best[1])),
                        ("x-ratelimit-reset-tokens", _duration(tokens_best[2])))
        return headers

    def _consider_leases(self, ask: _Ask, values: Sequence[Any]) -> None:
        """After a call admitted by Redis: lease room for its scopes that have
        plenty, so the next calls need no round trip."""
        if ask.calls != 1:
            return
        for index, scope in enumerate(ask.scopes):
            held = self._leases.get(scope.ref)
            if held is not None and held.scope.rev == scope.rev and held.fits(ask.amount,
                                                                              ask.tokens):
                continue
            # A lease just used up sizes the next one; else the first size.
            size = _next_size(held) if held is not None else LEASE_CALLS
            budget, calls, _reset, tokens, _tokens_reset = (int(v) for v in
                                                            values[index * 5:index * 5 + 5])
            self._ask_lease(scope, ask.amount, ask.tokens, size, (budget, calls, tokens))

    def _renew(self, lease: Lease, amount: int, tokens: int) -> None:
        """Ask for the next lease before this one runs out, judged by the
        figures this one was granted with (the new one's are checked again)."""
        if self._leases.get(lease.scope.ref) is not lease:
            return
        view = lease.view
        self._ask_lease(lease.scope, amount, tokens, _next_size(lease),
                        (view[0], view[1], view[3]))

    def _ask_lease(self, scope: Scope, amount: int, tokens: int, size: int,
                   room: tuple[int, int, int]) -> None:
        """Ask Redis for a lease of ``size`` calls like this one, if ``room``
        (budget, requests and tokens left) has ample space for it."""
        ref = scope.ref
        if ref in self._lease_asked:
            return
        limits = scope.limits
        size_nano = size * amount
        size_tokens = size * max(tokens, 1)
        if not _roomy(limits, room, size, size_nano, size_tokens):
            return
        future: asyncio.Future[Grant | Refusal] = asyncio.get_running_loop().create_future()
        lease_ask = _Ask((scope,), size_nano, size_tokens if limits.tpm_limit else 0,
                         None, future, calls=size)
        self._lease_asked.add(ref)
        future.add_done_callback(functools.partial(self._leased, lease_ask))
        self._asks.append(lease_ask)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_asks)

    def _leased(self, ask: _Ask, done: asyncio.Future[Grant | Refusal]) -> None:
        scope = ask.scopes[0]
        self._lease_asked.discard(scope.ref)
        if done.cancelled() or done.exception() is not None:
            return
        grant = done.result()
        if not isinstance(grant, Grant):
            return
        limits = scope.limits
        minute, second = grant.marks[0]
        now = time.monotonic()
        view = grant.lease_view
        lease = Lease(scope, ask.amount, ask.calls if limits.rpm_limit else None,
                      ask.tokens if limits.tpm_limit else None, minute, second,
                      now + LEASE_S, view, size=ask.calls, granted_s=now)
        # Not leasing any more, or (what a renewal was judged by is older)
        # the scope no longer has the room a lease needs: give it back.
        if not self._leasing or not _roomy(limits, (view[0], view[1], view[3]), ask.calls,
                                           ask.amount, ask.tokens, LEASE_HEADROOM - 1):
            self._return_lease(lease)
            return
        previous = self._leases.get(scope.ref)
        if previous is not None:
            self._return_lease(previous)
        self._leases[scope.ref] = lease
        self.counts.leases += 1
        if not self._sweep_scheduled:
            self._sweep_scheduled = True
            asyncio.get_running_loop().call_later(LEASE_S, self._sweep)

    def _sweep(self) -> None:
        """Leases past their time go back even when no call comes to notice."""
        self._sweep_scheduled = False
        now = time.monotonic()
        for lease in list(self._leases.values()):
            if now >= lease.expires_s:
                self._return_lease(lease)
        if self._leases:
            self._sweep_scheduled = True
            asyncio.get_running_loop().call_later(LEASE_S, self._sweep)

    def _return_lease(self, lease: Lease) -> None:
        if lease.returned:
            return
        lease.returned = True
        self.counts.leased += lease.served
        if self._leases.get(lease.scope.ref) is lease:
            del self._leases[lease.scope.ref]
        entry = self._settlement(lease.scope)
        hold = entry.holds.setdefault(lease.minute, [0, 0])
        hold[0] += lease.nano_left
        if lease.outstanding == 0:
            hold[1] += 1
        back = entry.take_back.setdefault(lease.second, [0, 0])
        back[0] += lease.calls_left or 0
        back[1] += lease.tokens_left or 0
        lease.nano_left = 0
        lease.calls_left = 0 if lease.calls_left is not None else None
        lease.tokens_left = 0 if lease.tokens_left is not None else None
        self._schedule_settle()

    # -- settlement -----------------------------------------------------------------

    def settle_later(self, grant: Grant, model: str, cost_usd: float, prompt_tokens: int,
                     completion_tokens: int, counts_request: bool, elapsed_s: float) -> None:
        """Commit the actual cost and release the hold, without the caller waiting.

        A call served by Redis is only noted here; the next settle works out
        what it owes. A leased call's dues are added to its leases' sums at
        once: a few additions cost less than keeping the call for the settle,
        and the settle then has one entry per lease, not one per call."""
        if grant.settled:
            return
        grant.settled = True
        self._ended_count += 1
        leases = grant.leases
        if not leases:
            self._ended.append((grant, model, cost_usd, prompt_tokens, completion_tokens,
                                counts_request, elapsed_s))
        else:
            actual = round(cost_usd * NANO_PER_USD)
            used = prompt_tokens + completion_tokens
            correction = used - grant.estimated_tokens if elapsed_s < TPM_WINDOW_S else used
            amount = grant.amount_nano
            for lease in leases:
                lease.spend += actual
                lease.released += amount
                lease.correction += correction
                if counts_request:
                    _add_to_ledger(lease.ledger, model, actual, 1, prompt_tokens,
                                   completion_tokens)
                if not lease.owes:
                    lease.owes = True
                    self._owing.append(lease)
                # Its hold is part of its lease's, which counts as the one
                # call in flight until the lease is back and all its calls settled.
                lease.outstanding -= 1
                if lease.returned and lease.outstanding == 0:
                    self._settlement(lease.scope).holds.setdefault(lease.minute, [0, 0])[1] += 1
        if not (self._settle_scheduled or self._settling):
            self._schedule_settle()

    def _gather_ended(self) -> None:
        """What the calls that ended since the last settle owe, added to their
        scopes' settlements: the leases' sums, then one tight loop over the
        calls served by Redis."""
        owing, self._owing = self._owing, []
        settlement = self._settlement
        for lease in owing:
            lease.owes = False
            scope = lease.scope
            entry = settlement(scope)
            entry.spend += lease.spend
            if scope.needs_tokens:
                entry.correction += lease.correction
            entry.holds.setdefault(lease.minute, [0, 0])[0] += lease.released
            for model, (nano, requests, prompt, completion) in lease.ledger.items():
                _add_to_ledger(entry.ledger, model or "-", nano, requests, prompt, completion)
            lease.spend = lease.released = lease.correction = 0
            lease.ledger = {}
        ended, self._ended = self._ended, []
        for (grant, model, cost_usd, prompt_tokens, completion_tokens, counts_request,
             elapsed_s) in ended:
            actual = round(cost_usd * NANO_PER_USD)
            used = prompt_tokens + completion_tokens
            correction = used - grant.estimated_tokens if elapsed_s < TPM_WINDOW_S else used
            model = model or "-"
            amount = grant.amount_nano
            for scope, (minute, _second) in zip(grant.scopes, grant.marks, strict=True):
                entry = settlement(scope)
                entry.spend += actual
                if scope.needs_tokens:
                    entry.correction += correction
                hold = entry.holds.get(minute)
                if hold is None:
                    entry.holds[minute] = [amount, 1]
                else:
                    hold[0] += amount
                    hold[1] += 1
                if counts_request:
                    _add_to_ledger(entry.ledger, model, actual, 1, prompt_tokens,
                                   completion_tokens)

    def _settlement(self, scope: Scope) -> _Settlement:
        found = self._settlements.get(scope.ref)
        if found is None:
            found = self._settlements[scope.ref] = (scope, _Settlement())
        return found[1]

    def _schedule_settle(self) -> None:
        if self._settle_scheduled or self._settling:
            return  # a settle that is over schedules the next one itself
        self._settle_scheduled = True
        loop = asyncio.get_running_loop()
        delay = SETTLE_DELAY_S
        if self._busy:
            delay = max(delay, self._last_settle_s + SETTLE_INTERVAL_S - loop.time())
        loop.call_later(delay, self._flush_settlements)

    def _flush_settlements(self, *, now: bool = False) -> None:
        """Send what is gathered (``now``: whatever the cadence, at shutdown)."""
        self._settle_scheduled = False
        if self._settling or not (self._settlements or self._ended or self._owing):
            return
        loop = asyncio.get_running_loop()
        if (not now and self._busy
                and loop.time() < self._last_settle_s + SETTLE_INTERVAL_S - 1e-3):
            self._schedule_settle()
            return
        self._busy = self._ended_count >= SETTLE_BUSY_CALLS
        self._ended_count = 0
        self._gather_ended()
        batch, self._settlements = self._settlements, {}
        self._settling = True
        self._last_settle_s = loop.time()
        self._spawn(self._settle(batch)).add_done_callback(self._settled)

    def _settled(self, _task: asyncio.Task[Any]) -> None:
        self._settling = False
        if self._settlements or self._ended or self._owing:
            self._schedule_settle()

    async def _settle(self, batch: dict[tuple[str, str], tuple[Scope, _Settlement]]) -> None:
        day = self._clock.day_id()
        items = list(batch.values())
        groups = [items] if not self._cluster else [[item] for item in items]
        for group in groups:
            keys: list[str] = []
            args: list[str | int] = [len(group)]
            for scope, entry in group:
                scope_keys = scope.keys
                keys += (scope_keys.st, scope_keys.rpm, scope_keys.tpm, scope_keys.ledger(day))
                args += (self._clock.current(scope.limits.budget_period).id, entry.spend,
                         entry.correction, len(entry.holds))
                for minute, (nano, calls) in entry.holds.items():
                    args += (minute, nano, calls)
                args.append(len(entry.take_back))
                for second, (requests, tokens) in entry.take_back.items():
                    args += (second, requests, tokens)
                args.append(len(entry.ledger))
                for model, (nano, requests, prompt, completion) in entry.ledger.items():
                    args += (model, nano, requests, prompt, completion)
            try:
                await self._client.run_script(_SETTLE, keys, args)
            except Exception as exc:  # noqa: BLE001 - the holds expire by themselves
                logger.warning("could not settle %d scope(s) (%s: %s); their holds expire "
                               "after the reservation TTL", len(group), type(exc).__name__, exc)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Give back every lease and wait for admissions and settlements still in
        flight (worker shutdown)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        self.set_leasing(False)
        while loop.time() < deadline:
            self._flush_asks()
            self._flush_settlements(now=True)
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=deadline - loop.time())
                continue
            await asyncio.sleep(0)  # done-callbacks (a lease granted meanwhile) run here
            if not (self._tasks or self._settlements or self._ended or self._owing
                    or self._asks):
                return


def _add_to_ledger(ledger: dict[str, list[int]], model: str, nano: int, requests: int,
                   prompt_tokens: int, completion_tokens: int) -> None:
    """Add to a model's ledger row: [nano USD, requests, prompt and completion tokens]."""
    row = ledger.get(model)
    if row is None:
        ledger[model] = [nano, requests, prompt_tokens, completion_tokens]
    else:
        row[0] += nano
        row[1] += requests
        row[2] += prompt_tokens
        row[3] += completion_tokens


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


def budget_headers(limit_usd: float, remaining_usd: float,
                   period: Period) -> list[tuple[str, str]]:
    return [("x-smartflow-budget-limit", _usd(limit_usd)),
            ("x-smartflow-budget-remaining", _usd(max(0.0, remaining_usd))),
            ("x-smartflow-budget-reset", reset_header_value(period))]


def refusal_headers(refusal: Refusal, clock: PeriodClock) -> list[tuple[str, str]]:
    """The headers of a 429: Retry-After, and the refused limit's own trio."""
    retry_s = max(1, math.ceil(refusal.retry_ms / 1000)) if refusal.retry_ms > 0 else None
    reason = refusal.reason
    headers: list[tuple[str, str]] = []
    if reason == "budget":
        now = clock.now()
        period = clock.period(refusal.scope.limits.budget_period, now)
        headers += budget_headers(to_usd(refusal.limit), to_usd(refusal.remaining), period)
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

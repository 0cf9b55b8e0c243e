"""What the gateway remembers of a call, so a reviewer's feedback can teach the model.

After a call's guardrails ran with a request embedding (a model-based
check; the pattern checks alone compute none, and feedback has nothing to
learn from without one), the gateway hands over that embedding, the
guardrails' decisions and the policies that applied. They are kept for the
TTL (``[policy] remember_decisions_s``, 7 days: the window in which a
reviewer can still give feedback) under ``sf:policy:{pc}:c:<call_id>``,
and at most ``[policy] remember_max_calls`` of them: a ZSET of call ids by
time drops the oldest beyond that, so Redis memory is bounded by the cap
(about 1.2 KB a call), not by traffic times the TTL. The raw text is never
stored: only its embedding (float16) and a digest the caller computed.

``remember_soon`` buffers the call; one script a moment later writes every
call buffered since, trims the index and deletes what fell off it, so the
request path neither waits on Redis nor pays a round trip per call. A
failure there is logged and dropped: losing a call's record only means that
call cannot receive feedback.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from smartflow.store.fast_client import Script, StoreClient
from smartflow.store.keyspace import PREFIX

logger = logging.getLogger("smartflow.policy")

# One hash tag: the script touches the index and the records together.
CALL_PREFIX = PREFIX + "policy:{pc}:c:"
CALL_INDEX = PREFIX + "policy:{pc}:idx"
TTL_S = 7 * 24 * 3600
MAX_CALLS = 100_000
MAX_CALL_ID_CHARS = 200
FLUSH_DELAY_S = 0.05
MAX_BATCH = 256

# KEYS[1] the index; ARGV: ttl s, now (epoch microseconds), cap, record key
# prefix, then (call id, when in microseconds, record) triples. Returns how
# many old records it dropped.
_REMEMBER = Script("""
local idx = KEYS[1]
local ttl = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local prefix = ARGV[4]
for i = 5, #ARGV, 3 do
  redis.call('SET', prefix .. ARGV[i], ARGV[i + 2], 'EX', ttl)
  redis.call('ZADD', idx, ARGV[i + 1], ARGV[i])
end
redis.call('ZREMRANGEBYSCORE', idx, '-inf', now - ttl * 1000000)
local over = redis.call('ZCARD', idx) - cap
if over > 0 then
  local old = redis.call('ZPOPMIN', idx, over)
  for j = 1, #old, 2 do redis.call('DEL', prefix .. old[j]) end
else
  over = 0
end
redis.call('PEXPIRE', idx, ttl * 1000)
return over
""")


def _now_us() -> int:
    # Microseconds: calls remembered within one millisecond still keep their order.
    return time.time_ns() // 1000


def call_key(call_id: str) -> str:
    return CALL_PREFIX + call_id


@dataclass(frozen=True, slots=True)
class RememberedCall:
    call_id: str
    embedding: np.ndarray | None  # float32 (dim,)
    decisions: list[dict[str, Any]]
    policies: list[str]
    text_digest: str
    at: float


def _encode_embedding(embedding: np.ndarray | None) -> str | None:
    if embedding is None:
        return None
    flat = np.asarray(embedding, dtype=np.float16).reshape(-1)
    return base64.b64encode(flat.tobytes()).decode()


def _decode_embedding(value: object) -> np.ndarray | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        return None
    if not raw or len(raw) % 2:
        return None
    return np.frombuffer(raw, dtype=np.float16).astype(np.float32)


class DecisionLog:
    def __init__(self, store: StoreClient, *, ttl_s: int = TTL_S,
                 max_calls: int = MAX_CALLS) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._max_calls = max_calls
        self._buffer: list[tuple[str, int, bytes]] = []
        self._scheduled = False
        self._pending: set[asyncio.Task[None]] = set()

    @staticmethod
    def _record(call_id: str, embedding: np.ndarray | None, decisions: list[dict[str, Any]],
                policies: list[str], text_digest: str) -> bytes:
        if not call_id or len(call_id) > MAX_CALL_ID_CHARS:
            raise ValueError("call_id: must be 1 to 200 characters")
        return orjson.dumps({"e": _encode_embedding(embedding), "d": decisions,
                             "p": list(policies), "h": text_digest,
                             "t": round(time.time(), 3)})

    async def remember(self, call_id: str, embedding: np.ndarray | None,
                       decisions: list[dict[str, Any]], policies: list[str],
                       text_digest: str) -> None:
        """Write one call's record now (the tests' and tools' way in)."""
        record = self._record(call_id, embedding, decisions, policies, text_digest)
        await self._write([(call_id, _now_us(), record)])

    def remember_soon(self, call_id: str, embedding: np.ndarray | None,
                      decisions: list[dict[str, Any]], policies: list[str],
                      text_digest: str) -> None:
        """``remember`` off the request path, batched (call it with the loop running)."""
        try:
            record = self._record(call_id, embedding, decisions, policies, text_digest)
        except ValueError:
            return
        self._buffer.append((call_id, _now_us(), record))
        if len(self._buffer) >= MAX_BATCH:
            self._flush()
        elif not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_later(FLUSH_DELAY_S, self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._buffer = self._buffer, []
        if not batch:
            return
        task = asyncio.get_running_loop().create_task(self._write_logged(batch))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, batch: list[tuple[str, int, bytes]]) -> None:
        args: list[Any] = [self._ttl_s, _now_us(), self._max_calls, CALL_PREFIX]
        for entry in batch:
            args += entry
        await self._store.run_script(_REMEMBER, (CALL_INDEX,), args)

    async def _write_logged(self, batch: list[tuple[str, int, bytes]]) -> None:
        try:
            await self._write(batch)
        except Exception as exc:  # noqa: BLE001 - feedback for these calls is lost, nothing else
            logger.warning("could not remember %d call(s) for feedback (%s: %s)", len(batch),
                           type(exc).__name__, exc)

    async def recall(self, call_id: str) -> RememberedCall | None:
        if not call_id or len(call_id) > MAX_CALL_ID_CHARS:
            return None
        key = call_key(call_id)
        raw = await self._store.execute("GET", key, key=key)
        if raw is None:
            return None
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(record, dict):
            return None
        decisions = record.get("d")
        policies = record.get("p")
        return RememberedCall(
            call_id=call_id, embedding=_decode_embedding(record.get("e")),
            decisions=[d for d in decisions if isinstance(d, dict)]
            if isinstance(decisions, list) else [],
            policies=[p for p in policies if isinstance(p, str)]
            if isinstance(policies, list) else [],
            text_digest=str(record.get("h", "")), at=float(record.get("t", 0.0)))

    async def drain(self) -> None:
        """Write what is buffered and wait for it (at shutdown)."""
        self._flush()
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

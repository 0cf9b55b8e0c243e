"""What the gateway remembers of a call, so a reviewer's feedback can teach the model.

After a call's guardrails ran, the gateway hands over the request text's
embedding, the guardrails' decisions and the policies that applied; they
are kept for ``TTL_S`` (7 days: the window in which a reviewer can still
give feedback) under ``sf:policy:call:<call_id>``. The raw text is never
stored: only its embedding (float16) and a digest the caller computed, so
the record says which text it was without holding it.

``remember`` is one SET; ``remember_soon`` runs it in a task so the request
path does not wait on Redis, and keeps the task referenced until it ends.
A failure there is logged and dropped: losing one call's record only means
that call cannot receive feedback.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from smartflow.store.fast_client import StoreClient
from smartflow.store.keyspace import PREFIX

logger = logging.getLogger("smartflow.policy")

CALL_PREFIX = PREFIX + "policy:call:"
TTL_S = 7 * 24 * 3600
MAX_CALL_ID_CHARS = 200


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
    def __init__(self, store: StoreClient, *, ttl_s: int = TTL_S) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._pending: set[asyncio.Task[None]] = set()

    async def remember(self, call_id: str, embedding: np.ndarray | None,
                       decisions: list[dict[str, Any]], policies: list[str],
                       text_digest: str) -> None:
        import time

        if not call_id or len(call_id) > MAX_CALL_ID_CHARS:
            raise ValueError("call_id: must be 1 to 200 characters")
        record = {"e": _encode_embedding(embedding), "d": decisions, "p": list(policies),
                  "h": text_digest, "t": round(time.time(), 3)}
        key = call_key(call_id)
        await self._store.execute("SET", key, orjson.dumps(record), "EX", self._ttl_s, key=key)

    def remember_soon(self, call_id: str, embedding: np.ndarray | None,
                      decisions: list[dict[str, Any]], policies: list[str],
                      text_digest: str) -> None:
        """``remember`` off the request path (call it with the loop running)."""
        task = asyncio.get_running_loop().create_task(
            self._remember_logged(call_id, embedding, decisions, policies, text_digest))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _remember_logged(self, call_id: str, embedding: np.ndarray | None,
                               decisions: list[dict[str, Any]], policies: list[str],
                               text_digest: str) -> None:
        try:
            await self.remember(call_id, embedding, decisions, policies, text_digest)
        except Exception as exc:  # noqa: BLE001 - feedback for this call is lost, nothing else
            logger.warning("could not remember call %s for feedback (%s: %s)", call_id[:64],
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
        """Wait for the records still being written (at shutdown)."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

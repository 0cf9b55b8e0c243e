"""Cache entries in Redis: the shared L3 (exact) store behind every worker's L1.

Schema (one prefix, ``sf:cache:``):

==============================  ==============================================
``sf:cache:e:<16 hex>``         an entry: zlib-compressed JSON (below), with a
                                TTL; the hex is the start of the exact key,
                                which the entry repeats in full (``x``)
``sf:cache:d:<16 hex>``         drift of the answers to that request: JSON
                                ``{"drift": float, "text": str}``, kept longer
                                than the entry so a re-answer can be compared
``sf:cache:stats``              hash of counters (``cache.stats``)
``sf:cache:flush``              pub/sub: an L1 flush for every worker
==============================  ==============================================

An entry: ``x`` exact key, ``dialect``, ``model``, ``scope`` (partition and
namespace), ``ns`` (the namespace alone), ``key`` and ``team`` (who filled
it), ``prompt`` and ``ctx`` (the semantic part, or null), ``answer`` (the
whole answer as the caller's dialect renders it), ``cost`` (USD the original
call cost), ``created``, ``ttl``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import orjson

from smartflow.store import keyspace
from smartflow.store.fast_client import StoreClient

STATS_KEY = keyspace.CACHE_STATS
FLUSH_CHANNEL = keyspace.CACHE_FLUSH_CHANNEL
ENTRY_PATTERN = keyspace.CACHE_ENTRY_PATTERN


# DELETE /api/cache's filters, each with the entry field it compares.
FILTER_FIELDS = {"namespace": "ns", "model": "model", "key": "key"}


def selected_by(fields: dict[str, Any], filters: dict[str, Any]) -> bool:
    """Whether an entry matches every filter given (no filter: every entry)."""
    return all(fields.get(FILTER_FIELDS[name]) == value for name, value in filters.items()
               if name in FILTER_FIELDS and value is not None)


def entry_key(exact: str) -> str:
    return keyspace.cache_entry(exact[:16])


def drift_key(exact: str) -> str:
    return keyspace.cache_drift(exact[:16])


def entry_key_of_id(entry_id: int) -> str:
    return keyspace.cache_entry(f"{entry_id & 0xFFFFFFFFFFFFFFFF:016x}")


@dataclass(frozen=True, slots=True)
class Entry:
    fields: dict[str, Any]
    size: int  # compressed bytes

    @property
    def answer(self) -> dict[str, Any]:
        return self.fields["answer"]  # type: ignore[no-any-return]


def encode(fields: dict[str, Any]) -> bytes:
    return zlib.compress(orjson.dumps(fields), 3)


def decode(data: bytes | None) -> Entry | None:
    if not data:
        return None
    try:
        fields = orjson.loads(zlib.decompress(data))
    except (zlib.error, orjson.JSONDecodeError):
        return None  # a foreign or damaged value is a miss, never a crash
    if not isinstance(fields, dict) or not isinstance(fields.get("answer"), dict):
        return None
    return Entry(fields, len(data))


class EntryStore:
    __slots__ = ("_store",)

    def __init__(self, store: StoreClient) -> None:
        self._store = store

    async def get(self, key: str) -> Entry | None:
        return decode(await self._store.execute("GET", key, key=key))

    async def put(self, exact: str, payload: bytes, ttl_s: int) -> None:
        key = entry_key(exact)
        await self._store.execute("SET", key, payload, "EX", str(max(1, ttl_s)), key=key)

    async def drift(self, exact: str) -> dict[str, Any] | None:
        key = drift_key(exact)
        raw = await self._store.execute("GET", key, key=key)
        if not raw:
            return None
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        return value if isinstance(value, dict) else None

    async def put_drift(self, exact: str, drift: float, text: str, ttl_s: int) -> None:
        key = drift_key(exact)
        await self._store.execute("SET", key, orjson.dumps({"drift": drift, "text": text}),
                                  "EX", str(max(1, ttl_s)), key=key)

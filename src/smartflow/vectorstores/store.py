"""Vector stores in Redis: the key schema and every read and write of it.

Redis is the system of record; the shared-memory index only caches the
vectors kept here. Every key starts with ``sf:vs:``; a store's own keys
share the Redis Cluster hash tag ``{<store id>}`` so that one transaction
can touch them all.

==================================  =============================================
``sf:vs:all``                       zset: every store id, scored by creation
                                    (ms); for listing by an admin and for
                                    rebuilding a node's index at start
``sf:vs:owner:<owner>``             zset: the ids of one owner's stores, the same
                                    scores
``sf:vs:{<id>}:meta``               hash: ``owner``, ``created_at`` (s), ``doc``
                                    (JSON: name, metadata, expires_after),
                                    ``last_active_at`` (s), counters
                                    ``usage_bytes`` ``files`` ``chunks``, and
                                    ``seq`` (the last file number handed out)
``sf:vs:{<id>}:files``              hash: file id -> the file's JSON record
``sf:vs:{<id>}:forder``             zset: file ids scored by creation (ms)
``sf:vs:{<id>}:f:<seq>:text``       hash: chunk number -> chunk text
``sf:vs:{<id>}:f:<seq>:vec``        string: the file's chunk vectors, float16
                                    little-endian, ``[chunks, dim]`` row-major
==================================  =============================================

A file's chunks are numbered from 0 within it, and the file gets a number
(``seq``) within its store, so a chunk's id in the index is
``seq << CHUNK_BITS | n``: the index alone tells which file a hit came from,
and so whether it passes an attribute filter, without a Redis round trip.

Writes that must not half-happen (deleting a store or a file, committing a
file) run as one transaction on the store's slot: a Lua script for the
commit, WATCH/MULTI for the deletes. A file's chunk texts and vectors are
written before its commit; the commit refuses (and removes them) when the
store was deleted meanwhile, so no key outlives its store.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import orjson
from redis.asyncio import Redis
from redis.exceptions import WatchError

from smartflow.store import keyspace

PREFIX = keyspace.VECTOR_STORE_PREFIX
ALL_STORES = PREFIX + "all"
CHUNK_BITS = 20
MAX_CHUNKS_PER_FILE = 1 << CHUNK_BITS
MAX_TRANSACTION_ATTEMPTS = 16
TEXT_WRITE_BATCH = 512

_STORE_ID_RE = re.compile(r"^vs_[0-9a-f]{24}$")
_FILE_ID_RE = re.compile(r"^file-[0-9a-f]{24}$")


class StoreConflict(Exception):
    """A transaction kept losing to concurrent writers; the caller may retry."""


def owner_stores(owner: str) -> str:
    return keyspace.vector_store_owner(owner)


def meta_key(store_id: str) -> str:
    return keyspace.vector_store_key(store_id, "meta")


def files_key(store_id: str) -> str:
    return keyspace.vector_store_key(store_id, "files")


def file_order_key(store_id: str) -> str:
    return keyspace.vector_store_key(store_id, "forder")


def text_key(store_id: str, seq: int) -> str:
    return keyspace.vector_store_key(store_id, f"f:{seq}:text")


def vector_key(store_id: str, seq: int) -> str:
    return keyspace.vector_store_key(store_id, f"f:{seq}:vec")


def namespace_of(store_id: str) -> str:
    """The store's namespace in the shared embedding index."""
    return f"vs:{store_id}"


def entry_id(seq: int, chunk: int) -> int:
    return (seq << CHUNK_BITS) | chunk


def split_entry_id(entry: int) -> tuple[int, int]:
    return entry >> CHUNK_BITS, entry & (MAX_CHUNKS_PER_FILE - 1)


def new_store_id() -> str:
    return "vs_" + secrets.token_hex(12)


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


def is_store_id(value: str) -> bool:
    # Checked before a key is built: an id is part of a hash tag.
    return bool(_STORE_ID_RE.match(value))


def is_file_id(value: str) -> bool:
    return bool(_FILE_ID_RE.match(value))


@dataclass(slots=True)
class StoreRecord:
    id: str
    owner: str
    created_at: int
    name: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    expires_after: dict[str, Any] | None = None
    last_active_at: int = 0
    usage_bytes: int = 0
    file_count: int = 0
    chunk_count: int = 0

    def expires_at(self) -> int | None:
        if not self.expires_after:
            return None
        return self.last_active_at + int(self.expires_after["days"]) * 86400

    def is_expired(self, now_s: int) -> bool:
        expires_at = self.expires_at()
        return expires_at is not None and now_s >= expires_at


@dataclass(slots=True)
class FileRecord:
    id: str
    seq: int
    created_at: int
    filename: str
    usage_bytes: int
    chunk_count: int
    dim: int
    chunking_strategy: dict[str, Any]
    attributes: dict[str, Any]

    def to_json(self) -> bytes:
        return orjson.dumps({
            "id": self.id, "seq": self.seq, "created_at": self.created_at,
            "filename": self.filename, "usage_bytes": self.usage_bytes,
            "chunks": self.chunk_count, "dim": self.dim,
            "chunking_strategy": self.chunking_strategy, "attributes": self.attributes})

    @classmethod
    def from_json(cls, raw: bytes) -> FileRecord:
        doc = orjson.loads(raw)
        return cls(doc["id"], int(doc["seq"]), int(doc["created_at"]), doc["filename"],
                   int(doc["usage_bytes"]), int(doc["chunks"]), int(doc["dim"]),
                   doc["chunking_strategy"], doc["attributes"])


def _int(raw: bytes | None) -> int:
    return int(raw) if raw else 0


def _store_from_hash(store_id: str, fields: dict[bytes, bytes]) -> StoreRecord | None:
    if b"owner" not in fields:
        return None
    doc = orjson.loads(fields.get(b"doc") or b"{}")
    return StoreRecord(
        id=store_id, owner=fields[b"owner"].decode(), created_at=_int(fields.get(b"created_at")),
        name=doc.get("name") or "", metadata=doc.get("metadata") or {},
        expires_after=doc.get("expires_after"),
        last_active_at=_int(fields.get(b"last_active_at")),
        usage_bytes=_int(fields.get(b"usage_bytes")), file_count=_int(fields.get(b"files")),
        chunk_count=_int(fields.get(b"chunks")))


# KEYS: meta, files, forder, text, vec
# ARGV: file id, file JSON, score (ms), usage bytes, chunks, now (s)
# 1 when committed; 0 when the store is gone (its text and vector keys removed).
_COMMIT_FILE = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[4], KEYS[5])
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('HINCRBY', KEYS[1], 'usage_bytes', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'files', 1)
redis.call('HINCRBY', KEYS[1], 'chunks', ARGV[5])
redis.call('HSET', KEYS[1], 'last_active_at', ARGV[6])
return 1
"""

# KEYS: meta; ARGV: none. The next file number, or 0 when the store is gone
# (a bare HINCRBY would bring back a meta hash holding only ``seq``).
_NEXT_SEQ = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HINCRBY', KEYS[1], 'seq', 1)
"""

# KEYS: meta; ARGV: field, value, ... — sets them only on a store that exists.
_SET_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


class VectorStoreRepo:
    """Reads and writes of the schema above, on a ``redis.asyncio`` client
    made with ``decode_responses=False``."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._commit_file = redis.register_script(_COMMIT_FILE)
        self._set_if_exists = redis.register_script(_SET_IF_EXISTS)
        self._next_seq = redis.register_script(_NEXT_SEQ)

    # -- stores -------------------------------------------------------------

    async def create(self, record: StoreRecord) -> None:
        doc = orjson.dumps({"name": record.name, "metadata": record.metadata,
                            "expires_after": record.expires_after})
        score = time.time() * 1000
        await self._redis.hset(meta_key(record.id), mapping={
            "owner": record.owner, "created_at": record.created_at, "doc": doc,
            "last_active_at": record.last_active_at, "usage_bytes": 0, "files": 0,
            "chunks": 0, "seq": 0})
        # Not in the meta's transaction: these keys live in other slots. A
        # reader that finds an id without its meta skips it.
        await self._redis.zadd(ALL_STORES, {record.id: score})
        await self._redis.zadd(owner_stores(record.owner), {record.id: score})

    async def load(self, store_id: str) -> StoreRecord | None:
        fields = cast("dict[bytes, bytes]", await self._redis.hgetall(meta_key(store_id)))
        return _store_from_hash(store_id, fields)

    async def load_many(self, store_ids: Sequence[str]) -> list[StoreRecord | None]:
        pipe = self._redis.pipeline(transaction=False)
        for store_id in store_ids:
            pipe.hgetall(meta_key(store_id))
        found = await pipe.execute()
        return [_store_from_hash(store_id, fields)
                for store_id, fields in zip(store_ids, found, strict=True)]

    async def update_doc(self, record: StoreRecord) -> bool:
        """Writes name, metadata and expiry; False when the store is gone."""
        doc = orjson.dumps({"name": record.name, "metadata": record.metadata,
                            "expires_after": record.expires_after})
        done = await self._set_if_exists(keys=[meta_key(record.id)],
                                         args=["doc", doc, "last_active_at",
                                               record.last_active_at])
        return bool(done)

    async def touch(self, store_id: str, now_s: int) -> None:
        await self._set_if_exists(keys=[meta_key(store_id)], args=["last_active_at", now_s])

    async def delete(self, store_id: str, owner: str) -> bool:
        """Every key of the store; False when it was already gone."""
        meta, files = meta_key(store_id), files_key(store_id)

        async def attempt(pipe: Any) -> bool:
            if not await pipe.exists(meta):
                return False
            records = [FileRecord.from_json(raw) for raw in (await pipe.hvals(files))]
            pipe.multi()
            pipe.delete(meta, files, file_order_key(store_id),
                        *(text_key(store_id, r.seq) for r in records),
                        *(vector_key(store_id, r.seq) for r in records))
            await pipe.execute()
            return True

        existed = await self._transaction([meta, files], attempt)
        await self._redis.zrem(ALL_STORES, store_id)
        await self._redis.zrem(owner_stores(owner), store_id)
        return bool(existed)

    async def page_ids(self, owner: str | None, *, limit: int, descending: bool,
                       after: str | None, before: str | None) -> tuple[list[str], bool] | None:
        """One page of store ids (all stores when ``owner`` is None) and
        whether more follow; None when a cursor names no listed store."""
        key = ALL_STORES if owner is None else owner_stores(owner)
        return await _page(self._redis, key, limit=limit, descending=descending,
                           after=after, before=before)

    async def count(self) -> int:
        return int(await self._redis.zcard(ALL_STORES))

    async def all_ids(self) -> list[str]:
        members = cast("list[bytes]", await self._redis.zrange(ALL_STORES, 0, -1))
        return [raw.decode() for raw in members]

    async def forget(self, owner: str, store_ids: Sequence[str]) -> None:
        """Drops listed ids whose store is gone (a crash between writes)."""
        if store_ids:
            await self._redis.zrem(ALL_STORES, *store_ids)
            await self._redis.zrem(owner_stores(owner), *store_ids)

    # -- files --------------------------------------------------------------

    async def next_file_seq(self, store_id: str) -> int:
        """A new file number in the store; 0 when the store is gone."""
        return int(await self._next_seq(keys=[meta_key(store_id)]))

    async def write_chunks(self, store_id: str, seq: int, texts: Sequence[str],
                           vectors: np.ndarray) -> None:
        """A file's chunks, before its commit (see the module docstring)."""
        tkey = text_key(store_id, seq)
        pipe = self._redis.pipeline(transaction=False)
        pipe.delete(tkey)
        for start in range(0, len(texts), TEXT_WRITE_BATCH):
            batch = texts[start:start + TEXT_WRITE_BATCH]
            pipe.hset(tkey, mapping={str(start + i): text for i, text in enumerate(batch)})
        pipe.set(vector_key(store_id, seq), vectors.astype("<f2").tobytes())
        await pipe.execute()

    async def commit_file(self, store_id: str, record: FileRecord, now_s: int) -> bool:
        done = await self._commit_file(
            keys=[meta_key(store_id), files_key(store_id), file_order_key(store_id),
                  text_key(store_id, record.seq), vector_key(store_id, record.seq)],
            args=[record.id, record.to_json(), int(time.time() * 1000), record.usage_bytes,
                  record.chunk_count, now_s])
        return bool(done)

    async def discard_chunks(self, store_id: str, seq: int) -> None:
        await self._redis.delete(text_key(store_id, seq), vector_key(store_id, seq))

    async def files(self, store_id: str) -> dict[str, FileRecord]:
        raw = cast("dict[bytes, bytes]", await self._redis.hgetall(files_key(store_id)))
        return {key.decode(): FileRecord.from_json(value) for key, value in raw.items()}

    async def file(self, store_id: str, file_id: str) -> FileRecord | None:
        raw = cast("bytes | None", await self._redis.hget(files_key(store_id), file_id))
        return FileRecord.from_json(raw) if raw is not None else None

    async def file_page(self, store_id: str, *, limit: int, descending: bool,
                        after: str | None, before: str | None
                        ) -> tuple[list[FileRecord], bool] | None:
        page = await _page(self._redis, file_order_key(store_id), limit=limit,
                           descending=descending, after=after, before=before)
        if page is None:
            return None
        ids, has_more = page
        if not ids:
            return [], has_more
        raw = cast("list[bytes | None]", await self._redis.hmget(files_key(store_id), ids))
        return [FileRecord.from_json(value) for value in raw if value is not None], has_more

    async def set_file_attributes(self, store_id: str, file_id: str,
                                  attributes: dict[str, Any]) -> FileRecord | None:
        """The file with its attributes replaced; None when absent."""
        files = files_key(store_id)

        async def attempt(pipe: Any) -> FileRecord | None:
            raw = await pipe.hget(files, file_id)
            if raw is None:
                return None
            record = FileRecord.from_json(raw)
            record.attributes = attributes
            pipe.multi()
            pipe.hset(files, file_id, record.to_json())
            await pipe.execute()
            return record

        found: FileRecord | None = await self._transaction([files], attempt)
        return found

    async def delete_file(self, store_id: str, file_id: str) -> FileRecord | None:
        """Removes the file and its chunks; its record, or None when absent."""
        meta, files = meta_key(store_id), files_key(store_id)

        async def attempt(pipe: Any) -> FileRecord | None:
            raw = await pipe.hget(files, file_id)
            if raw is None:
                return None
            record = FileRecord.from_json(raw)
            pipe.multi()
            pipe.hdel(files, file_id)
            pipe.zrem(file_order_key(store_id), file_id)
            pipe.delete(text_key(store_id, record.seq), vector_key(store_id, record.seq))
            pipe.hincrby(meta, "usage_bytes", -record.usage_bytes)
            pipe.hincrby(meta, "files", -1)
            pipe.hincrby(meta, "chunks", -record.chunk_count)
            await pipe.execute()
            return record

        found: FileRecord | None = await self._transaction([files], attempt)
        return found

    # -- chunks -------------------------------------------------------------

    async def chunk_texts(self, store_id: str, entries: Sequence[int]) -> list[str | None]:
        """The texts of index entries, None for any that are gone."""
        pipe = self._redis.pipeline(transaction=False)
        for entry in entries:
            seq, chunk = split_entry_id(entry)
            pipe.hget(text_key(store_id, seq), str(chunk))
        found = await pipe.execute()
        return [raw.decode() if raw is not None else None for raw in found]

    async def file_vectors(self, store_id: str, record: FileRecord) -> np.ndarray | None:
        raw = cast("bytes | None", await self._redis.get(vector_key(store_id, record.seq)))
        if raw is None or len(raw) != record.chunk_count * record.dim * 2:
            return None
        return np.frombuffer(raw, dtype="<f2").reshape(record.chunk_count, record.dim)

    # -- helpers ------------------------------------------------------------

    async def _transaction(self, watched: list[str], attempt: Any) -> Any:
        async with self._redis.pipeline(transaction=True) as pipe:
            for _ in range(MAX_TRANSACTION_ATTEMPTS):
                try:
                    await pipe.watch(*watched)
                    return await attempt(pipe)
                except WatchError:
                    continue
                finally:
                    await pipe.reset()
        raise StoreConflict("the vector store kept changing; try again")


async def _page(redis: Redis, key: str, *, limit: int, descending: bool, after: str | None,
                before: str | None) -> tuple[list[str], bool] | None:
    """Cursor paging over a zset in (score, member) order, as OpenAI's
    ``after``/``before`` lists: by rank, so ties in score page correctly."""
    rank_of = redis.zrevrank if descending else redis.zrank
    total = int(await redis.zcard(key))
    first, last = 0, total  # [first, last) in the chosen order
    if after is not None:
        rank = cast("int | None", await rank_of(key, after))
        if rank is None:
            return None
        first = int(rank) + 1
    if before is not None:
        rank = cast("int | None", await rank_of(key, before))
        if rank is None:
            return None
        last = int(rank)
    if before is not None and after is None:
        # Paging backwards: the page nearest the cursor.
        first = max(first, last - limit)
        has_more = first > 0
    else:
        has_more = last - first > limit
        last = min(last, first + limit)
    if last <= first:
        return [], False
    if descending:
        raw = cast("list[bytes]", await redis.zrevrange(key, first, last - 1))
    else:
        raw = cast("list[bytes]", await redis.zrange(key, first, last - 1))
    return [member.decode() for member in raw], has_more

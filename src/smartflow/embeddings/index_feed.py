"""Keeps a node's shared index in step with every other node, through one Redis stream.

Redis is the source of truth; each node's ``SharedIndex`` is a cache of it.
Every write to any node's index is also an entry of the stream
``sf:idx:feed``, and each node runs one consumer (``IndexFeed.run``) that
applies the entries in stream order and records, in the segment's header,
the id of the last one applied:

* a fresh segment records 0-0, so its consumer replays the whole stream:
  a node (re)starting rebuilds its index from Redis;
* a consumer restarted over a segment that survived (a worker restart)
  continues after the recorded id, applying nothing twice.

Entries (fields)::

    op=add    ns, g (group), id (entry id), v (float16 bytes of the unit vector), node
    op=del    ns, ids (little-endian int64s), node
    op=clear  ns, node                 every entry of the namespace

The publishing worker applies its own write to its node's index at once, so
it is searchable there before any consumer runs. When the consumer later
meets that entry it finds the same key with the same vector already stored
and leaves it alone (``skip_unchanged``): own-node adds cost nothing, yet a
node replaying the stream into a fresh segment does apply its own old
entries, and when two nodes write one key the last entry in the stream wins
on every node. Removals are idempotent and applied everywhere.

The stream is trimmed (``MAXLEN ~``): a segment that fell further behind
than the stream's length misses the trimmed entries. Entries for cache
records that expired in Redis stay in the index until compaction or
eviction; the cache checks the record when it serves a hit.

The consumer never dies of a Redis error: it logs, backs off (0.1 s doubling
to 5 s) and retries from the recorded id. An entry it cannot parse is logged
and skipped, so one bad entry cannot wedge a node.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import numpy as np

from smartflow.store import keyspace

if TYPE_CHECKING:
    import redis.asyncio

    from smartflow.embeddings.shared_index import SharedIndex

log = logging.getLogger(__name__)

DEFAULT_STREAM_KEY = keyspace.INDEX_FEED
BATCH = 1000
_BACKOFF_MIN_S = 0.1
_BACKOFF_MAX_S = 5.0

Position = tuple[int, int]


def parse_stream_id(raw: bytes | str) -> Position:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class IndexFeed:
    """Publisher and (one per node) consumer of the index stream for one ``SharedIndex``."""

    def __init__(self, redis: redis.asyncio.Redis, index: SharedIndex, *,
                 stream_key: str = DEFAULT_STREAM_KEY, node_id: str,
                 maxlen: int = 1_000_000) -> None:
        # A Redis Cluster client has no single pool; its options live on the client.
        pool = getattr(redis, "connection_pool", None)
        options = pool.connection_kwargs if pool is not None else getattr(
            redis, "connection_kwargs", {})
        if options.get("decode_responses"):
            # Vectors travel as raw float16 bytes, which do not decode as text.
            raise ValueError("IndexFeed needs a Redis client with decode_responses=False")
        self._redis = redis
        self._index = index
        self._key = stream_key
        self._node = node_id
        self._maxlen = maxlen

    # ------------------------------------------------------------------ publish

    def _unit_f16(self, vector: np.ndarray) -> np.ndarray:
        row = np.asarray(vector, dtype=np.float32).reshape(-1)
        if row.shape != (self._index.dim,):
            raise ValueError(f"vector must have {self._index.dim} values, got {row.shape}")
        norm = float(np.sqrt(row @ row))
        if not np.isfinite(norm) or norm == 0.0:
            raise ValueError("vector must be finite and non-zero")
        return (row / norm).astype(np.float16)

    async def publish(self, namespace: str, group: int, entry_id: int,
                      vector: np.ndarray) -> None:
        """Add to the stream, then to this node's index (searchable here at once)."""
        half = self._unit_f16(vector)
        await self._redis.xadd(
            self._key,
            {"op": "add", "ns": namespace, "g": int(group), "id": int(entry_id),
             "v": half.tobytes(), "node": self._node},
            maxlen=self._maxlen, approximate=True,
        )
        # The float16 vector, exactly as every other node will read it from
        # the stream: all nodes store the same row.
        self._index.add(namespace, group, entry_id, half.astype(np.float32))

    async def publish_removal(self, namespace: str, entry_ids: Sequence[int] | None) -> None:
        """Remove entries (None: the whole namespace) on every node, this one at once."""
        fields: dict[str, str | bytes]
        if entry_ids is None:
            fields = {"op": "clear", "ns": namespace, "node": self._node}
        else:
            ids = np.asarray(entry_ids, dtype="<i8").reshape(-1)
            fields = {"op": "del", "ns": namespace, "ids": ids.tobytes(), "node": self._node}
        await self._redis.xadd(self._key, fields,  # type: ignore[arg-type]
                               maxlen=self._maxlen, approximate=True)
        if entry_ids is None:
            self._index.clear(namespace)
        else:
            self._index.remove(namespace, entry_ids)

    # ------------------------------------------------------------------ consume

    async def poll(self, block_ms: int | None = None) -> int:
        """Read one batch after the recorded id, apply it, record its last id.

        ``block_ms`` None returns at once when there is nothing new. Returns
        the number of stream entries read.
        """
        position = self._index.feed_position()
        reply = await self._redis.xread({self._key: f"{position[0]}-{position[1]}"},
                                        count=BATCH, block=block_ms)
        if not reply:
            return 0
        # RESP2 answers [[key, entries]]; a RESP3 client answers {key: entries}.
        entries = cast("Sequence[tuple[bytes, dict[bytes, bytes]]]",
                       next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1])
        if not entries:
            return 0
        self._apply(entries)
        last = parse_stream_id(entries[-1][0])
        if not self._index.save_feed_position(position, last):
            log.warning("index feed: the index was reset while a batch was applied; "
                        "replaying from its recorded position")
        return len(entries)

    async def catch_up(self) -> int:
        """Apply everything in the stream after the recorded id (rebuild a fresh
        segment); returns the number of entries read."""
        total = 0
        while read := await self.poll(None):
            total += read
        return total

    async def run(self, *, block_ms: int = 1000, maintain_every_s: float | None = None) -> None:
        """The node's one consumer: forever read, apply, record; never dies of an error.

        With ``maintain_every_s`` it also runs ``index.maintain()`` (compaction,
        IVF training) in a thread at that interval.
        """
        maintenance = (asyncio.create_task(self._maintain_forever(maintain_every_s))
                       if maintain_every_s else None)
        delay = _BACKOFF_MIN_S
        task = asyncio.current_task()
        try:
            while True:
                if task is not None and task.cancelling():
                    # On Python 3.11 asyncio.wait_for (redis-py reads pending
                    # pushes with it) returns its result instead of raising
                    # when a cancel lands as the read completes: the cancel
                    # is recorded on the task but swallowed. Honour it here.
                    raise asyncio.CancelledError
                try:
                    await self.poll(block_ms)
                    delay = _BACKOFF_MIN_S
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the consumer must outlive any error
                    log.warning("index feed %s: %s: %s; retrying in %.1f s", self._key,
                                type(exc).__name__, exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _BACKOFF_MAX_S)
        finally:
            if maintenance is not None:
                maintenance.cancel()
                await asyncio.gather(maintenance, return_exceptions=True)

    async def _maintain_forever(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await asyncio.to_thread(self._index.maintain)
            except Exception:  # maintenance failing must not stop the feed
                log.exception("shared index maintenance failed")

    def _apply(self, entries: Sequence[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Apply a batch in stream order; consecutive adds to one namespace go in one call."""
        run_ns: str | None = None
        groups: list[int] = []
        ids: list[int] = []
        vectors: list[np.ndarray] = []

        def flush() -> None:
            try:
                if run_ns is not None and ids:
                    self._index.add_many(run_ns, groups, ids, np.stack(vectors),
                                         skip_unchanged=True)
            except ValueError as exc:  # entries are checked below; this is a last guard
                log.warning("index feed: skipping %d entries of %r: %s", len(ids), run_ns, exc)
            finally:
                groups.clear()
                ids.clear()
                vectors.clear()

        for stream_id, fields in entries:
            try:
                op = fields[b"op"]
                namespace = fields[b"ns"].decode()
                if op == b"add":
                    vector = np.frombuffer(fields[b"v"], dtype=np.float16).astype(np.float32)
                    if vector.shape != (self._index.dim,):
                        raise ValueError(f"vector of {vector.shape[0]} values")
                    if not np.isfinite(vector).all() or not vector.any():
                        raise ValueError("vector not finite or zero")
                    group, entry_id = int(fields[b"g"]), int(fields[b"id"])
                    if namespace != run_ns:
                        flush()
                        run_ns = namespace
                    groups.append(group)
                    ids.append(entry_id)
                    vectors.append(vector)
                    continue
                flush()
                if op == b"del":
                    self._index.remove(namespace, np.frombuffer(fields[b"ids"], dtype="<i8"))
                elif op == b"clear":
                    self._index.clear(namespace)
                else:
                    raise ValueError(f"unknown op {op!r}")
            except (KeyError, ValueError, UnicodeDecodeError) as exc:
                log.warning("index feed: skipping entry %r: %s", stream_id, exc)
        flush()

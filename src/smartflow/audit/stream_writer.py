"""The hot path's half of the audit log: records into a capped Redis stream.

``append`` only puts a finished call's snapshot (``RecordBuilder.snapshot``)
in a per-worker buffer; a flush a moment later (or as soon as a batch is
full) builds the records of all of them, packs them into one stream entry
(``audit.framing``) and appends it with one XADD, pipelined
with the INCRBY that counts the records into the backlog counter. So a busy worker pays one
round trip and one XADD per few hundred calls, and no call waits for Redis.
When Redis cannot be reached the batch goes back to the front of the buffer
and is retried with back-off: a Redis blip delays records, it does not lose
them. Only a buffer past its bound (a long outage at full load) drops
records, newest first, and counts them (``smartflow_audit_records_dropped``).
On shutdown the worker drains the buffer before it exits.

The stream's own cap (``MAXLEN ~``, in entries) protects Redis when no shipper
runs for a long time; a running shipper trims what it has committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable
from operator import itemgetter

from smartflow.audit.framing import pack
from smartflow.audit.record import Snapshot, snapshot_call_id
from smartflow.store.fast_client import StoreClient
from smartflow.store.keyspace import AUDIT_QUEUED, AUDIT_STREAM
from smartflow.store.resp import ReplyError

logger = logging.getLogger("smartflow.audit")

# A longer window means fewer, larger appends: each costs Redis and the worker
# a write and a wake-up whatever its size. A record waits at most this long;
# a flush starts at once when MAX_BATCH_RECORDS records, or MAX_HELD_BYTES of
# captured bodies, are waiting. Measured in a worker at c=32: non-streamed
# calls (~0.6 KB of bodies each) cost about 1% less CPU per call with 50 ms
# than with 10 ms, streamed ones (~5.5 KB of SSE chunks each) about 2% more:
# what costs is the bytes kept waiting (the CPU's caches), not the wait.
FLUSH_DELAY_S = 0.05
MAX_BATCH_RECORDS = 512
MAX_HELD_BYTES = 64 * 1024
MAX_BATCH_BYTES = 2 * 1024 * 1024
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 2.0

Entry = tuple[bytes, bytes, bytes]
_HELD = itemgetter(-1)  # a snapshot's last item: the bytes of body it keeps


class AuditStreamWriter:
    """``append(snapshot)`` keeps a finished call's snapshot; the flush builds
    the records of all buffered in one loop (``build``) and appends them."""

    __slots__ = ("_build", "_built", "_client", "_failing", "_flushing", "_held", "_idle",
                 "_max_buffered", "_max_len", "_pending", "_scheduled", "_task", "_timer",
                 "_urgent", "appended", "dropped", "failures")

    def __init__(self, client: StoreClient,
                 build: Callable[[Iterable[Snapshot]], list[Entry]] | None = None, *,
                 max_len: int, max_buffered: int = 50_000) -> None:
        self._client = client
        self._build = build
        self._max_len = max_len
        self._max_buffered = max_buffered
        self._pending: deque[Snapshot] = deque()
        self._built: deque[Entry] = deque()  # records ready (a failed append's come back here)
        self._held = 0  # bytes of body the pending snapshots keep
        self._scheduled = False
        self._urgent = False  # the scheduled flush is due at once
        self._timer: asyncio.TimerHandle | None = None
        self._flushing = False
        self._failing = False  # Redis refused the last append: build records at once
        self._task: asyncio.Task[None] | None = None
        self._idle: asyncio.Event | None = None
        # Counters the worker's metrics loop reads (and resets) about once a second.
        self.appended = 0
        self.dropped = 0
        self.failures = 0

    @property
    def buffered(self) -> int:
        return len(self._pending) + len(self._built)

    def append(self, snapshot: Snapshot) -> None:
        """Queue a finished call's snapshot; never blocks, never raises."""
        if len(self._pending) + len(self._built) >= self._max_buffered:
            self.dropped += 1
            return
        self._pending.append(snapshot)
        self._held += snapshot[-1]
        if self._failing:
            # While Redis is away records pile up: keep them built (bytes, not
            # references to each call's headers, principal and cost).
            self._build_waiting()
        if self._flushing:
            return  # the running flush takes it
        if not self._scheduled:
            self._schedule()
        elif not self._urgent and self._is_full():
            if self._timer is not None:
                self._timer.cancel()
            self._schedule()

    def append_record(self, record: bytes, request: bytes, answer: bytes) -> None:
        """Queue a record already built (by something other than an LLM call)."""
        if len(self._pending) + len(self._built) >= self._max_buffered:
            self.dropped += 1
            return
        self._built.append((record, request, answer))
        if not (self._scheduled or self._flushing):
            self._schedule()

    def _is_full(self) -> bool:
        return self._held >= MAX_HELD_BYTES or self.buffered >= MAX_BATCH_RECORDS

    def _schedule(self) -> None:
        self._scheduled = True
        self._urgent = self._is_full()
        self._timer = asyncio.get_running_loop().call_later(
            0.0 if self._urgent else FLUSH_DELAY_S, self._start_flush)

    def _start_flush(self) -> None:
        self._scheduled = False
        self._timer = None
        if self._flushing or not self.buffered:
            return
        self._flushing = True
        self._task = asyncio.get_running_loop().create_task(self._flush())

    def _build_all(self, snapshots: list[Snapshot]) -> list[Entry]:
        try:
            return self._build(snapshots)  # type: ignore[misc]
        except Exception:  # a bug: build one by one, losing only the record that fails
            logger.exception("audit: building a batch of records failed")
        entries: list[Entry] = []
        for snapshot in snapshots:
            try:
                entries += self._build((snapshot,))  # type: ignore[misc]
            except Exception:
                logger.exception("audit: the record of call %s could not be built",
                                 snapshot_call_id(snapshot))
                self.dropped += 1
        return entries

    def _build_waiting(self) -> None:
        snapshots = list(self._pending)
        self._pending.clear()
        self._held = 0
        self._built.extend(self._build_all(snapshots))

    def _take_batch(self) -> list[Entry]:
        """Up to MAX_BATCH_RECORDS records (a failed append's first) and about
        MAX_BATCH_BYTES at most."""
        built, pending = self._built, self._pending
        if pending and len(built) < MAX_BATCH_RECORDS:
            take = min(len(pending), MAX_BATCH_RECORDS)
            taken = [pending.popleft() for _ in range(take)]
            self._held = sum(map(_HELD, pending)) if pending else 0
            built.extend(self._build_all(taken))
        batch: list[Entry] = []
        size = 0
        while built and len(batch) < MAX_BATCH_RECORDS and size < MAX_BATCH_BYTES:
            entry = built.popleft()
            batch.append(entry)
            size += len(entry[0]) + len(entry[1]) + len(entry[2])
        return batch

    async def _flush(self) -> None:
        delay = RETRY_FIRST_S
        try:
            while self.buffered:
                batch = self._take_batch()
                if not batch:
                    continue
                count = len(batch)
                try:
                    # Two commands in one write, no script: a script's arguments
                    # are copied into Lua, and the packed batch is large. The
                    # counter is only the backlog metric, so it need not be atomic
                    # with the append.
                    client = self._client
                    await asyncio.gather(
                        client.execute("XADD", AUDIT_STREAM, "MAXLEN", "~", self._max_len,
                                       "*", "n", count, "b", pack(batch), key=AUDIT_STREAM),
                        client.execute("INCRBY", AUDIT_QUEUED, count, key=AUDIT_QUEUED))
                except (TimeoutError, OSError, ReplyError) as exc:
                    # StoreUnavailable is an OSError. The batch goes back in
                    # front, in order; the sinks are idempotent by call id,
                    # so a batch that half-landed before the error is harmless.
                    self._built.extendleft(reversed(batch))
                    self._build_waiting()
                    self._failing = True
                    self.failures += 1
                    logger.warning("audit: could not append %d records to the stream (%s: %s); "
                                   "retrying in %.2f s", len(batch), type(exc).__name__, exc,
                                   delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                self.appended += count
                self._failing = False
                delay = RETRY_FIRST_S
                if not self._is_full() and self._idle is None:
                    # What came in meanwhile waits for the next window: under
                    # load, back-to-back appends of a few records each would
                    # cost a write and a wake-up per round trip.
                    break
        finally:
            self._flushing = False
            self._task = None
            if self._idle is not None:
                if not self.buffered:
                    self._idle.set()
            elif self.buffered and not self._scheduled:
                self._schedule()

    async def drain(self, timeout_s: float) -> bool:
        """Send everything buffered (shutdown); False when it could not in time."""
        if not self.buffered and not self._flushing:
            return True
        self._idle = asyncio.Event()
        if not self._flushing:
            if self._timer is not None:
                self._timer.cancel()
            self._start_flush()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            logger.error("audit: %d records not appended to the stream before shutdown",
                         self.buffered)
            return False
        finally:
            self._idle = None
        return not self.buffered

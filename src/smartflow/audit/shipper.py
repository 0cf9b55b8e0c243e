"""The shipper: audit records from the Redis stream into the sinks, exactly once.

One shipper per node reads the stream through a consumer group. A batch is
written to every sink (each write one transaction, idempotent by call id),
and only then acknowledged (XACK). So:

* a sink that is down holds its batch: the shipper retries it with back-off,
  reads nothing new meanwhile, and the backlog waits in the stream
  (``smartflow_audit_backlog``);
* a shipper killed between a commit and its acknowledgement finds the batch
  still pending under its consumer name when it is restarted (the name is
  the node and slot, not the pid), writes it again, and the sinks drop the
  duplicates;
* a shipper that never comes back (its node is gone) leaves pending entries
  that another node's shipper claims with XAUTOCLAIM once they have been idle
  for ``[audit] claim_idle`` seconds.

Acknowledged entries are trimmed from the stream (XTRIM MINID up to the
oldest entry still pending), so the stream holds just the backlog.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from smartflow.audit.energy import EnergyModel, load_energy_model
from smartflow.audit.entry import AuditEntry, Sink, SinkUnavailable
from smartflow.audit.framing import unpack
from smartflow.audit.record import record_fields
from smartflow.audit.redact import scrub_key_formats, scrub_text_fields
from smartflow.audit.replay import answer_of_body, question_of
from smartflow.config import AuditSettings
from smartflow.dialects.stream_text import unescape
from smartflow.store.fast_client import Script, StoreClient
from smartflow.store.keyspace import AUDIT_DEAD_LETTER, AUDIT_GROUP, AUDIT_QUEUED, AUDIT_STREAM
from smartflow.store.resp import ReplyError

logger = logging.getLogger("smartflow.audit")

DEAD_LETTER_MAX_LEN = 10000
READ_BLOCK_MS = 500
RETRY_FIRST_S = 0.2
STORE_RETRY_MAX_S = 2.0
STATUS_INTERVAL_S = 1.0
MAINTAIN_INTERVAL_S = 60.0
FAILURE_LOG_INTERVAL_S = 10.0

RawEntry = tuple[bytes, Any]  # (stream id, [field, value, ...] or None when trimmed)

# KEYS: the stream, the backlog counter. ARGV: records acknowledged, then the ids.
_ACKNOWLEDGE = Script("""
redis.call('XACK', KEYS[1], '""" + AUDIT_GROUP + """', unpack(ARGV, 2))
local left = redis.call('DECRBY', KEYS[2], ARGV[1])
if left < 0 then redis.call('SET', KEYS[2], 0) end
return left
""")


def _text(data: bytes | None) -> str | None:
    if not data:
        return None
    return data.decode("utf-8", "replace")


def _cut(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit]


def decode_record(record_json: bytes, request: bytes, answer: bytes, *, max_text: int,
                  energy: EnergyModel) -> AuditEntry:
    """One framed record as an AuditEntry; ValueError when it is not a record."""
    wire = orjson.loads(record_json)
    if not isinstance(wire, list):
        raise ValueError("the record is not an array")  # noqa: TRY004 - bad data, one kind
    record = record_fields(wire, energy)
    call_id = record.pop("call_id")
    ts = record.pop("ts")
    if not isinstance(call_id, str) or not call_id or not isinstance(ts, int | float):
        raise ValueError("the record has no call_id or ts")
    scrub_text_fields(record)
    entry = AuditEntry(call_id=call_id, ts=datetime.fromtimestamp(ts, UTC), record=record)
    if request:
        request = scrub_key_formats(request)
        entry.request_body = _text(request)
        entry.question = _cut(question_of(request), max_text)
    if answer:
        answer = scrub_key_formats(answer)
        if record.get("stream") and record.get("status") == 200:
            entry.answer = _cut(unescape(answer), max_text)
        else:
            entry.response_body = _text(answer)
            entry.answer = _cut(answer_of_body(answer), max_text)
    return entry


class ShipperMetrics:
    """The shipper's own figures, written straight to the shared metric files
    (it is not on any request path)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge

        self.backlog = Gauge("smartflow_audit_backlog",
                             "Audit records in the stream not yet committed to every sink.",
                             multiprocess_mode="livemax", registry=None)
        self.shipped = Counter("smartflow_audit_shipped",
                               "Audit records committed to a sink.", ("sink",), registry=None)
        self.sink_up = Gauge("smartflow_audit_sink_up",
                             "1 when the sink took the last write, 0 while it is failing.",
                             ("sink",), multiprocess_mode="livemax", registry=None)
        self.sink_failures = Counter("smartflow_audit_sink_failures",
                                     "Failed attempts to write a batch to a sink.", ("sink",),
                                     registry=None)
        self.bad_records = Counter("smartflow_audit_bad_records",
                                   "Stream entries that were not audit records (moved to the "
                                   "dead-letter stream).", registry=None)


class Shipper:
    def __init__(self, client: StoreClient, sinks: Sequence[Sink], settings: AuditSettings,
                 *, consumer: str, metrics: ShipperMetrics | None = None) -> None:
        self._client = client
        self.sinks = tuple(sinks)
        self._settings = settings
        self._consumer = consumer
        self._metrics = metrics
        self._energy = load_energy_model()
        self._opened: set[str] = set()
        self._quiet_until: dict[str, float] = {}  # sink -> when its next failure is logged
        self._own_pending_done = False
        self._has_group = False
        self._claim_cursor = b"0-0"
        self._next_claim = 0.0
        self._next_status = 0.0
        self._next_maintain = 0.0
        self.backlog = 0  # as last measured
        self.max_backlog = 0

    # -- the loop -------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        delay = RETRY_FIRST_S
        while not stopping.is_set():
            try:
                await self._step(stopping)
                delay = RETRY_FIRST_S
            except (TimeoutError, OSError, ReplyError) as exc:
                if isinstance(exc, ReplyError) and ("NOGROUP" in str(exc)
                                                    or "no such key" in str(exc)):
                    # The stream or its group is gone (a Redis without persistence
                    # restarted): make them again on the next step.
                    self._has_group = False
                    continue
                logger.warning("audit shipper: Redis unavailable (%s: %s); retrying in %.1f s",
                               type(exc).__name__, exc, delay)
                await _sleep_unless(stopping, delay)
                delay = min(delay * 2, STORE_RETRY_MAX_S)

    async def _step(self, stopping: asyncio.Event) -> None:
        now = time.monotonic()
        if not self._has_group:
            await self._ensure_group()
            self._has_group = True
        if now >= self._next_status:
            self._next_status = now + STATUS_INTERVAL_S
            await self._trim_and_measure()
        if now >= self._next_maintain:
            self._next_maintain = now + MAINTAIN_INTERVAL_S
            await self._maintain()
        entries = await self._next_entries(now)
        if entries:
            await self._ship(entries, stopping)

    async def _next_entries(self, now: float) -> list[RawEntry]:
        # An entry is one worker flush: one record at low load, dozens at high.
        batch = max(1, self._settings.batch_size // 4)
        if not self._own_pending_done:
            # What this consumer read and did not acknowledge before it died.
            entries = await self._read("0", batch, block=False)
            if entries:
                return entries
            self._own_pending_done = True
        if now >= self._next_claim:
            claimed = await self._claim(batch)
            if claimed:
                return claimed
            self._next_claim = now + self._settings.claim_idle / 2
        return await self._read(">", batch, block=True)

    async def _read(self, start: str, count: int, *, block: bool) -> list[RawEntry]:
        args: list[Any] = ["XREADGROUP", "GROUP", AUDIT_GROUP, self._consumer, "COUNT", count]
        if block:
            args += ["BLOCK", READ_BLOCK_MS]
        reply = await self._client.execute(*args, "STREAMS", AUDIT_STREAM, start,
                                           key=AUDIT_STREAM)
        if not reply:
            return []
        return [(entry[0], entry[1]) for entry in reply[0][1]]

    async def _claim(self, count: int) -> list[RawEntry]:
        idle_ms = int(self._settings.claim_idle * 1000)
        reply = await self._client.execute(
            "XAUTOCLAIM", AUDIT_STREAM, AUDIT_GROUP, self._consumer, idle_ms,
            self._claim_cursor, "COUNT", count, key=AUDIT_STREAM)
        self._claim_cursor = reply[0]
        entries = [(entry[0], entry[1]) for entry in reply[1] if entry is not None]
        if entries:
            logger.info("audit shipper: claimed %d records left pending by another shipper",
                        len(entries))
        return entries

    async def _ship(self, raw: list[RawEntry], stopping: asyncio.Event) -> None:
        ids = [entry_id for entry_id, _ in raw]
        entries: list[AuditEntry] = []
        records = 0
        max_text = max(self._settings.max_body_bytes, 1)
        for entry_id, fields in raw:
            if fields is None:  # trimmed while pending: nothing left to write
                continue
            values = _pairs(fields)
            try:
                count = int(values.get(b"n", b"0"))
                framed = list(unpack(values[b"b"]))
            except (KeyError, ValueError):
                await self._dead_letter(entry_id, fields)
                continue
            records += count
            for record in framed:
                try:
                    entries.append(decode_record(*record, max_text=max_text,
                                                 energy=self._energy))
                except (ValueError, TypeError, OverflowError, OSError):
                    await self._dead_letter(entry_id, [b"r", *record[:1], b"q", record[1],
                                                       b"a", record[2]])
        size = self._settings.batch_size
        for start in range(0, len(entries), size):
            if not await self._deliver(entries[start:start + size], stopping):
                return  # stopping: the batch stays pending for this consumer's next life
        await self._client.run_script(_ACKNOWLEDGE, [AUDIT_STREAM, AUDIT_QUEUED],
                                      [records, *ids])

    async def _deliver(self, entries: list[AuditEntry], stopping: asyncio.Event) -> bool:
        """Write to every sink; True once all have committed, False if stopping first."""
        waiting = list(self.sinks)
        delay = RETRY_FIRST_S
        while True:
            for sink in tuple(waiting):
                if await self._write(sink, entries):
                    waiting.remove(sink)
            if not waiting:
                return True
            await self._measure_while_waiting()
            if await _sleep_unless(stopping, delay):
                return False
            delay = min(delay * 2, self._settings.sink_retry_max)

    async def _measure_while_waiting(self) -> None:
        # The backlog grows while a sink is down: keep its figure current.
        now = time.monotonic()
        if now < self._next_status:
            return
        self._next_status = now + STATUS_INTERVAL_S
        try:
            await self._trim_and_measure()
        except (TimeoutError, OSError, ReplyError):
            pass  # Redis is down too: measured again on the next round

    async def _opened_sink(self, sink: Sink) -> Sink:
        """``sink``, opened first if it is new or failed since (the callers drop
        it from ``_opened`` on SinkUnavailable)."""
        if sink.name not in self._opened:
            await sink.open()
            self._opened.add(sink.name)
        return sink

    async def _write(self, sink: Sink, entries: list[AuditEntry]) -> bool:
        metrics = self._metrics
        try:
            await (await self._opened_sink(sink)).write(entries)
        except SinkUnavailable as exc:
            self._opened.discard(sink.name)
            now = time.monotonic()
            if now >= self._quiet_until.get(sink.name, 0.0):  # one line per sink per interval
                self._quiet_until[sink.name] = now + FAILURE_LOG_INTERVAL_S
                logger.warning("audit shipper: %s sink unavailable; the backlog waits in the "
                               "stream (%s)", sink.name, exc)
            if metrics is not None:
                metrics.sink_failures.labels(sink.name).inc()
                metrics.sink_up.labels(sink.name).set(0)
            return False
        if self._quiet_until.pop(sink.name, None) is not None:
            logger.warning("audit shipper: %s sink is back", sink.name)
        if metrics is not None:
            metrics.shipped.labels(sink.name).inc(len(entries))
            metrics.sink_up.labels(sink.name).set(1)
        return True

    async def _dead_letter(self, entry_id: bytes, fields: list[bytes]) -> None:
        logger.error("audit shipper: stream entry %s holds something that is not an audit "
                     "record; moved to %s", entry_id.decode(errors="replace"), AUDIT_DEAD_LETTER)
        await self._client.execute("XADD", AUDIT_DEAD_LETTER, "MAXLEN", "~",
                                   DEAD_LETTER_MAX_LEN, "*", "id", entry_id, *fields,
                                   key=AUDIT_DEAD_LETTER)
        if self._metrics is not None:
            self._metrics.bad_records.inc()

    # -- housekeeping -------------------------------------------------------------------

    async def _ensure_group(self) -> None:
        try:
            await self._client.execute("XGROUP", "CREATE", AUDIT_STREAM, AUDIT_GROUP, "0",
                                       "MKSTREAM", key=AUDIT_STREAM)
        except ReplyError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _trim_and_measure(self) -> None:
        """Drop what every sink has (everything before the oldest pending or
        undelivered entry) and read the backlog (records appended and not yet
        acknowledged, counted by the append and acknowledge scripts)."""
        groups = await self._client.execute("XINFO", "GROUPS", AUDIT_STREAM, key=AUDIT_STREAM)
        name = AUDIT_GROUP.encode()
        info = next((fields for fields in map(_pairs, groups) if fields.get(b"name") == name),
                    None)
        if info is None:
            return
        pending = int(info.get(b"pending") or 0)
        last_delivered = info.get(b"last-delivered-id") or b"0-0"
        if pending:
            summary = await self._client.execute("XPENDING", AUDIT_STREAM, AUDIT_GROUP,
                                                 key=AUDIT_STREAM)
            oldest = summary[1]
        else:
            oldest = _next_id(last_delivered)
        if oldest:
            await self._client.execute("XTRIM", AUDIT_STREAM, "MINID", oldest, key=AUDIT_STREAM)
        backlog = max(0, int(await self._client.execute("GET", AUDIT_QUEUED, key=AUDIT_QUEUED)
                             or 0))
        self.backlog = backlog
        self.max_backlog = max(self.max_backlog, backlog)
        if self._metrics is not None:
            self._metrics.backlog.set(backlog)

    async def _maintain(self) -> None:
        now = datetime.now(UTC)
        for sink in self.sinks:
            try:
                await (await self._opened_sink(sink)).maintain(now)
            except SinkUnavailable as exc:
                self._opened.discard(sink.name)
                logger.warning("audit shipper: %s housekeeping failed (%s)", sink.name, exc)

    async def aclose(self) -> None:
        for sink in self.sinks:
            await sink.aclose()


def _pairs(flat: Sequence[Any]) -> dict[bytes, Any]:
    return dict(zip(flat[::2], flat[1::2], strict=False))


def _next_id(entry_id: bytes) -> bytes:
    ms, _, seq = entry_id.partition(b"-")
    return ms + b"-" + str(int(seq or b"0") + 1).encode()


async def _sleep_unless(stopping: asyncio.Event, seconds: float) -> bool:
    """Sleep; True when ``stopping`` was set meanwhile (or already)."""
    try:
        await asyncio.wait_for(stopping.wait(), seconds)
    except TimeoutError:
        return False
    return True


def build_sinks(settings: AuditSettings) -> list[Sink]:
    """The sinks ``[audit]`` configures (their modules imported only if used)."""
    sinks: list[Sink] = []
    if settings.postgres_dsn:
        from smartflow.audit.postgres_sink import PostgresSink

        sinks.append(PostgresSink(settings.postgres_dsn, retention_days=settings.retention_days))
    if settings.mongodb_url:
        from smartflow.audit.mongo_sink import MongoSink

        sinks.append(MongoSink(settings.mongodb_url, database=settings.mongodb_database,
                               retention_days=settings.retention_days))
    return sinks

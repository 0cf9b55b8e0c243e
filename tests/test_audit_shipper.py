"""The audit stream and the shipper against a real Redis: records appended by
the worker's writer reach the sink exactly once, through a sink outage, a
Redis outage, a shipper that died before it acknowledged, and a dead
consumer's pending entries. The sink here is an in-memory one (the
PostgreSQL and MongoDB sinks have their own tests; the whole path runs in
test_audit_e2e)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from datetime import datetime

import orjson
import pytest
from harness.waiting import wait_until as wait_until_async

from smartflow.audit.entry import AuditEntry, SinkUnavailable
from smartflow.audit.record import RECORD_VERSION, WIRE_FIELDS
from smartflow.audit.shipper import Shipper
from smartflow.audit.stream_writer import AuditStreamWriter
from smartflow.config import AuditSettings
from smartflow.store.fast_client import StoreClient, create_store_client
from smartflow.store.keyspace import AUDIT_DEAD_LETTER, AUDIT_GROUP, AUDIT_QUEUED, AUDIT_STREAM

SETTINGS = AuditSettings(batch_size=50, claim_idle=0.3, sink_retry_max=0.2)


class MemorySink:
    """Counts every write of every call id; fails while ``down`` is set."""

    name = "memory"

    def __init__(self) -> None:
        self.rows: dict[str, AuditEntry] = {}
        self.writes: Counter[str] = Counter()
        self.down = False
        self.failed_writes = 0

    async def open(self) -> None:
        if self.down:
            self.failed_writes += 1
            raise SinkUnavailable("memory sink is down")

    async def write(self, entries: Sequence[AuditEntry]) -> None:
        if self.down:
            self.failed_writes += 1
            raise SinkUnavailable("memory sink is down")
        for entry in entries:
            self.writes[entry.call_id] += 1
            self.rows.setdefault(entry.call_id, entry)

    async def maintain(self, now: datetime) -> None:
        return None

    async def aclose(self) -> None:
        return None


def _record(n: int) -> tuple[bytes, bytes, bytes]:
    """A record as a gateway worker sends it (see audit.record.WIRE_FIELDS)."""
    fields = dict.fromkeys(WIRE_FIELDS)
    fields.update(v=RECORD_VERSION, call_id=f"call-{n:06d}", ts=1_760_000_000.0 + n,
                  kind="llm", status=200, model="mock-gpt", stream=False, latency_s=0.01,
                  policies=[], guardrails=[], bodies_truncated=False)
    question = b'{"messages":[{"role":"user","content":"q%d"}]}' % n
    return orjson.dumps(list(fields.values())), question, b""


@pytest.fixture
async def clean_stream(store_client: StoreClient) -> StoreClient:
    await store_client.execute("DEL", AUDIT_STREAM, AUDIT_DEAD_LETTER, AUDIT_QUEUED,
                               key=AUDIT_STREAM)
    return store_client


async def _append(client: StoreClient, count: int, start: int = 0, per_entry: int = 10
                  ) -> None:
    """``count`` records in entries of ``per_entry`` (as busy workers' flushes)."""
    writer = AuditStreamWriter(client, max_len=100_000)
    for first in range(start, start + count, per_entry):
        for n in range(first, min(first + per_entry, start + count)):
            writer.append_record(*_record(n))
        assert await writer.drain(10)


async def _run(shipper: Shipper) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stopping = asyncio.Event()
    return stopping, asyncio.get_running_loop().create_task(shipper.run(stopping))


async def _stop(stopping: asyncio.Event, task: asyncio.Task[None]) -> None:
    stopping.set()
    await asyncio.wait_for(task, 10)


async def test_records_reach_the_sink_once_and_the_stream_is_trimmed(
        clean_stream: StoreClient) -> None:
    await _append(clean_stream, 500)
    sink = MemorySink()
    shipper = Shipper(clean_stream, [sink], SETTINGS, consumer="node:1")
    stopping, task = await _run(shipper)
    try:
        await wait_until_async(lambda: len(sink.rows) == 500, timeout_s=20)
        entry = sink.rows["call-000007"]
        assert entry.question == "q7" and entry.record["model"] == "mock-gpt"
        await wait_until_async(lambda: shipper.backlog == 0, timeout_s=10)
        await wait_until_async_value(clean_stream, 0)
    finally:
        await _stop(stopping, task)
    assert set(sink.writes.values()) == {1}


async def wait_until_async_value(client: StoreClient, length: int) -> None:
    async def stream_length() -> int:
        return int(await client.execute("XLEN", AUDIT_STREAM, key=AUDIT_STREAM))

    for _ in range(200):
        if await stream_length() == length:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"stream length stayed {await stream_length()}, expected {length}")


async def test_a_sink_outage_holds_the_backlog_and_loses_nothing(
        clean_stream: StoreClient) -> None:
    sink = MemorySink()
    sink.down = True
    shipper = Shipper(clean_stream, [sink], SETTINGS, consumer="node:1")
    stopping, task = await _run(shipper)
    try:
        await _append(clean_stream, 300)
        await wait_until_async(lambda: sink.failed_writes >= 3, timeout_s=20)
        await wait_until_async(lambda: shipper.backlog >= 250, timeout_s=10)
        assert not sink.rows
        sink.down = False
        await wait_until_async(lambda: len(sink.rows) == 300, timeout_s=20)
        await wait_until_async(lambda: shipper.backlog == 0, timeout_s=10)
    finally:
        await _stop(stopping, task)
    assert set(sink.writes.values()) == {1}
    assert shipper.max_backlog >= 250


async def test_a_restarted_shipper_ships_its_unacknowledged_batch_first(
        clean_stream: StoreClient) -> None:
    await _append(clean_stream, 120)
    await clean_stream.execute("XGROUP", "CREATE", AUDIT_STREAM, AUDIT_GROUP, "0",
                               key=AUDIT_STREAM)
    # A shipper that read (and maybe committed) a batch, then died before XACK.
    died = await clean_stream.execute("XREADGROUP", "GROUP", AUDIT_GROUP, "node:1", "COUNT", 5,
                                      "STREAMS", AUDIT_STREAM, ">", key=AUDIT_STREAM)
    assert len(died[0][1]) == 5  # 50 records
    sink = MemorySink()
    sink.rows["call-000000"] = AuditEntry("call-000000", datetime.now(), {})  # it had committed
    shipper = Shipper(clean_stream, [sink], AuditSettings(batch_size=50, claim_idle=3600),
                      consumer="node:1")
    stopping, task = await _run(shipper)
    try:
        await wait_until_async(lambda: len(sink.rows) == 120, timeout_s=20)
        pending = await clean_stream.execute("XPENDING", AUDIT_STREAM, AUDIT_GROUP,
                                             key=AUDIT_STREAM)
        await wait_until_async(lambda: shipper.backlog == 0, timeout_s=10)
    finally:
        await _stop(stopping, task)
    assert pending[0] in (0, 5)  # acknowledged right after (or just before) the check
    assert sorted(sink.rows) == [f"call-{n:06d}" for n in range(120)]


async def test_a_dead_consumers_pending_entries_are_claimed(clean_stream: StoreClient) -> None:
    await _append(clean_stream, 80)
    await clean_stream.execute("XGROUP", "CREATE", AUDIT_STREAM, AUDIT_GROUP, "0",
                               key=AUDIT_STREAM)
    await clean_stream.execute("XREADGROUP", "GROUP", AUDIT_GROUP, "gone-node:1", "COUNT", 3,
                               "STREAMS", AUDIT_STREAM, ">", key=AUDIT_STREAM)
    sink = MemorySink()
    shipper = Shipper(clean_stream, [sink], SETTINGS, consumer="other-node:1")
    stopping, task = await _run(shipper)
    try:
        await wait_until_async(lambda: len(sink.rows) == 80, timeout_s=20)
    finally:
        await _stop(stopping, task)
    assert set(sink.writes.values()) == {1}


async def test_what_is_not_a_record_goes_to_the_dead_letter_stream(
        clean_stream: StoreClient) -> None:
    await clean_stream.execute("XADD", AUDIT_STREAM, "*", "n", "1", "b", "broken framing",
                               key=AUDIT_STREAM)
    writer = AuditStreamWriter(clean_stream, max_len=100_000)
    writer.append_record(b"not json", b"", b"")
    for n in range(3):
        writer.append_record(*_record(n))
    assert await writer.drain(10)
    sink = MemorySink()
    shipper = Shipper(clean_stream, [sink], SETTINGS, consumer="node:1")
    stopping, task = await _run(shipper)
    try:
        await wait_until_async(lambda: len(sink.rows) == 3, timeout_s=20)
        await wait_until_async(lambda: shipper.backlog == 0, timeout_s=10)
    finally:
        await _stop(stopping, task)
    dead = await clean_stream.execute("XRANGE", AUDIT_DEAD_LETTER, "-", "+",
                                      key=AUDIT_DEAD_LETTER)
    assert len(dead) == 2
    assert b"broken framing" in dead[0][1] and b"not json" in dead[1][1]


async def test_the_writer_keeps_records_through_a_redis_outage(redis_server_factory) -> None:
    server = redis_server_factory(persistence=True)
    client = create_store_client(server.url, timeout_s=1.0, connect_timeout_s=0.5)
    try:
        writer = AuditStreamWriter(client, max_len=100_000)
        for n in range(100):
            writer.append_record(*_record(n))
        assert await writer.drain(10)
        server.stop()
        for n in range(100, 250):
            writer.append_record(*_record(n))
        await wait_until_async(lambda: writer.failures >= 1, timeout_s=20)
        assert writer.buffered == 150
        server.start()
        assert await writer.drain(30)
        queued = await client.execute("GET", AUDIT_QUEUED, key=AUDIT_QUEUED)
        assert int(queued) == 250  # every record appended once
    finally:
        await client.aclose()


async def test_calls_that_end_during_a_redis_outage_are_recorded_after_it(
        redis_server_factory) -> None:
    """Calls' snapshots buffered while Redis is down are built at once (kept as
    records, bodies cut to the cap) and appended, in order, when it is back."""
    from smartflow.audit.framing import unpack
    from smartflow.audit.record import RecordBuilder
    from smartflow.audit.redact import Redactor
    from smartflow.dialects import openai as openai_dialect
    from smartflow.http.request import Request
    from smartflow.proxy.call import Call

    def call(n: int) -> Call:
        request = Request("POST", "/v1/chat/completions", b"", [], None, "1.1")
        made = Call(request, openai_dialect.DIALECT, "chat", call_id=f"call-{n:06d}")
        made.raw_body = b'{"messages":[{"role":"user","content":"%d"}]}' % n + b" " * 3000
        made.answer_body = b'{"choices":[]}'
        made.status = 200
        made.ended_s = made.started_s + 0.01
        return made

    server = redis_server_factory(persistence=True)
    client = create_store_client(server.url, timeout_s=1.0, connect_timeout_s=0.5)
    builder = RecordBuilder(capture_bodies=True, max_body_bytes=1000, redactor=Redactor(()),
                            node="n1")
    try:
        writer = AuditStreamWriter(client, builder.build_batch, max_len=100_000)
        server.stop()
        writer.append(builder.snapshot(call(0)))
        await wait_until_async(lambda: writer.failures >= 1, timeout_s=20)
        for n in range(1, 40):
            writer.append(builder.snapshot(call(n)))
        assert writer.buffered == 40
        server.start()
        assert await writer.drain(30)
        entries = await client.execute("XRANGE", AUDIT_STREAM, "-", "+", key=AUDIT_STREAM)
        records = [record for _, fields in entries
                   for record in unpack(dict(zip(fields[::2], fields[1::2], strict=True))[b"b"])]
        assert [orjson.loads(raw)[1] for raw, _, _ in records] == \
            [f"call-{n:06d}" for n in range(40)]
        assert all(len(question) == 1000 for _, question, _ in records)
    finally:
        await client.aclose()


async def test_a_stream_that_vanished_is_made_again(clean_stream: StoreClient) -> None:
    """Redis restarted without persistence: the stream and its group are gone."""
    sink = MemorySink()
    shipper = Shipper(clean_stream, [sink], SETTINGS, consumer="node:1")
    stopping, task = await _run(shipper)
    try:
        await _append(clean_stream, 20)
        await wait_until_async(lambda: len(sink.rows) == 20, timeout_s=20)
        await clean_stream.execute("DEL", AUDIT_STREAM, AUDIT_QUEUED, key=AUDIT_STREAM)
        await _append(clean_stream, 20, start=20)
        await wait_until_async(lambda: len(sink.rows) == 40, timeout_s=20)
    finally:
        await _stop(stopping, task)
    assert set(sink.writes.values()) == {1}


async def test_a_worker_appends_at_once_when_much_captured_body_waits(
        clean_stream: StoreClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records wait for the flush window, unless the bodies they keep add up
    to MAX_HELD_BYTES: then they are appended at once (kept bodies cost the
    request path, through the CPU's caches, more than the wait saves)."""
    from smartflow.audit import stream_writer
    from smartflow.audit.framing import unpack
    from smartflow.audit.record import RecordBuilder
    from smartflow.audit.redact import Redactor
    from smartflow.dialects import openai as openai_dialect
    from smartflow.http.request import Request
    from smartflow.proxy.call import Call

    def call(n: int, size: int, *, stream: bool) -> Call:
        request = Request("POST", "/v1/chat/completions", b"", [], None, "1.1")
        made = Call(request, openai_dialect.DIALECT, "chat", call_id=f"held-{n}")
        made.raw_body = b'{"messages":[]}'
        text = b'data: {"choices":[{"index":0,"delta":{"content":"%s"}}]}\n\n' % (b"x" * size)
        if stream:
            made.is_stream = True
            made.answer_chunks = [text[:size // 2], text[size // 2:]]
        else:
            made.answer_body = b"y" * size
        made.status = 200
        return made

    async def appended() -> list[str]:
        entries = await clean_stream.execute("XRANGE", AUDIT_STREAM, "-", "+", key=AUDIT_STREAM)
        return [orjson.loads(raw)[1] for _, fields in entries
                for raw, _, _ in unpack(dict(zip(fields[::2], fields[1::2], strict=True))[b"b"])]

    monkeypatch.setattr(stream_writer, "FLUSH_DELAY_S", 60.0)
    builder = RecordBuilder(capture_bodies=True, max_body_bytes=32768, redactor=Redactor(()),
                            node="n1")
    writer = AuditStreamWriter(clean_stream, builder.build_batch, max_len=100_000)
    writer.append(builder.snapshot(call(0, 100, stream=False)))
    await asyncio.sleep(0.5)
    assert await appended() == []  # small: it waits for the window (60 s here)
    size = stream_writer.MAX_HELD_BYTES // 3
    writer.append(builder.snapshot(call(1, size, stream=True)))
    writer.append(builder.snapshot(call(2, size, stream=False)))
    await asyncio.sleep(0.3)
    assert await appended() == []  # not yet MAX_HELD_BYTES
    writer.append(builder.snapshot(call(3, size, stream=True)))
    for _ in range(200):
        if await appended():
            break
        await asyncio.sleep(0.05)
    assert await appended() == ["held-0", "held-1", "held-2", "held-3"]
    assert writer.buffered == 0

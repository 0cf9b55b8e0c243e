"""The PostgreSQL audit sink against a real PostgreSQL 15.

Every test gets a database of its own on the session server (``database``),
so schema, partitions and rows never leak between tests. The outage test
stops and restarts a private server, never the session one. Lock waits stand
in for slow or dying servers: a test holds a lock for as long as it needs,
so nothing here races the clock. TimescaleDB is not installed here: its SQL
is checked as text only.
"""

from __future__ import annotations

import asyncio
import importlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

import asyncpg
import orjson
import pytest
from harness.postgres import PostgresServer

from smartflow.audit.entry import COLUMNS, AuditEntry, SinkUnavailable
from smartflow.audit.postgres_sink import (
    APPLICATION_NAME,
    MIGRATIONS_TABLE,
    PARTITIONED,
    PostgresSink,
    apply_migrations,
    build_rows,
    coerce_bool,
    coerce_float,
    coerce_int,
    coerce_jsonb,
    coerce_text,
    coerce_text_array,
    coerce_ts,
    discover_migrations,
    partition_ddl,
    partition_name,
)

migration_0001 = importlib.import_module("smartflow.audit.migrations.0001_vas_log")

NOW = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)


# -- fixtures and helpers ----------------------------------------------------------------

async def _connect(dsn: str) -> Any:
    return await asyncpg.connect(dsn, timeout=30, server_settings={"TimeZone": "UTC"})


@pytest.fixture
def database(postgres_database: str) -> str:
    """The DSN of a fresh, empty database, dropped after the test."""
    return postgres_database


@pytest.fixture
async def db(database: str) -> AsyncIterator[Any]:
    """A plain connection to the test's database, to look at what the sink did."""
    conn = await _connect(database)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def make_sink(database: str) -> AsyncIterator[Callable[..., PostgresSink]]:
    sinks: list[PostgresSink] = []

    def make(dsn: str | None = None, **kwargs: Any) -> PostgresSink:
        sink = PostgresSink(dsn or database, **kwargs)
        sinks.append(sink)
        return sink

    try:
        yield make
    finally:
        for sink in sinks:
            await sink.aclose()


def entry(ts: datetime, call_id: str | None = None, **record: Any) -> AuditEntry:
    record.setdefault("kind", "llm")
    record.setdefault("status", 200)
    return AuditEntry(call_id=call_id or uuid.uuid4().hex, ts=ts, record=record)


def batch(count: int, start: datetime, step: timedelta = timedelta(seconds=1)) -> list[AuditEntry]:
    return [entry(start + step * n, model=f"m{n % 3}") for n in range(count)]


async def count_rows(conn: Any) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM vas_log"))


async def partitions(conn: Any) -> dict[str, str]:
    """Partition name -> its bound, as PostgreSQL prints it."""
    rows = await conn.fetch(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound "
        "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'vas_log'::regclass"
    )
    return {row["relname"]: row["bound"] for row in rows}


async def poll(read: Callable[[], Any], *, what: str, timeout_s: float = 30.0) -> Any:
    """Await `read()` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await read()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not reached within {timeout_s:g} s")
        await asyncio.sleep(0.02)


async def sink_backend_blocked_on_lock(conn: Any, database: str) -> int:
    """The pid of the sink's backend once it waits for a lock."""
    name = database.rsplit("/", 1)[1]

    async def read() -> int | None:
        return cast(int | None, await conn.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2 "
            "AND wait_event_type = 'Lock'", name, APPLICATION_NAME,
        ))

    return int(await poll(read, what="the sink's insert waiting for the lock"))


# -- schema and migrations ---------------------------------------------------------------

async def test_open_creates_the_partitioned_schema(
    make_sink: Callable[..., PostgresSink], db: Any
) -> None:
    sink = make_sink()
    await sink.open()
    assert sink.layout == PARTITIONED

    columns = await db.fetch(
        "SELECT attname, format_type(atttypid, atttypmod) AS type, attnotnull FROM pg_attribute "
        "WHERE attrelid = 'vas_log'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
    )
    expected_types = [await db.fetchval("SELECT $1::regtype::text", t) for _, t in COLUMNS]
    assert [(c["attname"], c["type"]) for c in columns] == [
        (name, pg_type) for (name, _), pg_type in zip(COLUMNS, expected_types, strict=True)
    ]
    assert {c["attname"] for c in columns if c["attnotnull"]} == {"call_id", "ts"}

    assert await db.fetchval("SELECT relkind::text FROM pg_class WHERE oid = 'vas_log'::regclass") \
        == "p"
    assert await db.fetchval("SELECT pg_get_partkeydef('vas_log'::regclass)") == "RANGE (ts)"

    indexes = {row["indexname"]: row["indexdef"] for row in await db.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'vas_log'"
    )}
    definitions = {d.split(" USING ", 1)[1] for d in indexes.values()}
    assert definitions == {
        "brin (ts)",
        "btree (call_id, ts)",
        "btree (ts DESC, call_id DESC)",
        "btree (user_id, ts DESC)",
        "btree (key_alias, ts DESC)",
        "btree (team_id, ts DESC)",
        "btree (model, ts DESC)",
    }
    unique = await db.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = 'vas_log'::regclass AND contype = 'u'"
    )
    assert unique == "UNIQUE (call_id, ts)"

    recorded = await db.fetch(f"SELECT version, name, applied_at FROM {MIGRATIONS_TABLE}")
    assert [(r["version"], r["name"]) for r in recorded] == [(1, "vas_log")]
    assert recorded[0]["applied_at"] is not None


async def test_open_twice_and_concurrently_migrates_once(
    make_sink: Callable[..., PostgresSink], db: Any
) -> None:
    sinks = [make_sink() for _ in range(4)]
    await asyncio.gather(*(sink.open() for sink in sinks))
    await sinks[0].open()
    await sinks[0].open()
    assert all(sink.layout == PARTITIONED for sink in sinks)
    assert await db.fetchval(f"SELECT count(*) FROM {MIGRATIONS_TABLE}") == 1


async def test_write_without_open_migrates_first(
    make_sink: Callable[..., PostgresSink], db: Any
) -> None:
    await make_sink().write(batch(3, NOW))
    assert await count_rows(db) == 3


def test_the_packaged_migrations_are_numbered_from_one() -> None:
    migrations = discover_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "vas_log"


async def test_migrations_run_sql_and_python_files_once_each(
    db: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = f"migrations_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / package
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    (folder / "0001_first.sql").write_text(
        "CREATE TABLE first (a int);\nINSERT INTO first VALUES (1), (2);\n"
    )
    (folder / "0002_second.py").write_text(
        "async def apply(conn):\n    await conn.execute('CREATE TABLE second (b int)')\n"
    )
    (folder / "notes.txt").write_text("not a migration")
    monkeypatch.syspath_prepend(str(tmp_path))

    assert await apply_migrations(db, package) == [1, 2]
    assert await apply_migrations(db, package) == []
    assert await db.fetchval("SELECT count(*) FROM first") == 2

    (folder / "0003_third.sql").write_text("CREATE TABLE third (c int);")
    assert await apply_migrations(db, package) == [3]
    names = await db.fetch(f"SELECT version, name FROM {MIGRATIONS_TABLE} ORDER BY version")
    assert [(r["version"], r["name"]) for r in names] == [(1, "first"), (2, "second"),
                                                         (3, "third")]

    (folder / "0003_again.sql").write_text("SELECT 1;")
    with pytest.raises(ValueError, match="share a version"):
        discover_migrations(package)


# -- TimescaleDB (not installed here: the SQL and the decision only) --------------------------

def test_timescaledb_layout_is_a_hypertable_with_daily_chunks() -> None:
    sql = "\n".join(migration_0001.statements(timescaledb=True))
    assert "create_hypertable('vas_log', 'ts', chunk_time_interval => INTERVAL '1 day'" in sql
    assert "UNIQUE (call_id, ts)" in sql
    assert "PARTITION BY" not in sql
    assert "brin" not in sql
    assert "(ts DESC, call_id DESC)" in sql


def test_plain_layout_is_range_partitioned_with_brin() -> None:
    sql = "\n".join(migration_0001.statements(timescaledb=False))
    assert "PARTITION BY RANGE (ts)" in sql
    assert "USING brin (ts)" in sql
    assert "UNIQUE (call_id, ts)" in sql
    assert "create_hypertable" not in sql


async def test_without_timescaledb_the_plain_layout_is_chosen(db: Any) -> None:
    if await db.fetchval("SELECT count(*) FROM pg_available_extensions "
                         "WHERE name = 'timescaledb'"):
        pytest.skip("TimescaleDB is available on this server")
    assert await migration_0001.timescaledb_enabled(db) is False


# -- writes ----------------------------------------------------------------------------

async def test_1000_entries_land_exactly_once(
    make_sink: Callable[..., PostgresSink], db: Any
) -> None:
    sink = make_sink()
    await sink.open()
    entries = batch(1000, NOW, step=timedelta(milliseconds=7))
    await sink.write(entries)
    assert await count_rows(db) == 1000

    await sink.write(entries)
    assert await count_rows(db) == 1000

    overlapping = entries[:100] + batch(50, NOW + timedelta(minutes=5))
    await sink.write(overlapping)
    assert await count_rows(db) == 1050
    assert await db.fetchval("SELECT count(DISTINCT call_id) FROM vas_log") == 1050


async def test_a_call_twice_in_one_batch_lands_once(
    make_sink: Callable[..., PostgresSink], db: Any
) -> None:
    # A batch moves in one statement (COPY into the staging table, then
    # INSERT ... SELECT): a redelivered entry inside the same batch is skipped too.
    entries = batch(20, NOW)
    await make_sink().write(entries + entries[:5] + entries[-1:])
    assert await count_rows(db) == 20
    assert await db.fetchval("SELECT count(DISTINCT call_id) FROM vas_log") == 20


async def test_bodies_are_stored_whole_and_compressed_with_lz4(
    make_sink: Callable[..., PostgresSink], db: Any
) -> None:
    body = "a question about the cache and the budget of the stream, " * 200  # ~11 KB
    item = AuditEntry(call_id="big", ts=NOW, record={"status": 200}, request_body=body,
                      question=body, answer=body[::-1])
    await make_sink().write([item])
    row = await db.fetchrow("SELECT request_body, question, answer, "
                            "pg_column_compression(request_body) AS how FROM vas_log")
    assert (row["request_body"], row["question"], row["answer"]) == (body, body, body[::-1])
    assert row["how"] == "lz4"  # the server here is built with it


async def test_values_round_trip(make_sink: Callable[..., PostgresSink], db: Any) -> None:
    record = {
        "trace_id": "t1", "model": "gpt-4o", "status": 429, "stream": True,
        "prompt_tokens": 12, "cost_usd": 0.25, "latency_ms": 12.5,
        "policies": ["pii", "budget"], "guardrails": [{"name": "pii", "action": "mask"}],
        "tags": ["a", "b"], "user_id": "u1",
    }
    item = AuditEntry(call_id="c1", ts=NOW, record=record, request_body='{"q": 1}',
                      question="why?", answer="because")
    await make_sink().write([item])
    row = await db.fetchrow("SELECT * FROM vas_log")
    assert row["call_id"] == "c1"
    assert row["ts"] == NOW
    for name, value in record.items():
        got = orjson.loads(row[name]) if name == "guardrails" else row[name]
        assert got == value, name
    assert (row["request_body"], row["question"], row["answer"], row["response_body"]) == (
        '{"q": 1}', "why?", "because", None)
    assert row["kind"] is None  # absent from the record


async def test_a_batch_over_three_utc_days_makes_three_partitions(
    make_sink: Callable[..., PostgresSink], db: Any
) -> None:
    plus_two = timezone(timedelta(hours=2))
    entries = [
        entry(datetime(2024, 3, 1, 10, 0), call_id="naive-day1"),  # naive: taken as UTC
        entry(datetime(2024, 3, 1, 23, 59, 59, 999999, tzinfo=UTC), call_id="last-of-day1"),
        entry(datetime(2024, 3, 2, 0, 0, tzinfo=UTC), call_id="first-of-day2"),
        entry(datetime(2024, 3, 4, 1, 30, tzinfo=plus_two), call_id="day3-in-utc"),
    ]
    await make_sink().write(entries)

    assert await partitions(db) == {
        "vas_log_p20240301": "FOR VALUES FROM ('2024-03-01 00:00:00+00') "
                             "TO ('2024-03-02 00:00:00+00')",
        "vas_log_p20240302": "FOR VALUES FROM ('2024-03-02 00:00:00+00') "
                             "TO ('2024-03-03 00:00:00+00')",
        "vas_log_p20240303": "FOR VALUES FROM ('2024-03-03 00:00:00+00') "
                             "TO ('2024-03-04 00:00:00+00')",
    }
    placed = {row["call_id"]: row["part"] for row in await db.fetch(
        "SELECT call_id, tableoid::regclass::text AS part FROM vas_log")}
    assert placed == {
        "naive-day1": "vas_log_p20240301",
        "last-of-day1": "vas_log_p20240301",
        "first-of-day2": "vas_log_p20240302",
        "day3-in-utc": "vas_log_p20240303",
    }


async def test_two_shippers_creating_the_same_partitions_at_once(
    make_sink: Callable[..., PostgresSink], db: Any
) -> None:
    entries = batch(30, datetime(2024, 1, 1, tzinfo=UTC), step=timedelta(hours=2))  # 3 days
    first, second = make_sink(), make_sink()
    await asyncio.gather(first.open(), second.open())
    await asyncio.gather(first.write(entries), second.write(entries))
    assert len(await partitions(db)) == 3
    assert await count_rows(db) == 30


async def test_nul_characters_and_odd_types_do_not_poison_the_batch(
    make_sink: Callable[..., PostgresSink], db: Any
) -> None:
    odd = AuditEntry(
        call_id="odd\x00id",
        ts=NOW,
        record={
            "model": "gpt\x00x", "status": "abc", "prompt_tokens": 2**40,
            "completion_tokens": 12.0, "cached_tokens": "7", "attempts": True,
            "cost_usd": "0.5", "latency_ms": "fast", "energy_wh": 10**400,
            "stream": "yes", "cost_estimated": 1, "bodies_truncated": "false",
            "policies": "single", "tags": [1, None, "a\x00b", ["x"]],
            "guardrails": {"k\x00": "v\x00", "literal": "\\u0000", "when": NOW, "raw": b"x"},
            "user_id": 42, "team_id": {"a": 1}, "error_message": "lone \ud800 surrogate",
        },
        request_body="body\x00end",
        answer="\x00",
    )
    unencodable = entry(NOW, call_id="big-json", guardrails={"n": 2**70})
    not_a_dict = AuditEntry(call_id="no-record", ts=NOW, record=cast(dict[str, Any], None))
    normal = entry(NOW, call_id="normal")
    await make_sink().write([odd, unencodable, not_a_dict, normal])

    rows = {row["call_id"]: row for row in await db.fetch("SELECT * FROM vas_log")}
    assert set(rows) == {"odd\ufffdid", "big-json", "no-record", "normal"}
    row = rows["odd\ufffdid"]
    assert row["model"] == "gpt\ufffdx"
    assert row["status"] is None
    assert row["prompt_tokens"] is None
    assert row["completion_tokens"] == 12
    assert row["cached_tokens"] == 7
    assert row["attempts"] is None
    assert row["cost_usd"] == 0.5
    assert row["latency_ms"] is None
    assert row["energy_wh"] is None
    assert row["stream"] is None
    assert row["cost_estimated"] is True
    assert row["bodies_truncated"] is False
    assert row["policies"] == ["single"]
    assert row["tags"] == ["1", None, "a\ufffdb", '["x"]']
    assert orjson.loads(row["guardrails"]) == {
        "k\ufffd": "v\ufffd", "literal": "\\u0000", "when": "2024-05-10T12:00:00+00:00",
        "raw": "x",
    }
    assert row["user_id"] == "42"
    assert orjson.loads(row["team_id"]) == {"a": 1}
    assert row["error_message"] == "lone ? surrogate"
    assert row["request_body"] == "body\ufffdend"
    assert row["answer"] == "\ufffd"
    assert rows["big-json"]["guardrails"] is None
    assert rows["no-record"]["status"] is None


def test_an_entry_without_a_usable_time_is_left_out() -> None:
    good = entry(NOW, call_id="good")
    bad = AuditEntry(call_id="bad", ts=cast(datetime, "yesterday"), record={})
    rows = build_rows([bad, good])
    assert [row[0] for row in rows] == ["good"]


@pytest.mark.parametrize(
    ("coerce", "value", "expected"),
    [
        (coerce_int, 200, 200),
        (coerce_int, " 404 ", 404),
        (coerce_int, 2.5, None),
        (coerce_int, float("nan"), None),
        (coerce_int, 2**31, None),
        (coerce_int, -(2**31), -(2**31)),
        (coerce_int, False, None),
        (coerce_int, [200], None),
        (coerce_float, 3, 3.0),
        (coerce_float, "1e3", 1000.0),
        (coerce_float, True, None),
        (coerce_float, {"x": 1}, None),
        (coerce_bool, 0, False),
        (coerce_bool, 2, None),
        (coerce_bool, "TRUE", True),
        (coerce_bool, 1.0, None),
        (coerce_text, None, None),
        (coerce_text, 1.5, "1.5"),
        (coerce_text, bytearray(b"\xffok"), "\ufffdok"),
        (coerce_text_array, ("a", "b"), ["a", "b"]),
        (coerce_text_array, 5, None),
        (coerce_jsonb, [1, "\x00"], '[1,"\\ufffd"]'),
        (coerce_jsonb, "\\\x00", '"\\\\\\ufffd"'),  # an escaped backslash, then the NUL
        (coerce_jsonb, {1: "a"}, '{"1":"a"}'),
    ],
)
def test_coercion(coerce: Callable[[Any], Any], value: Any, expected: Any) -> None:
    assert coerce(value) == expected


def test_coerce_ts() -> None:
    assert coerce_ts(datetime(2024, 1, 1)) == datetime(2024, 1, 1, tzinfo=UTC)
    assert coerce_ts("2024-01-01T02:00:00+02:00") == datetime(2024, 1, 1, tzinfo=UTC)
    assert coerce_ts(0) == datetime(1970, 1, 1, tzinfo=UTC)
    assert coerce_ts(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=2)))) is None
    assert coerce_ts(float("inf")) is None
    assert coerce_ts(None) is None


def test_partition_names_and_bounds_are_utc_days() -> None:
    day = datetime(2024, 2, 29, tzinfo=UTC).date()
    assert partition_name(day) == "vas_log_p20240229"
    assert partition_ddl(day).endswith(
        "FOR VALUES FROM ('2024-02-29T00:00:00+00:00') TO ('2024-03-01T00:00:00+00:00')")
    last = datetime(9999, 12, 31).date()
    assert partition_ddl(last).endswith("TO (MAXVALUE)")


# -- maintenance ---------------------------------------------------------------------------

async def test_maintain_makes_the_next_days_and_drops_expired_partitions(
    make_sink: Callable[..., PostgresSink], db: Any
) -> None:
    sink = make_sink(retention_days=3)  # cutoff: 2024-05-07 12:00 UTC
    days = [datetime(2024, 5, d, 6, 0, tzinfo=UTC) for d in (1, 6, 7, 10)]
    await sink.write([entry(ts, call_id=f"day{ts.day}") for ts in days])
    # Partitions not named by the sink: retention reads the bound, not the name.
    await db.execute("CREATE TABLE vas_log_archive_april PARTITION OF vas_log "
                     "FOR VALUES FROM ('2024-04-01 00:00+00') TO ('2024-04-02 00:00+00')")
    await db.execute("CREATE TABLE vas_log_keep_me PARTITION OF vas_log "
                     "FOR VALUES FROM ('2024-05-08 00:00+00') TO ('2024-05-09 00:00+00')")

    dropped = await sink.maintain(NOW)

    assert dropped == ["vas_log_archive_april", "vas_log_p20240501", "vas_log_p20240506"]
    assert set(await partitions(db)) == {
        "vas_log_p20240507",  # ends after the cutoff: partly within retention
        "vas_log_keep_me",
        "vas_log_p20240510", "vas_log_p20240511", "vas_log_p20240512",
    }
    assert {r["call_id"] for r in await db.fetch("SELECT call_id FROM vas_log")} == {
        "day7", "day10"}
    assert await sink.maintain(NOW) == []

    # A late record for a dropped day gets its partition back.
    await sink.write([entry(days[1], call_id="late")])
    assert "vas_log_p20240506" in await partitions(db)


async def test_retention_zero_keeps_everything(
    make_sink: Callable[..., PostgresSink], db: Any
) -> None:
    sink = make_sink(retention_days=0)
    await sink.write([entry(datetime(2020, 1, 1, tzinfo=UTC))])
    assert await sink.maintain(NOW) == []
    assert "vas_log_p20200101" in await partitions(db)
    assert await count_rows(db) == 1


async def test_a_partition_dropped_by_another_shipper_is_made_again(
    make_sink: Callable[..., PostgresSink], db: Any
) -> None:
    writer, pruner = make_sink(), make_sink(retention_days=3)
    old = datetime(2024, 5, 1, tzinfo=UTC)
    await writer.write([entry(old, call_id="first")])
    assert await pruner.maintain(NOW) == ["vas_log_p20240501"]
    await writer.write([entry(old, call_id="second")])  # the writer still believes it exists
    assert [r["call_id"] for r in await db.fetch("SELECT call_id FROM vas_log")] == ["second"]


# -- failures --------------------------------------------------------------------------------

async def test_a_refused_connection_is_sink_unavailable(
    make_sink: Callable[..., PostgresSink], refusing_port: int
) -> None:
    sink = make_sink(f"postgresql://postgres@127.0.0.1:{refusing_port}/postgres")
    with pytest.raises(SinkUnavailable, match="open failed"):
        await sink.open()
    with pytest.raises(SinkUnavailable):
        await sink.write(batch(1, NOW))
    with pytest.raises(SinkUnavailable):
        await sink.maintain(NOW)
    await sink.aclose()


async def test_an_invalid_dsn_is_sink_unavailable(make_sink: Callable[..., PostgresSink]) -> None:
    with pytest.raises(SinkUnavailable, match="invalid DSN"):
        await make_sink("postgresql://user:secret@127.0.0.1:99999/x").open()


async def test_postgres_down_then_back(make_sink: Callable[..., PostgresSink]) -> None:
    server = PostgresServer()
    try:
        await asyncio.to_thread(server.start)
        sink = make_sink(server.dsn, connect_timeout=5.0, command_timeout=10.0)
        await sink.open()
        await sink.write(batch(10, NOW))

        await asyncio.to_thread(server.stop)
        later = batch(10, NOW + timedelta(hours=1))
        with pytest.raises(SinkUnavailable):
            await sink.write(later)
        with pytest.raises(SinkUnavailable):
            await sink.open()
        with pytest.raises(SinkUnavailable):
            await sink.maintain(NOW)

        await asyncio.to_thread(server.start)
        await sink.write(later)  # no open(): the write reconnects by itself
        conn = await _connect(server.dsn)
        try:
            assert await count_rows(conn) == 20
        finally:
            await conn.close()

        await asyncio.to_thread(server.stop)
        await sink.aclose()  # the server is gone: still no exception
        await sink.aclose()
    finally:
        await asyncio.to_thread(server.close)


async def test_server_gone_mid_transaction_then_recovery(
    make_sink: Callable[..., PostgresSink], db: Any, database: str
) -> None:
    sink = make_sink()
    await sink.write(batch(5, NOW))
    later = batch(5, NOW + timedelta(minutes=1))
    async with db.transaction():
        await db.execute("LOCK TABLE vas_log IN ACCESS EXCLUSIVE MODE")
        writing = asyncio.create_task(sink.write(later))
        pid = await sink_backend_blocked_on_lock(db, database)
        assert await db.fetchval("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(SinkUnavailable, match="writing 5 records failed"):
            await writing
    await sink.write(later)
    assert await count_rows(db) == 10


async def test_a_statement_timeout_is_sink_unavailable(
    make_sink: Callable[..., PostgresSink], db: Any
) -> None:
    sink = make_sink(command_timeout=1.0)
    await sink.write(batch(5, NOW))
    later = batch(5, NOW + timedelta(minutes=1))
    async with db.transaction():
        await db.execute("LOCK TABLE vas_log IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(SinkUnavailable, match="no answer in time"):
            await sink.write(later)
    await sink.write(later)
    assert await count_rows(db) == 10


async def test_aclose_never_raises(make_sink: Callable[..., PostgresSink]) -> None:
    sink = make_sink()
    await sink.aclose()  # never opened
    await sink.open()
    await sink.aclose()
    await sink.aclose()
    await sink.write(batch(1, NOW))  # usable again after a close

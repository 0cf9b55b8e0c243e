"""The PostgreSQL audit sink: ``vas_log``, one row per call.

The shipper is one process writing one batch at a time, so the sink holds a
single asyncpg connection, used under a lock (``maintain`` and ``write``
never interleave on it). Any failure drops that connection and surfaces as
``SinkUnavailable``; the next call connects afresh, so nothing broken is kept.

``open`` applies the numbered migrations of ``smartflow.audit.migrations``
under an advisory lock (shippers on several nodes may start together). The
table is either a TimescaleDB hypertable or, on plain PostgreSQL, range
partitioned by UTC day; see ``migrations/0001_vas_log.py``.

A batch is written in one transaction: a binary COPY into a temporary
staging table of the connection, then one ``INSERT ... SELECT ... ON
CONFLICT DO NOTHING`` (the unique key is ``(call_id, ts)``), so a
redelivered batch adds nothing. The connection compresses bodies with lz4
(``default_toast_compression``) where the server has it: with pglz, each
body was compressed at the COPY and again at the move, and COPY lost to a
prepared INSERT per row; a body already compressed with the column's method is
not compressed again.
Measured in one process at 512 rows a batch: the server's CPU per row with
~3 KB bodies 365-425 us (per-row INSERT, pglz) -> 135-171 us, with small
bodies 57-70 us -> 34-44 us. Values are coerced
to their column's type first, defensively: a record the database would
reject would otherwise block the stream forever, so a value that does not
fit becomes NULL and NUL characters (which PostgreSQL text refuses) become
U+FFFD.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import math
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from importlib import resources
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # no stubs; the stub package is not a dependency
import orjson

from smartflow.audit.entry import (
    BODY_COLUMNS,
    COLUMN_NAMES,
    COLUMNS,
    AuditEntry,
    SinkUnavailable,
)

log = logging.getLogger(__name__)

TABLE = "vas_log"
PARTITION_PREFIX = "vas_log_p"  # + YYYYMMDD, the UTC day
MIGRATIONS_TABLE = "smartflow_schema_migrations"
MIGRATIONS_PACKAGE = "smartflow.audit.migrations"
APPLICATION_NAME = "smartflow-audit"  # pg_stat_activity shows who holds a connection
PRECREATE_DAYS = 2  # maintain() creates today's partition and the next ones

# Layouts of vas_log (migration 0001 picks one per database).
PARTITIONED = "partitioned"
HYPERTABLE = "hypertable"
PLAIN = "plain"  # neither: a table made by hand; written to, never pruned

# Serialises schema changes (migrations, partition creation) across every
# shipper of the database: pg_advisory_xact_lock key, ASCII "sfaudit".
SCHEMA_LOCK_KEY = 0x73_66_61_75_64_69_74
# Creating or dropping a partition takes an ACCESS EXCLUSIVE lock on vas_log;
# waiting long for it behind a slow reader would queue every insert behind
# us, so give up early and try again later.
DDL_LOCK_TIMEOUT = "5s"

_COLUMN_LIST = ", ".join(f'"{name}"' for name in COLUMN_NAMES)
# A batch: binary COPY into this staging table, then one INSERT ... SELECT
# (see the module's docstring). ON CONFLICT DO NOTHING keeps it idempotent by
# call id, also for a call twice in one batch.
STAGING = "vas_log_incoming"
_CREATE_STAGING = (f"CREATE TEMPORARY TABLE IF NOT EXISTS {STAGING} (LIKE {TABLE}) "
                   "ON COMMIT DELETE ROWS")
_MOVE_STAGED = (f"INSERT INTO {TABLE} ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM {STAGING} "
                "ON CONFLICT DO NOTHING")
# Partitions of vas_log whose whole range ends at or before $1, read from the
# partition bound itself (the name is only a convention). The bound prints as
# FOR VALUES FROM ('...') TO ('...'); MAXVALUE or DEFAULT yield NULL: kept.
_EXPIRED_PARTITIONS = f"""
SELECT qualified, name FROM (
    SELECT c.oid::regclass::text AS qualified, c.relname AS name,
           substring(pg_get_expr(c.relpartbound, c.oid)
                     FROM 'TO [(]''([^'']*)''[)]')::timestamptz AS upper_bound
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = to_regclass('{TABLE}')
) AS p
WHERE upper_bound <= $1
ORDER BY upper_bound
"""

# What a lost server, a timeout or a refused statement raises out of asyncpg.
_FAILURES: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset; TimeoutError is one too
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


class PostgresSink:
    """The ``Sink`` writing ``vas_log`` in PostgreSQL (see the module docstring)."""

    name = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        retention_days: int = 30,
        connect_timeout: float = 5.0,
        command_timeout: float = 30.0,
    ) -> None:
        self._dsn = dsn
        self.retention_days = retention_days
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._conn: Any = None  # asyncpg.Connection, or None until (re)connected
        self._layout: str | None = None  # known once this process ran the migrations
        self._known_partitions: set[str] = set()
        self._lock = asyncio.Lock()

    @property
    def layout(self) -> str | None:
        """PARTITIONED, HYPERTABLE or PLAIN once opened; None before."""
        return self._layout

    async def open(self) -> None:
        async with self._lock, self._failing("open"):
            conn = await self._connection()
            await self._migrate(conn)

    async def write(self, entries: Sequence[AuditEntry]) -> None:
        rows = build_rows(entries)
        if not rows:
            return
        async with self._lock, self._failing(f"writing {len(rows)} records"):
            conn = await self._ready()
            try:
                await self._insert(conn, rows)
            except asyncpg.CheckViolationError:  # "no partition of relation ... found for row"
                if self._layout != PARTITIONED:
                    raise
                # Another shipper's retention dropped a partition we knew: look again, once.
                self._known_partitions.clear()
                await self._insert(conn, rows)

    async def maintain(self, now: datetime) -> list[str]:
        """Create the partitions of today and the next PRECREATE_DAYS days and
        apply retention; returns the names of the partitions (or chunks) dropped."""
        now = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
        async with self._lock, self._failing("maintenance"):
            conn = await self._ready()
            if self._layout == PARTITIONED:
                today = now.astimezone(UTC).date()
                days = {today + timedelta(days=n) for n in range(PRECREATE_DAYS + 1)}
                await self._ensure_partitions(conn, days)
            if self.retention_days <= 0:
                return []
            try:
                cutoff = now - timedelta(days=self.retention_days)
            except OverflowError:  # a retention longer than the calendar keeps everything
                return []
            if self._layout == PARTITIONED:
                return await self._drop_partitions_before(conn, cutoff)
            if self._layout == HYPERTABLE:
                return await _drop_chunks_before(conn, cutoff)
            return []

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        self._known_partitions.clear()
        if conn is None:
            return
        try:
            await conn.close(timeout=self._connect_timeout)
        except asyncio.CancelledError:
            conn.terminate()
            raise
        except Exception:  # noqa: BLE001 - broken, busy or unanswered: just drop the socket
            conn.terminate()

    async def _insert(self, conn: Any, rows: list[tuple[Any, ...]]) -> None:
        if self._layout == PARTITIONED:
            await self._ensure_partitions(conn, {row[1].date() for row in rows})
        async with conn.transaction():
            # Made in the transaction, not once per connection: behind a pooler
            # in transaction mode, each transaction may get another session.
            await conn.execute(_CREATE_STAGING)
            await conn.copy_records_to_table(STAGING, records=rows, columns=COLUMN_NAMES)
            await conn.execute(_MOVE_STAGED)

    # -- connection --------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _failing(self, doing: str) -> AsyncIterator[None]:
        """Any failure inside: drop the connection, raise SinkUnavailable."""
        try:
            yield
        except SinkUnavailable:
            self._discard_connection()
            raise
        except _FAILURES as exc:
            self._discard_connection()
            raise SinkUnavailable(
                f"PostgreSQL audit sink: {doing} failed: {self._describe(exc)}"
            ) from exc
        except BaseException:
            # Cancelled mid-statement: what the connection is doing is unknown.
            self._discard_connection()
            raise

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            return (f"no answer in time (timeouts: connect {self._connect_timeout:g} s, "
                    f"statement {self._command_timeout:g} s)")
        return f"{type(exc).__name__}: {exc}"

    def _discard_connection(self) -> None:
        conn, self._conn = self._conn, None
        # Another node may have dropped partitions meanwhile: look again.
        self._known_partitions.clear()
        if conn is not None:
            conn.terminate()

    async def _connection(self) -> Any:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        self._discard_connection()  # closed under us (server restart, idle kill)
        try:
            conn = await asyncpg.connect(
                self._dsn,
                timeout=self._connect_timeout,
                command_timeout=self._command_timeout,
                server_settings={"application_name": APPLICATION_NAME, "TimeZone": "UTC"},
            )
        except (ValueError, OverflowError) as exc:  # asyncpg's DSN parsing; never echo the DSN
            raise SinkUnavailable(f"PostgreSQL audit sink: invalid DSN ({exc})") from exc
        try:
            # The bodies are most of a row: lz4 stores them at a fraction of
            # pglz's CPU (measured: the server's CPU per row with 3 KB bodies
            # less than half). A server built without lz4 keeps pglz.
            await conn.execute("SET default_toast_compression = 'lz4'")
        except asyncpg.PostgresError:
            log.info("audit: this PostgreSQL has no lz4; bodies are compressed with pglz")
        self._conn = conn
        return conn

    async def _ready(self) -> Any:
        """The connection, with the schema migrated (once per process)."""
        conn = await self._connection()
        if self._layout is None:
            await self._migrate(conn)
        return conn

    async def _migrate(self, conn: Any) -> None:
        try:
            applied = await apply_migrations(conn)
        except _FAILURES:
            raise
        except (ImportError, AttributeError, ValueError) as exc:  # a broken migrations package
            raise SinkUnavailable(f"PostgreSQL audit sink: bad migration: {exc}") from exc
        if applied:
            log.info("audit: PostgreSQL schema migrated to version %d", applied[-1])
        self._layout = await detect_layout(conn)

    # -- partitions --------------------------------------------------------------------

    async def _ensure_partitions(self, conn: Any, days: Iterable[date]) -> None:
        wanted = {partition_name(day): day for day in days}
        unknown = [name for name in wanted if name not in self._known_partitions]
        if not unknown:
            return
        rows = await conn.fetch(
            "SELECT n FROM unnest($1::text[]) AS n WHERE to_regclass(n) IS NULL", unknown
        )
        missing = sorted(row[0] for row in rows)
        if missing:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
                # Serialised so that IF NOT EXISTS sees a concurrent creator's
                # committed table (unserialised, both could pass the check).
                await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK_KEY)
                for name in missing:
                    await conn.execute(partition_ddl(wanted[name]))
            log.info("audit: created partitions %s", ", ".join(missing))
        self._known_partitions.update(unknown)

    async def _drop_partitions_before(self, conn: Any, cutoff: datetime) -> list[str]:
        dropped: list[str] = []
        for qualified, name in await conn.fetch(_EXPIRED_PARTITIONS, cutoff):
            try:
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
                    await conn.execute(f"DROP TABLE IF EXISTS {qualified}")
            except asyncpg.LockNotAvailableError:
                log.info("audit: partition %s is busy; dropped at a later maintenance", name)
                continue
            self._known_partitions.discard(name)
            dropped.append(name)
        if dropped:
            log.info("audit: retention dropped partitions %s", ", ".join(dropped))
        return dropped


async def _drop_chunks_before(conn: Any, cutoff: datetime) -> list[str]:
    # A timestamp rather than an interval, so the caller's `now` decides.
    rows = await conn.fetch(
        "SELECT drop_chunks($1::regclass, older_than => $2::timestamptz)", TABLE, cutoff
    )
    return [row[0] for row in rows]


def partition_name(day: date) -> str:
    return f"{PARTITION_PREFIX}{day.year:04d}{day.month:02d}{day.day:02d}"


def partition_ddl(day: date) -> str:
    """CREATE the partition holding one UTC day (values are ours, not input)."""
    lower = datetime.combine(day, time(), UTC)
    try:
        upper = f"('{(lower + timedelta(days=1)).isoformat()}')"
    except OverflowError:  # 9999-12-31: the last day Python can name
        upper = "(MAXVALUE)"
    return (
        f"CREATE TABLE IF NOT EXISTS {partition_name(day)} PARTITION OF {TABLE} "
        f"FOR VALUES FROM ('{lower.isoformat()}') TO {upper}"
    )


async def detect_layout(conn: Any) -> str:
    row = await conn.fetchrow(
        "SELECT c.relkind::text AS relkind, "
        "EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') AS timescaledb "
        "FROM pg_class c WHERE c.oid = to_regclass($1)",
        TABLE,
    )
    if row is None:
        raise SinkUnavailable(f"PostgreSQL audit sink: no table {TABLE} after migrating")
    if row["relkind"] == "p":
        return PARTITIONED
    # Migration 0001 makes vas_log a hypertable whenever TimescaleDB is there.
    return HYPERTABLE if row["timescaledb"] else PLAIN


# -- migrations ----------------------------------------------------------------------------

_MIGRATION_FILE = re.compile(r"(?P<version>\d{4})_(?P<name>\w+)\.(?P<kind>sql|py)")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    filename: str


def discover_migrations(package: str = MIGRATIONS_PACKAGE) -> list[Migration]:
    """The package's migrations in version order (read as package resources,
    so this works from an installed wheel too)."""
    found = []
    for item in resources.files(package).iterdir():
        match = _MIGRATION_FILE.fullmatch(item.name)
        if match is not None:
            found.append(Migration(int(match["version"]), match["name"], item.name))
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"{package}: two migrations share a version ({versions})")
    return found


async def apply_migrations(conn: Any, package: str = MIGRATIONS_PACKAGE) -> list[int]:
    """Apply, in one transaction, the migrations this database lacks; returns
    the versions applied now. Shippers starting together serialise on the
    advisory lock: the later ones then find every version recorded."""
    migrations = discover_migrations(package)
    if await _applied_versions(conn) >= {migration.version for migration in migrations}:
        return []  # the usual case, without queueing on the lock
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK_KEY)
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (version integer PRIMARY KEY, "
            "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = await _applied_versions(conn)
        for migration in migrations:
            if migration.version in done:
                continue
            await _run_migration(conn, package, migration)
            await conn.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} (version, name, applied_at) "
                "VALUES ($1, $2, now())",
                migration.version, migration.name,
            )
            applied.append(migration.version)
    return applied


async def _applied_versions(conn: Any) -> set[int]:
    if await conn.fetchval("SELECT to_regclass($1) IS NULL", MIGRATIONS_TABLE):
        return set()
    return {row[0] for row in await conn.fetch(f"SELECT version FROM {MIGRATIONS_TABLE}")}


async def _run_migration(conn: Any, package: str, migration: Migration) -> None:
    if migration.filename.endswith(".sql"):
        sql = resources.files(package).joinpath(migration.filename).read_text("utf-8")
        await conn.execute(sql)  # no arguments: the simple protocol, several statements
        return
    module = importlib.import_module(f"{package}.{migration.filename.removesuffix('.py')}")
    await module.apply(conn)


# -- values ---------------------------------------------------------------------------------

_INT4_MIN, _INT4_MAX = -(2**31), 2**31 - 1
_TRUE_WORDS = {"true": True, "t": True, "1": True, "false": False, "f": False, "0": False}
# A JSON \u0000 escape (jsonb refuses it) that is not itself an escaped backslash + "u0000".
_JSON_NUL = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")


def clean_text(value: str) -> str:
    """``value`` as PostgreSQL text accepts it: no NUL, valid UTF-8."""
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates
            value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def coerce_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, bytes | bytearray):
        return clean_text(bytes(value).decode("utf-8", "replace"))
    if isinstance(value, list | tuple | dict):
        return coerce_jsonb(value)
    try:
        return clean_text(str(value))
    except Exception:  # noqa: BLE001 - a hostile __str__ must not poison the batch
        return None


def coerce_int(value: Any) -> int | None:
    """An integer column: an int, an integral float or a numeral; else NULL."""
    number: int | None = None
    if isinstance(value, bool):
        return None  # True is no status nor token count
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        number = int(value) if value.is_integer() else None
    elif isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            return None
    if number is None or not _INT4_MIN <= number <= _INT4_MAX:
        return None
    return number


def coerce_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float):
        return value
    try:
        return float(value) if isinstance(value, int | str) else None
    except (ValueError, OverflowError):
        return None


def coerce_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        return _TRUE_WORDS.get(value.strip().lower())
    return None


def coerce_text_array(value: Any) -> list[str | None] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [clean_text(value)]
    if isinstance(value, list | tuple | set | frozenset):
        return [coerce_text(item) for item in value]
    return None


def coerce_jsonb(value: Any) -> str | None:
    if value is None:
        return None
    try:
        encoded = orjson.dumps(value, default=_json_default, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, RecursionError):  # orjson.JSONEncodeError is a TypeError
        return None
    if b"\\u0000" in encoded:
        encoded = _JSON_NUL.sub(rb"\1\\ufffd", encoded)
    return encoded.decode("utf-8")


def _json_default(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return list(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def coerce_ts(value: Any) -> datetime | None:
    """``ts`` in UTC (a naive time is taken as UTC); None when unusable."""
    try:
        if isinstance(value, datetime):
            aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
            return aware.astimezone(UTC)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC) if math.isfinite(value) else None
        if isinstance(value, str):
            return coerce_ts(datetime.fromisoformat(value))
    except (ValueError, OverflowError, OSError):
        return None
    return None


_COERCERS_BY_TYPE: dict[str, Callable[[Any], Any]] = {
    "text": coerce_text,
    "integer": coerce_int,
    "double precision": coerce_float,
    "boolean": coerce_bool,
    "text[]": coerce_text_array,
    "jsonb": coerce_jsonb,
}
# Per column after call_id and ts, in table order (those two are special).
_RECORD_COERCERS: tuple[tuple[str, Callable[[Any], Any]], ...] = tuple(
    (name, _COERCERS_BY_TYPE[pg_type]) for name, pg_type in COLUMNS[2:]
)


def build_rows(entries: Iterable[AuditEntry]) -> list[tuple[Any, ...]]:
    """One tuple per entry in COLUMNS order, every value fit for its column.
    An entry without a usable ``ts`` cannot be placed in any partition: it is
    logged and left out rather than blocking the stream."""
    rows = []
    for entry in entries:
        ts = coerce_ts(entry.ts)
        if ts is None:
            log.error("audit: record %r has no usable time (%r); not written to PostgreSQL",
                      entry.call_id, entry.ts)
            continue
        rows.append((coerce_text(entry.call_id) or "", ts, *_record_values(entry)))
    return rows


def _record_values(entry: AuditEntry) -> list[Any]:
    record = entry.record if isinstance(entry.record, dict) else {}
    values = []
    for name, coerce in _RECORD_COERCERS:
        value = getattr(entry, name) if name in BODY_COLUMNS else record.get(name)
        values.append(coerce(value))
    return values


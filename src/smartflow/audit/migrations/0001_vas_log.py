"""0001: the ``vas_log`` table, one row per call, with its indexes.

Two layouts, chosen once, when this migration runs:

* TimescaleDB, when the server offers the extension: ``vas_log`` becomes a
  hypertable on ``ts`` with 1-day chunks; retention is ``drop_chunks``.
* Otherwise plain PostgreSQL: ``PARTITION BY RANGE (ts)``, one partition per
  UTC day (``vas_log_pYYYYMMDD``), created on demand by the sink; retention
  drops whole partitions. A BRIN index on ``ts`` stays tiny and serves range
  scans across many partitions.

Idempotency is by ``call_id``, but PostgreSQL demands that a unique index on
a partitioned table (or hypertable) contain the partition column: the key is
``UNIQUE (call_id, ts)``. ``ts`` comes from the record itself, so a
redelivered record carries the same ``ts`` and the pair dedupes it exactly.

The column list is frozen here on purpose (not read from ``entry.COLUMNS``):
a later column is a later migration, and a database that ran 0001 long ago
must end up with the same table as a new one.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # no stubs; the stub package is not a dependency

log = logging.getLogger(__name__)

TABLE = "vas_log"
CHUNK_INTERVAL = "1 day"

_COLUMNS: tuple[tuple[str, str], ...] = (
    ("call_id", "text NOT NULL"),
    ("ts", "timestamptz NOT NULL"),
    ("trace_id", "text"),
    ("kind", "text"),
    ("method", "text"),
    ("route", "text"),
    ("dialect", "text"),
    ("operation", "text"),
    ("auth", "text"),
    ("key_id", "text"),
    ("key_alias", "text"),
    ("user_id", "text"),
    ("team_id", "text"),
    ("model", "text"),
    ("upstream_model", "text"),
    ("provider", "text"),
    ("deployment", "text"),
    ("fallback_chain", "text"),
    ("status", "integer"),
    ("error_phase", "text"),
    ("error_code", "text"),
    ("error_reason", "text"),
    ("error_message", "text"),
    ("stream", "boolean"),
    ("prompt_tokens", "integer"),
    ("completion_tokens", "integer"),
    ("cached_tokens", "integer"),
    ("cost_usd", "double precision"),
    ("cost_estimated", "boolean"),
    ("cache_outcome", "text"),
    ("latency_ms", "double precision"),
    ("ttfb_ms", "double precision"),
    ("attempts", "integer"),
    ("finish_reason", "text"),
    ("policies", "text[]"),
    ("guardrails", "jsonb"),
    ("verdict", "text"),
    ("energy_wh", "double precision"),
    ("co2e_g", "double precision"),
    ("tags", "text[]"),
    ("node", "text"),
    ("bodies_truncated", "boolean"),
    ("request_body", "text"),
    ("response_body", "text"),
    ("question", "text"),
    ("answer", "text"),
)

# Newest-first keyset pages, then the /api/logs equality filters (each also
# newest first). Deliberately few: every index is paid on every insert.
_BTREE_INDEXES: tuple[tuple[str, str], ...] = (
    ("vas_log_ts_call_id_idx", "ts DESC, call_id DESC"),
    ("vas_log_user_id_ts_idx", "user_id, ts DESC"),
    ("vas_log_key_alias_ts_idx", "key_alias, ts DESC"),
    ("vas_log_team_id_ts_idx", "team_id, ts DESC"),
    ("vas_log_model_ts_idx", "model, ts DESC"),
)


def _create_table(*, partitioned: bool) -> str:
    columns = ",\n    ".join(f"{name} {decl}" for name, decl in _COLUMNS)
    suffix = " PARTITION BY RANGE (ts)" if partitioned else ""
    return (
        f"CREATE TABLE {TABLE} (\n    {columns},\n"
        f"    CONSTRAINT {TABLE}_call_id_ts_key UNIQUE (call_id, ts)\n){suffix}"
    )


def statements(*, timescaledb: bool) -> list[str]:
    """The DDL of this migration for one layout (TimescaleDB already created)."""
    steps = [_create_table(partitioned=not timescaledb)]
    if timescaledb:
        # Our own (ts DESC, call_id DESC) index replaces the default one on ts.
        steps.append(
            f"SELECT create_hypertable('{TABLE}', 'ts', "
            f"chunk_time_interval => INTERVAL '{CHUNK_INTERVAL}', "
            "create_default_indexes => FALSE, if_not_exists => TRUE)"
        )
    else:
        steps.append(f"CREATE INDEX {TABLE}_ts_brin ON {TABLE} USING brin (ts)")
    steps.extend(f"CREATE INDEX {name} ON {TABLE} ({keys})" for name, keys in _BTREE_INDEXES)
    return steps


async def timescaledb_enabled(conn: Any) -> bool:
    """Whether TimescaleDB is installed in this database, installing it when
    the server offers it. Listed is not enough (it must also be preloaded,
    and we may lack the privilege), so a failed CREATE EXTENSION falls back
    to plain partitioning instead of failing the migration."""
    if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = $1)",
                           "timescaledb"):
        return True
    if not await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = $1)", "timescaledb"
    ):
        return False
    try:
        async with conn.transaction():  # a savepoint: the failure must not abort the migration
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except asyncpg.PostgresError as exc:
        log.warning("audit: TimescaleDB is listed but cannot be enabled (%s); "
                    "using plain daily partitions", exc)
        return False
    return True


async def apply(conn: Any) -> None:
    for sql in statements(timescaledb=await timescaledb_enabled(conn)):
        await conn.execute(sql)

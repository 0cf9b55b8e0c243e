"""Reading the VAS audit log (``vas_log`` in PostgreSQL) for ``/api/logs``.

Nothing here knows about HTTP beyond raising ``HTTPError``: ``parse_filters``
turns query parameters into ``LogFilters``; ``list_query`` / ``get_query``
build parameterised SQL (values are always bind parameters, never text in
the statement); ``LogReader`` runs them on a small, lazily opened asyncpg
pool and shapes the rows as JSON-ready dicts.

Pages are newest first (``ts DESC, call_id DESC``) and keyset-paginated: the
opaque cursor names the last row of a page, and the next page starts strictly
after it, so rows shipped meanwhile neither shift nor repeat a page, and rows
sharing one ``ts`` are ordered by ``call_id``.

Who sees what is decided in SQL too, as one more AND-ed condition, so no
filter can widen it: proxy admins and viewers see every call; an org admin
the calls of its teams (administered or joined) and its own; an internal
user only its own calls. Any other principal sees nothing.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from smartflow.audit.entry import BODY_COLUMNS, COLUMN_NAMES
from smartflow.http.errors import HTTPError
from smartflow.identity.roles import INTERNAL_USER, ORG_ADMIN, AdminPrincipal

if TYPE_CHECKING:
    import asyncpg  # type: ignore[import-untyped]  # no stubs; the stub package is not a dependency

    from smartflow.config import AuditSettings

log = logging.getLogger(__name__)

TABLE = "vas_log"
SUMMARY_COLUMNS: tuple[str, ...] = tuple(c for c in COLUMN_NAMES if c not in BODY_COLUMNS)
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_VALUE_CHARS = 512  # longer than any id, alias or model name the gateway writes

# Parameters compared for equality with the column of the same name.
TEXT_FILTERS = ("user_id", "key_alias", "team_id", "model", "provider", "verdict", "kind")
KNOWN_PARAMS = frozenset((*TEXT_FILTERS, "status", "policy", "since", "until", "limit",
                          "cursor"))

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICROSECOND = timedelta(microseconds=1)
_STATUS_CLASS = re.compile(r"[1-5]xx")
_UNIX_SECONDS = re.compile(r"\d{1,12}(\.\d{1,9})?")
# parse_qs turns an unescaped '+' into a space: "...T10:00:00 02:00" meant "+02:00".
_SPACED_OFFSET = re.compile(r"(T[\d:.,]+) (\d{2}(:?\d{2})?)$")


# -- filters -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StatusRange:
    """Inclusive bounds on ``status``; ``high`` None means unbounded."""

    low: int
    high: int | None


@dataclass(frozen=True, slots=True)
class Cursor:
    """The last row of the previous page: the next page starts strictly after it."""

    ts: datetime
    call_id: str


@dataclass(frozen=True, slots=True)
class LogFilters:
    """What ``GET /api/logs`` asked for. ``since`` is inclusive, ``until``
    exclusive, so consecutive windows neither overlap nor leave gaps."""

    user_id: str | None = None
    key_alias: str | None = None
    team_id: str | None = None
    model: str | None = None
    provider: str | None = None
    status: StatusRange | None = None
    policy: str | None = None
    verdict: str | None = None
    kind: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = DEFAULT_LIMIT
    cursor: Cursor | None = None


def _invalid(param: str, message: str) -> HTTPError:
    return HTTPError(400, f"{param}: {message}", param=param, code="invalid_field")


def _single(query: Mapping[str, Sequence[str]], param: str) -> str | None:
    """The parameter's one value; an empty value counts as absent (HTML forms send them)."""
    values = [value for value in query.get(param, ()) if value != ""]
    if not values:
        return None
    if len(values) > 1:
        raise _invalid(param, "give it once")
    return values[0]


def _text(param: str, raw: str) -> str:
    if len(raw) > MAX_VALUE_CHARS:
        raise _invalid(param, f"at most {MAX_VALUE_CHARS} characters")
    if "\x00" in raw:  # PostgreSQL text cannot hold NUL: it would fail as a 503
        raise _invalid(param, "must not contain NUL characters")
    return raw


def parse_status(raw: str) -> StatusRange:
    value = raw.strip().lower()
    if value == "error":
        return StatusRange(400, None)
    if _STATUS_CLASS.fullmatch(value):
        low = int(value[0]) * 100
        return StatusRange(low, low + 99)
    if value.isascii() and value.isdigit() and 100 <= int(value) <= 599:
        return StatusRange(int(value), int(value))
    raise _invalid("status", "expected an HTTP status (100-599), 1xx-5xx, or error")


def parse_time(param: str, raw: str) -> datetime:
    """ISO 8601 (a time without an offset is UTC), or unix seconds."""
    value = raw.strip()
    try:
        if _UNIX_SECONDS.fullmatch(value):
            return _EPOCH + timedelta(seconds=float(value))
        parsed = datetime.fromisoformat(_SPACED_OFFSET.sub(r"\1+\2", value))
    except (ValueError, OverflowError):
        raise _invalid(param, "expected an ISO 8601 time or unix seconds") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def parse_limit(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise _invalid("limit", f"expected 1-{MAX_LIMIT}")
    return int(raw)


def encode_cursor(ts: datetime, call_id: str) -> str:
    """Opaque to clients: base64url (unpadded) of "<unix microseconds>:<call_id>".
    Whole microseconds are PostgreSQL's precision, so the round trip is exact."""
    micros = (ts - _EPOCH) // _ONE_MICROSECOND
    return base64.urlsafe_b64encode(f"{micros}:{call_id}".encode()).rstrip(b"=").decode()


def decode_cursor(raw: str) -> Cursor:
    try:
        padded = raw + "=" * (-len(raw) % 4)
        text = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
        micros, call_id = text.split(":", 1)
        ts = _EPOCH + int(micros) * _ONE_MICROSECOND
    except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError):
        raise _invalid("cursor", "not a cursor from a previous page (use next_cursor as "
                                 "given)") from None
    if not call_id or "\x00" in call_id:
        raise _invalid("cursor", "not a cursor from a previous page")
    return Cursor(ts, call_id)


def parse_filters(query: Mapping[str, Sequence[str]]) -> LogFilters:
    """The filters of ``GET /api/logs``; a bad or unknown parameter is a 400 naming it."""
    for param in query:
        if param not in KNOWN_PARAMS:
            raise _invalid(param, "unknown parameter (expected one of "
                                  f"{', '.join(sorted(KNOWN_PARAMS))})")
    fields: dict[str, Any] = {}
    for param in (*TEXT_FILTERS, "policy"):
        raw = _single(query, param)
        if raw is not None:
            fields[param] = _text(param, raw)
    parsers = {"status": parse_status, "limit": parse_limit, "cursor": decode_cursor,
               "since": lambda raw: parse_time("since", raw),
               "until": lambda raw: parse_time("until", raw)}
    for param, parse in parsers.items():
        raw = _single(query, param)
        if raw is not None:
            fields[param] = parse(raw)
    filters = LogFilters(**fields)
    if filters.since and filters.until and filters.until <= filters.since:
        raise _invalid("until", "must be later than since")
    return filters


# -- SQL -----------------------------------------------------------------------------

class Conditions:
    """WHERE conditions and their bind parameters ($1, $2, ... in order)."""

    def __init__(self) -> None:
        self.args: list[Any] = []
        self.parts: list[str] = []

    def bind(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, condition: str) -> None:
        self.parts.append(condition)

    def sql(self) -> str:
        return " AND ".join(f"({part})" for part in self.parts) or "TRUE"


def add_scope(where: Conditions, principal: AdminPrincipal) -> None:
    if principal.reads_everything:
        return
    visible: list[str] = []
    if principal.role == ORG_ADMIN:
        teams = sorted(principal.team_ids | principal.admin_of)
        if teams:
            visible.append(f"team_id = ANY({where.bind(teams)}::text[])")
    if principal.role in (ORG_ADMIN, INTERNAL_USER) and principal.user_id:
        visible.append(f"user_id = {where.bind(principal.user_id)}")
    # Deny by default: an unknown role, or one with nothing to see by.
    where.add(" OR ".join(visible) or "FALSE")


def _add_filters(where: Conditions, filters: LogFilters) -> None:
    for column in TEXT_FILTERS:
        value = getattr(filters, column)
        if value is not None:
            where.add(f"{column} = {where.bind(value)}")
    if filters.policy is not None:
        # Containment rather than "= ANY": a GIN index on policies can serve it.
        where.add(f"policies @> ARRAY[{where.bind(filters.policy)}]::text[]")
    if filters.status is not None:
        where.add(f"status >= {where.bind(filters.status.low)}")
        if filters.status.high is not None:
            where.add(f"status <= {where.bind(filters.status.high)}")
    if filters.since is not None:
        where.add(f"ts >= {where.bind(filters.since)}")
    if filters.until is not None:
        where.add(f"ts < {where.bind(filters.until)}")
    if filters.cursor is not None:
        ts, call_id = where.bind(filters.cursor.ts), where.bind(filters.cursor.call_id)
        where.add(f"(ts, call_id) < ({ts}, {call_id})")


def list_query(filters: LogFilters, principal: AdminPrincipal) -> tuple[str, list[Any]]:
    """One page of summaries, plus one row to tell whether another page follows."""
    where = Conditions()
    add_scope(where, principal)
    _add_filters(where, filters)
    limit = where.bind(filters.limit + 1)
    sql = (f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM {TABLE} WHERE {where.sql()} "
           f"ORDER BY ts DESC, call_id DESC LIMIT {limit}")
    return sql, where.args


def get_query(call_id: str, principal: AdminPrincipal) -> tuple[str, list[Any]]:
    """The whole record of one call. The table is unique on (call_id, ts) only (its
    partitions demand ts in the key), so should a call_id repeat, the newest wins."""
    where = Conditions()
    add_scope(where, principal)
    where.add(f"call_id = {where.bind(call_id)}")
    sql = (f"SELECT {', '.join(COLUMN_NAMES)} FROM {TABLE} WHERE {where.sql()} "
           "ORDER BY ts DESC LIMIT 1")
    return sql, where.args


# -- rows as JSON ----------------------------------------------------------------------

def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _json_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """Columns by name: times as ISO 8601 UTC strings; text[] as lists and jsonb as
    JSON values already (the connection's codecs)."""
    return {name: _iso(value) if isinstance(value, datetime) else value
            for name, value in record.items()}


def _maybe_json(body: str | None) -> Any:
    """A captured body as JSON when it is JSON; else as the text it is (a cut-off
    body, or a provider's plain-text error)."""
    if body is None:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return body


def full_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """Every column, plus ``replay``: the Q&A and the bodies, or None when none
    was captured."""
    row = _json_row(record)
    captured = any(row.get(column) is not None for column in BODY_COLUMNS)
    row["replay"] = {
        "question": row.get("question"),
        "answer": row.get("answer"),
        "request": _maybe_json(row.get("request_body")),
        "response": _maybe_json(row.get("response_body")),
    } if captured else None
    return row


# -- the reader ------------------------------------------------------------------------

def unavailable(reason: str) -> HTTPError:
    return HTTPError(503, f"The audit log database is unavailable: {reason}"[:500],
                     code="audit_unavailable")


def _asyncpg() -> Any:
    """asyncpg, imported on the first query: every worker imports this module
    (the admin routes), and most never read the log, or have no database."""
    import asyncpg

    return asyncpg


def _stale_connection_errors(driver: Any) -> tuple[type[BaseException], ...]:
    # A pooled connection that died while idle (PostgreSQL restarted, a firewall
    # dropped it): one retry on a fresh connection, since these reads are
    # idempotent. (A backend killed while its connection sat idle can leave
    # asyncpg's protocol in a state it reports as an InternalClientError on the
    # next query.)
    return (driver.ConnectionDoesNotExistError, driver.AdminShutdownError,
            driver.InternalClientError, ConnectionResetError, BrokenPipeError)


def _database_errors(driver: Any) -> tuple[type[BaseException], ...]:
    return (OSError, driver.PostgresError, driver.InterfaceError, driver.InternalClientError)


Rows = list[Any]  # asyncpg Records (named here: LogReader.list shadows the builtin)


async def _init_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec("jsonb", schema="pg_catalog", format="text",
                                    encoder=lambda value: orjson.dumps(value).decode(),
                                    decoder=orjson.loads)


class LogReader:
    """Reads ``vas_log`` for the admin API. The pool opens on the first query (a
    worker that never serves ``/api/logs`` never connects) and stays tiny: admin
    traffic is light, and every worker of every node has one."""

    def __init__(self, dsn: str, *, query_timeout: float = 10.0,
                 connect_timeout: float | None = None) -> None:
        self.dsn = dsn
        self.query_timeout = query_timeout
        # To get a connection: wait for a free one, or open one (default: query_timeout).
        self.connect_timeout = query_timeout if connect_timeout is None else connect_timeout
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._closed = False

    async def list(self, filters: LogFilters, principal: AdminPrincipal) -> dict[str, Any]:
        """``{"data": [summary rows], "next_cursor": str | None, "has_more": bool}``."""
        sql, args = list_query(filters, principal)
        records = await self._fetch(sql, args)
        has_more = len(records) > filters.limit
        page = records[:filters.limit]
        last = page[-1] if has_more else None
        return {
            "data": [_json_row(record) for record in page],
            "next_cursor": encode_cursor(last["ts"], last["call_id"]) if last else None,
            "has_more": has_more,
        }

    async def get(self, call_id: str, principal: AdminPrincipal) -> dict[str, Any] | None:
        """The call's whole record with ``replay``; None when there is no such call
        or the principal may not see it (the same answer, so existence stays hidden)."""
        if not call_id or len(call_id) > MAX_VALUE_CHARS or "\x00" in call_id:
            return None
        records = await self._fetch(*get_query(call_id, principal))
        return full_record(records[0]) if records else None

    async def aclose(self) -> None:
        """Close the pool (waiting briefly for queries in flight). Never raises."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=self.query_timeout)
        except Exception:  # noqa: BLE001 - shutting down: drop what is left
            pool.terminate()

    async def fetch(self, sql: str, args: Sequence[Any]) -> Rows:
        """Rows of any read-only query over the log (compliance reports build their own)."""
        return await self._fetch(sql, args)

    async def _fetch(self, sql: str, args: Sequence[Any]) -> Rows:
        driver = _asyncpg()
        try:
            try:
                return await self._fetch_once(sql, args)
            except _stale_connection_errors(driver):
                return await self._fetch_once(sql, args)
        except driver.UndefinedTableError:
            return []  # nothing shipped yet: the shipper creates the table
        except driver.QueryCanceledError:
            raise unavailable(f"the query took longer than {self.query_timeout:g} s "
                              "(narrow it with since/until or other filters)") from None
        except TimeoutError:
            raise unavailable(f"no connection within {self.connect_timeout:g} s, or no "
                              "answer in time") from None
        except _database_errors(driver) as exc:
            log.warning("audit log query failed: %s: %s", type(exc).__name__, exc)
            raise unavailable(f"{type(exc).__name__}: {exc}") from None

    async def _fetch_once(self, sql: str, args: Sequence[Any]) -> Rows:
        pool = await self._get_pool()
        async with pool.acquire(timeout=self.connect_timeout) as connection:
            records: Rows = await connection.fetch(sql, *args)
            return records

    async def _get_pool(self) -> asyncpg.Pool:
        if self._closed:
            raise unavailable("the gateway is shutting down")
        async with self._pool_lock:  # concurrent first queries share one pool
            if self._pool is None:
                self._pool = await _asyncpg().create_pool(
                    self.dsn, min_size=0, max_size=2, init=_init_connection,
                    # Every worker of every node holds a pool: let idle ones go soon.
                    max_inactive_connection_lifetime=60.0,
                    timeout=self.connect_timeout,
                    # The server cancels a slow query cleanly; command_timeout is the
                    # client's backstop for a link that went silent.
                    command_timeout=self.query_timeout + 5,
                    server_settings={
                        "statement_timeout": str(max(1, int(self.query_timeout * 1000))),
                        "default_transaction_read_only": "on",
                        "application_name": "smartflow-logs",
                    })
            if self._closed:  # aclose() ran while the pool was being made
                self._pool.terminate()
                raise unavailable("the gateway is shutting down")
            return self._pool


def build_log_reader(audit: AuditSettings) -> LogReader | None:
    """The reader for ``[audit]``, or None when no ``postgres_dsn`` is set."""
    if not audit.postgres_dsn:
        return None
    return LogReader(audit.postgres_dsn, query_timeout=audit.query_timeout)

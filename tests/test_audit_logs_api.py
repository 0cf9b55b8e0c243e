"""``/api/logs``: reading the VAS audit log (``audit.log_query``, ``admin.logs_routes``).

Against a real PostgreSQL (the session's ``postgres_server``) in a database
of this module's own; each test recreates ``vas_log`` (range-partitioned by
ts, one default partition, unique on (call_id, ts), as the sink makes it)
and inserts its rows directly. The routes run on a real in-process server;
the caller's role, user and teams come from test headers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from _admin_helpers import HeaderRoleAdmin, serving
from harness.postgres import PostgresServer

from smartflow.admin.logs_routes import register_logs_routes
from smartflow.audit.entry import BODY_COLUMNS, COLUMN_NAMES, COLUMNS
from smartflow.audit.log_query import (
    LogFilters,
    LogReader,
    StatusRange,
    build_log_reader,
    decode_cursor,
    encode_cursor,
    list_query,
    parse_filters,
)
from smartflow.config import AuditSettings, Settings
from smartflow.http.errors import HTTPError
from smartflow.http.request import Request
from smartflow.http.router import Router
from smartflow.identity.roles import (
    INTERNAL_USER,
    ORG_ADMIN,
    PROXY_ADMIN,
    VIEWER,
    AdminPrincipal,
)

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
APP = "smartflow-logs"  # the reader's application_name, to count its connections


# -- the caller ------------------------------------------------------------------------

@dataclass
class PrincipalHeaderAdmin(HeaderRoleAdmin):
    """Role, user and teams from ``x-test-role``, ``x-test-user``, ``x-test-teams`` and
    ``x-test-admin-of`` (comma-separated)."""

    async def principal(self, request: Request) -> AdminPrincipal:
        def ids(header: str) -> frozenset[str]:
            return frozenset(filter(None, (request.header(header) or "").split(",")))

        return AdminPrincipal(subject=request.header("x-test-user") or "tester",
                              role=request.header("x-test-role") or PROXY_ADMIN,
                              user_id=request.header("x-test-user"),
                              team_ids=ids("x-test-teams"), admin_of=ids("x-test-admin-of"))


def as_caller(role: str, user: str | None = None, teams: str = "", admin_of: str = ""
              ) -> dict[str, str]:
    headers = {"x-test-role": role, "x-test-teams": teams, "x-test-admin-of": admin_of}
    if user is not None:
        headers["x-test-user"] = user
    return headers


def principal_admin() -> PrincipalHeaderAdmin:
    # Nothing here touches the store, the vault or the tokens.
    return PrincipalHeaderAdmin(settings=Settings(), client=None, store=None,  # type: ignore[arg-type]
                                tokens=None, vault=None, key_cache=None,  # type: ignore[arg-type]
                                pool=None, master_key=b"master-test")  # type: ignore[arg-type]


# -- the database ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def database_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """A database of this module's own: other test files share the server."""
    dsn = postgres_server.create_database("audit_logs_api")
    try:
        yield dsn
    finally:
        postgres_server.drop_database(dsn)


def _table_ddl() -> str:
    columns = ",\n".join(f"{name} {kind}" + (" NOT NULL" if name in ("call_id", "ts") else "")
                         for name, kind in COLUMNS)
    return (f"CREATE TABLE vas_log ({columns}, UNIQUE (call_id, ts)) PARTITION BY RANGE (ts);"
            "CREATE TABLE vas_log_default PARTITION OF vas_log DEFAULT;")


@pytest.fixture
async def db(database_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A fresh, empty ``vas_log``; the connection inserts the test's rows."""
    connection = await asyncpg.connect(database_dsn)
    try:
        await connection.execute("DROP TABLE IF EXISTS vas_log CASCADE;" + _table_ddl())
        yield connection
    finally:
        await connection.close()


def row(call_id: str, ts: datetime, **fields: Any) -> dict[str, Any]:
    return {"call_id": call_id, "ts": ts, "kind": "llm", "status": 200, **fields}


async def insert(connection: asyncpg.Connection, *rows: dict[str, Any]) -> None:
    placeholders = ", ".join(f"${n}" for n in range(1, len(COLUMNS) + 1))
    values = []
    for record in rows:
        assert set(record) <= set(COLUMN_NAMES), set(record) - set(COLUMN_NAMES)
        values.append([orjson.dumps(record[name]).decode()
                       if kind == "jsonb" and record.get(name) is not None else record.get(name)
                       for name, kind in COLUMNS])
    await connection.executemany(
        f"INSERT INTO vas_log ({', '.join(COLUMN_NAMES)}) VALUES ({placeholders})", values)


async def reader_connections(connection: asyncpg.Connection) -> int:
    count: int = await connection.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
        "AND datname = current_database()", APP)
    return count


# -- the server ----------------------------------------------------------------------------

@pytest.fixture
async def reader(database_dsn: str) -> AsyncIterator[LogReader]:
    log_reader = LogReader(database_dsn, query_timeout=10.0)
    try:
        yield log_reader
    finally:
        await log_reader.aclose()


def _serve(reader: LogReader | None) -> AbstractAsyncContextManager[httpx.AsyncClient]:
    """The logs routes on a real server; ``reader`` None: no postgres_dsn."""
    router = Router()
    register_logs_routes(router, principal_admin(), reader)
    return serving(router)


@pytest.fixture
async def http(reader: LogReader, db: asyncpg.Connection) -> AsyncIterator[httpx.AsyncClient]:
    async with _serve(reader) as client:
        yield client


async def listed(http: httpx.AsyncClient, headers: dict[str, str] | None = None,
                 **params: Any) -> list[str]:
    """The call ids of one page, in order."""
    answer = await http.get("/api/logs", params=params, headers=headers or {})
    assert answer.status_code == 200, answer.text
    return [item["call_id"] for item in answer.json()["data"]]


def assert_error(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert error["code"] == code, error
    return error


# -- filters, sans I/O -----------------------------------------------------------------------

def test_filters_parse_from_query_parameters() -> None:
    filters = parse_filters({
        "user_id": ["u1"], "key_alias": ["ci"], "team_id": ["t1"], "model": ["gpt-4o"],
        "provider": ["openai"], "status": ["4xx"], "policy": ["pii"], "verdict": ["block"],
        "kind": ["llm"], "since": ["2025-03-01T12:00:00Z"], "until": ["1740834000"],
        "limit": ["500"], "cursor": [encode_cursor(T0, "c-1")]})
    assert filters == LogFilters(
        user_id="u1", key_alias="ci", team_id="t1", model="gpt-4o", provider="openai",
        status=StatusRange(400, 499), policy="pii", verdict="block", kind="llm",
        since=T0, until=datetime(2025, 3, 1, 13, 0, tzinfo=UTC), limit=500,
        cursor=decode_cursor(encode_cursor(T0, "c-1")))
    assert parse_filters({}) == LogFilters(limit=50)
    assert parse_filters({"model": [""], "limit": [""]}) == LogFilters()  # blank form fields
    assert parse_filters({"status": ["error"]}).status == StatusRange(400, None)
    assert parse_filters({"status": ["499"]}).status == StatusRange(499, 499)
    assert parse_filters({"status": ["5XX"]}).status == StatusRange(500, 599)
    # Offsets are honoured; a time without one is UTC; an unescaped '+' arrives as ' '.
    for raw in ("2025-03-01T14:00:00+02:00", "2025-03-01T12:00:00", "2025-03-01 12:00:00Z",
                "2025-03-01T14:00:00 02:00", "1740830400", "1740830400.0"):
        assert parse_filters({"since": [raw]}).since == T0, raw


def test_a_cursor_round_trips_exactly() -> None:
    ts = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    for call_id in ("c-1", "with:colon", "ünï/códe"):
        cursor = decode_cursor(encode_cursor(ts, call_id))
        assert (cursor.ts, cursor.call_id) == (ts, call_id)
        assert "=" not in encode_cursor(ts, call_id)


def test_values_are_bound_never_interpolated() -> None:
    evil = "x' OR '1'='1"
    sql, args = list_query(parse_filters({"model": [evil], "policy": [evil]}),
                           AdminPrincipal(subject="u", role=INTERNAL_USER, user_id=evil))
    assert evil not in sql and "'" not in sql
    assert args.count(evil) == 3
    assert "ORDER BY ts DESC, call_id DESC" in sql


@pytest.mark.parametrize(("params", "param"), [
    ({"limit": "0"}, "limit"), ({"limit": "501"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"limit": "-1"}, "limit"), ({"status": "2xy"}, "status"), ({"status": "600"}, "status"),
    ({"status": "ok"}, "status"), ({"since": "yesterday"}, "since"),
    ({"until": "2025-13-01"}, "until"), ({"since": "99999999999999999"}, "since"),
    ({"since": "2025-03-02", "until": "2025-03-01"}, "until"),
    ({"cursor": "not a cursor"}, "cursor"), ({"cursor": "bm9jb2xvbg"}, "cursor"),
    ({"cursor": "eHg6Yw"}, "cursor"), ({"model": "x" * 513}, "model"),
    ({"user_id": "a\x00b"}, "user_id"), ({"colour": "blue"}, "colour"),
    ({"model": ["a", "b"]}, "model"),
])
def test_bad_filters_name_their_parameter(params: dict[str, Any], param: str) -> None:
    query = {name: value if isinstance(value, list) else [value]
             for name, value in params.items()}
    with pytest.raises(HTTPError) as raised:
        parse_filters(query)
    assert (raised.value.status, raised.value.param, raised.value.code) == (
        400, param, "invalid_field")


def test_no_dsn_means_no_reader() -> None:
    assert build_log_reader(AuditSettings()) is None
    built = build_log_reader(AuditSettings(postgres_dsn="postgresql://h/db", query_timeout=3))
    assert built is not None and (built.dsn, built.query_timeout) == ("postgresql://h/db", 3)


# -- listing ---------------------------------------------------------------------------------

async def test_each_filter_selects_its_calls(http: httpx.AsyncClient,
                                             db: asyncpg.Connection) -> None:
    await insert(
        db,
        row("a", T0, user_id="u1", key_alias="ci", team_id="t1", model="gpt-4o",
            provider="openai", status=200, policies=["pii", "secrets"], verdict="allow"),
        row("b", T0 + timedelta(minutes=1), user_id="u2", key_alias="dev", team_id="t2",
            model="claude", provider="anthropic", status=429, policies=["pii"],
            verdict="block"),
        row("c", T0 + timedelta(minutes=2), user_id="u1", team_id="t2", model="gpt-4o",
            provider="azure", status=502, kind="mcp"),
        row("d", T0 + timedelta(minutes=3), status=None, kind="a2a"),
    )
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({}, ["d", "c", "b", "a"]),
        ({"user_id": "u1"}, ["c", "a"]),
        ({"key_alias": "dev"}, ["b"]),
        ({"team_id": "t2"}, ["c", "b"]),
        ({"model": "gpt-4o"}, ["c", "a"]),
        ({"provider": "anthropic"}, ["b"]),
        ({"status": "200"}, ["a"]),
        ({"status": "2xx"}, ["a"]),
        ({"status": "4xx"}, ["b"]),
        ({"status": "5xx"}, ["c"]),
        ({"status": "error"}, ["c", "b"]),
        ({"policy": "pii"}, ["b", "a"]),
        ({"policy": "secrets"}, ["a"]),
        ({"policy": "nope"}, []),
        ({"verdict": "block"}, ["b"]),
        ({"kind": "mcp"}, ["c"]),
        ({"kind": "llm"}, ["b", "a"]),
        ({"since": (T0 + timedelta(minutes=1)).isoformat()}, ["d", "c", "b"]),  # inclusive
        ({"until": (T0 + timedelta(minutes=1)).isoformat()}, ["a"]),  # exclusive
        ({"since": int((T0 + timedelta(minutes=1)).timestamp()),
          "until": int((T0 + timedelta(minutes=3)).timestamp())}, ["c", "b"]),
        ({"user_id": "u1", "team_id": "t2", "status": "error"}, ["c"]),
        ({"model": "gpt-4o' OR '1'='1"}, []),  # a value, never SQL
    ]
    for params, expected in cases:
        assert await listed(http, **params) == expected, params


async def test_a_page_is_newest_first_with_summaries_only(http: httpx.AsyncClient,
                                                           db: asyncpg.Connection) -> None:
    await insert(db, *(row(f"call-{n}", T0 + timedelta(seconds=n), request_body="{}",
                           question="q", answer="a", cost_usd=0.25, latency_ms=12.5,
                           policies=["pii"], guardrails=[{"name": "g", "action": "allow"}])
                       for n in (3, 1, 4, 0, 2)))
    answer = (await http.get("/api/logs")).json()
    assert [item["call_id"] for item in answer["data"]] == [f"call-{n}" for n in (4, 3, 2, 1, 0)]
    assert (answer["next_cursor"], answer["has_more"]) == (None, False)
    first = answer["data"][0]
    assert set(first) == set(COLUMN_NAMES) - set(BODY_COLUMNS)
    assert first["ts"] == "2025-03-01T12:00:04.000000Z"
    assert datetime.fromisoformat(first["ts"]) == T0 + timedelta(seconds=4)
    assert (first["cost_usd"], first["latency_ms"]) == (0.25, 12.5)
    assert first["policies"] == ["pii"]
    assert first["guardrails"] == [{"name": "g", "action": "allow"}]


async def test_pages_cover_every_row_once_across_shared_timestamps(
        http: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    # 120 calls over 40 instants, three calls per instant: pages split inside a
    # group of equal ts, so the cursor must carry call_id too.
    rows = [row(f"call-{n:03d}", T0 + timedelta(seconds=n // 3)) for n in range(120)]
    await insert(db, *rows)
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 50, **({"cursor": cursor} if cursor else {})}
        answer = (await http.get("/api/logs", params=params)).json()
        pages.append([item["call_id"] for item in answer["data"]])
        cursor = answer["next_cursor"]
        assert answer["has_more"] is (cursor is not None)
        if cursor is None:
            break
        assert len(pages) < 5, "pagination does not end"
    assert [len(page) for page in pages] == [50, 50, 20]
    seen = [call_id for page in pages for call_id in page]
    expected = sorted(rows, key=lambda r: (r["ts"], r["call_id"]), reverse=True)
    assert seen == [r["call_id"] for r in expected]  # every row once, in order
    # A filter and a cursor combine; an exact-fit last page says there is no more.
    first = (await http.get("/api/logs", params={"limit": 60})).json()
    second = (await http.get("/api/logs", params={"limit": 60,
                                                  "cursor": first["next_cursor"]})).json()
    assert (len(second["data"]), second["has_more"], second["next_cursor"]) == (60, False, None)


# -- who sees what ------------------------------------------------------------------------

async def _seed_people(db: asyncpg.Connection) -> None:
    await insert(
        db,
        row("alice-1", T0, user_id="alice", team_id="red"),
        row("alice-2", T0 + timedelta(seconds=1), user_id="alice", team_id=None),
        row("bob-1", T0 + timedelta(seconds=2), user_id="bob", team_id="red"),
        row("carol-1", T0 + timedelta(seconds=3), user_id="carol", team_id="blue"),
        row("dave-1", T0 + timedelta(seconds=4), user_id="dave", team_id="green"),
        row("anon-1", T0 + timedelta(seconds=5), user_id=None, team_id=None),
    )


async def test_admins_and_viewers_read_everything(http: httpx.AsyncClient,
                                                  db: asyncpg.Connection) -> None:
    await _seed_people(db)
    everything = ["anon-1", "dave-1", "carol-1", "bob-1", "alice-2", "alice-1"]
    for role in (PROXY_ADMIN, VIEWER):
        assert await listed(http, as_caller(role, user="zed")) == everything
        answer = await http.get("/api/logs/dave-1", headers=as_caller(role, user="zed"))
        assert answer.status_code == 200 and answer.json()["user_id"] == "dave"


async def test_an_internal_user_sees_only_its_own_calls(http: httpx.AsyncClient,
                                                        db: asyncpg.Connection) -> None:
    await _seed_people(db)
    alice = as_caller(INTERNAL_USER, user="alice", teams="red")
    assert await listed(http, alice) == ["alice-2", "alice-1"]  # not bob's, same team
    assert await listed(http, alice, user_id="bob") == []  # a filter cannot widen it
    assert await listed(http, alice, team_id="red") == ["alice-1"]
    assert (await http.get("/api/logs/alice-1", headers=alice)).status_code == 200
    for other in ("bob-1", "anon-1", "no-such-call"):  # hidden and absent look the same
        error = assert_error(await http.get(f"/api/logs/{other}", headers=alice), 404,
                             "not_found")
        assert error["message"] == "Call not found."
    # A principal without a user id has no calls of its own.
    assert await listed(http, as_caller(INTERNAL_USER)) == []
    assert await listed(http, as_caller("some_future_role", user="alice")) == []


async def test_an_org_admin_sees_its_teams_and_its_own_calls(http: httpx.AsyncClient,
                                                             db: asyncpg.Connection) -> None:
    await _seed_people(db)
    carol = as_caller(ORG_ADMIN, user="carol", teams="red", admin_of="blue")
    assert await listed(http, carol) == ["carol-1", "bob-1", "alice-1"]
    assert await listed(http, carol, user_id="alice") == ["alice-1"]  # not alice-2: no team
    assert await listed(http, carol, team_id="green") == []
    assert (await http.get("/api/logs/bob-1", headers=carol)).status_code == 200
    assert_error(await http.get("/api/logs/dave-1", headers=carol), 404, "not_found")
    # Its own calls, even outside its teams; none of the others' without a team.
    dave = as_caller(ORG_ADMIN, user="dave", admin_of="blue")
    assert await listed(http, dave) == ["dave-1", "carol-1"]
    assert await listed(http, as_caller(ORG_ADMIN)) == []


# -- one call ---------------------------------------------------------------------------------

async def test_the_full_record_carries_bodies_and_replay(http: httpx.AsyncClient,
                                                          db: asyncpg.Connection) -> None:
    request_body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi?"}]}
    await insert(
        db,
        row("full", T0, model="gpt-4o", cost_usd=0.0125, stream=True, tags=["a", "b"],
            guardrails=[{"name": "pii", "action": "redact"}],
            request_body=orjson.dumps(request_body).decode(),
            response_body='{"id": "chatcmpl-1", "choices": [', bodies_truncated=True,
            question="Hi?", answer="Hello!"),
        row("bare", T0 + timedelta(seconds=1)),
    )
    answer = await http.get("/api/logs/full")
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    record = answer.json()
    assert set(record) == {*COLUMN_NAMES, "replay"}
    assert record["ts"] == "2025-03-01T12:00:00.000000Z"
    assert (record["cost_usd"], record["stream"], record["tags"]) == (0.0125, True, ["a", "b"])
    assert record["guardrails"] == [{"name": "pii", "action": "redact"}]
    assert record["request_body"] == orjson.dumps(request_body).decode()
    assert record["replay"] == {
        "question": "Hi?", "answer": "Hello!", "request": request_body,
        "response": '{"id": "chatcmpl-1", "choices": [',  # cut off: not JSON, kept as text
    }
    bare = (await http.get("/api/logs/bare")).json()
    assert bare["replay"] is None and bare["request_body"] is None
    # A call id the path can carry but the table never holds.
    assert_error(await http.get("/api/logs/%00"), 404, "not_found")


async def test_a_repeated_call_id_answers_its_newest_record(http: httpx.AsyncClient,
                                                            db: asyncpg.Connection) -> None:
    await insert(db, row("twice", T0, model="old"),
                 row("twice", T0 + timedelta(hours=1), model="new"))
    assert (await http.get("/api/logs/twice")).json()["model"] == "new"


# -- when the database cannot answer ------------------------------------------------------------

async def test_no_dsn_is_a_503_that_says_so() -> None:
    async with _serve(None) as http:
        for path in ("/api/logs", "/api/logs/any"):
            error = assert_error(await http.get(path), 503, "audit_unavailable")
            assert "[audit] postgres_dsn" in error["message"]


async def test_an_unreachable_database_is_a_503(refusing_port: int) -> None:
    reader = LogReader(f"postgresql://postgres@127.0.0.1:{refusing_port}/postgres",
                       query_timeout=5.0)
    try:
        async with _serve(reader) as http:
            for path in ("/api/logs", "/api/logs/some-call"):
                error = assert_error(await http.get(path), 503, "audit_unavailable")
                assert error["message"].startswith("The audit log database is unavailable: ")
                assert error["type"] == "server_error"
    finally:
        await reader.aclose()


async def test_a_database_that_goes_away_is_a_503_until_it_is_back(
        database_dsn: str, db: asyncpg.Connection, postgres_server: PostgresServer,
        tcp_proxy_factory: Any) -> None:
    await insert(db, row("one", T0))
    proxy = tcp_proxy_factory(postgres_server.port)
    via_proxy = database_dsn.replace(f":{postgres_server.port}/", f":{proxy.port}/")
    reader = LogReader(via_proxy, query_timeout=5.0)
    try:
        async with _serve(reader) as http:
            assert await listed(http) == ["one"]
            proxy.cut()  # pooled connections reset, new ones refused
            assert_error(await http.get("/api/logs"), 503, "audit_unavailable")
            assert_error(await http.get("/api/logs/one"), 503, "audit_unavailable")
            proxy.restore()
            assert await listed(http) == ["one"]
    finally:
        await reader.aclose()


async def test_a_connection_killed_while_idle_is_replaced(http: httpx.AsyncClient,
                                                          db: asyncpg.Connection) -> None:
    await insert(db, row("one", T0))
    assert await listed(http) == ["one"]
    await db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE application_name = $1 AND datname = current_database()", APP)
    assert await listed(http) == ["one"]


async def test_a_slow_query_is_cut_at_the_timeout(database_dsn: str,
                                                  db: asyncpg.Connection) -> None:
    await insert(db, row("one", T0))
    # A generous connect timeout; only the query is meant to time out.
    reader = LogReader(database_dsn, query_timeout=0.5, connect_timeout=30.0)
    locker = await asyncpg.connect(database_dsn)
    try:
        async with _serve(reader) as http:
            async with locker.transaction():  # the query waits on this lock until cancelled
                await locker.execute("LOCK TABLE vas_log IN ACCESS EXCLUSIVE MODE")
                error = assert_error(await http.get("/api/logs"), 503, "audit_unavailable")
                assert "took longer than 0.5 s" in error["message"]
            assert await listed(http) == ["one"]
    finally:
        await locker.close()
        await reader.aclose()


async def test_a_missing_table_is_an_empty_log(http: httpx.AsyncClient,
                                               db: asyncpg.Connection) -> None:
    await db.execute("DROP TABLE vas_log CASCADE")  # nothing shipped yet
    answer = await http.get("/api/logs")
    assert answer.status_code == 200
    assert answer.json() == {"data": [], "next_cursor": None, "has_more": False}
    assert_error(await http.get("/api/logs/any"), 404, "not_found")


async def test_bad_parameters_are_400s_naming_them(http: httpx.AsyncClient) -> None:
    for params, param in [({"limit": "0"}, "limit"), ({"status": "teapot"}, "status"),
                          ({"since": "soon"}, "since"), ({"cursor": "@@"}, "cursor"),
                          ({"colour": "blue"}, "colour")]:
        error = assert_error(await http.get("/api/logs", params=params), 400, "invalid_field")
        assert error["param"] == param and error["type"] == "invalid_request_error"


# -- connections ------------------------------------------------------------------------------

async def test_the_pool_opens_lazily_stays_small_and_closes(database_dsn: str,
                                                             db: asyncpg.Connection) -> None:
    await insert(db, row("one", T0))
    reader = LogReader(database_dsn)
    try:
        assert await reader_connections(db) == 0
        everyone = AdminPrincipal(subject="master", role=PROXY_ADMIN)
        pages = await asyncio.gather(*(reader.list(LogFilters(), everyone) for _ in range(8)))
        assert all([r["call_id"] for r in page["data"]] == ["one"] for page in pages)
        assert 1 <= await reader_connections(db) <= 2
    finally:
        await reader.aclose()
    # Backends exit just after their clients say goodbye: wait for it, generously.
    for _ in range(200):
        if await reader_connections(db) == 0:
            break
        await asyncio.sleep(0.05)
    assert await reader_connections(db) == 0
    with pytest.raises(HTTPError) as raised:
        await reader.list(LogFilters(), AdminPrincipal(subject="master", role=PROXY_ADMIN))
    assert raised.value.status == 503

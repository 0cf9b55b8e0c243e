"""``/api/compliance``: guardrail evidence from the audit log, by compliance framework.

* ``GET /api/compliance/frameworks``: the frameworks and their controls, with
  the guardrail and finding types mapped to each.
* ``GET /api/compliance/frameworks/{name}``: one framework (404 unknown).
* ``GET /api/compliance/reports/{framework}?since=&until=``: per control and
  in total, calls in scope, findings, blocked / masked / flagged / logged /
  passed calls, enforced vs. allowed through, top finding types.
* ``GET /api/compliance/score?framework=&since=&until=``: 0-100 per framework
  and overall, with the inputs and the formula.
* ``GET /api/compliance/violations?framework=&control=&guardrail=&guardrail_type=
  &type=&outcome=&team=&key_alias=&user=&model=&since=&until=&limit=&cursor=``:
  calls whose decisions count against a mapped control, newest first, paged
  like ``/api/logs``; never any request or response text.

``since`` (inclusive) and ``until`` (exclusive) are ISO 8601 or unix seconds;
the window defaults to the 30 days before now. Every role may ask and sees
the calls ``GET /api/logs`` would show it. Without ``[audit] postgres_dsn``
the routes that read the log answer 503 ``audit_unavailable``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from smartflow.admin.context import AdminContext, json_answer
from smartflow.audit.log_query import (
    MAX_VALUE_CHARS,
    LogReader,
    decode_cursor,
    parse_limit,
    parse_time,
    unavailable,
)
from smartflow.compliance.frameworks import GUARDRAIL_TYPES, Framework, Frameworks
from smartflow.compliance.reports import (
    OUTCOMES,
    RowSource,
    ViolationFilters,
    Window,
    reports,
    scores,
    violations,
)
from smartflow.http.errors import HTTPError
from smartflow.http.request import Request
from smartflow.http.response import Response
from smartflow.http.router import Router

COMPLIANCE = "/api/compliance"
DEFAULT_WINDOW = timedelta(days=30)

_WINDOW_PARAMS = ("since", "until")
_VIOLATION_TEXT = {"guardrail": "guardrail", "guardrail_type": "guardrail_type",
                   "type": "finding_type", "outcome": "outcome", "team": "team_id",
                   "key_alias": "key_alias", "user": "user_id", "model": "model"}
_VIOLATION_PARAMS = ("framework", "control", *_VIOLATION_TEXT, *_WINDOW_PARAMS, "limit",
                     "cursor")


class LogReaderRows:
    """``LogReader`` as a ``RowSource``: its pool, timeouts and error answers."""

    def __init__(self, reader: LogReader) -> None:
        self.reader = reader

    async def fetch(self, sql: str, args: Sequence[Any]) -> list[Any]:
        return await self.reader.fetch(sql, args)


def _invalid(param: str, message: str) -> HTTPError:
    return HTTPError(400, f"{param}: {message}", param=param, code="invalid_field")


def _params(query: Mapping[str, Sequence[str]], known: Sequence[str]) -> dict[str, str]:
    """Each known parameter's one value (blank ones are absent); anything else a 400."""
    values: dict[str, str] = {}
    for param, given in query.items():
        if param not in known:
            expected = ", ".join(sorted(known)) or "none"
            raise _invalid(param, f"unknown parameter (expected {expected})")
        present = [value for value in given if value != ""]
        if len(present) > 1:
            raise _invalid(param, "give it once")
        if present:
            if len(present[0]) > MAX_VALUE_CHARS or "\x00" in present[0]:
                raise _invalid(param, f"at most {MAX_VALUE_CHARS} characters, no NUL")
            values[param] = present[0]
    return values


def parse_window(params: Mapping[str, str], now: datetime) -> Window:
    since = parse_time("since", params["since"]) if "since" in params else None
    until = parse_time("until", params["until"]) if "until" in params else None
    if until is None:  # up to now, or a window's length when since is in the future
        until = now if since is None or since < now else since + DEFAULT_WINDOW
    if since is None:
        since = until - DEFAULT_WINDOW
    if until <= since:
        raise _invalid("until", "must be later than since")
    return Window(since, until)


def register_compliance_routes(router: Router, admin: AdminContext, reader: Any,
                               frameworks: Frameworks | None = None,
                               clock: Callable[[], datetime] | None = None) -> None:
    """``reader``: the ``LogReader`` of ``/api/logs`` (or any ``RowSource``); None
    when no ``postgres_dsn`` is set. ``frameworks``: the mappings (default: the
    packaged file, read now); ``clock``: now, for the default window."""
    from smartflow.compliance.frameworks import load_frameworks

    known = frameworks if frameworks is not None else load_frameworks()
    now = clock or (lambda: datetime.now(UTC))
    rows: RowSource | None = LogReaderRows(reader) if isinstance(reader, LogReader) else reader

    def configured() -> RowSource:
        if rows is None:
            raise unavailable("[audit] postgres_dsn is not set in the gateway's config")
        return rows

    def framework_named(name: str, param: str | None = None) -> Framework:
        framework = known.get(name)
        if framework is None:
            names = ", ".join(f.name for f in known.all)
            if param is not None:  # a query parameter: the request is wrong, not the URL
                raise _invalid(param, f"unknown framework {name!r} (known: {names})")
            raise HTTPError(404, f"Framework {name!r} not found (known: {names}).",
                            "not_found_error", code="not_found")
        return framework

    async def list_frameworks(request: Request) -> Response:
        await admin.principal(request)
        _params(request.query, ())
        return json_answer({"data": [framework.to_json() for framework in known.all]})

    async def get_framework(request: Request) -> Response:
        await admin.principal(request)
        _params(request.query, ())
        return json_answer(framework_named(request.path_params["name"]).to_json())

    async def report(request: Request) -> Response:
        principal = await admin.principal(request)
        framework = framework_named(request.path_params["framework"])
        window = parse_window(_params(request.query, _WINDOW_PARAMS), now())
        built = await reports(configured(), [framework], window, principal)
        return json_answer(built[framework.name])

    async def score(request: Request) -> Response:
        principal = await admin.principal(request)
        params = _params(request.query, ("framework", *_WINDOW_PARAMS))
        chosen = ([framework_named(params["framework"], "framework")]
                  if "framework" in params else list(known.all))
        window = parse_window(params, now())
        return json_answer(await scores(configured(), chosen, window, principal))

    async def list_violations(request: Request) -> Response:
        principal = await admin.principal(request)
        params = _params(request.query, _VIOLATION_PARAMS)
        chosen = ([framework_named(params["framework"], "framework")]
                  if "framework" in params else list(known.all))
        control = None
        if "control" in params:
            if "framework" not in params:
                raise _invalid("control", "give framework too (control ids are per framework)")
            control = chosen[0].control(params["control"])
            if control is None:
                ids = ", ".join(c.id for c in chosen[0].controls)
                raise _invalid("control", f"unknown control of {chosen[0].name} "
                                          f"(known: {ids})")
        if params.get("outcome", OUTCOMES[0]) not in OUTCOMES:
            raise _invalid("outcome", f"expected one of {', '.join(OUTCOMES)}")
        if params.get("guardrail_type", GUARDRAIL_TYPES[0]) not in GUARDRAIL_TYPES:
            raise _invalid("guardrail_type", f"expected one of {', '.join(GUARDRAIL_TYPES)}")
        fields: dict[str, Any] = {field: params[param]
                                  for param, field in _VIOLATION_TEXT.items() if param in params}
        if "limit" in params:
            fields["limit"] = parse_limit(params["limit"])
        if "cursor" in params:
            fields["cursor"] = decode_cursor(params["cursor"])
        filters = ViolationFilters(window=parse_window(params, now()), control=
                                   control.id if control else None, **fields)
        return json_answer(await violations(configured(), chosen, control, filters, principal))

    router.add("GET", COMPLIANCE + "/frameworks", list_frameworks)
    router.add("GET", COMPLIANCE + "/frameworks/{name}", get_framework)
    router.add("GET", COMPLIANCE + "/reports/{framework}", report)
    router.add("GET", COMPLIANCE + "/score", score)
    router.add("GET", COMPLIANCE + "/violations", list_violations)

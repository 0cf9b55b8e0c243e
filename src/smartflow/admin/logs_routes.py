"""``/api/logs``: the VAS audit log, one record per proxied call.

* ``GET /api/logs``: summaries, newest first, without the bodies. Filters:
  ``user_id``, ``key_alias``, ``team_id``, ``model``, ``provider``,
  ``status`` (``429``, ``4xx``, or ``error`` for >= 400), ``policy`` (a
  matched policy), ``verdict``, ``kind``, ``since`` (inclusive) and
  ``until`` (exclusive) as ISO 8601 or unix seconds, ``limit`` (1-500,
  default 50) and ``cursor`` (the previous page's ``next_cursor``). Answer:
  ``{"data": [...], "next_cursor": str | null, "has_more": bool}``.
* ``GET /api/logs/{call_id}``: the whole record, bodies included, with a
  ``replay`` object (question, answer, request and response).

Every role may ask; each sees only its scope (``audit.log_query``), and a
call outside it is a 404 like a call that does not exist. Without
``[audit] postgres_dsn`` both routes answer 503 ``audit_unavailable``.
"""

from __future__ import annotations

from smartflow.admin.context import AdminContext, json_answer, not_found
from smartflow.audit.log_query import LogReader, parse_filters, unavailable
from smartflow.http.request import Request
from smartflow.http.response import Response
from smartflow.http.router import Router

LOGS = "/api/logs"


def register_logs_routes(router: Router, admin: AdminContext, reader: LogReader | None) -> None:
    """``reader`` None (no ``postgres_dsn``): the routes exist and say why they cannot
    answer, rather than a bare 404 that looks like a wrong URL."""

    def configured() -> LogReader:
        if reader is None:
            raise unavailable("[audit] postgres_dsn is not set in the gateway's config")
        return reader

    async def list_logs(request: Request) -> Response:
        principal = await admin.principal(request)  # a 401 first: config is no one's business
        filters = parse_filters(request.query)
        return json_answer(await configured().list(filters, principal))

    async def get_log(request: Request) -> Response:
        principal = await admin.principal(request)
        record = await configured().get(request.path_params["call_id"], principal)
        if record is None:
            raise not_found("Call")
        return json_answer(record)

    router.add("GET", LOGS, list_logs)
    router.add("GET", LOGS + "/{call_id}", get_log)

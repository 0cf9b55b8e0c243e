"""``GET /api/enterprise/spend/{scope}/{id}``: the spend ledger, per day and model.

``scope`` is ``key``, ``team`` or ``user``; ``?days=N`` (default 30, at most
400) counts back from today in the budget time zone. The current period's
spend, held reservations and remaining budget come with it.
"""

from __future__ import annotations

from datetime import timedelta

from smartflow.admin.context import AdminContext, json_answer, not_found
from smartflow.http.errors import HTTPError
from smartflow.http.request import Request
from smartflow.http.response import Response
from smartflow.http.router import Router
from smartflow.store.keyspace import SCOPE_KEY, SCOPE_TEAM, SCOPE_USER

MAX_DAYS = 400


def register_spend_routes(router: Router, admin: AdminContext) -> None:
    store = admin.store

    async def ledger(request: Request) -> Response:
        principal = await admin.principal(request)
        scope = request.path_params["scope"]
        scope_id = request.path_params["scope_id"]
        if scope == "key":
            key = await store.get_key(scope_id)
            if key is None or not principal.reads_key(key.user_id, key.team_id):
                raise not_found("Virtual key")
            kind, limits = SCOPE_KEY, key.limits
        elif scope == "team":
            team = await store.get_team(scope_id)
            if team is None or not principal.reads_team(team.team_id):
                raise not_found("Team")
            kind, limits = SCOPE_TEAM, team.limits
        elif scope == "user":
            user = await store.get_user(scope_id)
            if user is None or not (principal.reads_everything or principal.owns(user.user_id)):
                raise not_found("User")
            kind, limits = SCOPE_USER, user.limits
        else:
            raise HTTPError(404, "scope: expected key, team or user", code="not_found")
        raw_days = (request.query.get("days") or ["30"])[0]
        if not raw_days.isdigit() or not 1 <= int(raw_days) <= MAX_DAYS:
            raise HTTPError(400, f"days: expected 1-{MAX_DAYS}", param="days",
                            code="invalid_field")
        clock = store.clock
        today = clock.now()
        days = [clock.day_id(today - timedelta(days=n)) for n in range(int(raw_days))]
        rows = await store.ledger(kind, scope_id, days)
        summary = await store.spend(kind, scope_id, limits)
        total = round(sum(row["spend"] for row in rows), 9)
        return json_answer({"scope": scope, "id": scope_id, **summary,
                            "ledger_total": total, "data": rows})

    router.add("GET", "/api/enterprise/spend/{scope}/{scope_id}", ledger)

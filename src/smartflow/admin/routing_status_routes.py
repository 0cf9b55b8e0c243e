"""``GET /api/routing/status``: what routing knows right now.

Each deployment with its group, strategy, whether it is cooling down (and
until when), and its rolling p95 time to first byte where the latency
strategy measures it; each capped provider with today's spend. Cooldowns
and spend come from Redis, so any worker answers for all of them; the p95
is the answering worker's view (within half a second of every other's).
Proxy admins and viewers may read it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from smartflow.admin.context import AdminContext, forbidden, json_answer
from smartflow.http.request import Request
from smartflow.http.response import Response
from smartflow.http.router import Router

if TYPE_CHECKING:
    from smartflow.routing.runtime import RoutingRuntime

STATUS = "/api/routing/status"


def register_routing_status_route(router: Router, admin: AdminContext,
                                  routing: RoutingRuntime) -> None:
    async def status(request: Request) -> Response:
        principal = await admin.principal(request)
        if not principal.reads_everything:
            raise forbidden("Your role may not read routing.")
        return json_answer(await routing.status())

    router.add("GET", STATUS, status)

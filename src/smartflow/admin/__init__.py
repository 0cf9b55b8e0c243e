"""The admin API (``/api/...``): virtual keys, teams, users, spend, the key vault, sign-in,
routing (fallback chains and model groups), the audit log.

``register_admin_routes(router, admin)`` adds every admin route; the worker
builds the ``AdminContext`` (``admin.context``) once, sharing the proxy's
store client and key cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smartflow.admin.context import AdminContext
    from smartflow.audit.log_query import LogReader
    from smartflow.http.router import Router


def register_admin_routes(router: Router, admin: AdminContext,
                          log_reader: LogReader | None = None) -> None:
    from smartflow.admin.auth_routes import register_auth_routes
    from smartflow.admin.logs_routes import register_logs_routes
    from smartflow.admin.routing_routes import register_routing_routes
    from smartflow.admin.spend_routes import register_spend_routes
    from smartflow.admin.teams_routes import register_team_routes, register_user_routes
    from smartflow.admin.vault_routes import register_vault_routes
    from smartflow.admin.vkeys_routes import register_vkey_routes

    register_vkey_routes(router, admin)
    register_team_routes(router, admin)
    register_user_routes(router, admin)
    register_spend_routes(router, admin)
    register_vault_routes(router, admin)
    register_auth_routes(router, admin)
    register_logs_routes(router, admin, log_reader)
    if admin.routes is not None:
        register_routing_routes(router, admin, admin.routes, admin.config_chains)

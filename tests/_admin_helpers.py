"""Shared by the admin-route tests that are not about role resolution."""

from __future__ import annotations

from dataclasses import dataclass

from smartflow.admin.context import AdminContext
from smartflow.http.request import Request
from smartflow.identity.roles import PROXY_ADMIN, AdminPrincipal


@dataclass
class HeaderRoleAdmin(AdminContext):
    """An admin context whose caller's role is whatever the ``x-test-role`` header
    says (proxy_admin when absent): role resolution is tested in test_admin_roles."""

    async def principal(self, request: Request) -> AdminPrincipal:
        return AdminPrincipal(subject="tester", role=request.header("x-test-role") or PROXY_ADMIN)

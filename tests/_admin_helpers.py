"""Shared by the admin-route tests that are not about role resolution: an admin
context whose caller's role comes from a test header, and a real in-process
server for a router, with an httpx client on it."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from smartflow.admin.context import AdminContext
from smartflow.config import ServerSettings, Settings
from smartflow.http.request import Request
from smartflow.http.router import Router
from smartflow.http.transport import HTTPServer
from smartflow.identity.roles import PROXY_ADMIN, AdminPrincipal
from smartflow.keys.periods import PeriodClock
from smartflow.keys.store import IdentityStore
from smartflow.store.fast_client import StoreClient


@dataclass
class HeaderRoleAdmin(AdminContext):
    """The caller's role is whatever the ``x-test-role`` header says (proxy_admin
    when absent): role resolution itself is tested in test_admin_roles."""

    async def principal(self, request: Request) -> AdminPrincipal:
        return AdminPrincipal(subject="tester", role=request.header("x-test-role") or PROXY_ADMIN)


def header_role_admin(client: StoreClient, **fields: Any) -> HeaderRoleAdmin:
    """A HeaderRoleAdmin on ``client``; what a test's routes do not use stays None."""
    defaults: dict[str, Any] = {"tokens": None, "vault": None, "key_cache": None, "pool": None,
                                "master_key": b"master-test"}
    return HeaderRoleAdmin(settings=Settings(), client=client,
                           store=IdentityStore(client, PeriodClock("UTC")),
                           **{**defaults, **fields})


@asynccontextmanager
async def serving(router: Router, *, timeout_s: float = 30.0
                  ) -> AsyncIterator[httpx.AsyncClient]:
    """``router`` on a real HTTPServer on a free loopback port, and a client for it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = HTTPServer(router, ServerSettings(port=0, access_log=False))
    await server.start(sock)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}",
                                     timeout=timeout_s) as http:
            yield http
    finally:
        await server.drain(1.0)

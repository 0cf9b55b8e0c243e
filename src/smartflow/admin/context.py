"""What every admin route shares, and who is calling it.

An admin request carries ``Authorization: Bearer <credential>``: the master
key (a ``proxy_admin``), or a session token from ``POST /api/auth/login`` or
SSO sign-in. The token names the user; the user's role and teams are read
from the store on each admin request (admin traffic is light, and a role
removed in Entra or by an admin must stop working at once, not at expiry).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from smartflow.http.errors import HTTPError
from smartflow.http.request import Request
from smartflow.http.response import Response
from smartflow.identity.roles import MASTER, PROXY_ADMIN, AdminPrincipal
from smartflow.keys.records import InputError

if TYPE_CHECKING:
    from smartflow.config import Settings
    from smartflow.http.client import UpstreamPool
    from smartflow.identity.session_tokens import SessionTokens
    from smartflow.keys.key_cache import KeyCache
    from smartflow.keys.runtime import KeysRuntime
    from smartflow.keys.store import IdentityStore
    from smartflow.keys.vault import Vault
    from smartflow.routing.records import FallbackChain
    from smartflow.routing.route_store import RouteStore
    from smartflow.store.fast_client import StoreClient

AdminHandler = Callable[[Request], Awaitable[Response]]


@dataclass(slots=True)
class AdminContext:
    settings: Settings
    client: StoreClient
    store: IdentityStore
    tokens: SessionTokens
    vault: Vault
    key_cache: KeyCache
    pool: UpstreamPool  # outbound HTTPS (Entra ID's JWKS)
    master_key: bytes = field(default=b"")
    routes: RouteStore | None = None  # fallback chains and model groups (None: no routes)
    config_chains: tuple[FallbackChain, ...] = ()  # [[routing.fallback_chains]]

    @property
    def is_development_mode(self) -> bool:
        return not self.master_key

    def is_master_key(self, presented: str) -> bool:
        return bool(self.master_key) and hmac.compare_digest(presented.encode(),
                                                             self.master_key)

    async def principal(self, request: Request) -> AdminPrincipal:
        """The caller, or a 401 that says nothing about why the credential failed."""
        authorization = request.header("authorization") or ""
        credential = (authorization[7:].strip() if authorization[:7].lower() == "bearer "
                      else "")
        if not credential:
            if self.is_development_mode:
                return MASTER  # development mode: the admin API is as open as the proxy
            raise HTTPError(401, "Provide the master key or a session token as "
                                 "'Authorization: Bearer <token>'.",
                            "authentication_error", code="missing_credentials")
        if self.is_master_key(credential):
            return MASTER
        claims = await self.tokens.verify(credential)
        if claims is not None:
            if claims.user_id is None:  # a session of the master key
                return MASTER if claims.role == PROXY_ADMIN else AdminPrincipal(
                    subject=claims.subject, role=claims.role)
            user = await self.store.get_user(claims.user_id)
            if user is not None:
                teams = await self._teams_administered(user.user_id, user.teams)
                return AdminPrincipal(subject=user.user_id, role=user.role,
                                      user_id=user.user_id, team_ids=frozenset(user.teams),
                                      admin_of=teams)
        raise HTTPError(401, "Invalid or expired credentials.", "authentication_error",
                        code="invalid_credentials")

    async def _teams_administered(self, user_id: str, team_ids: tuple[str, ...]
                                  ) -> frozenset[str]:
        found = set()
        for team_id in team_ids:
            team = await self.store.get_team(team_id)
            if team is not None and user_id in team.admins:
                found.add(team_id)
        return frozenset(found)


def forbidden(message: str = "Your role does not allow this.") -> HTTPError:
    return HTTPError(403, message, "permission_error", code="forbidden")


def not_found(what: str) -> HTTPError:
    return HTTPError(404, f"{what} not found.", "not_found_error", code="not_found")


async def read_json_object(request: Request) -> dict[str, Any]:
    body = await request.body()
    if not body.strip():
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise HTTPError(400, "The request body is not valid JSON.",
                        code="invalid_json") from None
    if not isinstance(value, dict):
        raise HTTPError(400, "The request body must be a JSON object.", code="invalid_json")
    return value


def input_error(exc: InputError) -> HTTPError:
    return HTTPError(400, exc.message, "invalid_request_error", param=exc.param,
                     code="invalid_field")


def json_answer(value: Any, status: int = 200) -> Response:
    return Response(status, orjson.dumps(value), [("cache-control", "no-store")])


def build_admin_context(settings: Settings, keys: KeysRuntime, pool: UpstreamPool, *,
                        config_chains: tuple[FallbackChain, ...] = ()) -> AdminContext:
    from smartflow.identity.session_tokens import SessionTokens
    from smartflow.routing.route_store import RouteStore

    auth = settings.auth
    return AdminContext(
        settings=settings,
        client=keys.client,
        store=keys.store,
        tokens=SessionTokens(keys.client, ttl_s=auth.jwt_ttl,
                             key_max_age_s=auth.jwt_key_max_age),
        vault=keys.vault,
        key_cache=keys.cache,
        pool=pool,
        master_key=auth.master_key.encode(),
        routes=RouteStore(keys.client),
        config_chains=tuple(config_chains),
    )

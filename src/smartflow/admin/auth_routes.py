"""Admin sign-in: password or master-key login, Entra ID SSO, and signing-key rotation.

Every sign-in ends in a session token from ``SessionTokens``; admin routes
then take it as ``Authorization: Bearer <token>`` (see ``AdminContext``).
A failed login says the same thing whichever part of the credentials was
wrong, so the answer does not tell which user ids exist. A failed SSO
sign-in does name the check that failed: the token is Entra's, not a
secret the caller is guessing, and the reason is what an operator needs.
"""

from __future__ import annotations

import asyncio
from typing import Any

from smartflow.admin.context import (
    AdminContext,
    forbidden,
    input_error,
    json_answer,
    not_found,
    read_json_object,
)
from smartflow.http.errors import HTTPError
from smartflow.http.request import Request
from smartflow.http.response import Response
from smartflow.http.router import Router
from smartflow.identity.entra import (
    JwksCache,
    SsoConfig,
    SsoError,
    load_sso_config,
    save_sso_config,
    verify_id_token,
)
from smartflow.identity.group_sync import SOURCE as ENTRA_SOURCE
from smartflow.identity.group_sync import sync_user_from_claims
from smartflow.identity.passwords import check_password
from smartflow.identity.roles import ORG_ADMIN, PROXY_ADMIN
from smartflow.keys.records import InputError, Team

_LOGIN_FIELDS = frozenset({"user_id", "password", "api_key"})
_SIGNIN_FIELDS = frozenset({"id_token", "nonce"})
_MAX_SECRET_CHARS = 4096


def _bad_credentials() -> HTTPError:
    return HTTPError(401, "Invalid credentials.", "authentication_error",
                     code="invalid_credentials")


def _sso_failure(message: str) -> HTTPError:
    return HTTPError(401, message, "authentication_error", code="sso_invalid_token")


def _sso_not_configured() -> HTTPError:
    return HTTPError(400, "SSO is not configured: POST /api/auth/sso/config first.",
                     "invalid_request_error", code="sso_not_configured")


def _missing(param: str) -> HTTPError:
    return HTTPError(400, f"{param}: required", "invalid_request_error", param=param,
                     code="missing_field")


def _string_field(body: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        if required:
            raise _missing(name)
        return None
    if not isinstance(value, str) or len(value) > _MAX_SECRET_CHARS:
        raise HTTPError(400, f"{name}: expected a string", "invalid_request_error",
                        param=name, code="invalid_field")
    return value


def _reject_unknown(body: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise input_error(InputError(f"{unknown[0]}: unknown field", unknown[0]))


def _team_view(team: Team) -> dict[str, Any]:
    return {"team_id": team.team_id, "alias": team.alias, "source": team.source,
            "members": list(team.members), "admins": list(team.admins)}


def register_auth_routes(router: Router, admin: AdminContext) -> None:
    jwks = JwksCache(admin.pool)

    async def login(request: Request) -> Response:
        body = await read_json_object(request)
        _reject_unknown(body, _LOGIN_FIELDS)
        if "api_key" in body:
            api_key = _string_field(body, "api_key")
            assert api_key is not None
            if not admin.is_master_key(api_key):
                raise _bad_credentials()
            token, expires_in = await admin.tokens.issue(subject="master", role=PROXY_ADMIN,
                                                         user_id=None)
            return json_answer({"token": token, "token_type": "Bearer",
                                "expires_in": expires_in, "role": PROXY_ADMIN,
                                "user_id": None})
        user_id = _string_field(body, "user_id")
        password = _string_field(body, "password")
        assert user_id is not None and password is not None
        user = await admin.store.get_user(user_id)
        stored = user.password_hash if user is not None else None
        # scrypt takes tens of ms: off the event loop. A missing user still
        # costs one hash, so timing does not reveal which user ids exist.
        if not await asyncio.to_thread(check_password, password, stored) or user is None:
            raise _bad_credentials()
        token, expires_in = await admin.tokens.issue(subject=user.user_id, role=user.role,
                                                     user_id=user.user_id)
        return json_answer({"token": token, "token_type": "Bearer", "expires_in": expires_in,
                            "role": user.role, "user_id": user.user_id})

    async def rotate_keys(request: Request) -> Response:
        principal = await admin.principal(request)
        if not principal.writes_everything:
            raise forbidden()
        return json_answer({"kid": await admin.tokens.rotate()})

    async def set_sso_config(request: Request) -> Response:
        principal = await admin.principal(request)
        if not principal.writes_everything:
            raise forbidden()
        body = await read_json_object(request)
        try:
            config = SsoConfig.from_body(body)
        except InputError as exc:
            raise input_error(exc) from None
        await save_sso_config(admin.client, config)
        return json_answer(config.view())

    async def get_sso_config(request: Request) -> Response:
        principal = await admin.principal(request)
        if not principal.reads_everything:
            raise forbidden()
        config = await load_sso_config(admin.client)
        if config is None:
            raise HTTPError(404, "SSO is not configured.", "not_found_error",
                            code="sso_not_configured")
        return json_answer(config.view())

    async def sso_signin(request: Request) -> Response:
        body = await read_json_object(request)
        _reject_unknown(body, _SIGNIN_FIELDS)
        config = await load_sso_config(admin.client)
        if config is None:
            raise _sso_not_configured()
        id_token = body.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise _missing("id_token")
        nonce = body.get("nonce")
        if nonce is not None and not isinstance(nonce, str):
            raise HTTPError(400, "nonce: expected a string", "invalid_request_error",
                            param="nonce", code="invalid_field")
        try:
            claims = await verify_id_token(id_token, nonce or None, config, jwks)
            user = await sync_user_from_claims(admin.store, claims, config)
        except SsoError as exc:
            raise _sso_failure(exc.message) from None
        token, expires_in = await admin.tokens.issue(subject=user.user_id, role=user.role,
                                                     user_id=user.user_id)
        return json_answer({"token": token, "token_type": "Bearer", "expires_in": expires_in,
                            "user_id": user.user_id, "email": user.email, "role": user.role,
                            "teams": list(user.teams)})

    async def sso_teams(request: Request) -> Response:
        principal = await admin.principal(request)
        if not (principal.reads_everything or principal.role == ORG_ADMIN):
            raise forbidden()
        teams = [team for team in await admin.store.list_teams()
                 if team.source == ENTRA_SOURCE
                 and (principal.reads_everything or principal.manages_team(team.team_id))]
        return json_answer({"data": [_team_view(team) for team in teams]})

    async def user_teams(request: Request) -> Response:
        principal = await admin.principal(request)
        user_id = request.path_params["user_id"]
        if not (principal.reads_everything or principal.owns(user_id)):
            raise forbidden()
        user = await admin.store.get_user(user_id)
        if user is None:
            raise not_found("User")
        teams = []
        for team_id in user.teams:
            team = await admin.store.get_team(team_id)
            if team is not None:
                teams.append(_team_view(team))
        return json_answer({"user_id": user.user_id, "data": teams})

    router.add("POST", "/api/auth/login", login)
    router.add("POST", "/api/auth/keys/rotate", rotate_keys)
    router.add("POST", "/api/auth/sso/config", set_sso_config)
    router.add("GET", "/api/auth/sso/config", get_sso_config)
    router.add("POST", "/api/auth/sso/signin", sso_signin)
    router.add("GET", "/api/auth/sso/teams", sso_teams)
    router.add("GET", "/api/auth/sso/users/{user_id}/teams", user_teams)

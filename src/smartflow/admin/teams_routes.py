"""``/api/enterprise/teams`` and ``/api/enterprise/users``: teams, members, users.

Teams carry budgets, rate limits and model access that apply to every key
of the team. proxy_admin manages all; org_admin creates teams (becoming
their admin) and manages the ones it administers or belongs to; viewers
read; internal users read their own teams and user.
"""

from __future__ import annotations

from dataclasses import replace
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
from smartflow.identity.passwords import hash_password
from smartflow.identity.roles import ORG_ADMIN, AdminPrincipal
from smartflow.keys.records import (
    InputError,
    Team,
    User,
    apply_team_fields,
    apply_user_fields,
    check_id,
    limits_view,
)
from smartflow.keys.store import AlreadyExists
from smartflow.store.keyspace import SCOPE_TEAM, SCOPE_USER


def team_view(team: Team) -> dict[str, Any]:
    return {
        "team_id": team.team_id, "alias": team.alias, "models": list(team.models),
        **limits_view(team.limits), "members": list(team.members),
        "admins": list(team.admins), "source": team.source, "metadata": dict(team.metadata),
        "created_at": team.created_at, "updated_at": team.updated_at,
    }


def user_view(user: User) -> dict[str, Any]:
    return {
        "user_id": user.user_id, "email": user.email, "role": user.role,
        **limits_view(user.limits), "teams": list(user.teams), "source": user.source,
        "has_password": user.password_hash is not None, "metadata": dict(user.metadata),
        "created_at": user.created_at, "updated_at": user.updated_at,
    }


def register_team_routes(router: Router, admin: AdminContext) -> None:
    store = admin.store

    async def load_team(request: Request, principal: AdminPrincipal, *, write: bool) -> Team:
        team = await store.get_team(request.path_params["team_id"])
        if team is None or not principal.reads_team(team.team_id):
            raise not_found("Team")
        if write and not principal.manages_team(team.team_id):
            raise forbidden()
        return team

    async def with_spend(team: Team) -> dict[str, Any]:
        view = team_view(team)
        view.update(await store.spend(SCOPE_TEAM, team.team_id, team.limits))
        return view

    async def create(request: Request) -> Response:
        principal = await admin.principal(request)
        if not (principal.writes_everything or principal.role == ORG_ADMIN):
            raise forbidden()
        body = await read_json_object(request)
        try:
            team_id = check_id(body.get("team_id") or _new_id("team"), "team_id")
            team = apply_team_fields(Team(team_id=team_id), body)
        except InputError as exc:
            raise input_error(exc) from None
        if principal.role == ORG_ADMIN and principal.user_id is not None:
            team = replace(team, admins=tuple(dict.fromkeys((*team.admins, principal.user_id))))
        try:
            saved = await store.create_team(_admins_are_members(team))
        except AlreadyExists:
            raise HTTPError(409, f"Team {team_id!r} already exists.", code="conflict") from None
        return json_answer(await with_spend(saved), 201)

    async def list_teams(request: Request) -> Response:
        principal = await admin.principal(request)
        teams = [t for t in await store.list_teams() if principal.reads_team(t.team_id)]
        return json_answer({"data": [team_view(t) for t in teams], "total": len(teams)})

    async def get(request: Request) -> Response:
        principal = await admin.principal(request)
        return json_answer(await with_spend(await load_team(request, principal, write=False)))

    async def update(request: Request) -> Response:
        principal = await admin.principal(request)
        team = await load_team(request, principal, write=True)
        body = await read_json_object(request)
        body.pop("team_id", None)
        try:
            changed = apply_team_fields(team, body)
        except InputError as exc:
            raise input_error(exc) from None
        return json_answer(await with_spend(await store.save_team(_admins_are_members(changed),
                                                                  previous=team)))

    async def delete(request: Request) -> Response:
        principal = await admin.principal(request)
        team = await load_team(request, principal, write=True)
        await store.delete_team(team)
        return json_answer({"team_id": team.team_id, "deleted": True})

    async def add_member(request: Request) -> Response:
        principal = await admin.principal(request)
        team = await load_team(request, principal, write=True)
        body = await read_json_object(request)
        try:
            user_id = check_id(body.get("user_id"), "user_id")
        except InputError as exc:
            raise input_error(exc) from None
        members = tuple(dict.fromkeys((*team.members, user_id)))
        admins = team.admins
        if body.get("role") == "admin":
            admins = tuple(dict.fromkeys((*admins, user_id)))
        saved = await store.save_team(replace(team, members=members, admins=admins),
                                      previous=team)
        return json_answer(team_view(saved))

    async def remove_member(request: Request) -> Response:
        principal = await admin.principal(request)
        team = await load_team(request, principal, write=True)
        user_id = request.path_params["user_id"]
        if user_id not in team.members:
            raise not_found("Team member")
        saved = await store.save_team(replace(
            team, members=tuple(m for m in team.members if m != user_id),
            admins=tuple(a for a in team.admins if a != user_id)), previous=team)
        return json_answer(team_view(saved))

    router.add("POST", "/api/enterprise/teams", create)
    router.add("GET", "/api/enterprise/teams", list_teams)
    router.add("GET", "/api/enterprise/teams/{team_id}", get)
    router.add("PATCH", "/api/enterprise/teams/{team_id}", update)
    router.add("DELETE", "/api/enterprise/teams/{team_id}", delete)
    router.add("POST", "/api/enterprise/teams/{team_id}/members", add_member)
    router.add("DELETE", "/api/enterprise/teams/{team_id}/members/{user_id}", remove_member)


def register_user_routes(router: Router, admin: AdminContext) -> None:
    store = admin.store

    async def load_user(request: Request, principal: AdminPrincipal, *, write: bool) -> User:
        user = await store.get_user(request.path_params["user_id"])
        visible = user is not None and (principal.reads_everything
                                        or principal.owns(user.user_id))
        if user is None or not visible:
            raise not_found("User")
        if write and not principal.writes_everything:
            raise forbidden()
        return user

    async def with_spend(user: User) -> dict[str, Any]:
        view = user_view(user)
        view.update(await store.spend(SCOPE_USER, user.user_id, user.limits))
        return view

    def apply(user: User, body: dict[str, Any]) -> User:
        try:
            changed = apply_user_fields(user, body)
        except InputError as exc:
            raise input_error(exc) from None
        if "password" in body:
            password = body["password"]
            if password is None:
                return replace(changed, password_hash=None)
            if not isinstance(password, str) or len(password) < 8:
                raise HTTPError(400, "password: at least 8 characters", param="password",
                                code="invalid_field")
            changed = replace(changed, password_hash=hash_password(password))
        return changed

    async def create(request: Request) -> Response:
        principal = await admin.principal(request)
        if not principal.writes_everything:
            raise forbidden()
        body = await read_json_object(request)
        try:
            user_id = check_id(body.get("user_id") or _new_id("user"), "user_id")
        except InputError as exc:
            raise input_error(exc) from None
        user = apply(User(user_id=user_id), body)
        try:
            saved = await store.create_user(user)
        except AlreadyExists:
            raise HTTPError(409, f"User {user_id!r} already exists.", code="conflict") from None
        return json_answer(await with_spend(saved), 201)

    async def list_users(request: Request) -> Response:
        principal = await admin.principal(request)
        users = [u for u in await store.list_users()
                 if principal.reads_everything or principal.owns(u.user_id)]
        return json_answer({"data": [user_view(u) for u in users], "total": len(users)})

    async def get(request: Request) -> Response:
        principal = await admin.principal(request)
        return json_answer(await with_spend(await load_user(request, principal, write=False)))

    async def update(request: Request) -> Response:
        principal = await admin.principal(request)
        user = await load_user(request, principal, write=True)
        body = await read_json_object(request)
        body.pop("user_id", None)
        return json_answer(await with_spend(await store.save_user(apply(user, body))))

    async def delete(request: Request) -> Response:
        principal = await admin.principal(request)
        user = await load_user(request, principal, write=True)
        await store.delete_user(user)
        return json_answer({"user_id": user.user_id, "deleted": True})

    router.add("POST", "/api/enterprise/users", create)
    router.add("GET", "/api/enterprise/users", list_users)
    router.add("GET", "/api/enterprise/users/{user_id}", get)
    router.add("PATCH", "/api/enterprise/users/{user_id}", update)
    router.add("DELETE", "/api/enterprise/users/{user_id}", delete)


def _admins_are_members(team: Team) -> Team:
    """A team's admins are among its members: ``AdminContext.principal`` looks for the
    teams a user administers among the teams it belongs to (``User.teams``, kept in
    step with the members), so an admin who is not a member would administer nothing."""
    members = tuple(dict.fromkeys((*team.members, *team.admins)))
    return team if members == team.members else replace(team, members=members)


def _new_id(kind: str) -> str:
    import secrets

    return f"{kind}-{secrets.token_hex(6)}"

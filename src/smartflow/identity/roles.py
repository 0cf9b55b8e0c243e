"""Admin roles and what each may do.

* ``proxy_admin``: everything.
* ``proxy_admin_viewer``: reads everything, changes nothing.
* ``org_admin``: manages the teams it administers or belongs to, their keys
  and members; reads its own user.
* ``internal_user``: sees and manages only its own keys and spend.

The master key is a ``proxy_admin``. Checks are functions of the principal
and the record, called by each admin route before it acts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PROXY_ADMIN = "proxy_admin"
ORG_ADMIN = "org_admin"
VIEWER = "proxy_admin_viewer"
INTERNAL_USER = "internal_user"
ROLES = (PROXY_ADMIN, ORG_ADMIN, VIEWER, INTERNAL_USER)


@dataclass(frozen=True, slots=True)
class AdminPrincipal:
    """Who is calling an admin route."""

    subject: str  # "master" or the user id
    role: str
    user_id: str | None = None
    team_ids: frozenset[str] = field(default_factory=frozenset)  # teams it belongs to
    admin_of: frozenset[str] = field(default_factory=frozenset)  # teams it administers

    @property
    def reads_everything(self) -> bool:
        return self.role in (PROXY_ADMIN, VIEWER)

    @property
    def writes_everything(self) -> bool:
        return self.role == PROXY_ADMIN

    def manages_team(self, team_id: str | None) -> bool:
        if self.role == PROXY_ADMIN:
            return True
        return (self.role == ORG_ADMIN and team_id is not None
                and (team_id in self.admin_of or team_id in self.team_ids))

    def reads_team(self, team_id: str | None) -> bool:
        return self.reads_everything or self.manages_team(team_id) or (
            team_id is not None and team_id in self.team_ids)

    def owns(self, user_id: str | None) -> bool:
        return user_id is not None and user_id == self.user_id

    def reads_key(self, user_id: str | None, team_id: str | None) -> bool:
        return self.reads_everything or self.manages_team(team_id) or self.owns(user_id)

    def manages_key(self, user_id: str | None, team_id: str | None) -> bool:
        if self.role == VIEWER:
            return False
        return self.writes_everything or self.manages_team(team_id) or self.owns(user_id)


MASTER = AdminPrincipal(subject="master", role=PROXY_ADMIN)

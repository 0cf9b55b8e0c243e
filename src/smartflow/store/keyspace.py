"""Every Redis key the gateway uses, in one place.

One prefix (``sf:``). Keys a single Lua script touches together share a
Redis Cluster hash tag, so they live in one slot:

* a virtual key's record and counters: ``sf:{vk:<id>}:...``
* a team's: ``sf:{tm:<id>}:...``
* a user's: ``sf:{us:<id>}:...``

Per scope (a key, a team or a user):

========================  =====================================================
``rec``                   hash: ``json`` (the record), ``rev`` (bumped on every
                          change), ``blocked`` ("1"/"0")
``st``                    hash: ``pid`` (the budget period) and ``spend`` in it
                          (nano-USD), ``held`` (nano-USD held by calls in
                          flight), ``inflight``, and per admission minute
                          ``hb:<minute>`` / ``hn:<minute>`` (what those calls
                          hold, so a dead worker's holds expire), ``hmin``
``rpm``, ``tpm``          hash: ``b:<second>`` counts over the last 60 s,
                          ``total`` (their sum), ``min`` (oldest second)
``ledger:<day>``          hash: ``<model>|usd`` / ``|req`` / ``|pt`` / ``|ct``
========================  =====================================================

Global (single-key, any slot): ``sf:vkh:<sha256>`` (key hash -> id), the
sets ``sf:vkeys``, ``sf:teams``, ``sf:users``, the vault and the auth keys.
"""

from __future__ import annotations

from typing import Literal

PREFIX = "sf:"

ScopeKind = Literal["vk", "tm", "us"]

SCOPE_KEY: ScopeKind = "vk"
SCOPE_TEAM: ScopeKind = "tm"
SCOPE_USER: ScopeKind = "us"

VKEY_IDS = PREFIX + "vkeys"
TEAM_IDS = PREFIX + "teams"
USER_IDS = PREFIX + "users"
VAULT_NAMES = PREFIX + "vault:names"
AUTH_SIGNING_KEYS = PREFIX + "auth:signing_keys"
SSO_CONFIG = PREFIX + "auth:sso_config"
# pub/sub: "<kind>:<id>" after a key, team or user record changed
REVOCATIONS_CHANNEL = PREFIX + "revocations"


def vault_entry(name: str) -> str:
    return f"{PREFIX}vault:{name}"


def key_hash_index(key_hash: str) -> str:
    """The virtual key's id, by the SHA-256 of its plaintext."""
    return f"{PREFIX}vkh:{key_hash}"


def captured_key_index(provider_key_hash: str) -> str:
    """The virtual key a captured provider key was exchanged for."""
    return f"{PREFIX}vkcap:{provider_key_hash}"


def user_by_email(email: str) -> str:
    return f"{PREFIX}usere:{email.lower()}"


class ScopeKeys:
    """The keys of one budget scope, all in one hash slot."""

    __slots__ = ("ledger_prefix", "rec", "rpm", "st", "tpm")

    def __init__(self, kind: ScopeKind, scope_id: str) -> None:
        base = f"{PREFIX}{{{kind}:{scope_id}}}:"
        self.rec = base + "rec"
        self.st = base + "st"
        self.rpm = base + "rpm"
        self.tpm = base + "tpm"
        self.ledger_prefix = base + "ledger:"

    def ledger(self, day: str) -> str:
        return self.ledger_prefix + day

    def counters(self) -> tuple[str, ...]:
        """The counter keys (not the record or the ledger): deleted with the scope."""
        return (self.st, self.rpm, self.tpm)

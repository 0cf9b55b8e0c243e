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
sets ``sf:vkeys``, ``sf:teams``, ``sf:users``, the vault, the auth keys, and
routing's chains, groups and revision (``sf:routing:*``). Also the audit
stream, stored Responses answers, MetaCache entries (``sf:cache:*``), the
embedding index feed (``sf:idx:feed``) and vector stores (``sf:vs:*``, one
hash tag per store).

Policies (``policy.store``), one hash tag ``{p}``: ``sf:policy:{p}:guardrails``
/ ``:policies`` / ``:attachments`` (hash name|id -> JSON, current), ``:ver``
(hash ``g:|p:<name>`` -> last version), ``:h:g:<name>`` / ``:h:p:<name>``
(hash version -> JSON, kept after a delete), ``:rev`` (counter); channel
``sf:policy:changed``. The learning engine's documents, clauses, classifier
state and per-call decisions (``sf:policy:doc*``, ``sf:policy:learn*``,
``sf:policy:{pc}:c:<call id>`` with their index ``sf:policy:{pc}:idx``,
named in ``policy.documents``,
``policy.learning`` and ``policy.decision_log``); channel
``sf:policy:learning:changed``.
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


# Routing (``routing.route_store``): fallback chains and model groups made
# through the admin API. Each is one key (any slot); a change bumps the
# revision and is announced on the channel ("chain:<name>" / "group:<name>").
ROUTING_CHAINS = PREFIX + "routing:chains"  # hash: chain name -> JSON
ROUTING_GROUPS = PREFIX + "routing:groups"  # hash: public model name -> JSON
ROUTING_REVISION = PREFIX + "routing:rev"  # counter
ROUTING_CHANNEL = PREFIX + "routing"  # pub/sub

# Routing health (``routing.health``). A deployment's failure counter and its
# cooldown share a hash tag (one script touches both); a least-connections
# group's counts and the workers' last-seen times share another.


def deployment_failures(deployment_id: str) -> str:
    return f"{PREFIX}{{rt:{deployment_id}}}:fails"  # counter, expires after the window


def deployment_cooldown(deployment_id: str) -> str:
    return f"{PREFIX}{{rt:{deployment_id}}}:cool"  # until (epoch ms), expires with it


def least_connections_counts(group: str) -> str:
    return f"{PREFIX}{{lc:{group}}}:n"  # hash: "<deployment>|<worker>" -> calls in flight


def least_connections_seen(group: str) -> str:
    return f"{PREFIX}{{lc:{group}}}:seen"  # hash: worker -> last seen (epoch ms)


def routing_latency() -> str:
    # hash: "<deployment>:m" / ":v" / ":t" (EMA mean and variance, seconds; when)
    return PREFIX + "routing:latency"


def provider_spend(provider: str, day: str) -> str:
    return f"{PREFIX}routing:pspend:{provider}:{day}"  # nano-USD spent that day


def failure_spike(provider: str, bucket: int) -> str:
    return f"{PREFIX}routing:spike:{provider}:{bucket}"  # failures in one window


ALERT_CLAIM_PREFIX = PREFIX + "alert:"  # + dedupe key: SET NX PX, one sender per window


# The audit log. Each stream entry is one worker flush: fields n (records in
# it) and b (the records, framed by audit.framing); the counter is the number
# of records appended and not yet acknowledged (the backlog). One hash tag, so
# the scripts that touch both run in one slot of a Redis Cluster.
AUDIT_STREAM = PREFIX + "{audit}:stream"
AUDIT_QUEUED = PREFIX + "{audit}:queued"
AUDIT_DEAD_LETTER = PREFIX + "{audit}:dead"  # entries that are not records at all
AUDIT_GROUP = "shippers"


# -- Responses API ------------------------------------------------------------------
# A stored answer of POST /v1/responses (JSON: the response object, its input
# items, the conversation up to it and who may read it), with a TTL.


def stored_response(response_id: str) -> str:
    return f"{PREFIX}resp:{response_id}"


# -- MetaCache (cache/entries.py documents the values) ------------------------------
# An entry by the first 16 hex of its exact key; the drift of its answers; the
# counters every worker adds to; the channel that flushes every worker's L1.
CACHE_PREFIX = PREFIX + "cache:"
CACHE_STATS = CACHE_PREFIX + "stats"
CACHE_FLUSH_CHANNEL = CACHE_PREFIX + "flush"
CACHE_ENTRY_PATTERN = CACHE_PREFIX + "e:*"


def cache_entry(exact_prefix: str) -> str:
    return f"{CACHE_PREFIX}e:{exact_prefix}"


def cache_drift(exact_prefix: str) -> str:
    return f"{CACHE_PREFIX}d:{exact_prefix}"


# -- The embedding index feed ------------------------------------------------------
# A stream of index writes (adds, removals) every node's index applies.
INDEX_FEED = PREFIX + "idx:feed"


# -- Vector stores (vectorstores/store.py documents the values) --------------------
# A store's keys share its hash tag; the owner's set of store ids is global.
VECTOR_STORE_PREFIX = PREFIX + "vs:"


def vector_store_owner(owner: str) -> str:
    return f"{VECTOR_STORE_PREFIX}owner:{owner}"


def vector_store_key(store_id: str, part: str) -> str:
    """``part``: meta, files, forder, f:<seq>:text, f:<seq>:vec."""
    return f"{VECTOR_STORE_PREFIX}{{{store_id}}}:{part}"

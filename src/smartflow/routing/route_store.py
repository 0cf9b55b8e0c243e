"""Fallback chains and model groups made through the admin API, in Redis.

Two hashes, ``keyspace.ROUTING_CHAINS`` (chain name -> JSON) and
``keyspace.ROUTING_GROUPS`` (public model name -> JSON), a revision counter
``keyspace.ROUTING_REVISION`` bumped by every change, and the pub/sub channel
``keyspace.ROUTING_CHANNEL``, on which every change is announced
(``chain:<name>`` / ``group:<name>``). A worker keeps a ``snapshot()`` and
reloads it when a message arrives, or when the revision moved (a message can
be missed while a subscriber reconnects).

Each command names one key (``key=``), so any key may live in any Redis
Cluster slot. A write is the record first, then the revision, then the
announcement: a worker that sees the new revision also sees the record.

A stored record that no longer parses (written by hand, or by a version
with other rules) is skipped with a warning: it must never take a worker down.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, TypeVar

import orjson

from smartflow.keys.records import InputError, utc_now_iso
from smartflow.routing.records import (
    FallbackChain,
    ManagedGroup,
    chain_from_json,
    chain_view,
    group_from_json,
    group_view,
)
from smartflow.store import keyspace
from smartflow.store.fast_client import StoreClient

__all__ = ["ROUTING_CHANNEL", "RouteExists", "RouteStore", "RoutingSnapshot"]

logger = logging.getLogger("smartflow.routing")

ROUTING_CHANNEL = keyspace.ROUTING_CHANNEL

R = TypeVar("R", FallbackChain, ManagedGroup)


class RouteExists(Exception):
    """``create=True`` and a record of that name is already stored."""


@dataclass(frozen=True, slots=True)
class RoutingSnapshot:
    """Everything stored, for a worker's cache."""

    revision: int
    chains: Mapping[str, FallbackChain]
    groups: Mapping[str, ManagedGroup]


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, (bytes, bytearray)) else str(raw)


class _Kind:
    """How one kind of record is stored."""

    __slots__ = ("hash_key", "label", "parse", "view")

    def __init__(self, label: str, hash_key: str, parse: Callable[..., Any],
                 view: Callable[[Any], dict[str, Any]]) -> None:
        self.label = label
        self.hash_key = hash_key
        self.parse = parse
        self.view = view


_CHAINS = _Kind("chain", keyspace.ROUTING_CHAINS, chain_from_json, chain_view)
_GROUPS = _Kind("group", keyspace.ROUTING_GROUPS, group_from_json, group_view)


class RouteStore:
    """CRUD for fallback chains and model groups over one StoreClient."""

    def __init__(self, client: StoreClient) -> None:
        self.client = client

    # -- generic plumbing ------------------------------------------------------------

    def _decode(self, kind: _Kind, name: str, raw: Any) -> Any | None:
        try:
            record = kind.parse(orjson.loads(raw), name=name)
        except (orjson.JSONDecodeError, InputError, TypeError, ValueError) as exc:
            logger.warning("routing: skipping the stored %s %r, which does not parse: %s",
                           kind.label, name, exc)
            return None
        if isinstance(record, FallbackChain):
            record = replace(record, source="api")
        return record

    async def _get(self, kind: _Kind, name: str) -> Any | None:
        raw = await self.client.execute("HGET", kind.hash_key, name, key=kind.hash_key)
        if raw is None:
            return None
        return self._decode(kind, name, raw)

    async def _all(self, kind: _Kind) -> dict[str, Any]:
        flat = await self.client.execute("HGETALL", kind.hash_key, key=kind.hash_key) or []
        if isinstance(flat, dict):  # a RESP3 map
            pairs = list(flat.items())
        else:
            pairs = list(zip(flat[::2], flat[1::2], strict=True))
        found: dict[str, Any] = {}
        for raw_name, raw in pairs:
            name = _text(raw_name)
            record = self._decode(kind, name, raw)
            if record is not None:
                found[name] = record
        return dict(sorted(found.items()))

    async def _put(self, kind: _Kind, record: R, *, create: bool) -> R:
        now = utc_now_iso()
        name = record.name
        previous = await self.client.execute("HGET", kind.hash_key, name, key=kind.hash_key)
        if previous is not None and create:
            raise RouteExists(name)
        created_at = now
        if previous is not None:
            try:
                created_at = orjson.loads(previous).get("created_at") or now
            except (orjson.JSONDecodeError, AttributeError):
                created_at = now
        if isinstance(record, FallbackChain):
            record = replace(record, source="api")
        saved = replace(record, created_at=created_at, updated_at=now)
        document = orjson.dumps(kind.view(saved))
        if create:
            # Two admins creating one name: only the first wins.
            if not await self.client.execute("HSETNX", kind.hash_key, name, document,
                                             key=kind.hash_key):
                raise RouteExists(name)
        else:
            await self.client.execute("HSET", kind.hash_key, name, document,
                                      key=kind.hash_key)
        await self._changed(kind, name)
        return saved

    async def _delete(self, kind: _Kind, name: str) -> bool:
        removed = await self.client.execute("HDEL", kind.hash_key, name, key=kind.hash_key)
        if not removed:
            return False
        await self._changed(kind, name)
        return True

    async def _changed(self, kind: _Kind, name: str) -> None:
        """Bump the revision, then tell every worker (``<kind>:<name>``)."""
        await self.client.execute("INCR", keyspace.ROUTING_REVISION,
                                  key=keyspace.ROUTING_REVISION)
        await self.client.execute("PUBLISH", ROUTING_CHANNEL, f"{kind.label}:{name}",
                                  key=ROUTING_CHANNEL)

    # -- fallback chains -------------------------------------------------------------

    async def list_chains(self) -> list[FallbackChain]:
        return list((await self._all(_CHAINS)).values())

    async def get_chain(self, name: str) -> FallbackChain | None:
        found: FallbackChain | None = await self._get(_CHAINS, name)
        return found

    async def put_chain(self, chain: FallbackChain, *, create: bool = False) -> FallbackChain:
        """Create or replace (``create=True``: RouteExists if the name is taken).

        ``created_at`` is kept from the record replaced; ``updated_at`` is now.
        """
        return await self._put(_CHAINS, chain, create=create)

    async def delete_chain(self, name: str) -> bool:
        return await self._delete(_CHAINS, name)

    # -- model groups ----------------------------------------------------------------

    async def list_groups(self) -> list[ManagedGroup]:
        return list((await self._all(_GROUPS)).values())

    async def get_group(self, name: str) -> ManagedGroup | None:
        found: ManagedGroup | None = await self._get(_GROUPS, name)
        return found

    async def put_group(self, group: ManagedGroup, *, create: bool = False) -> ManagedGroup:
        """Create or replace (``create=True``: RouteExists if the name is taken)."""
        return await self._put(_GROUPS, group, create=create)

    async def delete_group(self, name: str) -> bool:
        return await self._delete(_GROUPS, name)

    # -- for workers -----------------------------------------------------------------

    async def revision(self) -> int:
        raw = await self.client.execute("GET", keyspace.ROUTING_REVISION,
                                        key=keyspace.ROUTING_REVISION)
        return int(raw) if raw is not None else 0

    async def snapshot(self) -> RoutingSnapshot:
        """Everything stored. The revision is read first: a change made during the
        reads leaves the snapshot at an older revision, so it is reloaded again."""
        revision = await self.revision()
        chains = await self._all(_CHAINS)
        groups = await self._all(_GROUPS)
        return RoutingSnapshot(revision=revision, chains=MappingProxyType(chains),
                               groups=MappingProxyType(groups))

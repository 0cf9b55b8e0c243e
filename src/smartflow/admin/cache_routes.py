"""``GET /api/cache/stats`` and ``DELETE /api/cache``.

Stats come from the counters every worker and node adds to in Redis, plus
this worker's L1. A delete removes entries from Redis (all of them, or
those of one namespace, model or virtual key — filters combine), drops
their rows from every node's index and tells every worker to drop them
from its L1. Proxy admins may delete; viewers may read the stats.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any, cast

import orjson

from smartflow.admin.context import AdminContext, forbidden, json_answer
from smartflow.cache import entries as entry_codec
from smartflow.cache.entries import (
    ENTRY_PATTERN,
    FILTER_FIELDS,
    FLUSH_CHANNEL,
    STATS_KEY,
    selected_by,
)
from smartflow.cache.keys import entry_id_of
from smartflow.cache.metacache import INDEX_PREFIX
from smartflow.cache.stats import summarize
from smartflow.http.errors import HTTPError
from smartflow.http.request import Request
from smartflow.http.response import Response
from smartflow.http.router import Router

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from smartflow.cache.metacache import MetaCache

STATS_PATH = "/api/cache/stats"
CACHE_PATH = "/api/cache"
FILTERS = tuple(FILTER_FIELDS)
SCAN_BATCH = 500


def register_cache_routes(router: Router, admin: AdminContext, cache: MetaCache | None,
                          redis: Redis, *, mode: str) -> None:
    async def stats(request: Request) -> Response:
        principal = await admin.principal(request)
        if not principal.reads_everything:
            raise forbidden("Your role may not read the cache statistics.")
        if cache is not None:
            await cache.stats.flush()  # this worker's latest counts too
        raw = cast("dict[bytes, bytes]", await redis.hgetall(STATS_KEY))
        answer: dict[str, Any] = {"mode": mode, **summarize(
            {k.decode(): v.decode() for k, v in raw.items()})}
        if cache is not None:
            answer["l1"] = {"entries": len(cache.l1), "bytes": cache.l1.size_bytes}
            if cache.semantic is not None:
                answer["index_rows"] = cache.semantic.index.live_count()
        return json_answer(answer)

    async def delete(request: Request) -> Response:
        principal = await admin.principal(request)
        if not principal.writes_everything:
            raise forbidden("Only a proxy admin may delete cache entries.")
        wanted: dict[str, str] = {}
        for name in FILTERS:
            values = request.query.get(name)
            if values:
                if not values[0]:
                    raise HTTPError(400, f"{name}: must not be empty.",
                                    "invalid_request_error", code="invalid_value")
                wanted[name] = values[0]
        deleted, by_scope = await _delete_entries(redis, wanted)
        if cache is not None and cache.semantic is not None:
            for scope, ids in by_scope.items():
                await cache.semantic.feed.publish_removal(INDEX_PREFIX + scope, ids)
        await redis.publish(FLUSH_CHANNEL, orjson.dumps(wanted or {"all": True}))
        if cache is not None:  # this worker at once, the others on the message
            cache.l1.clear(lambda entry: not selected_by(entry.fields, wanted))
        return json_answer({"deleted": deleted, "filters": wanted})

    router.add("GET", STATS_PATH, stats)
    router.add("DELETE", CACHE_PATH, delete)


async def _delete_entries(redis: Redis, wanted: dict[str, str]
                          ) -> tuple[int, dict[str, list[int]]]:
    deleted = 0
    by_scope: defaultdict[str, list[int]] = defaultdict(list)
    batch: list[bytes] = []

    async def settle(keys: list[bytes]) -> int:
        cluster_mget = getattr(redis, "mget_nonatomic", None)  # a Redis Cluster client
        values = await (cluster_mget(keys) if cluster_mget is not None else redis.mget(keys))
        doomed: list[bytes] = []
        for key, value in zip(keys, values, strict=True):
            entry = entry_codec.decode(value)
            if entry is None:
                if not wanted and value is not None:
                    doomed.append(key)  # an unreadable entry goes with "all"
                continue
            if not selected_by(entry.fields, wanted):
                continue
            doomed.append(key)
            scope = entry.fields.get("scope")
            exact = entry.fields.get("x")
            if isinstance(scope, str) and isinstance(exact, str):
                by_scope[scope].append(entry_id_of(exact))
        if doomed:
            if cluster_mget is not None:  # keys in many slots: one DEL each
                for key in doomed:
                    await redis.delete(key)
            else:
                await redis.delete(*doomed)
        return len(doomed)

    async for key in redis.scan_iter(match=ENTRY_PATTERN, count=SCAN_BATCH):
        batch.append(key)
        if len(batch) >= SCAN_BATCH:
            deleted += await settle(batch)
            batch = []
    if batch:
        deleted += await settle(batch)
    return deleted, by_scope

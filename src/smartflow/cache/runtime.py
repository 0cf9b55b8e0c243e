"""Builds a worker's MetaCache from the settings, and keeps every L1 in step.

``DELETE /api/cache`` publishes on ``sf:cache:flush``; every worker of every
node drops the matching entries from its L1 when the message arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import orjson

from smartflow.cache.entries import FLUSH_CHANNEL, EntryStore, selected_by
from smartflow.cache.metacache import MetaCache, SemanticBackend
from smartflow.cache.stats import CacheStats
from smartflow.config import Settings, semantic_enabled

if TYPE_CHECKING:
    from smartflow.embeddings.runtime import EmbeddingRuntime
    from smartflow.store.fast_client import StoreClient

logger = logging.getLogger("smartflow.cache")


def build_cache(settings: Settings, store: StoreClient,
                embeddings: EmbeddingRuntime | None) -> MetaCache:
    semantic = None
    verifier = None
    if semantic_enabled(settings) and embeddings is not None:
        from smartflow.cache import verifier as verifier_module

        semantic = SemanticBackend(embeddings.embed_one, embeddings.index, embeddings.feed)
        verifier = verifier_module
    stats = CacheStats(store)
    return MetaCache(settings.cache, EntryStore(store), stats, semantic=semantic,
                     verifier=verifier)  # type: ignore[arg-type]


class FlushListener:
    """Applies flush messages to this worker's L1."""

    def __init__(self, cache: MetaCache, redis_url: str) -> None:
        self._cache = cache
        self._redis_url = redis_url
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def on_message(self, data: str) -> None:
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if isinstance(message, dict):
            self._cache.l1.clear(lambda entry: not selected_by(entry.fields, message))

    def start(self) -> None:
        from smartflow.store.subscription import listen_forever

        self._task = asyncio.get_running_loop().create_task(listen_forever(
            self._redis_url, FLUSH_CHANNEL, self.on_message, is_closing=lambda: self._closing))

    async def aclose(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

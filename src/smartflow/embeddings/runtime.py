"""A worker's embedding machinery: the local model, the node's index, its feed.

The model loads on first use (or is warmed in the background when the
semantic cache is on), so a worker that never embeds never pays for it.
The index is the node's one shared-memory segment, created by the
supervisor before it forked (``index_name``); a process with no supervisor
(tests, a single-process run) creates its own and unlinks it on close.
Exactly one process per node consumes the index feed (``consume_feed``):
worker 1 under the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING, Any

from smartflow.config import EmbeddingSettings, Settings
from smartflow.store import keyspace

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np

    from smartflow.embeddings.batcher import EmbeddingBatcher, TextEncoder
    from smartflow.embeddings.index_feed import IndexFeed
    from smartflow.embeddings.shared_index import SharedIndex

logger = logging.getLogger("smartflow.embeddings")

DIM = 384
FEED_STREAM = keyspace.INDEX_FEED
MAINTAIN_EVERY_S = 30.0


def create_node_index(settings: Settings, name: str) -> SharedIndex:
    """The supervisor's: the node's segment, before the first fork."""
    from smartflow.embeddings.shared_index import SharedIndex

    # A supervisor killed with SIGKILL never unlinked its segment.
    SharedIndex.unlink_stale()
    embeddings = settings.embeddings
    return SharedIndex.create(name, capacity=embeddings.index_capacity, dim=DIM,
                              ivf_threshold=embeddings.ivf_threshold)


class EmbeddingRuntime:
    def __init__(self, settings: EmbeddingSettings, *, redis_url: str, node_id: str,
                 cluster: bool = False, index_name: str = "", consume_feed: bool = True,
                 encoder: object | None = None) -> None:
        self._cluster = cluster
        self._preloaded = encoder
        self._settings = settings
        self._redis_url = redis_url
        self._node_id = node_id
        self._index_name = index_name
        self._owns_index = not index_name
        self._consume_feed = consume_feed
        self._batcher: EmbeddingBatcher | None = None
        self._index: SharedIndex | None = None
        self._feed: IndexFeed | None = None
        self._redis: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loading: asyncio.Future[EmbeddingBatcher] | None = None

    @property
    def has_store(self) -> bool:
        """Whether the index can be fed (Redis is known)."""
        return bool(self._redis_url)

    # -- the model -----------------------------------------------------------

    def _load(self) -> EmbeddingBatcher:
        from pathlib import Path

        from smartflow.embeddings.batcher import EmbeddingBatcher
        from smartflow.embeddings.encoder import Encoder
        from smartflow.embeddings.model_files import ensure_model

        settings = self._settings
        encoder = self._preloaded
        if not isinstance(encoder, Encoder):
            model_dir = ensure_model(Path(settings.model_dir) if settings.model_dir else None,
                                     quantized=settings.quantized)
            encoder = Encoder(model_dir, threads=settings.threads)
        return EmbeddingBatcher(encoder, max_batch=settings.max_batch)

    async def ready_batcher(self) -> EmbeddingBatcher:
        """The batcher, the model loaded in a thread so the loop keeps serving."""
        if self._batcher is not None:
            return self._batcher
        if self._loading is None:
            loop = asyncio.get_running_loop()
            self._loading = loop.run_in_executor(None, self._load)  # type: ignore[assignment]
        assert self._loading is not None
        batcher = await self._loading
        self._batcher = batcher
        return batcher

    def encoder_now(self) -> TextEncoder:
        """The model for a synchronous caller (a stream's output guardrails),
        loaded on this thread if the warm-up has not loaded it yet."""
        if self._batcher is None:
            self._batcher = self._load()
        return self._batcher.encoder

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        batcher = await self.ready_batcher()
        return await batcher.embed(texts)

    async def embed_one(self, text: str) -> np.ndarray:
        batcher = await self.ready_batcher()
        return (await batcher.embed([text]))[0]

    # -- the index -----------------------------------------------------------

    @property
    def index(self) -> SharedIndex:
        if self._index is None:
            from smartflow.embeddings.shared_index import SharedIndex

            if self._index_name:
                self._index = SharedIndex.attach(self._index_name)
            else:
                name = f"sf-idx-{os.getpid()}-{id(self):x}"
                settings = self._settings
                self._index = SharedIndex.create(name, capacity=settings.index_capacity,
                                                 dim=DIM, ivf_threshold=settings.ivf_threshold)
        return self._index

    @property
    def redis(self) -> Any:
        """A redis.asyncio client for the index feed and the vector stores
        (cluster-aware when the store is a Redis Cluster)."""
        if self._redis is None:
            from redis.asyncio import Redis, RedisCluster

            if not self._redis_url:
                raise RuntimeError("the index feed needs Redis ([state] redis_url)")
            self._redis = (RedisCluster.from_url(self._redis_url, socket_connect_timeout=2.0)
                           if self._cluster else Redis.from_url(self._redis_url,
                                                                socket_connect_timeout=2.0))
        return self._redis

    @property
    def feed(self) -> IndexFeed:
        if self._feed is None:
            from smartflow.embeddings.index_feed import IndexFeed

            self._feed = IndexFeed(self.redis, self.index, stream_key=FEED_STREAM,
                                   node_id=self._node_id,
                                   # ~0.9 KB a row in Redis: as many as the index holds
                                   maxlen=max(self._settings.index_capacity, 10000))
        return self._feed

    def start(self, *, warm: bool) -> None:
        """Start the feed consumer (one process per node) and, if asked, load the model."""
        loop = asyncio.get_running_loop()
        if self._consume_feed:
            self._tasks.append(loop.create_task(self._consume()))
        if warm:
            self._tasks.append(loop.create_task(self._warm()))

    async def _consume(self) -> None:
        feed = self.feed
        while True:
            try:
                # The consumer also keeps the index tidy (compaction, the IVF
                # partition), in a thread: seconds of CPU at a million rows.
                await feed.run(maintain_every_s=MAINTAIN_EVERY_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the feed must outlive any failure
                logger.warning("index feed stopped (%s: %s); restarting", type(exc).__name__, exc)
                await asyncio.sleep(1.0)

    async def _warm(self) -> None:
        try:
            await self.ready_batcher()
        except Exception as exc:  # noqa: BLE001 - the first semantic call will say why
            logger.warning("embedding model not loaded (%s: %s)", type(exc).__name__, exc)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._batcher is not None:
            await self._batcher.aclose()
        redis = self._redis
        if redis is not None:
            with contextlib.suppress(Exception):
                await redis.aclose()
        if self._index is not None:
            self._index.close()
            if self._owns_index:
                self._index.unlink()

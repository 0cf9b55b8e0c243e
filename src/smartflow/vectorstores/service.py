"""What the vector store and RAG endpoints do, apart from HTTP.

Stores belong to an owner: the caller's team when its key has one, else
its user, else the key itself (the master key and development mode each
count as one owner). An admin sees every store; anyone else gets a 404 for
a store they do not own, the same answer as for one that does not exist.

Ingest is synchronous: text is chunked (in a worker thread, so the event
loop keeps serving), embedded in slices through the shared
batcher, written to Redis and committed, and only then published to the
index feed (which adds it to this node's index at once and to the others'
when their consumers read the stream). A file's status is therefore always
``completed`` when its request returns.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from smartflow.gateway_error import GatewayError, Reason
from smartflow.proxy.call import Principal
from smartflow.vectorstores.chunking import (
    ChunkingStrategy,
    TokenCounter,
    chunk_text,
    estimate_tokens,
    fit_to_model,
    piece_counter,
)
from smartflow.vectorstores.filters import Predicate
from smartflow.vectorstores.search import Hit, rebuild_index, search_store
from smartflow.vectorstores.store import (
    MAX_CHUNKS_PER_FILE,
    FileRecord,
    StoreRecord,
    VectorStoreRepo,
    entry_id,
    is_file_id,
    is_store_id,
    namespace_of,
    new_file_id,
    new_store_id,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from smartflow.embeddings.batcher import EmbeddingBatcher
    from smartflow.embeddings.index_feed import IndexFeed
    from smartflow.embeddings.shared_index import SharedIndex

logger = logging.getLogger("smartflow.vectorstores")

BatcherSource = Callable[[], "EmbeddingBatcher | Awaitable[EmbeddingBatcher]"]

EMBED_SLICE = 64  # texts per embed call: bounded memory, and other callers interleave
PUBLISH_CONCURRENCY = 32


def owner_of(principal: Principal) -> str:
    if principal.kind == "master":
        return "master"
    if principal.kind == "anonymous":
        return "anonymous"
    if principal.team_id:
        return f"team:{principal.team_id}"
    if principal.user_id:
        return f"user:{principal.user_id}"
    return f"key:{principal.key_id}"


def invalid(message: str, param: str | None = None, code: str = "invalid_value"
            ) -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", code, param,
                        reason=Reason.CLIENT)


def store_not_found(store_id: str) -> GatewayError:
    return GatewayError(404, f"No vector store found with id '{store_id}'.", "not_found_error",
                        "not_found", reason=Reason.CLIENT)


def file_not_found(store_id: str, file_id: str) -> GatewayError:
    return GatewayError(404, f"No file found with id '{file_id}' in vector store "
                             f"'{store_id}'.", "not_found_error", "not_found",
                        reason=Reason.CLIENT)


class VectorStoreService:
    def __init__(self, redis: Redis, batcher: BatcherSource, feed: IndexFeed,
                 index: SharedIndex, *, chunk_size: int = 200, chunk_overlap: int = 40,
                 max_file_bytes: int = 20 * 1024 * 1024,
                 count_tokens: Callable[[Sequence[str]], list[int]] | None = None) -> None:
        """``batcher``: a getter for the embedding batcher, plain or async
        (the model loads on first use). ``chunk_size``/``chunk_overlap``: the
        default chunking in model tokens. ``count_tokens``: the tokenizer's
        count per text (``Encoder.count_tokens``); without it, the batcher's
        encoder is asked, and failing that sizes are estimated."""
        self._repo = VectorStoreRepo(redis)
        self._batcher_source = batcher
        self._feed = feed
        self._index = index
        self._default_strategy = ChunkingStrategy(chunk_size, min(chunk_overlap,
                                                                  chunk_size // 2))
        self.max_file_bytes = max_file_bytes
        self._count_tokens = count_tokens
        self._counter: TokenCounter | None = None

    @property
    def default_strategy(self) -> ChunkingStrategy:
        return self._default_strategy

    @property
    def repo(self) -> VectorStoreRepo:
        return self._repo

    # -- stores -------------------------------------------------------------

    async def create_store(self, principal: Principal, *, name: str,
                           metadata: dict[str, str],
                           expires_after: dict[str, Any] | None) -> StoreRecord:
        now = int(time.time())
        record = StoreRecord(id=new_store_id(), owner=owner_of(principal), created_at=now,
                             name=name, metadata=metadata, expires_after=expires_after,
                             last_active_at=now)
        await self._repo.create(record)
        return record

    async def get_store(self, principal: Principal, store_id: str) -> StoreRecord:
        record = await self._repo.load(store_id) if is_store_id(store_id) else None
        if record is None or not (principal.is_admin or record.owner == owner_of(principal)):
            raise store_not_found(store_id)
        return record

    async def list_stores(self, principal: Principal, *, limit: int, descending: bool,
                          after: str | None, before: str | None
                          ) -> tuple[list[StoreRecord], bool]:
        owner = None if principal.is_admin else owner_of(principal)
        page = await self._repo.page_ids(owner, limit=limit, descending=descending,
                                         after=after, before=before)
        if page is None:
            cursor = "after" if after is not None else "before"
            raise invalid(f"{cursor}: no vector store with id "
                          f"'{after if after is not None else before}' is listed for you.",
                          cursor)
        ids, has_more = page
        loaded = await self._repo.load_many(ids)
        gone = [store_id for store_id, record in zip(ids, loaded, strict=True)
                if record is None]
        if gone and owner is not None:
            await self._repo.forget(owner, gone)
        return [record for record in loaded if record is not None], has_more

    async def modify_store(self, principal: Principal, store_id: str, *,
                           changes: dict[str, Any]) -> StoreRecord:
        record = await self.get_store(principal, store_id)
        if "name" in changes:
            record.name = changes["name"]
        if "metadata" in changes:
            record.metadata = changes["metadata"]
        if "expires_after" in changes:
            record.expires_after = changes["expires_after"]
        record.last_active_at = int(time.time())
        if not await self._repo.update_doc(record):
            raise store_not_found(store_id)
        return record

    async def delete_store(self, principal: Principal, store_id: str) -> None:
        record = await self.get_store(principal, store_id)
        if not await self._repo.delete(store_id, record.owner):
            raise store_not_found(store_id)
        await self._feed.publish_removal(namespace_of(store_id), None)

    async def store_count(self) -> int:
        """Stores on this gateway (for metrics)."""
        return await self._repo.count()

    # -- files --------------------------------------------------------------

    async def add_text(self, principal: Principal, store_id: str, text: str, *,
                       filename: str | None, attributes: dict[str, Any],
                       strategy: ChunkingStrategy | None = None) -> FileRecord:
        """Chunks, embeds and stores ``text`` as a new file of the store."""
        store = await self._usable_store(principal, store_id)
        if len(text.encode()) > self.max_file_bytes:
            raise GatewayError(413, f"The text is larger than this gateway's limit of "
                                    f"{self.max_file_bytes} bytes per file.",
                               "invalid_request_error", "file_too_large", "text",
                               reason=Reason.CLIENT)
        used = fit_to_model(strategy or self._default_strategy)
        counter = await self._token_counter()
        # Tokenizing every distinct word takes milliseconds per page: off the loop.
        chunks = await asyncio.to_thread(chunk_text, text, used, counter)
        if not chunks:
            raise invalid("The file holds no text to index (it is empty or only whitespace).",
                          "text", "empty_file")
        if len(chunks) > MAX_CHUNKS_PER_FILE:
            raise GatewayError(413, f"The text makes {len(chunks)} chunks; a file may have at "
                                    f"most {MAX_CHUNKS_PER_FILE}. Split it, or use larger "
                                    f"chunks.", "invalid_request_error", "file_too_large",
                               "text", reason=Reason.CLIENT)
        texts = [chunk.text for chunk in chunks]
        vectors = await self.embed(texts)
        seq = await self._repo.next_file_seq(store.id)
        if not seq:
            raise store_not_found(store_id)
        file_id = new_file_id()
        record = FileRecord(
            id=file_id, seq=seq, created_at=int(time.time()),
            filename=filename or f"{file_id}.txt",
            usage_bytes=sum(len(t.encode()) for t in texts) + vectors.shape[0]
            * vectors.shape[1] * 2,
            chunk_count=len(texts), dim=int(vectors.shape[1]),
            chunking_strategy=used.as_openai(), attributes=attributes)
        try:
            await self._repo.write_chunks(store.id, seq, texts, vectors)
        except BaseException:
            await asyncio.shield(self._repo.discard_chunks(store.id, seq))
            raise
        # Not retried or undone on error: a commit whose answer was lost may
        # have run, and chunks without a record are only orphans.
        committed = await self._repo.commit_file(store.id, record, int(time.time()))
        if not committed:
            raise store_not_found(store_id)
        await self._publish(store.id, seq, vectors)
        return record

    async def list_files(self, principal: Principal, store_id: str, *, limit: int,
                         descending: bool, after: str | None, before: str | None
                         ) -> tuple[list[FileRecord], bool]:
        await self.get_store(principal, store_id)
        page = await self._repo.file_page(store_id, limit=limit, descending=descending,
                                          after=after, before=before)
        if page is None:
            cursor = "after" if after is not None else "before"
            raise invalid(f"{cursor}: no file with id "
                          f"'{after if after is not None else before}' in this vector store.",
                          cursor)
        return page

    async def get_file(self, principal: Principal, store_id: str, file_id: str) -> FileRecord:
        await self.get_store(principal, store_id)
        record = await self._repo.file(store_id, file_id) if is_file_id(file_id) else None
        if record is None:
            raise file_not_found(store_id, file_id)
        return record

    async def update_file_attributes(self, principal: Principal, store_id: str,
                                     file_id: str, attributes: dict[str, Any]) -> FileRecord:
        await self.get_store(principal, store_id)
        record = await self._repo.set_file_attributes(store_id, file_id, attributes) \
            if is_file_id(file_id) else None
        if record is None:
            raise file_not_found(store_id, file_id)
        return record

    async def file_chunks(self, principal: Principal, store_id: str, file_id: str
                          ) -> list[str]:
        record = await self.get_file(principal, store_id, file_id)
        texts = await self._repo.chunk_texts(
            store_id, [entry_id(record.seq, n) for n in range(record.chunk_count)])
        return [text for text in texts if text is not None]

    async def delete_file(self, principal: Principal, store_id: str, file_id: str) -> None:
        await self.get_store(principal, store_id)
        record = await self._repo.delete_file(store_id, file_id) if is_file_id(file_id) \
            else None
        if record is None:
            raise file_not_found(store_id, file_id)
        await self._feed.publish_removal(
            namespace_of(store_id), [entry_id(record.seq, n) for n in range(record.chunk_count)])

    # -- search -------------------------------------------------------------

    async def search(self, principal: Principal, store_ids: Sequence[str],
                     queries: Sequence[str], *, k: int, predicate: Predicate | None = None,
                     min_score: float = -1.0) -> list[Hit]:
        """The ``k`` best chunks over the stores, best first."""
        stores = [await self._usable_store(principal, store_id) for store_id in store_ids]
        vectors = await self.embed(list(queries))
        hits: list[Hit] = []
        for store in stores:
            hits.extend(await search_store(self._index, self._repo, store, vectors, k=k,
                                           predicate=predicate, min_score=min_score))
        now = int(time.time())
        for store in stores:
            await self._repo.touch(store.id, now)
        hits.sort(key=lambda hit: -hit.score)
        return hits[:k]

    async def rebuild_index(self) -> int:
        """Every stored chunk into this node's index; for a fresh segment at
        node start. The number of vectors added."""
        return await rebuild_index(self._index, self._repo)

    # -- helpers ------------------------------------------------------------

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        batcher = await self._batcher()
        parts = [await batcher.embed(texts[start:start + EMBED_SLICE])
                 for start in range(0, len(texts), EMBED_SLICE)]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Model tokens in each text (estimated when no tokenizer is known)."""
        count = await self._raw_counter()
        if count is None:
            return estimate_tokens(texts)
        return await asyncio.to_thread(count, list(texts))

    async def _batcher(self) -> EmbeddingBatcher:
        got = self._batcher_source()
        if inspect.isawaitable(got):
            return await got
        return got

    async def _raw_counter(self) -> Callable[[Sequence[str]], list[int]] | None:
        if self._count_tokens is None:
            # The tokenizer is thread-safe and separate from the one the
            # model's thread uses, so chunking threads may call it.
            encoder = getattr(await self._batcher(), "encoder", None)
            self._count_tokens = getattr(encoder, "count_tokens", None)
        return self._count_tokens

    async def _token_counter(self) -> TokenCounter:
        if self._counter is None:
            count = await self._raw_counter()
            self._counter = piece_counter(count) if count is not None else estimate_tokens
        return self._counter

    async def _usable_store(self, principal: Principal, store_id: str) -> StoreRecord:
        store = await self.get_store(principal, store_id)
        if store.is_expired(int(time.time())):
            raise invalid(f"Vector store '{store_id}' has expired; create a new one.",
                          "vector_store_id", "vector_store_expired")
        return store

    async def _publish(self, store_id: str, seq: int, vectors: np.ndarray) -> None:
        namespace = namespace_of(store_id)
        feed = self._feed
        for start in range(0, len(vectors), PUBLISH_CONCURRENCY):
            await asyncio.gather(*(
                feed.publish(namespace, seq, entry_id(seq, n), vectors[n])
                for n in range(start, min(start + PUBLISH_CONCURRENCY, len(vectors)))))

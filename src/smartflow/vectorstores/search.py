"""Top-k chunks of one vector store for one or more query vectors, and the
RAG context built from them.

The node's shared index answers by vector; Redis holds the files (their
attributes and names) and the chunk texts. An attribute filter is decided
per file before the index is asked: a chunk's index id carries its file's
number (``store.entry_id``), so the index's ``where`` mask keeps or drops a
candidate by its id alone, inside the search, and the top k are the top k
of the chunks that pass, however few do. A filter that passes exactly one
file searches only that file's group.

Past its IVF threshold the index scans only the lists nearest the query, so
a very selective filter may then return fewer than k chunks; below it (50k
chunks per store by default) the answer is exact.

A node whose index holds nothing of a store (it started after the store was
filled and no one rebuilt its index, or the index evicted it) would answer
"nothing found". Before searching, a store with chunks in Redis but none in
the local index is loaded from Redis into it (``load_store``; re-adding a
chunk replaces it, so a late feed entry does no harm).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from smartflow.vectorstores.filters import Predicate
from smartflow.vectorstores.store import (
    CHUNK_BITS,
    FileRecord,
    StoreRecord,
    VectorStoreRepo,
    entry_id,
    namespace_of,
    split_entry_id,
)

if TYPE_CHECKING:
    from smartflow.embeddings.shared_index import SharedIndex


@dataclass(frozen=True, slots=True)
class Hit:
    store_id: str
    file: FileRecord
    entry: int
    score: float
    text: str


async def load_store(index: SharedIndex, repo: VectorStoreRepo, store_id: str,
                     files: Sequence[FileRecord] | None = None) -> int:
    """Adds every chunk vector of a store to this node's index (not to the
    feed: other nodes hold their own copy). The number of vectors added."""
    if files is None:
        files = list((await repo.files(store_id)).values())
    namespace = namespace_of(store_id)
    added = 0
    for record in files:
        vectors = await repo.file_vectors(store_id, record)
        if vectors is None or not len(vectors):
            continue
        count = len(vectors)
        index.add_many(namespace, [record.seq] * count,
                       [entry_id(record.seq, n) for n in range(count)],
                       vectors.astype(np.float32))
        added += count
    return added


async def rebuild_index(index: SharedIndex, repo: VectorStoreRepo) -> int:
    """Every stored vector into a fresh node index (at node start)."""
    added = 0
    for store_id in await repo.all_ids():
        added += await load_store(index, repo, store_id)
    return added


def _in_files(seqs: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The index's ``where``: candidates whose file number is one of ``seqs``."""

    def passes(entries: np.ndarray) -> np.ndarray:
        return np.isin(entries >> CHUNK_BITS, seqs)

    return passes


async def search_store(index: SharedIndex, repo: VectorStoreRepo, store: StoreRecord,
                       queries: np.ndarray, *, k: int, predicate: Predicate | None = None,
                       min_score: float = -1.0) -> list[Hit]:
    """The ``k`` best chunks of ``store`` for ``queries`` (unit rows), best
    first, each scoring at least ``min_score``; with several queries a
    chunk counts with its best score."""
    files = await repo.files(store.id)
    allowed = {record.seq: record for record in files.values()
               if predicate is None or predicate(record.attributes)}
    if not any(record.chunk_count for record in allowed.values()):
        return []
    namespace = namespace_of(store.id)
    if store.chunk_count and not index.live_count(namespace):
        await load_store(index, repo, store.id, list(files.values()))
    group: int | None = None
    where: Callable[[np.ndarray], np.ndarray] | None = None
    if len(allowed) == 1:
        group = next(iter(allowed))
    elif len(allowed) < len(files):
        where = _in_files(np.fromiter(allowed, dtype=np.int64, count=len(allowed)))
    best: dict[int, float] = {}
    for query in queries:
        for entry, score in index.search(namespace, query, group=group, k=k,
                                         min_score=min_score, where=where):
            entry = int(entry)
            if score > best.get(entry, -math.inf):
                best[entry] = float(score)
    # A removal this node has not applied yet can leave a chunk of a deleted
    # file in the index: its file is no longer listed.
    ranked = sorted((item for item in best.items() if split_entry_id(item[0])[0] in allowed),
                    key=lambda item: (-item[1], item[0]))[:k]
    texts = await repo.chunk_texts(store.id, [entry for entry, _ in ranked])
    hits = []
    for (entry, score), text in zip(ranked, texts, strict=True):
        if text is not None:  # deleted since the index was asked
            hits.append(Hit(store.id, allowed[split_entry_id(entry)[0]], entry, score, text))
    return hits


# -- RAG context ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContextPart:
    index: int  # the [n] marker, from 1
    hit: Hit
    text: str  # the hit's text, cut when it alone was over the budget
    source: str


def source_of(hit: Hit) -> str:
    source = hit.file.attributes.get("source")
    return source if isinstance(source, str) and source else hit.file.filename


def _block(index: int, source: str, text: str) -> str:
    return f"[{index}] Source: {source}\n{text}"


def assemble_context(hits: Sequence[Hit], *, max_chars: int | None = None,
                     max_tokens: int | None = None,
                     token_counts: Sequence[int] | None = None
                     ) -> tuple[str, list[ContextPart]]:
    """The hits as numbered blocks (``[1] Source: ...`` then the text), best
    first, while they fit the budget: ``max_chars`` of context, or
    ``max_tokens`` by ``token_counts`` (one per hit, of its text). The first
    hit is cut to fit rather than dropped, so a small budget still answers;
    after it, the first hit that does not fit ends the context (rank order
    is kept, a lower hit never jumps a higher one)."""
    parts: list[ContextPart] = []
    used_chars = used_tokens = 0
    for position, hit in enumerate(hits):
        index = len(parts) + 1
        source = source_of(hit)
        text = hit.text
        header_chars = len(_block(index, source, "")) + (2 if parts else 0)
        cost_chars = header_chars + len(text)
        # The header is a few tokens; a word or so per 4 characters errs high.
        cost_tokens = (token_counts[position] if token_counts is not None else 0) \
            + header_chars // 4 + 1
        fits_chars = max_chars is None or used_chars + cost_chars <= max_chars
        fits_tokens = max_tokens is None or used_tokens + cost_tokens <= max_tokens
        if not (fits_chars and fits_tokens):
            if parts:
                break
            text = _cut(text, header_chars, cost_tokens, max_chars, max_tokens)
            if not text:
                break
        parts.append(ContextPart(index, hit, text, source))
        used_chars += cost_chars
        used_tokens += cost_tokens
    context = "\n\n".join(_block(part.index, part.source, part.text) for part in parts)
    return context, parts


def _cut(text: str, header_chars: int, cost_tokens: int, max_chars: int | None,
         max_tokens: int | None) -> str:
    keep = len(text)
    if max_chars is not None:
        keep = min(keep, max_chars - header_chars)
    if max_tokens is not None and cost_tokens > max_tokens:
        keep = min(keep, len(text) * max_tokens // max(cost_tokens, 1))
    if keep <= 0:
        return ""
    cut = text[:keep]
    space = cut.rfind(" ")
    return (cut[:space] if space > keep // 2 else cut).rstrip()

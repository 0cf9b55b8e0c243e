"""MetaCache: L1 (in-process) -> L3 (Redis, exact) -> L2 (Redis, semantic).

``lookup`` answers with an entry or a miss; ``fill`` keeps an answer, in the
background (the caller never waits for the cache write). The semantic tier
embeds the last user turn, asks the node's shared-memory index for the
nearest entries of the same context, and serves the first one that clears
the similarity threshold *and* the verifier (numbers, negation, entities,
order, time, language, format): a wrong hit serves one user's answer to
another's question, so the verifier has the last word.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from smartflow.cache import entries as entry_codec
from smartflow.cache.entries import Entry, EntryStore, entry_key, entry_key_of_id
from smartflow.cache.keys import CacheIdentity
from smartflow.cache.l1 import LruCache
from smartflow.cache.stats import CacheStats
from smartflow.config import CacheSettings

if TYPE_CHECKING:
    import numpy as np

    from smartflow.embeddings.index_feed import IndexFeed
    from smartflow.embeddings.shared_index import SharedIndex

logger = logging.getLogger("smartflow.cache")

INDEX_PREFIX = "cache:"
SEMANTIC_CANDIDATES = 4
DRIFT_TEXT_CHARS = 2000


@dataclass(slots=True)
class SemanticBackend:
    """What the semantic tier needs: an embedder, the node's index and its feed."""

    embed: Callable[[str], Awaitable[np.ndarray]]
    index: SharedIndex
    feed: IndexFeed


class Verifier(Protocol):
    """``cache.verifier``'s two steps: a prompt's signature, and two signatures compared."""

    def analyse(self, text: str) -> Any: ...

    def verify_signatures(self, query: Any, candidate: Any) -> Any: ...


@dataclass(slots=True)
class Hit:
    entry: Entry
    tier: str  # l1, l3, l2
    similarity: float = 1.0


@dataclass(slots=True)
class Lookup:
    """One call's cache state, from lookup to fill."""

    identity: CacheIdentity
    scope: str
    namespace: str
    semantic: bool
    threshold: float
    vector: Any = None  # the prompt's embedding, once computed
    hit: Hit | None = None


class MetaCache:
    def __init__(self, settings: CacheSettings, store: EntryStore, stats: CacheStats, *,
                 semantic: SemanticBackend | None = None,
                 verifier: Verifier | None = None) -> None:
        self.settings = settings
        self.store = store
        self.stats = stats
        self.semantic = semantic
        self._verifier = verifier
        self.l1: LruCache[Entry] = LruCache(settings.l1_max_entries, settings.l1_max_bytes)
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lookup --------------------------------------------------------------

    async def lookup(self, state: Lookup) -> Hit | None:
        identity = state.identity
        entry = self.l1.get(identity.exact)
        if entry is not None:
            return Hit(entry, "l1")
        # The exact read first: an L3 hit must not wait for (or spend a core on)
        # an embedding it does not need.
        entry = await self.store.get(entry_key(identity.exact))
        if entry is not None and entry.fields.get("x") == identity.exact:
            self._keep_in_l1(identity.exact, entry)
            return Hit(entry, "l3")
        backend = self.semantic
        if not state.semantic or backend is None or identity.prompt is None:
            return None
        if state.vector is None:  # else an earlier stage embedded this very text
            state.vector = await backend.embed(identity.prompt)
        return await self._semantic(state)

    async def _semantic(self, state: Lookup) -> Hit | None:
        backend = self.semantic
        assert backend is not None
        identity = state.identity
        found = backend.index.search(INDEX_PREFIX + state.scope, state.vector,
                                     group=identity.context, k=SEMANTIC_CANDIDATES,
                                     min_score=state.threshold)
        if not found:
            return None
        candidates = await asyncio.gather(
            *(self.store.get(entry_key_of_id(entry_id)) for entry_id, _ in found))
        verifier = self._verifier if self.settings.verifier else None
        query_signature = None
        for (_, score), entry in zip(found, candidates, strict=True):
            if entry is None:
                continue
            fields = entry.fields
            stored_prompt = fields.get("prompt")
            if (fields.get("ctx") != identity.context or fields.get("scope") != state.scope
                    or not isinstance(stored_prompt, str)):
                continue
            if verifier is not None:
                # The question is analysed once, whatever the number of candidates.
                if query_signature is None:
                    query_signature = verifier.analyse(identity.prompt or "")
                verdict = verifier.verify_signatures(query_signature,
                                                     verifier.analyse(stored_prompt))
                if not verdict.ok:
                    continue
            return Hit(entry, "l2", float(score))
        return None

    def _keep_in_l1(self, exact: str, entry: Entry) -> None:
        ttl_left = entry.fields.get("created", 0) + entry.fields.get("ttl", 0) - time.time()
        self.l1.put(exact, entry, entry.size, min(self.settings.l1_ttl, ttl_left))

    # -- fill ----------------------------------------------------------------

    def fill(self, state: Lookup, fields: dict[str, Any], ttl_s: float | None) -> None:
        """Keep an answer, in the background."""
        task = asyncio.get_running_loop().create_task(self._fill(state, fields, ttl_s))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fill(self, state: Lookup, fields: dict[str, Any], ttl_s: float | None) -> None:
        identity = state.identity
        try:
            ttl = await self._ttl_for(identity, fields, ttl_s)
            fields["ttl"] = ttl
            payload = entry_codec.encode(fields)
            if len(payload) > self.settings.max_entry_bytes:
                return
            await self.store.put(identity.exact, payload, ttl)
            entry = Entry(fields, len(payload))
            self._keep_in_l1(identity.exact, entry)
            backend = self.semantic
            if state.semantic and backend is not None and identity.prompt is not None:
                vector = state.vector
                if vector is None:
                    vector = await backend.embed(identity.prompt)
                await backend.feed.publish(INDEX_PREFIX + state.scope, identity.context,
                                           identity.entry_id, vector)
        except Exception as exc:  # noqa: BLE001 - a failed fill is a later miss, nothing more
            logger.warning("cache fill failed (%s: %s)", type(exc).__name__, exc)

    async def _ttl_for(self, identity: CacheIdentity, fields: dict[str, Any],
                       ttl_s: float | None) -> int:
        settings = self.settings
        low, high = settings.min_ttl, settings.max_ttl
        if ttl_s is not None:  # the caller's own TTL, within the operator's bounds
            return int(min(max(ttl_s, low), high))
        base = fields.pop("base_ttl", settings.ttl)
        if not settings.adaptive_ttl:
            return int(min(max(base, low), high))
        from smartflow.cache.volatility import adaptive_ttl, answer_drift, next_drift

        text = answer_text(fields["answer"])[:DRIFT_TEXT_CHARS]
        drift = 0.0
        earlier = await self.store.drift(identity.exact)
        if earlier is not None and isinstance(earlier.get("text"), str):
            drift = next_drift(float(earlier.get("drift", 0.0)),
                               answer_drift(earlier["text"], text))
        await self.store.put_drift(identity.exact, drift, text, int(high * 4))
        return adaptive_ttl(int(base), identity.prompt or _prompt_hint(fields),
                            min_s=int(low), max_s=int(high), drift=drift)

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.stats.aclose()


def _prompt_hint(fields: dict[str, Any]) -> str:
    prompt = fields.get("prompt")
    return prompt if isinstance(prompt, str) else ""


def answer_text(answer: dict[str, Any]) -> str:
    """The text of a whole answer in any cached dialect (for drift)."""
    parts: list[str] = []
    for choice in answer.get("choices") or ():  # OpenAI chat
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            parts.append(message["content"])
    content = answer.get("content")  # Anthropic
    if isinstance(content, list):
        parts.extend(block.get("text", "") for block in content
                     if isinstance(block, dict) and block.get("type") == "text")
    for item in answer.get("output") or ():  # Responses
        if isinstance(item, dict) and item.get("type") == "message":
            parts.extend(part.get("text", "") for part in item.get("content") or ()
                         if isinstance(part, dict))
    return "\n".join(p for p in parts if isinstance(p, str))

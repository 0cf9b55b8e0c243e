"""The cache's pipeline stage: lookup on the way in, fill on the way out.

On the way in (``cache_lookup`` slot, after authentication and admission,
so a hit is still a counted, budgeted, audited call), a hit is answered in
the caller's own dialect: JSON to a whole-answer caller, SSE to a streaming
one, with the usage the original answer reported. A miss goes on to the
provider; a streamed answer is assembled as it passes (``wrap_stream``) and
kept once it completed cleanly, a whole one from the body sent.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson

from smartflow.cache.controls import read_controls
from smartflow.cache.keys import CACHEABLE, identify
from smartflow.cache.metacache import Hit, Lookup, MetaCache
from smartflow.http.response import Response, StreamingResponse
from smartflow.proxy.cost import Cost
from smartflow.proxy.pipeline import Reply, Stage

if TYPE_CHECKING:
    from smartflow.dialects.base import StreamOutcome
    from smartflow.gateway_error import GatewayError
    from smartflow.proxy.call import Call, Principal
    from smartflow.proxy.relay import StreamTransform

HIT_HEADER = "x-smartflow-cache-hit"
KEY_HEADER = "x-smartflow-cache-key"
TIER_HEADER = "x-smartflow-cache-tier"
SIMILARITY_HEADER = "x-smartflow-cache-similarity"
OUTCOMES = {"l1": "hit_l1", "l3": "hit_exact", "l2": "hit_semantic"}


def partition_of(principal: Principal | None, partition: str) -> str:
    if partition == "global":
        return "*"
    if principal is None:
        return "anonymous"
    if partition == "team" and principal.team_id:
        return f"team:{principal.team_id}"
    if principal.key_id:
        return f"key:{principal.key_id}"
    return principal.kind  # the master key, or development mode


class _AssemblingTransform:
    """Passes the stream through untouched, assembling the whole answer beside it.

    A stream longer than ``room`` bytes is not assembled further (it would
    not be stored anyway): a long answer costs the cache no memory."""

    __slots__ = ("_assembler", "_inner", "_room")

    def __init__(self, inner: StreamTransform, assembler: Any, room: int) -> None:
        self._inner = inner
        self._assembler = assembler
        self._room = room

    def _observe(self, out: bytes) -> None:
        assembler = self._assembler
        if assembler is None or not out:
            return
        self._room -= len(out)
        if self._room < 0:
            self._assembler = None
        else:
            assembler.feed(out)

    def feed(self, data: bytes) -> bytes:
        out = self._inner.feed(data)
        self._observe(out)
        return out

    def close(self) -> bytes:
        out = self._inner.close()
        self._observe(out)
        return out

    def error_event(self, error: GatewayError) -> bytes:
        self._assembler = None  # an answer that broke off is not kept
        return self._inner.error_event(error)

    def outcome(self) -> StreamOutcome:
        return self._inner.outcome()

    def result(self) -> dict[str, Any] | None:
        assembler = self._assembler
        return assembler.result() if assembler is not None else None


class _CallCache:
    """What the stage keeps on a Call between its way in and its way out."""

    __slots__ = ("assembler", "lookup", "ttl_s", "write")

    def __init__(self, lookup: Lookup, write: bool, ttl_s: float | None) -> None:
        self.lookup = lookup
        self.write = write
        self.ttl_s = ttl_s
        self.assembler: _AssemblingTransform | None = None


class CacheStage(Stage):
    slot = "cache_lookup"

    def __init__(self, cache: MetaCache) -> None:
        self._cache = cache
        self._settings = cache.settings

    async def on_enter(self, call: Call) -> Reply | None:
        body = call.body
        dialect = call.dialect.name
        if body is None or (dialect, call.operation) not in CACHEABLE:
            return None
        settings = self._settings
        override = settings.models.get(call.model)
        mode = (override.mode if override is not None and override.mode else settings.mode)
        if mode == "off":
            return None
        controls = read_controls(call.request)
        threshold = settings.similarity_threshold
        if override is not None and override.similarity_threshold is not None:
            threshold = override.similarity_threshold
        if controls.threshold is not None:
            threshold = max(threshold, controls.threshold)
        ttl_s = controls.ttl_s
        if ttl_s is None and override is not None and override.ttl is not None:
            ttl_s = override.ttl
        scope = f"{partition_of(call.identity, settings.partition)}|{controls.namespace}"
        identity = identify(dialect, call.operation, call.model, scope, body,
                            max_temperature=settings.max_semantic_temperature)
        lookup = Lookup(identity, scope, controls.namespace,
                        semantic=mode == "semantic" and identity.prompt is not None,
                        threshold=threshold)
        shared = call.text_embedding
        if lookup.semantic and shared is not None and shared[0] == identity.prompt:
            lookup.vector = shared[1]  # the guardrails embedded this text already
        state = _CallCache(lookup, controls.write, ttl_s)
        call.cache_state = state
        call.response_headers.append((KEY_HEADER, identity.exact))
        if not controls.read:
            call.cache_outcome = "skip"
            return None
        hit = await self._cache.lookup(lookup)
        principal = call.identity
        key_id = principal.key_id if principal is not None else None
        team_id = principal.team_id if principal is not None else None
        if hit is None:
            call.cache_outcome = "miss"
            self._cache.stats.count("miss", "", call.model, key_id, team_id)
            return None
        lookup.hit = hit
        call.cache_outcome = OUTCOMES[hit.tier]
        saved = float(hit.entry.fields.get("cost") or 0.0)
        self._cache.stats.count("hit", hit.tier, call.model, key_id, team_id, saved)
        return self._replay(call, hit)

    def _replay(self, call: Call, hit: Hit) -> Reply:
        from smartflow.cache import replay

        dialect = call.dialect.name
        new_id = replay.fresh_id(dialect)
        created = int(time.time())
        answer = hit.entry.answer
        call.cost = Cost(0.0, 0, 0)
        call.status = 200
        call.first_byte_s = time.perf_counter()
        headers = [(TIER_HEADER, hit.tier)]
        if hit.tier == "l2":
            headers.append((SIMILARITY_HEADER, f"{hit.similarity:.4f}"))
        call.response_headers.extend(headers)
        # The runner adds the call's headers (these included) to the reply.
        if not call.is_stream:
            whole = replay.replay_whole(dialect, answer, new_id=new_id, created=created)
            call.answer_body = whole
            if dialect == "responses":  # kept for previous_response_id
                call.response_object = orjson.loads(whole)
            return Response(200, whole)
        if dialect == "responses":
            call.response_object = replay.refreshed(dialect, answer, new_id=new_id,
                                                    created=created)
        body = call.body or {}
        options = body.get("stream_options")
        include_usage = dialect != "openai" or (
            isinstance(options, dict) and options.get("include_usage") is True)
        events = replay.replay_stream(dialect, answer, new_id=new_id, created=created,
                                      include_usage=include_usage)
        call.answer_chunks = events  # what the audit record captures of a stream
        return StreamingResponse(_iterate(events), 200, [("cache-control", "no-cache")],
                                 "text/event-stream")

    def wrap_stream(self, call: Call, transform: StreamTransform) -> StreamTransform:
        state = call.cache_state
        if not isinstance(state, _CallCache) or not state.write or state.lookup.hit is not None:
            return transform
        from smartflow.cache import replay

        dialect = call.dialect.name
        if dialect not in replay.CACHEABLE_DIALECTS:
            return transform
        # SSE framing is several times the size of the compressed whole answer.
        room = 8 * self._settings.max_entry_bytes
        wrapped = _AssemblingTransform(transform, replay.new_assembler(dialect), room)
        state.assembler = wrapped
        return wrapped

    async def on_exit(self, call: Call) -> None:
        state = call.cache_state
        if (not isinstance(state, _CallCache) or not state.write or state.lookup.hit is not None
                or call.status != 200 or call.error is not None):
            return
        answer: dict[str, Any] | None = None
        if call.is_stream:
            if state.assembler is not None:
                answer = state.assembler.result()
        elif call.answer_body:
            try:
                parsed = orjson.loads(call.answer_body)
            except orjson.JSONDecodeError:
                parsed = None
            answer = parsed if isinstance(parsed, dict) else None
        if answer is None or not _is_complete(call.dialect.name, answer):
            return
        lookup = state.lookup
        identity = lookup.identity
        principal = call.identity
        cost = call.cost
        self._cache.fill(lookup, {
            "x": identity.exact, "dialect": call.dialect.name, "model": call.model,
            "scope": lookup.scope, "ns": lookup.namespace,
            "key": principal.key_id if principal is not None else None,
            "team": principal.team_id if principal is not None else None,
            "prompt": identity.prompt if lookup.semantic else None,
            "ctx": identity.context if lookup.semantic else None,
            "answer": answer, "cost": cost.usd if cost is not None else 0.0,
            "created": time.time(),
        }, state.ttl_s)


def _is_complete(dialect: str, answer: dict[str, Any]) -> bool:
    """Whether an answer is a finished one worth replaying (not an error body)."""
    if answer.get("error"):
        return False
    if dialect == "openai":
        return bool(answer.get("choices"))
    if dialect == "anthropic":
        return answer.get("type") == "message"
    if dialect == "responses":
        return answer.get("status") == "completed"
    return False


async def _iterate(events: list[bytes]) -> AsyncIterator[bytes]:
    for event in events:
        yield event

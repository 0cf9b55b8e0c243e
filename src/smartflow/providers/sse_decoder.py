"""The skeleton the translating stream decoders share (Anthropic, Cohere, Gemini).

Each turns one provider's SSE events into OpenAI ``chat.completion.chunk``
dicts. What they have in common lives here: the SSE parser and its errors, the
chunk envelope (id, created, model), the assistant start chunk, and the rule
for an upstream error event: chunks decoded before it in the same ``feed`` are
returned first and the error is raised by the next ``feed``/``close``. A
subclass reads one event's data in ``_on_event`` and may add chunks at the end
of the body in ``_on_close``.
"""

from __future__ import annotations

import time
from typing import Any

from smartflow.providers.base import ProviderError, Usage
from smartflow.providers.openai import SHAPE_ERRORS, bad_shape, openai_usage
from smartflow.providers.sse import SSEError, SSEEvent, SSEParser


class SSEChunkDecoder:
    """Base of a ``StreamDecoder``: SSE bytes in, OpenAI chunks out.

    ``_on_event`` sets ``self.error`` for an error event rather than raising,
    so that the chunks before it still go out. A payload of an unexpected
    shape raises a 502 ``ProviderError`` naming the provider.
    """

    def __init__(self, provider: str, model: str, *, include_usage: bool,
                 chunk_id: str) -> None:
        self._provider = provider
        self._model = model
        self._include_usage = include_usage
        self._parser = SSEParser()
        self._id = chunk_id
        self._created = int(time.time())
        self._started = False
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.error: ProviderError | None = None

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None,
               index: int = 0) -> dict[str, Any]:
        return {"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                "model": self._model,
                "choices": [{"index": index, "delta": delta, "logprobs": None,
                             "finish_reason": finish_reason}]}

    def _start(self, out: list[dict[str, Any]]) -> None:
        """The assistant role chunk, once, before the first content of choice 0."""
        if not self._started:
            self._started = True
            out.append(self._chunk({"role": "assistant", "content": ""}))

    def _usage_chunk(self, usage: Usage) -> dict[str, Any]:
        return {"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                "model": self._model, "choices": [], "usage": openai_usage(usage)}

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._raise_pending_error()
        try:
            events = self._parser.feed(data)
        except SSEError as exc:
            raise ProviderError(502, str(exc), None, "bad_upstream_response") from None
        return self._decode(events)

    def close(self) -> list[dict[str, Any]]:
        self._raise_pending_error()
        out = self._decode(self._parser.close())
        self._on_close(out)
        return out

    def _decode(self, events: list[SSEEvent]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for event in events:
            try:
                self._on_event(event.data, out)
            except SHAPE_ERRORS as exc:
                raise bad_shape(self._provider, exc) from None
        if not out:
            self._raise_pending_error()
        return out

    def _raise_pending_error(self) -> None:
        # chunks decoded before an error event go out first; the error on the next call
        if self.error is not None:
            raise self.error

    def _on_event(self, data: str, out: list[dict[str, Any]]) -> None:
        """Append the chunks for one event's data to ``out``."""
        raise NotImplementedError

    def _on_close(self, out: list[dict[str, Any]]) -> None:
        """Append any chunks due at the end of the body (after the last event)."""

"""The stream transform every translated stream uses: decode the provider's
events to hub chunks, encode them in the caller's dialect.

Each dialect supplies only its encoder (``feed(chunk)``, ``finish()``,
``error(exc)``); the counting of text for an output estimate (when no usage
comes) and the outcome are the same for all of them.
"""

from __future__ import annotations

from typing import Any, Protocol

from smartflow.dialects.base import StreamOutcome
from smartflow.dialects.openai import delta_texts
from smartflow.gateway_error import GatewayError
from smartflow.providers.base import StreamDecoder


class ChunkEncoder(Protocol):
    def feed(self, chunk: dict[str, Any]) -> bytes: ...

    def finish(self) -> bytes: ...

    def error(self, exc: GatewayError) -> bytes: ...


class ReencodingTransform:
    """A provider's stream (decoded to hub chunks) re-encoded by ``encoder``."""

    __slots__ = ("_chars", "_decoder", "_encoder")

    def __init__(self, decoder: StreamDecoder, encoder: ChunkEncoder) -> None:
        self._decoder = decoder
        self._encoder = encoder
        self._chars = 0

    def _encode(self, chunks: list[dict[str, Any]]) -> bytes:
        out = []
        for chunk in chunks:
            for text in delta_texts(chunk):
                self._chars += len(text)
            out.append(self._encoder.feed(chunk))
        return b"".join(out)

    def feed(self, data: bytes) -> bytes:
        return self._encode(self._decoder.feed(data))

    def close(self) -> bytes:
        return self._encode(self._decoder.close()) + self._encoder.finish()

    def error_event(self, error: GatewayError) -> bytes:
        return self._encoder.error(error)

    def outcome(self) -> StreamOutcome:
        return StreamOutcome(self._decoder.usage, self._decoder.finish_reason,
                             approx_text_chars=self._chars)

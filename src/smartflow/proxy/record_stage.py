"""The record slot's audit stage: one VAS record per call, into the stream.

``on_exit`` hands a snapshot of the finished call to the worker's stream
writer, which builds its record a moment later with the others (the call
never waits for Redis). For a streamed answer,
when bodies are captured, ``wrap_stream`` keeps a reference to each chunk
the caller was sent, up to the capture cap (no copy, no parsing), and the
flush reads the text out of them; or, when an earlier stage reads the text
the caller is sent anyway (the output guard, holding nothing back: it
leaves the chunks as they are), it keeps nothing and the record takes that
stage's text (``Call.answer_text``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from smartflow.proxy.pipeline import Stage

if TYPE_CHECKING:
    from smartflow.audit.runtime import AuditRuntime
    from smartflow.dialects.base import StreamOutcome
    from smartflow.gateway_error import GatewayError
    from smartflow.proxy.call import Call
    from smartflow.proxy.relay import StreamTransform

class _CapturingTransform:
    """Passes the inner transform's output through, keeping it for the record."""

    __slots__ = ("_chunks", "_inner", "_room")

    def __init__(self, inner: StreamTransform, chunks: list[bytes], cap: int) -> None:
        self._inner = inner
        self._chunks = chunks
        self._room = cap

    def _keep(self, data: bytes) -> bytes:
        if data and self._room > 0:
            self._chunks.append(data)
            self._room -= len(data)
        return data

    def feed(self, data: bytes) -> bytes:
        return self._keep(self._inner.feed(data))

    def close(self) -> bytes:
        return self._keep(self._inner.close())

    def error_event(self, error: GatewayError) -> bytes:
        return self._keep(self._inner.error_event(error))

    def outcome(self) -> StreamOutcome:
        return self._inner.outcome()


class AuditRecordStage(Stage):
    slot = "record"

    def __init__(self, audit: AuditRuntime) -> None:
        self._snapshot = audit.builder.snapshot
        self._append = audit.writer.append
        self._capture_cap = audit.builder.stream_capture_cap

    def wrap_stream(self, call: Call, transform: StreamTransform) -> StreamTransform:
        if self._capture_cap <= 0 or call.answer_text is not None:
            return transform
        chunks: list[bytes] = []
        call.answer_chunks = chunks
        return _CapturingTransform(transform, chunks, self._capture_cap)

    async def on_exit(self, call: Call) -> None:
        self._append(self._snapshot(call))  # the record is built at the flush

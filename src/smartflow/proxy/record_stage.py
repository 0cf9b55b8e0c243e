"""The record slot's audit stage: one VAS record per call, into the stream.

``on_exit`` hands a snapshot of the finished call to the worker's stream
writer, which builds its record a moment later with the others (the call
never waits for Redis). For a streamed answer, when bodies are captured,
``wrap_stream`` has the relay keep a reference to each event the caller is
sent, up to the capture cap (no copy, no parsing), and the snapshot reads
the text out of them; or, when an earlier stage reads the text the caller
is sent anyway (the output guard, holding nothing back: it leaves the
chunks as they are), it keeps nothing and the record takes that stage's
text (``Call.answer_text``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from smartflow.proxy.pipeline import Stage

if TYPE_CHECKING:
    from smartflow.audit.runtime import AuditRuntime
    from smartflow.proxy.call import Call
    from smartflow.proxy.relay import StreamTransform


class AuditRecordStage(Stage):
    slot = "record"

    def __init__(self, audit: AuditRuntime) -> None:
        self._snapshot = audit.builder.snapshot
        self._append = audit.writer.append
        self._capture_cap = audit.builder.stream_capture_cap

    def wrap_stream(self, call: Call, transform: StreamTransform) -> StreamTransform:
        if self._capture_cap <= 0 or call.answer_text is not None:
            return transform
        call.answer_chunks = []  # the relay keeps the events the caller is sent
        call.answer_chunks_cap = self._capture_cap
        return transform

    async def on_exit(self, call: Call) -> None:
        self._append(self._snapshot(call))  # the record is built at the flush

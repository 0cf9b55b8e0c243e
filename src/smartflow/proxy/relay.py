"""Streaming relay: upstream SSE bytes to the client, with a tap beside the path.

Two halves:

* sans-IO pieces — ``EventFramer`` (what goes out always ends at an SSE event
  boundary, so a keep-alive comment or an error event can be put between
  events at any time) and ``PassthroughTransform``, which sends the upstream
  bytes unchanged with a dialect's tap beside them (accounting: usage, finish
  reason, optionally the text). Transforms that re-encode a stream live with
  the dialect they write (``smartflow.dialects``); the relay knows none.
* ``relay`` — the async generator handed to ``StreamingResponse``. A pump
  task reads the upstream into a small bounded buffer; the generator drains
  it, so chunks that arrived together go out in one write. One lazily re-armed
  timer per stream (not per chunk) handles the keep-alive interval and the
  idle timeout. Closing the generator (client gone, server draining) cancels
  the pump and closes the upstream response at once, so its connection is
  dropped, not pooled.

Zero copy on the passthrough path: a chunk that ends on an event boundary (the
usual case: providers write one event per write) is yielded as the very same
bytes object; nothing is JSON-decoded until the stream ends, when only the
last few events are parsed to find ``usage`` and ``finish_reason``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from smartflow.dialects.base import StreamOutcome, StreamTap
from smartflow.gateway_error import GatewayError, Phase, Reason
from smartflow.http.client import UpstreamError
from smartflow.proxy.errors import error_from_upstream_failure

MAX_HELD_EVENT_BYTES = 8 * 1024 * 1024
PUMP_HIGH_WATER_BYTES = 256 * 1024

SSE_KEEPALIVE = b": keep-alive\n\n"

logger = logging.getLogger("smartflow.proxy")


# -- sans-IO: framing ------------------------------------------------------------


def _boundary_end(data: bytes) -> int:
    """Index just past the last complete event in ``data`` (0 when none)."""
    lf = data.rfind(b"\n\n")
    crlf = data.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def _ends_on_boundary(data: bytes) -> bool:
    return data.endswith((b"\n\n", b"\r\n\r\n"))


class EventFramer:
    """Holds back a trailing partial event so output always ends between events."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = b""

    def push(self, data: bytes) -> bytes:
        if self._held:
            data = self._held + data
            self._held = b""
        if _ends_on_boundary(data):
            return data
        cut = _boundary_end(data)
        if cut == 0:
            if len(data) > MAX_HELD_EVENT_BYTES:
                return data  # a giant event: bounded memory beats framing
            self._held = data
            return b""
        self._held = data[cut:]
        return data[:cut]

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return held

    def drop(self) -> None:
        self._held = b""


# -- sans-IO: transforms ------------------------------------------------------------


class StreamTransform(Protocol):
    """Upstream bytes in, client bytes out; always ends output between events."""

    def feed(self, data: bytes) -> bytes: ...  # may raise GatewayError

    def close(self) -> bytes: ...

    def error_event(self, error: GatewayError) -> bytes: ...

    def outcome(self) -> StreamOutcome: ...


class PassthroughTransform:
    """The upstream already speaks the caller's format: same bytes out, tap beside."""

    __slots__ = ("_error_event", "_framer", "_tap")

    def __init__(self, tap: StreamTap, error_event: Callable[[GatewayError], bytes]) -> None:
        self._framer = EventFramer()
        self._tap = tap
        self._error_event = error_event

    def feed(self, data: bytes) -> bytes:
        out = self._framer.push(data)
        if out:
            self._tap.observe(out)
        return out

    def close(self) -> bytes:
        out = self._framer.flush()
        if out:
            self._tap.observe(out)
        return out

    def error_event(self, error: GatewayError) -> bytes:
        self._framer.drop()  # never leave a half event in front of the error
        return self._error_event(error)

    def outcome(self) -> StreamOutcome:
        return self._tap.outcome()


# -- the async relay -----------------------------------------------------------------


class _Pump:
    """Reads the upstream body into a bounded buffer; the relay drains it.

    ``active_at`` moves when bytes arrive and when the relay takes them, so a
    slow client (the pump paused by back-pressure) never looks like a silent
    upstream.
    """

    __slots__ = (
        "_loop",
        "_source",
        "_space",
        "_waiter",
        "active_at",
        "chunks",
        "error",
        "is_done",
        "nbytes",
        "task",
    )

    def __init__(self, source: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self._source = source
        self._loop = loop
        self.chunks: deque[bytes] = deque()
        self.nbytes = 0
        self.is_done = False
        self.error: BaseException | None = None
        self.active_at = loop.time()
        self._waiter: asyncio.Future[None] | None = None
        self._space: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        try:
            async for data in self._source:
                if not data:
                    continue
                self.chunks.append(data)
                self.nbytes += len(data)
                self.active_at = self._loop.time()
                self.wake()
                if self.nbytes > PUMP_HIGH_WATER_BYTES:
                    self._space = self._loop.create_future()
                    try:
                        await self._space
                    finally:
                        self._space = None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported to the client as an error event
            self.error = exc
        finally:
            self.is_done = True
            self.wake()

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take(self) -> bytes:
        chunks = self.chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.nbytes = 0
        space = self._space
        if space is not None and not space.done():
            self.active_at = self._loop.time()
            space.set_result(None)
        return data

    async def wait(self) -> None:
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def stop(self) -> None:
        task = self.task
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except BaseException:  # noqa: BLE001, S110 - cancelled on purpose
                pass


class _Watchdog:
    """One timer per stream, re-armed when it fires: keep-alive due, idle expired."""

    __slots__ = (
        "_handle",
        "_loop",
        "_pump",
        "idle_timeout_s",
        "is_keepalive_due",
        "keepalive_interval_s",
        "last_sent_at",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, pump: _Pump,
                 keepalive_interval_s: float, idle_timeout_s: float) -> None:
        self._loop = loop
        self._pump = pump
        self.keepalive_interval_s = keepalive_interval_s if keepalive_interval_s > 0 else 1e12
        self.idle_timeout_s = idle_timeout_s if idle_timeout_s > 0 else 1e12
        self.last_sent_at = loop.time()
        self.is_keepalive_due = False
        self._handle: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        due = min(self.last_sent_at + self.keepalive_interval_s,
                  self._pump.active_at + self.idle_timeout_s)
        self._handle = self._loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        now = self._loop.time()
        if self.is_idle_expired(now):
            self._pump.wake()
            # Data may still arrive before the relay looks; keep watching, slowly.
            self._handle = self._loop.call_at(
                now + min(self.keepalive_interval_s, self.idle_timeout_s), self._on_timer)
            return
        if now - self.last_sent_at >= self.keepalive_interval_s:
            self.is_keepalive_due = True
            self.last_sent_at = now
            self._pump.wake()
        self._arm()

    def is_idle_expired(self, now: float) -> bool:
        pump = self._pump
        return not pump.chunks and now - pump.active_at >= self.idle_timeout_s

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _error_for(exc: BaseException) -> GatewayError:
    """What ended the pump, as the caller's mid-stream error."""
    if isinstance(exc, GatewayError):
        return exc.at(Phase.MID_STREAM)
    if isinstance(exc, UpstreamError):
        return error_from_upstream_failure(exc, Phase.MID_STREAM)
    return GatewayError(502, f"The stream failed ({type(exc).__name__}).", code="upstream_error",
                        phase=Phase.MID_STREAM)


async def relay(
    source: AsyncIterator[bytes],
    transform: StreamTransform,
    *,
    close_source: Callable[[], Awaitable[None]],
    keepalive_interval_s: float,
    idle_timeout_s: float,
    on_end: Callable[[StreamOutcome], Awaitable[None]] | None = None,
    capture: list[bytes] | None = None,
    capture_cap: int = 0,
) -> AsyncIterator[bytes]:
    """Client bytes for one stream. See the module docstring.

    ``capture``: a list that keeps the events the caller is sent (references,
    no copy; keep-alive comments left out), until ``capture_cap`` bytes are
    kept: the audit record's answer. Kept here rather than by a transform
    wrapped around the stream's: that cost two more calls per chunk.

    ``on_end`` runs once however the stream ends (also when the client went
    away: accounting still happens), before the generator finishes, so a
    response trailer computed from it is ready when the last chunk is out.
    Nothing but the upstream's events (and keep-alive comments, and one error
    event when the stream fails) is ever sent.
    """
    loop = asyncio.get_running_loop()
    pump = _Pump(source, loop)
    pump.task = loop.create_task(pump.run())
    watchdog = _Watchdog(loop, pump, keepalive_interval_s, idle_timeout_s)
    error: GatewayError | None = None
    kept: list[bytes] = capture if capture is not None else []
    room = capture_cap if capture is not None else 0
    last = b""  # what ends the stream: the transform's close, or an error event
    try:
        while True:
            if pump.chunks:
                try:
                    out = transform.feed(pump.take())
                except GatewayError as exc:
                    error = exc.at(Phase.MID_STREAM)
                    last = transform.error_event(exc)
                    break
                if out:
                    watchdog.last_sent_at = loop.time()
                    if room > 0:
                        kept.append(out)
                        room -= len(out)
                    yield out
                continue
            if pump.is_done:
                if pump.error is not None:
                    error = _error_for(pump.error)
                    last = transform.error_event(error)
                else:
                    try:
                        last = transform.close()
                    except GatewayError as exc:
                        error = exc.at(Phase.MID_STREAM)
                        last = transform.error_event(exc)
                break
            if watchdog.is_idle_expired(loop.time()):
                error = GatewayError(
                    504, f"The upstream sent nothing for {watchdog.idle_timeout_s:g} s; "
                         "stream ended.", code="stream_idle_timeout", reason=Reason.TIMEOUT,
                    phase=Phase.MID_STREAM)
                last = transform.error_event(error)
                break
            if watchdog.is_keepalive_due:
                watchdog.is_keepalive_due = False
                yield SSE_KEEPALIVE
                continue
            await pump.wait()
        if last:
            if room > 0:
                kept.append(last)
            yield last
    finally:
        watchdog.cancel()
        await pump.stop()
        await _close_quietly(close_source)
        if on_end is not None:
            outcome = transform.outcome()
            if error is not None:
                outcome = StreamOutcome(outcome.usage, outcome.finish_reason, outcome.text, error,
                                        outcome.approx_text_chars)
            try:
                await on_end(outcome)
            except Exception:  # accounting must not break the stream
                logger.exception("the end-of-stream step failed")


async def _close_quietly(close: Callable[[], Awaitable[None]]) -> None:
    try:
        await close()
    except Exception:  # noqa: BLE001, S110 - closing a broken upstream must not fail the stream
        pass

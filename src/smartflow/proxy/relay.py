"""Streaming relay: upstream SSE bytes to the client, with a tap beside the path.

Two halves:

* sans-IO pieces — ``EventFramer`` (what goes out always ends at an SSE event
  boundary, so a keep-alive comment or an error event can be put between
  events at any time), ``OpenAITap`` / ``AnthropicTap`` (accounting: usage,
  finish reason, optionally the text) and the ``StreamTransform``s that
  combine them: ``PassthroughTransform`` sends the upstream bytes unchanged,
  ``DecodingTransform`` turns another provider's stream into OpenAI chunks.
* ``relay`` — the async generator handed to ``StreamingResponse``. A pump
  task reads the upstream into a small bounded buffer; the generator drains
  it, so chunks that arrived together go out in one write. One lazily re-armed
  timer per stream (not per chunk) handles the keep-alive interval and the
  idle timeout. Closing the generator (client gone, server draining) cancels
  the pump and closes the upstream response at once, so its connection is
  dropped, not pooled.

Zero copy on the OpenAI path: a chunk that ends on an event boundary (the
usual case: providers write one event per write) is yielded as the very same
bytes object; nothing is JSON-decoded until the stream ends, when only the
last few events are parsed to find ``usage`` and ``finish_reason``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from smartflow.providers.base import ProviderError, StreamDecoder, Usage

TAIL_BYTES = 16 * 1024  # the usage and finish-reason events are within the last few hundred
HEAD_BYTES = 16 * 1024  # Anthropic's message_start (input usage) is the first event
MAX_HELD_EVENT_BYTES = 8 * 1024 * 1024
PUMP_HIGH_WATER_BYTES = 256 * 1024
MAX_TAIL_EVENTS_PARSED = 8

SSE_KEEPALIVE = b": keep-alive\n\n"
SSE_DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class StreamOutcome:
    usage: Usage | None
    finish_reason: str | None
    text: str | None = None
    error: ProviderError | None = None  # set when the stream ended on an error
    approx_text_chars: int = 0  # for estimating output tokens when no usage came


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


def _split_events(data: bytes) -> list[bytes]:
    return data.replace(b"\r\n", b"\n").split(b"\n\n")


def _event_data(event: bytes) -> bytes:
    """The joined ``data:`` payload of one raw event."""
    parts = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts)


def _event_name(event: bytes) -> bytes:
    for line in event.split(b"\n"):
        if line.startswith(b"event:"):
            return line[6:].strip()
    return b""


def _load(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


class _Tail:
    """The last ~TAIL_BYTES of a stream, kept as references to chunks (no copying)."""

    __slots__ = ("_chunks", "_nbytes")

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._nbytes = 0

    def add(self, data: bytes) -> None:
        self._chunks.append(data)
        self._nbytes += len(data)
        while self._nbytes - len(self._chunks[0]) >= TAIL_BYTES:
            self._nbytes -= len(self._chunks.popleft())

    def value(self) -> bytes:
        return b"".join(self._chunks)


# -- sans-IO: taps ----------------------------------------------------------------


def openai_usage(obj: Any) -> Usage | None:
    if not isinstance(obj, dict):
        return None
    prompt = obj.get("prompt_tokens")
    completion = obj.get("completion_tokens")
    details = obj.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else 0
    return Usage(prompt if isinstance(prompt, int) else 0,
                 completion if isinstance(completion, int) else 0,
                 cached if isinstance(cached, int) else 0)


def anthropic_usage(obj: Any, base: Usage | None = None) -> Usage | None:
    """Anthropic's usage (input excludes cache reads; we count them as prompt)."""
    if not isinstance(obj, dict):
        return base
    prev = base or Usage()

    def number(name: str) -> int | None:
        value = obj.get(name)
        return value if isinstance(value, int) else None

    input_tokens = number("input_tokens")
    cache_read = number("cache_read_input_tokens")
    cache_write = number("cache_creation_input_tokens")
    output_tokens = number("output_tokens")
    if input_tokens is None and cache_read is None and cache_write is None:
        prompt, cached = prev.prompt_tokens, prev.cached_tokens
    else:
        cached = cache_read or 0
        prompt = (input_tokens or 0) + cached + (cache_write or 0)
    completion = output_tokens if output_tokens is not None else prev.completion_tokens
    return Usage(prompt, completion, cached)


MAX_USAGE_PARSE_TRIES = 6


def find_usage_object(body: bytes) -> dict[str, Any] | None:
    """The ``usage`` object of a JSON completion, decoding only that object.

    The last ``"usage":`` key is found from the end (a key inside a string
    value would be escaped, so an unescaped one is a real key), then the
    shortest JSON object after it that parses is taken. None when absent.
    """
    key = body.rfind(b'"usage"')
    if key < 0:
        return None
    start = body.find(b"{", key + 7)
    if start < 0 or body[key + 7:start].strip(b" \t\r\n:") != b"":
        return None
    end = start
    for _ in range(MAX_USAGE_PARSE_TRIES):
        end = body.find(b"}", end + 1)
        if end < 0:
            return None
        try:
            found = orjson.loads(body[start:end + 1])
        except orjson.JSONDecodeError:
            continue
        return found if isinstance(found, dict) else None
    return None


class OpenAITap:
    """Reads usage and finish reason from the end of an OpenAI stream; text if asked.

    Without the text it still counts bytes and events (two C-level calls per
    chunk), enough to estimate the output's length when no usage comes.
    """

    __slots__ = ("_nbytes", "_nevents", "_tail", "_text")

    def __init__(self, *, capture_text: bool = False) -> None:
        self._tail = _Tail()
        self._text: list[str] | None = [] if capture_text else None
        self._nbytes = 0
        self._nevents = 0

    def observe(self, data: bytes) -> None:
        self._tail.add(data)
        self._nbytes += len(data)
        self._nevents += data.count(b"\n\n")
        if self._text is not None:
            self._collect_text(data)

    def _collect_text(self, data: bytes) -> None:
        # Called with framed output (whole events); cheap skip for events with no text.
        if b'"content"' not in data:
            return
        for event in _split_events(data):
            payload = _event_data(event)
            if not payload or payload == b"[DONE]":
                continue
            chunk = _load(payload)
            if not isinstance(chunk, dict):
                continue
            for choice in chunk.get("choices") or ():
                if isinstance(choice, dict) and choice.get("index", 0) == 0:
                    delta = choice.get("delta")
                    if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                        self._text.append(delta["content"])  # type: ignore[union-attr]

    def outcome(self) -> StreamOutcome:
        usage: Usage | None = None
        finish_reason: str | None = None
        events = _split_events(self._tail.value())
        parsed = 0
        for event in reversed(events):
            if parsed >= MAX_TAIL_EVENTS_PARSED or (usage is not None
                                                    and finish_reason is not None):
                break
            # Substring checks first: only events carrying a non-null usage or
            # finish reason are decoded (every chunk has "finish_reason":null).
            has_usage = usage is None and (b'"usage":{' in event or b'"usage": {' in event)
            has_finish = finish_reason is None and (b'"finish_reason":"' in event
                                                    or b'"finish_reason": "' in event)
            if not (has_usage or has_finish):
                continue
            parsed += 1
            chunk = _load(_event_data(event))
            if not isinstance(chunk, dict):
                continue
            if has_usage and chunk.get("usage") is not None:
                usage = openai_usage(chunk["usage"])
            if has_finish:
                for choice in chunk.get("choices") or ():
                    if isinstance(choice, dict) and choice.get("finish_reason"):
                        finish_reason = str(choice["finish_reason"])
                        break
        text = "".join(self._text) if self._text is not None else None
        approx_chars = self._approx_text_chars(events) if usage is None else 0
        return StreamOutcome(usage, finish_reason, text, approx_text_chars=approx_chars)

    def _approx_text_chars(self, tail_events: list[bytes]) -> int:
        # Every chunk event carries the same JSON framing (id, model, ...); the
        # smallest one seen is about that framing with no text in it.
        sizes = [len(e) + 2 for e in tail_events if e.strip() and b"[DONE]" not in e]
        if not sizes or not self._nevents:
            return 0
        framing = min(sizes)
        done = 16 if any(b"[DONE]" in e for e in tail_events) else 0
        events = self._nevents - (1 if done else 0)
        return max(0, self._nbytes - done - events * framing)


class AnthropicTap:
    """Usage from ``message_start`` (input) and the last ``message_delta`` (output)."""

    __slots__ = ("_head", "_head_bytes", "_tail", "_text")

    def __init__(self, *, capture_text: bool = False) -> None:
        self._head: list[bytes] = []
        self._head_bytes = 0
        self._tail = _Tail()
        self._text: list[str] | None = [] if capture_text else None

    def observe(self, data: bytes) -> None:
        if self._head_bytes < HEAD_BYTES:
            self._head.append(data)
            self._head_bytes += len(data)
        self._tail.add(data)
        if self._text is not None and b"text_delta" in data:
            for event in _split_events(data):
                obj = _load(_event_data(event))
                if isinstance(obj, dict):
                    delta = obj.get("delta")
                    if isinstance(delta, dict) and isinstance(delta.get("text"), str):
                        self._text.append(delta["text"])

    def outcome(self) -> StreamOutcome:
        usage: Usage | None = None
        for event in _split_events(b"".join(self._head)):
            if b"message_start" in event:
                obj = _load(_event_data(event))
                if isinstance(obj, dict) and isinstance(obj.get("message"), dict):
                    usage = anthropic_usage(obj["message"].get("usage"))
                break
        stop_reason: str | None = None
        for event in reversed(_split_events(self._tail.value())):
            if b"message_delta" in event:
                obj = _load(_event_data(event))
                if isinstance(obj, dict):
                    usage = anthropic_usage(obj.get("usage"), usage)
                    delta = obj.get("delta")
                    if isinstance(delta, dict) and delta.get("stop_reason"):
                        stop_reason = str(delta["stop_reason"])
                break
        text = "".join(self._text) if self._text is not None else None
        return StreamOutcome(usage, stop_reason, text)


def anthropic_usage_from_message(obj: Any) -> Usage | None:
    """Usage of a whole (non-streamed) Anthropic message."""
    if isinstance(obj, dict):
        return anthropic_usage(obj.get("usage"))
    return None


# -- sans-IO: transforms ------------------------------------------------------------


def openai_error_event(error: ProviderError) -> bytes:
    return b"data: " + orjson.dumps(error.to_openai()) + b"\n\n"


_ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                          403: "permission_error", 404: "not_found_error",
                          413: "request_too_large", 429: "rate_limit_error",
                          529: "overloaded_error"}


def anthropic_error_type(status: int) -> str:
    return _ANTHROPIC_ERROR_TYPES.get(status, "api_error")


def anthropic_error_event(error: ProviderError) -> bytes:
    body = {"type": "error",
            "error": {"type": anthropic_error_type(error.status), "message": error.message}}
    return b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"


class StreamTransform(Protocol):
    """Upstream bytes in, client bytes out; always ends output between events."""

    def feed(self, data: bytes) -> bytes: ...  # may raise ProviderError

    def close(self) -> bytes: ...

    def error_event(self, error: ProviderError) -> bytes: ...

    def outcome(self) -> StreamOutcome: ...


class PassthroughTransform:
    """The upstream already speaks the caller's format: same bytes out, tap beside."""

    __slots__ = ("_error_event", "_framer", "_tap")

    def __init__(self, tap: OpenAITap | AnthropicTap,
                 error_event: Callable[[ProviderError], bytes] = openai_error_event) -> None:
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

    def error_event(self, error: ProviderError) -> bytes:
        self._framer.drop()  # never leave a half event in front of the error
        return self._error_event(error)

    def outcome(self) -> StreamOutcome:
        return self._tap.outcome()


class DecodingTransform:
    """Another provider's stream, decoded by its adapter, re-encoded as OpenAI SSE."""

    __slots__ = ("_chars", "_decoder", "_reshape", "_text")

    def __init__(self, decoder: StreamDecoder, *, capture_text: bool = False,
                 reshape: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None
                 ) -> None:
        self._decoder = decoder
        self._text: list[str] | None = [] if capture_text else None
        self._chars = 0
        self._reshape = reshape  # e.g. chat chunk -> legacy text_completion chunk

    def _encode(self, chunks: list[dict[str, Any]]) -> bytes:
        if not chunks:
            return b""
        out = []
        for chunk in chunks:
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                    self._chars += len(delta["content"])
                    if self._text is not None:
                        self._text.append(delta["content"])
            if self._reshape is not None:
                reshaped = self._reshape(chunk)
                if reshaped is None:
                    continue
                chunk = reshaped
            out.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
        return b"".join(out)

    def feed(self, data: bytes) -> bytes:
        return self._encode(self._decoder.feed(data))

    def close(self) -> bytes:
        return self._encode(self._decoder.close()) + SSE_DONE

    def error_event(self, error: ProviderError) -> bytes:
        return openai_error_event(error)

    def outcome(self) -> StreamOutcome:
        text = "".join(self._text) if self._text is not None else None
        return StreamOutcome(self._decoder.usage, self._decoder.finish_reason, text,
                             approx_text_chars=self._chars)


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


def _error_for(exc: BaseException) -> ProviderError:
    if isinstance(exc, ProviderError):
        return exc
    name = type(exc).__name__
    if "Timeout" in name:
        return ProviderError(504, f"The upstream stopped sending ({name}).", "timeout_error",
                             "upstream_timeout")
    return ProviderError(502, f"The upstream connection failed mid-stream ({name}: {exc})"[:300],
                         "server_error", "upstream_error")


async def relay(
    source: AsyncIterator[bytes],
    transform: StreamTransform,
    *,
    close_source: Callable[[], Awaitable[None]],
    keepalive_interval_s: float,
    idle_timeout_s: float,
    on_end: Callable[[StreamOutcome], bytes] | None = None,
) -> AsyncIterator[bytes]:
    """Client bytes for one stream. See the module docstring.

    ``on_end`` runs once however the stream ends (also when the client went
    away: accounting still happens); the bytes it returns are sent last,
    only when the stream ended normally.
    """
    loop = asyncio.get_running_loop()
    pump = _Pump(source, loop)
    pump.task = loop.create_task(pump.run())
    watchdog = _Watchdog(loop, pump, keepalive_interval_s, idle_timeout_s)
    error: ProviderError | None = None
    trailer = b""
    try:
        while True:
            if pump.chunks:
                try:
                    out = transform.feed(pump.take())
                except ProviderError as exc:
                    error = exc
                    yield transform.error_event(exc)
                    break
                if out:
                    watchdog.last_sent_at = loop.time()
                    yield out
                continue
            if pump.is_done:
                if pump.error is not None:
                    error = _error_for(pump.error)
                    yield transform.error_event(error)
                    break
                try:
                    out = transform.close()
                except ProviderError as exc:
                    error = exc
                    out = transform.error_event(exc)
                if out:
                    yield out
                break
            if watchdog.is_idle_expired(loop.time()):
                error = ProviderError(
                    504, f"The upstream sent nothing for {watchdog.idle_timeout_s:g} s; "
                         "stream ended.", "timeout_error", "stream_idle_timeout")
                yield transform.error_event(error)
                break
            if watchdog.is_keepalive_due:
                watchdog.is_keepalive_due = False
                yield SSE_KEEPALIVE
                continue
            await pump.wait()
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
                trailer = on_end(outcome)
            except Exception:  # noqa: BLE001 - accounting must not break the stream
                trailer = b""
    if trailer:
        yield trailer


async def _close_quietly(close: Callable[[], Awaitable[None]]) -> None:
    try:
        await close()
    except Exception:  # noqa: BLE001, S110 - closing a broken upstream must not fail the stream
        pass

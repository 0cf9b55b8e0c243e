"""A fault-injecting OpenAI upstream, for routing/failover tests and benchmarks.

It is its own HTTP/1.1 server on plain asyncio streams (not the gateway's HTTP
stack) because the faults need the raw socket: a TCP reset, a request that is
never answered, a head sent late, a stream cut in the middle. Speaks

    POST /v1/chat/completions   chat.completion JSON, or SSE chunks with
                                ``stream: true`` (usage chunk when
                                ``stream_options.include_usage``, then [DONE])
    GET  /v1/models             a model list (never faulted, not recorded)

with keep-alive. Any path ending in ``/chat/completions`` or ``/models`` is
accepted, so the ``api_base`` may be ``url`` or ``url + "/v1"``. Auth headers
are ignored. Every reply carries ``x-upstream-name: <name>`` and
``x-fault: <fault>``; a completion's text starts with ``"answer from <name>"``.

Faults (the names are a contract other tests use), picked per chat request by
the first of: a request header ``x-fault: <fault>`` (leaves the script alone),
the next ``script()``-ed fault, a draw from ``mix`` (``random.Random(seed)``),
else "ok":

    ok                200 answer
    429               rate limited, no Retry-After
    429-retry-after   429 with ``Retry-After: <retry_after_s>``
    500 502 503       server errors
    400 401 context   invalid_request_error, invalid_api_key,
                      context_length_exceeded (OpenAI's message text)
    slow              head delayed by ``slow_s``, then a normal answer
    hang              the request is read and never answered; the socket stays
                      open until the client closes it or the server stops
    reset             the request is read, then the connection is reset (RST)
    mid-stream-reset  streams: head, the role chunk and ``mid_stream_chunks``
                      content chunks, then RST; non-stream: like "reset"

``latency_s`` is added before every head (and before a reset). The content
is one choice and no tool calls whatever the request asks: this upstream is
about transport behaviour, ``openai_mock.py`` about dialect fidelity.

Synchronous tests: ``with FaultyUpstream(name="a") as up: ... up.url ...``
(its own thread and loop). Async tests: ``await up.astart()`` /
``await up.astop()``, or ``async with``. Benchmarks, from the repo root::

    .venv/bin/python -m tests.upstreams.faulty_openai --port P --name A \\
        --mix 500=0.3 --mix hang=0.05 --latency-ms 5 --seed 1

prints ``listening on PORT``, serves until SIGTERM/SIGINT, then prints the
counts as one JSON line (``{"ok": 700, "500": 300}``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import logging
import random
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import orjson

from smartflow.providers.mock import estimate_prompt_tokens, openai_usage, split_reply

FAULTS: tuple[str, ...] = (
    "ok", "429", "429-retry-after", "500", "502", "503", "400", "401", "context",
    "slow", "hang", "reset", "mid-stream-reset",
)

_log = logging.getLogger(__name__)

_CONTEXT_MESSAGE = (
    "This model's maximum context length is 128000 tokens. However, your messages resulted in "
    "130000 tokens. Please reduce the length of the messages."
)
# fault -> (status, reason, message, type, param, code), as OpenAI words them.
_ERRORS: dict[str, tuple[int, str, str, str, str | None, str | None]] = {
    "429": (429, "Too Many Requests",
            ("Rate limit reached for requests per min (RPM): Limit 500, Used 500, Requested 1. "
             "Please try again in 120ms."), "requests", None, "rate_limit_exceeded"),
    "500": (500, "Internal Server Error",
            "The server had an error while processing your request. Sorry about that!",
            "server_error", None, None),
    "502": (502, "Bad Gateway", "Bad gateway.", "server_error", None, None),
    "503": (503, "Service Unavailable",
            "The engine is currently overloaded, please try again later.", "server_error",
            None, None),
    "400": (400, "Bad Request", "Invalid value for 'temperature': injected invalid request.",
            "invalid_request_error", None, None),
    "401": (401, "Unauthorized",
            ("Incorrect API key provided: sk-faul***ulty. You can find your API key at "
             "https://platform.openai.com/account/api-keys."), "invalid_request_error", None,
            "invalid_api_key"),
    "context": (400, "Bad Request", _CONTEXT_MESSAGE, "invalid_request_error", "messages",
                "context_length_exceeded"),
}
_ERRORS["429-retry-after"] = _ERRORS["429"]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            411: "Length Required", 431: "Request Header Fields Too Large",
            501: "Not Implemented"}
_FILLER = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")
_MAX_HEAD_BYTES = 64 * 1024
_LINGER_RESET = struct.pack("ii", 1, 0)
# Long enough for loopback to carry the chunks already written before the RST
# discards whatever is still queued in the send buffer.
_FLUSH_BEFORE_RESET_S = 0.02


@dataclass(frozen=True, slots=True)
class Hit:
    """One chat request as it arrived (``t`` is time.monotonic() when its head was read)."""

    t: float
    fault: str
    model: str
    stream: bool
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: dict[str, Any]


def _cumulative(mix: Mapping[str, float]) -> tuple[tuple[float, str], ...]:
    total = 0.0
    table = []
    for fault, probability in mix.items():
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability of {fault!r} must be in [0, 1], got {probability}")
        if probability > 0:
            total += probability
            table.append((total, fault))
    if total > 1.0 + 1e-9:
        raise ValueError(f"fault probabilities add up to {total} > 1")
    return tuple(table)


def _error_body(message: str, type_: str | None, param: str | None = None,
                code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param,
                                   "code": code}})


def _chunked(frame: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(frame), frame)


class _Request:
    __slots__ = ("body", "headers", "keep_alive", "method", "path", "t")

    def __init__(self, t: float, method: str, path: str, headers: dict[str, str],
                 keep_alive: bool, body: bytes) -> None:
        self.t = t
        self.method = method
        self.path = path
        self.headers = headers
        self.keep_alive = keep_alive
        self.body = body


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class FaultyUpstream:
    """An OpenAI upstream that fails on purpose; see the module docstring.

    Settable while it runs (from any thread): ``latency_s``, ``retry_after_s``,
    ``slow_s``, ``mid_stream_chunks``, ``chunk_count``, ``completion_tokens``,
    ``models``, ``script()``, ``set_mix()``. Stats: ``requests``, ``counts()``,
    ``in_flight``, ``max_in_flight``, ``connections``, ``reset_stats()``.
    ``keep_requests=False`` keeps only the counts (long benchmarks).
    """

    def __init__(self, *, name: str = "", seed: int = 0, latency_s: float = 0.0,
                 mix: Mapping[str, float] | None = None, host: str = "127.0.0.1",
                 port: int = 0, keep_requests: bool = True) -> None:
        self.name = name
        self.latency_s = latency_s
        self.retry_after_s: float = 1
        self.slow_s = 2.0
        self.mid_stream_chunks = 2
        self.chunk_count = 8
        self.completion_tokens = 16
        self.models: list[str] = ["gpt-4o", "gpt-4o-mini"]
        self.host = host
        self.port = port
        self.keep_requests = keep_requests
        self.requests: list[Hit] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.connections = 0
        self._counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._mix = _cumulative(mix or {})
        self._script: collections.deque[str] = collections.deque()
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._transports: set[asyncio.Transport] = set()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reply_cache: tuple[tuple[str, int, int], str, list[str]] | None = None

    # -- steering ------------------------------------------------------------

    def script(self, *faults: str) -> None:
        """Queue faults for the next requests, one each, before the mix is consulted."""
        for fault in faults:
            if fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        with self._lock:
            self._script.extend(faults)

    def set_mix(self, mix: Mapping[str, float]) -> None:
        """Replace the fault probabilities (the remainder is "ok"); the RNG keeps its state."""
        self._mix = _cumulative(mix)

    def _choose(self, headers: Mapping[str, str]) -> str:
        forced = headers.get("x-fault")
        if forced is not None:
            forced = forced.strip()
            if forced not in FAULTS:
                raise _BadRequest(400, f"unknown x-fault {forced!r}; known: {', '.join(FAULTS)}")
            return forced
        with self._lock:
            if self._script:
                return self._script.popleft()
        table = self._mix
        if table:
            draw = self._rng.random()
            for bound, fault in table:
                if draw < bound:
                    return fault
        return "ok"

    # -- stats ---------------------------------------------------------------

    def counts(self) -> collections.Counter[str]:
        """fault -> number of chat requests answered (or not) with it since the last reset."""
        with self._lock:
            return collections.Counter(self._counts)

    def reset_stats(self) -> None:
        with self._lock:
            self.requests.clear()
            self._counts.clear()
            self.max_in_flight = self.in_flight
            self.connections = 0

    def _arrive(self, hit: Hit) -> None:
        with self._lock:
            self._counts[hit.fault] += 1
            if self.keep_requests:
                self.requests.append(hit)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    # -- lifecycle -----------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def astart(self) -> None:
        """Listen on the running loop."""
        if self._server is not None:
            raise RuntimeError("already started")
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=_MAX_HEAD_BYTES, backlog=1024,
            reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        if not self.name:
            self.name = f"upstream-{self.port}"

    async def astop(self) -> None:
        """Stop listening and drop every connection, hanging ones included."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for transport in list(self._transports):
            transport.abort()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        if handlers:
            await asyncio.wait(handlers, timeout=5.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 5.0)

    async def __aenter__(self) -> Self:
        await self.astart()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.astop()

    def start(self, timeout_s: float = 10.0) -> Self:
        """Serve on a thread of its own (with its own loop); returns once listening."""
        if self._thread is not None or self._server is not None:
            raise RuntimeError("already started")
        loop = _new_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.astart())
            except BaseException as exc:  # noqa: BLE001 - re-raised by start() below
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"faulty-upstream-{self.name}",
                                        daemon=True)
        self._thread.start()
        if not started.wait(timeout_s):
            raise RuntimeError("faulty upstream did not start in time")
        if failure:
            self._thread = None
            raise RuntimeError("faulty upstream failed to start") from failure[0]
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        self._thread = None
        if thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self.astop(), loop)
            with contextlib.suppress(Exception):
                future.result(timeout_s)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout_s)

    def __enter__(self) -> Self:
        if self._thread is None and self._server is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- HTTP ----------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        transport: Any = writer.transport
        self._handlers.add(task)
        self._transports.add(transport)
        with self._lock:
            self.connections += 1
        try:
            while True:
                try:
                    request = await self._read_request(reader, writer)
                except _BadRequest as exc:
                    self._write_error(writer, exc.status, str(exc), "invalid_request_error",
                                      keep_alive=False)
                    return
                if request is None or not await self._dispatch(request, reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client left or the server is stopping: nothing to answer
        except Exception:  # noqa: BLE001 - logged: a bug here must not kill the server
            _log.exception("faulty upstream: unexpected error while serving")
        finally:
            self._handlers.discard(task)
            self._transports.discard(transport)
            transport.close()

    async def _read_request(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> _Request | None:
        """The next request on the connection, or None when the client closed it cleanly."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise _BadRequest(400, "incomplete request head") from None
            return None
        except asyncio.LimitOverrunError:
            raise _BadRequest(431, "request head too large") from None
        arrived = time.monotonic()
        lines = head.lstrip(b"\r\n").split(b"\r\n")
        try:
            method, target, version = lines[0].decode("latin-1").split(" ")
        except ValueError:
            raise _BadRequest(400, "malformed request line") from None
        if not version.startswith("HTTP/1."):
            raise _BadRequest(400, f"unsupported version {version!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            raw_name, colon, raw_value = line.partition(b":")
            if not colon:
                raise _BadRequest(400, "malformed header line")
            name = raw_name.strip().decode("latin-1").lower()
            value = raw_value.strip().decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        tokens = {token.strip() for token in headers.get("connection", "").lower().split(",")}
        keep_alive = "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await self._read_body(reader, headers)
        return _Request(arrived, method, target.partition("?")[0], headers, keep_alive, body)

    async def _read_body(self, reader: asyncio.StreamReader, headers: Mapping[str, str]) -> bytes:
        encoding = headers.get("transfer-encoding")
        if encoding is not None:
            if encoding.lower() != "chunked":
                raise _BadRequest(501, f"unsupported transfer-encoding {encoding!r}")
            parts: list[bytes] = []
            while True:
                size_line = await reader.readuntil(b"\r\n")
                try:
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise _BadRequest(400, "malformed chunk size") from None
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass  # trailers: ignored
                    return b"".join(parts)
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
        length = headers.get("content-length")
        if length is None:
            return b""
        if not length.isdigit():
            raise _BadRequest(400, f"malformed content-length {length!r}")
        return await reader.readexactly(int(length)) if length != "0" else b""

    async def _dispatch(self, request: _Request, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> bool:
        """Answer one request; True when the connection may carry another one."""
        path = request.path
        if path.endswith("/chat/completions"):
            if request.method != "POST":
                self._write_error(writer, 405, f"{request.method} is not allowed here",
                                  "invalid_request_error", keep_alive=request.keep_alive)
                return request.keep_alive
            return await self._chat(request, reader, writer)
        if path.endswith("/models"):
            if request.method != "GET":
                self._write_error(writer, 405, f"{request.method} is not allowed here",
                                  "invalid_request_error", keep_alive=request.keep_alive)
                return request.keep_alive
            models = [{"id": model, "object": "model", "created": 1686935002,
                       "owned_by": "faulty-upstream"} for model in self.models]
            self._write(writer, 200, "OK", [("content-type", "application/json")],
                        orjson.dumps({"object": "list", "data": models}), "ok",
                        request.keep_alive)
            return request.keep_alive
        self._write_error(writer, 404, f"Invalid URL ({request.method} {path})",
                          "invalid_request_error", keep_alive=request.keep_alive)
        return request.keep_alive

    async def _chat(self, request: _Request, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> bool:
        keep_alive = request.keep_alive
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            self._write_error(writer, 400, "We could not parse the JSON body of your request.",
                              "invalid_request_error", keep_alive=keep_alive)
            return keep_alive
        try:
            fault = self._choose(request.headers)
        except _BadRequest as exc:
            self._write_error(writer, exc.status, str(exc), "invalid_request_error",
                              keep_alive=keep_alive)
            return keep_alive
        model = body.get("model")
        model = model if isinstance(model, str) else ""
        stream = body.get("stream") is True
        self._arrive(Hit(request.t, fault, model, stream, request.headers, body))
        try:
            if fault == "hang":
                # Drain whatever the client still sends, so that its close is seen.
                while await reader.read(65536):
                    pass
                return False
            delay = self.latency_s + (self.slow_s if fault == "slow" else 0.0)
            if delay > 0:
                await asyncio.sleep(delay)
            if writer.transport.is_closing():
                return False
            if fault == "reset" or (fault == "mid-stream-reset" and not stream):
                _reset(writer)
                return False
            error = _ERRORS.get(fault)
            if error is not None:
                status, reason, message, type_, param, code = error
                extra = ([("retry-after", _retry_after(self.retry_after_s))]
                         if fault == "429-retry-after" else [])
                self._write(writer, status, reason,
                            [("content-type", "application/json"), *extra],
                            _error_body(message, type_, param, code), fault, keep_alive)
                return keep_alive
            if not stream:
                self._write(writer, 200, "OK", [("content-type", "application/json")],
                            orjson.dumps(self._completion(body, model)), fault, keep_alive)
                return keep_alive
            frames = self._chunks(body, model)
            head = self._head(200, "OK", [("content-type", "text/event-stream; charset=utf-8"),
                                          ("cache-control", "no-cache"),
                                          ("transfer-encoding", "chunked")], fault, keep_alive)
            if fault == "mid-stream-reset":
                # The role chunk, then the promised content chunks, then the cut.
                cut = frames[:1 + max(0, self.mid_stream_chunks)]
                writer.write(head + b"".join(_chunked(b"data: " + frame + b"\n\n")
                                             for frame in cut))
                await writer.drain()
                await asyncio.sleep(_FLUSH_BEFORE_RESET_S)
                _reset(writer)
                return False
            payload = [head]
            payload.extend(_chunked(b"data: " + frame + b"\n\n") for frame in frames)
            payload.append(_chunked(b"data: [DONE]\n\n"))
            payload.append(b"0\r\n\r\n")
            writer.write(b"".join(payload))
            await writer.drain()
            return keep_alive
        finally:
            self._leave()

    # -- bodies --------------------------------------------------------------

    def _reply(self) -> tuple[str, list[str]]:
        """The completion text and its stream pieces (cached: they change only with settings)."""
        pieces_wanted = max(self.chunk_count, self.mid_stream_chunks + 1)
        key = (self.name, self.completion_tokens, pieces_wanted)
        cached = self._reply_cache
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        words = f"answer from {self.name}".split()
        filler = itertools.cycle(_FILLER)
        while len(words) < max(self.completion_tokens, pieces_wanted):
            words.append(next(filler))
        text = " ".join(words)
        pieces = split_reply(words, pieces_wanted)
        self._reply_cache = (key, text, pieces)
        return text, pieces

    def _completion(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        text, _ = self._reply()
        completion_tokens = len(text.split())
        return {
            "id": f"chatcmpl-{next(self._ids):024x}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0,
                         "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": openai_usage(estimate_prompt_tokens(body.get("messages")), completion_tokens),
            "system_fingerprint": "fp_faulty",
        }

    def _chunks(self, body: dict[str, Any], model: str) -> list[bytes]:
        """The stream's ``data:`` payloads, serialized (no [DONE])."""
        text, pieces = self._reply()
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        base: dict[str, Any] = {"id": f"chatcmpl-{next(self._ids):024x}",
                                "object": "chat.completion.chunk", "created": int(time.time()),
                                "model": model, "system_fingerprint": "fp_faulty"}

        def chunk(delta: dict[str, Any], finish_reason: str | None) -> bytes:
            out = dict(base)
            out["choices"] = [{"index": 0, "delta": delta, "logprobs": None,
                               "finish_reason": finish_reason}]
            if include_usage:
                out["usage"] = None
            return orjson.dumps(out)

        frames = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
        frames.extend(chunk({"content": piece}, None) for piece in pieces)
        frames.append(chunk({}, "stop"))
        if include_usage:
            usage = dict(base)
            usage["choices"] = []
            usage["usage"] = openai_usage(estimate_prompt_tokens(body.get("messages")),
                                    len(text.split()))
            frames.append(orjson.dumps(usage))
        return frames

    # -- writing -------------------------------------------------------------

    def _head(self, status: int, reason: str, headers: Sequence[tuple[str, str]], fault: str,
              keep_alive: bool) -> bytes:
        lines = [f"HTTP/1.1 {status} {reason}"]
        lines.extend(f"{name}: {value}" for name, value in headers)
        lines.append(f"x-upstream-name: {self.name}")
        lines.append(f"x-fault: {fault}")
        lines.append(f"x-request-id: req_{self.port}_{next(self._ids)}")
        if not keep_alive:
            lines.append("connection: close")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("latin-1")

    def _write(self, writer: asyncio.StreamWriter, status: int, reason: str,
               headers: list[tuple[str, str]], body: bytes, fault: str,
               keep_alive: bool) -> None:
        headers.append(("content-length", str(len(body))))
        writer.write(self._head(status, reason, headers, fault, keep_alive) + body)

    def _write_error(self, writer: asyncio.StreamWriter, status: int, message: str,
                     type_: str, *, keep_alive: bool) -> None:
        code = "unknown_url" if status == 404 else None
        self._write(writer, status, _REASONS.get(status, "Error"),
                    [("content-type", "application/json")],
                    _error_body(message, type_, None, code), "none", keep_alive)


def _retry_after(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST instead of a FIN: SO_LINGER 0, then abort."""
    sock = writer.transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    writer.transport.abort()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a project dependency
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


# -- CLI ----------------------------------------------------------------------


def _parse_mix(items: Sequence[str]) -> dict[str, float]:
    mix: dict[str, float] = {}
    for item in items:
        fault, sep, probability = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"--mix wants FAULT=PROBABILITY, got {item!r}")
        mix[fault.strip()] = mix.get(fault.strip(), 0.0) + float(probability)
    return mix


async def _serve_until_signalled(upstream: FaultyUpstream) -> None:
    await upstream.astart()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"listening on {upstream.port}", flush=True)
    await stop.wait()
    # Counts first: the caller reads them right after the signal, and the
    # connection teardown below can take a moment with many hanging clients.
    print(json.dumps(dict(upstream.counts()), sort_keys=True), flush=True)
    await upstream.astop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.upstreams.faulty_openai",
        description="A fault-injecting OpenAI upstream (see the module docstring).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--name", default="")
    parser.add_argument("--mix", action="append", default=[], metavar="FAULT=P",
                        help=f"fault probability, repeatable; faults: {', '.join(FAULTS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--slow-s", type=float, default=2.0)
    parser.add_argument("--retry-after-s", type=float, default=1.0)
    parser.add_argument("--mid-stream-chunks", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        mix = _parse_mix(args.mix)
        upstream = FaultyUpstream(name=args.name, seed=args.seed,
                                  latency_s=args.latency_ms / 1000.0, mix=mix, host=args.host,
                                  port=args.port, keep_requests=False)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        parser.error(str(exc))
    upstream.slow_s = args.slow_s
    upstream.retry_after_s = args.retry_after_s
    upstream.mid_stream_chunks = args.mid_stream_chunks
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        runner.run(_serve_until_signalled(upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())

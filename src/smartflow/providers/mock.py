"""The built-in mock provider: OpenAI's exact bytes, with no network.

The adapter is the OpenAI adapter with ``mock://`` URLs; the deployment's
options travel in the URL's query string so that the call alone says what to
do. The proxy short-circuits a ``mock://`` call by calling ``serve_mock(call)``
instead of its upstream pool, and from there on treats the answer like any
OpenAI upstream (status, headers, body chunks: JSON, or SSE ending in
``data: [DONE]``), so the relay path is exercised for real.

Replies are deterministic: ``"Mock response to: <first 40 chars of the last
user message>"`` followed by filler words up to ``completion_tokens`` words
(one word = one token here). Options (``target.options``):

    latency_ms          wait before the first body byte (default 0)
    chunk_count         content chunks in a stream (default 8)
    chunk_interval_ms   wait between stream chunks (default 0)
    completion_tokens   reply length in words (default 32; max_tokens caps it)
    fail_status         answer every call with this error status
    fail_rate           probability (0..1) of answering ``fail_status`` or 500
    stall_after_chunks  stop sending (but keep the stream open) after N chunks
    die_after_chunks    end the stream after N chunks, without ``[DONE]``
    dimensions          embedding size (default 64; the request's ``dimensions`` wins)

A single call can also ask for a failure: ``"metadata": {"mock_fail": 429}``
in the body, or an ``x-mock-fail: 429`` header.

Besides the adapter, the builders (``chat_completion``, ``chat_chunks``,
``embeddings``, ``text_completion``, ``text_completion_chunks``) are public so
that test upstream servers produce the very same shapes.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson

from smartflow.http.errors import error_type_for_status
from smartflow.providers.base import Target, UpstreamCall
from smartflow.providers.openai import (
    OpenAIAdapter,
    as_dict,
    encode_embedding,
)
from smartflow.providers.sse import SSE_DONE, sse_data

MOCK_SCHEME = "mock://"
_MOCK_ORIGIN = "mock://mock/v1/"
_STALL_S = 3600.0
_FILLER_WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing",
                 "elit", "sed", "do", "eiusmod", "tempor", "incididunt", "ut", "labore",
                 "et", "dolore", "magna", "aliqua")
_SYSTEM_FINGERPRINT = "fp_mock"


@dataclass(frozen=True, slots=True)
class MockOptions:
    latency_ms: float = 0.0
    chunk_count: int = 8
    chunk_interval_ms: float = 0.0
    completion_tokens: int = 32
    fail_status: int = 0
    fail_rate: float = 0.0
    stall_after_chunks: int = -1  # -1: never
    die_after_chunks: int = -1
    dimensions: int = 64


_OPTION_TYPES: dict[str, type] = {
    "latency_ms": float, "chunk_count": int, "chunk_interval_ms": float,
    "completion_tokens": int, "fail_status": int, "fail_rate": float,
    "stall_after_chunks": int, "die_after_chunks": int, "dimensions": int,
}


class MockOptionError(ValueError):
    pass


def parse_mock_options(pairs: Iterable[tuple[str, Any]]) -> MockOptions:
    """Options from key/value pairs (a URL query or a config table); unknown keys are ignored."""
    values: dict[str, Any] = {}
    for key, raw in pairs:
        kind = _OPTION_TYPES.get(key)
        if kind is None:
            continue
        try:
            value = kind(float(raw)) if kind is int else kind(raw)
        except (TypeError, ValueError, OverflowError):
            raise MockOptionError(f"mock option {key} must be a number, got {raw!r}") from None
        if kind is float and not math.isfinite(value) or value < -1:
            raise MockOptionError(f"mock option {key} is out of range: {raw!r}")
        values[key] = value
    options = MockOptions(**values)
    if options.chunk_count < 1 or options.dimensions < 1 or options.completion_tokens < 1:
        raise MockOptionError("mock options chunk_count, dimensions and completion_tokens "
                              "must be at least 1")
    if options.fail_status and not 400 <= options.fail_status <= 599:
        raise MockOptionError(f"mock option fail_status must be 400..599, "
                              f"got {options.fail_status}")
    return options


@dataclass(frozen=True, slots=True)
class MockResponse:
    """What an upstream would have answered. ``body_chunks`` waits out the
    configured latency before its first chunk."""

    status: int
    headers: list[tuple[str, str]]
    body_chunks: AsyncIterator[bytes]


# -- deterministic content ---------------------------------------------------


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content
                        if isinstance(part, dict) and part.get("type") == "text")
    return ""


def _image_count(content: Any) -> int:
    if not isinstance(content, list):
        return 0
    return sum(1 for part in content if isinstance(part, dict) and part.get("type") == "image_url")


def last_user_text(messages: Any) -> str:
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _content_text(message.get("content"))
    return ""


def estimate_prompt_tokens(messages: Any) -> int:
    """OpenAI-like accounting: 3 to prime the reply, 4 per message, ~4 chars per token,
    85 per image."""
    total = 3
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                content = message.get("content")
                total += 4 + (len(_content_text(content)) + 3) // 4 + 85 * _image_count(content)
    return total


def _text_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


def reply_words(prompt_text: str, completion_tokens: int) -> list[str]:
    words = ["Mock", "response", "to:", *prompt_text[:40].split()]
    position = 0
    while len(words) < completion_tokens:
        words.append(_FILLER_WORDS[position % len(_FILLER_WORDS)])
        position += 1
    return words


def _max_tokens(request: dict[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = request.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _reply(request: dict[str, Any], prompt_text: str,
           options: MockOptions) -> tuple[list[str], str]:
    words = reply_words(prompt_text, options.completion_tokens)
    limit = _max_tokens(request)
    if limit is not None and limit < len(words):
        return words[:limit], "length"
    return words, "stop"


def _choice_count(request: dict[str, Any]) -> int:
    n = request.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 128 else 1


def _called_tool(request: dict[str, Any]) -> str | None:
    """The function a tool-using reply calls: the one tool_choice names, else the first tool."""
    tools = request.get("tools")
    choice = request.get("tool_choice")
    if not isinstance(tools, list) or not tools or choice == "none":
        return None
    if isinstance(choice, dict):
        name = as_dict(choice.get("function")).get("name")
        if isinstance(name, str):
            return name
    name = as_dict(as_dict(tools[0]).get("function")).get("name")
    return name if isinstance(name, str) else None


def _tool_call_id(name: str, prompt_text: str, index: int) -> str:
    digest = hashlib.blake2b(f"{name}\0{prompt_text}\0{index}".encode(), digest_size=12)
    return "call_" + digest.hexdigest()


def _new_id(prefix: str) -> str:
    return prefix + f"{random.getrandbits(96):024x}"


def openai_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """OpenAI's ``usage`` object, with the detail fields a real answer carries."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0,
                                      "rejected_prediction_tokens": 0},
    }


def _model_of(request: dict[str, Any]) -> str:
    model = request.get("model")
    return model if isinstance(model, str) else "mock"


def chat_completion(request: dict[str, Any], options: MockOptions = MockOptions()) -> dict[str, Any]:
    """The ``chat.completion`` an OpenAI upstream would return for ``request``."""
    messages = request.get("messages")
    prompt_text = last_user_text(messages)
    prompt_tokens = estimate_prompt_tokens(messages)
    tool_name = _called_tool(request)
    choices = []
    completion_tokens = 0
    for index in range(_choice_count(request)):
        if tool_name is not None:
            message: dict[str, Any] = {
                "role": "assistant", "content": None, "refusal": None,
                "tool_calls": [{"id": _tool_call_id(tool_name, prompt_text, index),
                                "type": "function",
                                "function": {"name": tool_name, "arguments": "{}"}}],
            }
            finish_reason = "tool_calls"
            completion_tokens += 8
        else:
            words, finish_reason = _reply(request, prompt_text, options)
            message = {"role": "assistant", "content": " ".join(words), "refusal": None}
            completion_tokens += len(words)
        choices.append({"index": index, "message": message, "logprobs": None,
                        "finish_reason": finish_reason})
    return {
        "id": _new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": _model_of(request),
        "choices": choices,
        "usage": openai_usage(prompt_tokens, completion_tokens),
        "system_fingerprint": _SYSTEM_FINGERPRINT,
    }


def split_reply(words: list[str], parts: int) -> list[str]:
    """``words`` as at most ``parts`` text pieces whose concatenation is the reply."""
    parts = max(1, min(parts, len(words)))
    size, extra = divmod(len(words), parts)
    pieces = []
    start = 0
    for part in range(parts):
        end = start + size + (1 if part < extra else 0)
        text = " ".join(words[start:end])
        pieces.append(text if start == 0 else " " + text)
        start = end
    return pieces


def chat_chunks(request: dict[str, Any],
                options: MockOptions = MockOptions()) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects an OpenAI stream would carry (no ``[DONE]``)."""
    messages = request.get("messages")
    prompt_text = last_user_text(messages)
    stream_options = request.get("stream_options")
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    completion_id = _new_id("chatcmpl-")
    created = int(time.time())
    model = _model_of(request)
    tool_name = _called_tool(request)
    n = _choice_count(request)

    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": completion_id, "object": "chat.completion.chunk", "created": created,
            "model": model, "system_fingerprint": _SYSTEM_FINGERPRINT,
            "choices": [{"index": index, "delta": delta, "logprobs": None,
                         "finish_reason": finish_reason}],
        }
        if include_usage:
            out["usage"] = None
        return out

    per_choice: list[list[dict[str, Any]]] = []
    completion_tokens = 0
    for index in range(n):
        sequence: list[dict[str, Any]] = []
        if tool_name is not None:
            call_id = _tool_call_id(tool_name, prompt_text, index)
            sequence.append(chunk(index, {
                "role": "assistant", "content": None, "refusal": None,
                "tool_calls": [{"index": 0, "id": call_id, "type": "function",
                                "function": {"name": tool_name, "arguments": ""}}]}, None))
            sequence.append(chunk(index, {"tool_calls": [{"index": 0,
                                                          "function": {"arguments": "{}"}}]},
                                  None))
            finish_reason = "tool_calls"
            completion_tokens += 8
        else:
            words, finish_reason = _reply(request, prompt_text, options)
            completion_tokens += len(words)
            sequence.append(chunk(index, {"role": "assistant", "content": "", "refusal": None},
                                  None))
            sequence.extend(chunk(index, {"content": piece}, None)
                            for piece in split_reply(words, options.chunk_count))
        sequence.append(chunk(index, {}, finish_reason))
        per_choice.append(sequence)
    # n > 1: choices interleave, as OpenAI's do.
    chunks = [item for step in _interleave(per_choice) for item in step]
    if include_usage:
        chunks.append({"id": completion_id, "object": "chat.completion.chunk",
                       "created": created, "model": model,
                       "system_fingerprint": _SYSTEM_FINGERPRINT, "choices": [],
                       "usage": openai_usage(estimate_prompt_tokens(messages), completion_tokens)})
    return chunks


def _interleave(sequences: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    longest = max(len(sequence) for sequence in sequences)
    return [[sequence[step] for sequence in sequences if step < len(sequence)]
            for step in range(longest)]


def _embedding_texts(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(item, str) for item in value):
            return list(value)
        if all(isinstance(item, int) for item in value):
            return [" ".join(map(str, value))]
        if all(isinstance(item, list) and all(isinstance(t, int) for t in item)
               for item in value):
            return [" ".join(map(str, item)) for item in value]
    return None


def embedding_vector(text: str, dimensions: int) -> list[float]:
    """A unit vector that depends only on ``text`` and ``dimensions``."""
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
    rng = random.Random(seed)
    vector = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def embeddings(request: dict[str, Any], options: MockOptions = MockOptions()) -> dict[str, Any]:
    """OpenAI's embeddings list; raises ValueError on input OpenAI would reject."""
    texts = _embedding_texts(request.get("input"))
    if texts is None:
        raise ValueError("input must be a string, a list of strings, or token arrays")
    dimensions = request.get("dimensions")
    if dimensions is None:
        dimensions = options.dimensions
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or not 1 <= dimensions <= 8192:
        raise ValueError("dimensions must be an integer between 1 and 8192")
    encoding_format = request.get("encoding_format") or "float"
    data = [{"object": "embedding", "index": index,
             "embedding": encode_embedding(embedding_vector(text, dimensions), encoding_format)}
            for index, text in enumerate(texts)]
    tokens = sum(_text_tokens(text) for text in texts)
    return {"object": "list", "data": data, "model": _model_of(request),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _prompt_texts(prompt: Any) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(item, str) for item in prompt):
        return list(prompt)
    return [""]


def text_completion(request: dict[str, Any],
                    options: MockOptions = MockOptions()) -> dict[str, Any]:
    """A legacy ``text_completion`` (one choice per prompt, times ``n``)."""
    prompts = _prompt_texts(request.get("prompt"))
    n = _choice_count(request)
    choices: list[dict[str, Any]] = []
    completion_tokens = 0
    for prompt in prompts:
        words, finish_reason = _reply(request, prompt, options)
        for _ in range(n):
            choices.append({"text": " " + " ".join(words), "index": len(choices),
                            "logprobs": None, "finish_reason": finish_reason})
            completion_tokens += len(words)
    prompt_tokens = sum(_text_tokens(prompt) for prompt in prompts)
    return {"id": _new_id("cmpl-"), "object": "text_completion", "created": int(time.time()),
            "model": _model_of(request), "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def text_completion_chunks(request: dict[str, Any],
                           options: MockOptions = MockOptions()) -> list[dict[str, Any]]:
    prompt = _prompt_texts(request.get("prompt"))[0]
    words, finish_reason = _reply(request, prompt, options)
    completion_id = _new_id("cmpl-")
    created = int(time.time())
    model = _model_of(request)
    pieces = split_reply(words, options.chunk_count)
    chunks = []
    for position, piece in enumerate(pieces):
        chunks.append({"id": completion_id, "object": "text_completion", "created": created,
                       "model": model,
                       "choices": [{"text": " " + piece if position == 0 else piece,
                                    "index": 0, "logprobs": None,
                                    "finish_reason": finish_reason
                                    if position == len(pieces) - 1 else None}]})
    return chunks


def error_body(status: int, message: str, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": error_type_for_status(status),
                                   "param": None, "code": code}})


# -- serving a mock:// call --------------------------------------------------


async def _paced(chunks: list[bytes], options: MockOptions) -> AsyncIterator[bytes]:
    if options.latency_ms > 0:
        await asyncio.sleep(options.latency_ms / 1000.0)
    interval_s = options.chunk_interval_ms / 1000.0
    for position, data in enumerate(chunks):
        if position == options.die_after_chunks:
            return
        if position == options.stall_after_chunks:
            await asyncio.sleep(_STALL_S)
        if position and interval_s > 0:
            await asyncio.sleep(interval_s)
        yield data


async def _once(data: bytes, options: MockOptions) -> AsyncIterator[bytes]:
    if options.latency_ms > 0:
        await asyncio.sleep(options.latency_ms / 1000.0)
    yield data


_JSON_HEADERS = [("content-type", "application/json")]
_SSE_HEADERS = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]


def _error_response(status: int, message: str, options: MockOptions,
                    code: str | None = None) -> MockResponse:
    headers = list(_JSON_HEADERS)
    if status == 429:
        headers.append(("retry-after", "1"))
    return MockResponse(status, headers, _once(error_body(status, message, code), options))


def _requested_failure(call: UpstreamCall, request: dict[str, Any],
                       options: MockOptions) -> int:
    for name, value in call.headers:
        if name.lower() == "x-mock-fail" and value.strip().isdigit():
            return int(value)
    metadata = request.get("metadata")
    if isinstance(metadata, dict):
        marker = metadata.get("mock_fail")
        if isinstance(marker, int) or (isinstance(marker, str) and marker.isdigit()):
            return int(marker)
    if options.fail_status:
        return options.fail_status
    if options.fail_rate > 0 and random.random() < options.fail_rate:
        return 500
    return 0


def serve_mock(call: UpstreamCall) -> MockResponse:
    """Answer a ``mock://`` call the way an OpenAI upstream would.

    Never raises on bad input: a malformed call gets a 4xx in OpenAI's error
    shape, as a real upstream would answer it.
    """
    default = MockOptions()
    if not call.url.startswith(MOCK_SCHEME):
        return _error_response(400, f"not a mock URL: {call.url!r}", default)
    path, _, query = call.url[len(MOCK_SCHEME):].partition("?")
    try:
        options = parse_mock_options(parse_qsl(query, keep_blank_values=True))
    except MockOptionError as exc:
        return _error_response(400, str(exc), default)
    if call.method != "POST":
        return _error_response(405, f"{call.method} is not allowed here", options)
    try:
        request = orjson.loads(call.body)
    except orjson.JSONDecodeError:
        return _error_response(400, "We could not parse the JSON body of your request.", options)
    if not isinstance(request, dict):
        return _error_response(400, "The request body must be a JSON object.", options)
    failure = _requested_failure(call, request, options)
    if failure:
        code = "rate_limit_exceeded" if failure == 429 else None
        return _error_response(failure, f"mock failure injected (HTTP {failure})", options, code)
    is_stream = request.get("stream") is True
    if path.endswith("/chat/completions"):
        if not isinstance(request.get("messages"), list) or not request["messages"]:
            return _error_response(400, "'messages' must be a non-empty array", options)
        if is_stream:
            return MockResponse(200, list(_SSE_HEADERS),
                                _paced(_framed(chat_chunks(request, options)), options))
        return MockResponse(200, list(_JSON_HEADERS),
                            _once(orjson.dumps(chat_completion(request, options)), options))
    if path.endswith("/embeddings"):
        try:
            body = orjson.dumps(embeddings(request, options))
        except ValueError as exc:
            return _error_response(400, str(exc), options)
        return MockResponse(200, list(_JSON_HEADERS), _once(body, options))
    if path.endswith("/completions"):
        if is_stream:
            return MockResponse(200, list(_SSE_HEADERS),
                                _paced(_framed(text_completion_chunks(request, options)), options))
        return MockResponse(200, list(_JSON_HEADERS),
                            _once(orjson.dumps(text_completion(request, options)), options))
    return _error_response(404, f"Unknown mock path: {path!r}", options, "not_found")


def _framed(chunks: list[dict[str, Any]]) -> list[bytes]:
    framed = [sse_data(chunk) for chunk in chunks]
    framed.append(SSE_DONE)
    return framed


# -- the adapter -------------------------------------------------------------


class MockAdapter(OpenAIAdapter):
    name = "mock"
    speaks_openai = True
    default_api_base = _MOCK_ORIGIN

    def auth_headers(self, target: Target) -> list[tuple[str, str]]:
        return []

    def url(self, target: Target, operation: str) -> str:
        query = urlencode([(key, value) for key, value in target.options.items()
                           if key in _OPTION_TYPES and isinstance(value, (int, float, str))])
        return _MOCK_ORIGIN + operation + ("?" + query if query else "")


ADAPTER = MockAdapter()

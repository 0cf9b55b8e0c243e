"""The Gemini dialect: ``/v1beta/models/{model}:generateContent`` and its siblings.

Request validation (the structure Google checks, with Google's messages),
usage from a whole ``GenerateContentResponse`` and from a relayed ``alt=sse``
stream (``usageMetadata`` is cumulative, so the last one is the total), the
error renderer (Google's ``{"error": {"code", "message", "status"}}``, the
status name taken from the HTTP status whatever ``type`` the error carries),
and the encoder that turns another provider's decoded stream into Gemini
frames (``GeminiFromOpenAI``, built on ``providers.gemini_inbound``).
"""

from __future__ import annotations

from typing import Any

import orjson

from smartflow.dialects.base import Dialect, StreamOutcome
from smartflow.dialects.checks import ChatRequestFacts, json_type
from smartflow.dialects.reencode import ReencodingTransform
from smartflow.dialects.sse_events import TailBuffer, event_data, last_events, load_json
from smartflow.gateway_error import GatewayError, Reason
from smartflow.providers.base import StreamDecoder, Usage
from smartflow.providers.gemini import FINISH_REASONS, usage_from_gemini
from smartflow.providers.gemini_inbound import (
    GeminiStreamEncoder,
    gemini_error_of,
    google_status,
    sse_frame,
)

GEMINI_ROLES = frozenset({"user", "model", "function"})  # function: the v1beta legacy role
_SPLIT_GUARD = 16  # bytes of the previous piece kept to find a marker split across pieces

# -- validation -------------------------------------------------------------------


def bad_argument(field: str, message: str) -> GatewayError:
    """A 400 the Gemini renderer shows as ``INVALID_ARGUMENT``, worded as Google words it."""
    return GatewayError(400, f"* GenerateContentRequest.{field}: {message}",
                        "invalid_request_error", param=field, reason=Reason.CLIENT)


def _check_parts(parts: Any, where: str) -> None:
    if not isinstance(parts, list):
        raise bad_argument(f"{where}.parts", f"expected an array, got {json_type(parts)}")
    if not parts:
        raise bad_argument(f"{where}.parts", "contents.parts must not be empty.")
    for index, part in enumerate(parts):
        if not isinstance(part, dict):
            raise bad_argument(f"{where}.parts[{index}]",
                               f"expected an object, got {json_type(part)}")


def _check_contents(contents: Any) -> None:
    if contents is None:
        raise bad_argument("contents", "contents is not specified")
    if not isinstance(contents, list):
        raise bad_argument("contents", f"expected an array, got {json_type(contents)}")
    if not contents:
        raise bad_argument("contents", "contents is not specified")
    for index, content in enumerate(contents):
        where = f"contents[{index}]"
        if not isinstance(content, dict):
            raise bad_argument(where, f"expected an object, got {json_type(content)}")
        role = content.get("role")
        if role is not None and (not isinstance(role, str) or role not in GEMINI_ROLES):
            raise bad_argument(f"{where}.role", "Please use a valid role: user, model.")
        _check_parts(content.get("parts"), where)


def _check_object(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = body.get(name)
    if value is not None and not isinstance(value, dict):
        raise bad_argument(name, f"expected an object, got {json_type(value)}")
    return value


def _check_generation_config(config: dict[str, Any]) -> None:
    for name in ("temperature", "topP", "presencePenalty", "frequencyPenalty"):
        value = config.get(name)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise bad_argument(f"generationConfig.{name}",
                               f"expected a number, got {json_type(value)}")
    for name in ("maxOutputTokens", "candidateCount", "topK"):
        value = config.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise bad_argument(f"generationConfig.{name}",
                               f"expected an integer, got {json_type(value)}")
    stop = config.get("stopSequences")
    if stop is not None and (not isinstance(stop, list)
                             or not all(isinstance(item, str) for item in stop)):
        raise bad_argument("generationConfig.stopSequences", "expected an array of strings")


def validate_gemini(body: dict[str, Any], *, model: str = "",
                    stream: bool = False) -> ChatRequestFacts:
    """A ``GenerateContentRequest``: contents, systemInstruction, generationConfig,
    tools and toolConfig, checked for the structure Google checks.

    ``model`` and ``stream`` come from the URL (``:streamGenerateContent``),
    not the body; they are passed through into the facts.
    """
    _check_contents(body.get("contents"))
    system = body.get("systemInstruction")
    if system is not None and not isinstance(system, str):
        if not isinstance(system, dict):
            raise bad_argument("systemInstruction",
                               f"expected an object, got {json_type(system)}")
        _check_parts(system.get("parts"), "systemInstruction")
    config = _check_object(body, "generationConfig")
    if config is not None:
        _check_generation_config(config)
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise bad_argument("tools", f"expected an array, got {json_type(tools)}")
        for index, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise bad_argument(f"tools[{index}]",
                                   f"expected an object, got {json_type(tool)}")
    _check_object(body, "toolConfig")
    settings = body.get("safetySettings")
    if settings is not None and not isinstance(settings, list):
        raise bad_argument("safetySettings", f"expected an array, got {json_type(settings)}")
    return ChatRequestFacts(model, stream, True)


def validate_gemini_count_tokens(body: dict[str, Any], *, model: str = "") -> ChatRequestFacts:
    """A ``CountTokensRequest``: ``contents``, or a whole ``generateContentRequest``."""
    inner = body.get("generateContentRequest")
    if inner is not None:
        if not isinstance(inner, dict):
            raise bad_argument("generateContentRequest",
                               f"expected an object, got {json_type(inner)}")
        return validate_gemini(inner, model=model)
    _check_contents(body.get("contents"))
    return ChatRequestFacts(model, False, True)


# -- usage ------------------------------------------------------------------------


def gemini_usage(response: Any) -> Usage | None:
    """Usage of one ``GenerateContentResponse`` (or the last of a JSON array of them)."""
    if isinstance(response, list) and response:
        response = response[-1]
    if isinstance(response, dict) and isinstance(response.get("usageMetadata"), dict):
        return usage_from_gemini(response["usageMetadata"])
    return None


def usage_of_body(raw: bytes) -> Usage | None:
    if b'"usageMetadata"' not in raw:
        return None
    try:
        return gemini_usage(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return None


def hub_finish_reason(raw: str, has_function_calls: bool) -> str:
    """A Gemini ``finishReason`` as the hub's (OpenAI's) name."""
    if has_function_calls:
        return "tool_calls"
    return FINISH_REASONS.get(raw, "stop")


def _candidate_texts(response: Any) -> list[str]:
    texts: list[str] = []
    candidates = response.get("candidates") if isinstance(response, dict) else None
    for position, candidate in enumerate(candidates or ()):
        if not isinstance(candidate, dict) or candidate.get("index", position) != 0:
            continue
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts or ():
            if isinstance(part, dict) and isinstance(part.get("text"), str) and not part.get(
                    "thought"):
                texts.append(part["text"])
    return texts


class GeminiTap:
    """Usage from the last ``usageMetadata``, the finish reason from the last
    ``finishReason`` (as the hub names it); the text of candidate 0 if asked.

    The relayed bytes may split an event anywhere: the tail is read whole at
    the end, and text capture keeps the unfinished event for the next piece.
    """

    __slots__ = ("_calls", "_guard", "_pending", "_tail", "_text")

    def __init__(self, *, capture_text: bool = False) -> None:
        self._tail = TailBuffer()
        self._text: list[str] | None = [] if capture_text else None
        self._pending = b""
        self._guard = b""
        self._calls = False

    def observe(self, data: bytes) -> None:
        self._tail.add(data)
        if not self._calls:
            self._calls = (b'"functionCall"' in self._guard + data[:_SPLIT_GUARD]
                           or b'"functionCall"' in data)
        self._guard = (self._guard + data[-_SPLIT_GUARD:])[-_SPLIT_GUARD:]
        if self._text is not None:
            self._collect_text(data, self._text)

    def _collect_text(self, data: bytes, texts: list[str]) -> None:
        # CRLF folded to LF as it goes; a CR left at the end may meet its LF next time
        buffer = (self._pending + data).replace(b"\r\n", b"\n")
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self._pending = buffer
            return
        self._pending = buffer[end + 2:]
        for event in buffer[:end].split(b"\n\n"):
            if b'"text"' in event:
                texts.extend(_candidate_texts(load_json(event_data(event))))

    def outcome(self) -> StreamOutcome:
        usage: Usage | None = None
        raw_finish: str | None = None
        for event in reversed(last_events(self._tail.value())):  # at most TAIL_EVENTS
            if usage is not None and raw_finish is not None:
                break
            wants_usage = usage is None and b'"usageMetadata"' in event
            wants_finish = raw_finish is None and b'"finishReason"' in event
            if not (wants_usage or wants_finish):
                continue
            response = load_json(event_data(event))
            if not isinstance(response, dict):
                continue
            if wants_usage:
                usage = gemini_usage(response)
            if wants_finish:
                for candidate in response.get("candidates") or ():
                    if isinstance(candidate, dict) and candidate.get("finishReason"):
                        raw_finish = str(candidate["finishReason"])
                        break
        finish = hub_finish_reason(raw_finish, self._calls) if raw_finish else None
        text = "".join(self._text) if self._text is not None else None
        return StreamOutcome(usage, finish, text)


# -- errors -----------------------------------------------------------------------


def error_type(status: int) -> str:
    """Google's error ``status`` name for ``status`` (INVALID_ARGUMENT, NOT_FOUND, ...)."""
    return google_status(status)


def error_body(error: GatewayError) -> bytes:
    return orjson.dumps(gemini_error_of(error))


def error_event(error: GatewayError) -> bytes:
    """Gemini ends a failed stream with an error object as a ``data:`` frame."""
    return sse_frame(gemini_error_of(error))


# -- encoders ---------------------------------------------------------------------


class GeminiFromOpenAI(ReencodingTransform):
    """A non-Gemini stream (decoded to OpenAI chunks) re-encoded as Gemini frames."""

    __slots__ = ()

    def __init__(self, decoder: StreamDecoder, encoder: GeminiStreamEncoder) -> None:
        super().__init__(decoder, encoder)


DIALECT = Dialect("gemini", error_type, error_body, error_event, GeminiTap, usage_of_body,
                  google_keys=True)

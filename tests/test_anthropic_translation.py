"""Round trips between the hub (OpenAI chat shapes) and Anthropic Messages.

Both Anthropic directions are checked against each other with generated
input, so that the provider side (``providers.anthropic``: hub -> Anthropic
-> hub) and the ingress side (``providers.anthropic_inbound`` and the
``AnthropicTap``: Anthropic -> hub -> Anthropic) cannot drift apart:

(a) a hub request through the adapter's upstream body and back through the
    inbound translation is the same request, up to what Anthropic's format
    cannot carry (normalised in ``canonical_request``, each case explained);
(b) a hub completion written as an Anthropic message and read back by the
    adapter is the same completion;
(c) a hub chunk stream encoded as Anthropic SSE decodes, whole or split at any
    byte boundaries, to the same text, tool calls, finish reason and usage, and
    the passthrough tap reads the same usage and stop reason from it.
"""

from __future__ import annotations

import json
import random
from itertools import pairwise
from typing import Any

import orjson
import pytest
from _sse_helpers import random_splits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smartflow.dialects.anthropic import AnthropicTap, usage_of_body
from smartflow.providers.anthropic import ADAPTER, STOP_REASON_TO_FINISH
from smartflow.providers.anthropic_inbound import (
    FINISH_TO_STOP_REASON,
    AnthropicStreamEncoder,
    anthropic_request_to_openai,
    openai_response_to_anthropic,
)
from smartflow.providers.base import ProviderError, Target, Usage
from smartflow.proxy.relay import SSE_KEEPALIVE, EventFramer

pytestmark = pytest.mark.timeout(120)

DETERMINISTIC = {"deadline": None, "derandomize": True, "database": None,
                 "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
DEFAULT_MAX_TOKENS = 4096  # what the adapter asks for when neither request nor target says


def target(**options: Any) -> Target:
    return Target(public_name="public-model", provider="anthropic", model="claude-upstream",
                  api_base="https://upstream.example", api_key="k", options=options)


# -- strategies -----------------------------------------------------------------------------

NAMES = ("get_weather", "get_time", "search_docs", "run_sql")
PNG_DATA = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmM"
            "IQAAAABJRU5ErkJggg==")
IMAGE_URLS = (f"data:image/png;base64,{PNG_DATA}", "data:image/jpeg;base64,/9j/4AAQSkZJRg==",
              "https://example.com/cat.png", "http://example.com/a%20b.gif?x=1")
PDF_DATA_URL = "data:application/pdf;base64,JVBERi0xLjQK"

# any text JSON can carry (no lone surrogates), multi-byte characters included so
# that byte splits land inside UTF-8 sequences
words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1,
                max_size=16)
json_scalars = st.one_of(st.integers(-10**6, 10**6), st.booleans(), words, st.none(),
                         st.floats(allow_nan=False, allow_infinity=False, width=32))
json_args = st.dictionaries(
    st.sampled_from(("city", "zone", "q", "n", "tags", "ünï", "")),
    st.one_of(json_scalars, st.lists(json_scalars, max_size=3),
              st.dictionaries(st.sampled_from(("a", "b")), json_scalars, max_size=2)),
    max_size=4)
leaf_schemas = st.sampled_from([
    {"type": "string"}, {"type": "integer"}, {"type": "number", "minimum": 0},
    {"type": "boolean"}, {"type": ["string", "null"]}, {"type": "string", "enum": ["a", "b"]},
    {"type": "array", "items": {"type": "string"}},
    {"anyOf": [{"type": "string"}, {"type": "integer"}]},
    {"type": "object", "properties": {"x": {"type": "number"}}, "additionalProperties": False}])


@st.composite
def tool_defs(draw: st.DrawFn) -> list[dict[str, Any]]:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True))
    tools = []
    for name in names:
        function: dict[str, Any] = {"name": name}
        shape = draw(st.sampled_from(("schema", "schema", "missing", "empty")))
        if shape == "schema":
            properties = draw(st.dictionaries(st.sampled_from(("city", "zone", "q", "default")),
                                              leaf_schemas, min_size=1, max_size=3))
            parameters: dict[str, Any] = {"type": "object", "properties": properties}
            required = draw(st.lists(st.sampled_from(sorted(properties)), unique=True))
            if required:
                parameters["required"] = required
            if draw(st.booleans()):
                parameters["additionalProperties"] = False
            function["parameters"] = parameters
        elif shape == "empty":
            function["parameters"] = {}
        if draw(st.booleans()):
            function["description"] = draw(words)
        tools.append({"type": "function", "function": function})
    return tools


@st.composite
def parts(draw: st.DrawFn, *, files: bool = True) -> list[dict[str, Any]]:
    """Multi-part content: text parts (some empty) with images (and files) among them."""
    out: list[dict[str, Any]] = [{"type": "text", "text": t}
                                 for t in draw(st.lists(st.one_of(words, st.just("")),
                                                        min_size=1, max_size=3))]
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(("image", "image", "file") if files else ("image",)))
        if kind == "image":
            part: dict[str, Any] = {"type": "image_url",
                                    "image_url": {"url": draw(st.sampled_from(IMAGE_URLS))}}
        else:
            part = {"type": "file", "file": {"file_data": PDF_DATA_URL, "filename": "a.pdf"}}
        out.insert(draw(st.integers(0, len(out))), part)
    return out


@st.composite
def user_messages(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        return {"role": "user", "content": draw(words)}
    content = draw(parts())
    if not any(p["type"] != "text" or p["text"] for p in content):
        content.append({"type": "text", "text": draw(words)})  # an empty message is dropped
    return {"role": "user", "content": content}


@st.composite
def tool_results(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(("text", "json", "parts", "empty")))
    if kind == "text":
        return draw(words)
    if kind == "json":
        return orjson.dumps(draw(json_args)).decode()
    if kind == "parts":
        return draw(parts(files=False))
    return ""


@st.composite
def hub_requests(draw: st.DrawFn) -> dict[str, Any]:
    tools = draw(st.one_of(st.none(), tool_defs()))
    names = [t["function"]["name"] for t in tools] if tools else list(NAMES)
    messages: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 2))):
        role = draw(st.sampled_from(("system", "developer")))
        content = draw(st.one_of(words, st.lists(words, min_size=1, max_size=2).map(
            lambda texts: [{"type": "text", "text": t} for t in texts])))
        messages.append({"role": role, "content": content})
    messages.append(draw(user_messages()))
    rounds = draw(st.integers(0, 3))
    for round_number in range(rounds):
        calls = [{"id": f"call_{draw(st.text('abcdefXYZ0189_-', min_size=4, max_size=10))}"
                       f"_{round_number}_{i}",
                  "type": "function",
                  "function": {"name": draw(st.sampled_from(names)),
                               "arguments": draw(st.one_of(
                                   json_args.map(lambda a: orjson.dumps(a).decode()),
                                   st.just(""), st.just("{}")))}}
                 for i in range(draw(st.integers(0, 3)))]
        assistant: dict[str, Any] = {"role": "assistant"}
        if calls:
            assistant["content"] = draw(st.sampled_from((None, "", "text", "parts")))
            assistant["tool_calls"] = calls
        else:
            assistant["content"] = draw(st.sampled_from(("text", "parts")))
        if assistant["content"] == "text":
            assistant["content"] = draw(words)
        elif assistant["content"] == "parts":
            assistant["content"] = [{"type": "text", "text": t}
                                    for t in draw(st.lists(words, min_size=1, max_size=2))]
        messages.append(assistant)
        messages.extend({"role": "tool", "tool_call_id": call["id"],
                         "content": draw(tool_results())} for call in calls)
        if draw(st.booleans()) and round_number == rounds - 1:
            messages.append({"role": "developer", "content": draw(words)})
        if not calls or draw(st.booleans()):
            messages.append(draw(user_messages()))
    request: dict[str, Any] = {"model": "public-model", "messages": messages}
    if tools:
        request["tools"] = tools
        choice = draw(st.sampled_from(("auto", "none", "required", "named", None)))
        if choice == "named":
            request["tool_choice"] = {"type": "function",
                                      "function": {"name": draw(st.sampled_from(names))}}
        elif choice is not None:
            request["tool_choice"] = choice
        parallel = draw(st.sampled_from((None, True, False)))
        if parallel is not None:
            request["parallel_tool_calls"] = parallel
    for name, strategy in (("max_tokens", st.integers(1, 200_000)),
                           ("max_completion_tokens", st.integers(1, 200_000)),
                           ("temperature", st.one_of(st.floats(0, 2, allow_nan=False),
                                                     st.integers(0, 2))),
                           ("top_p", st.floats(0, 1, allow_nan=False)),
                           ("stop", st.one_of(words, st.lists(words, min_size=1, max_size=4))),
                           ("user", st.text("abcdef0123456789-", min_size=1, max_size=12))):
        if draw(st.booleans()):
            request[name] = draw(strategy)
    return request


# -- (a) request round trip: hub -> Anthropic (adapter) -> hub (ingress) ---------------------


def _joined_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(p["text"] for p in content or () if p.get("type") == "text")


def _parts_key(content: Any) -> Any:
    """User / tool content as what both formats carry: empty text parts dropped, an
    all-text list the joined string (Anthropic's text blocks come back as one string),
    otherwise the parts (a file's name is not carried: an Anthropic document block
    built by the adapter has no title)."""
    if content is None or isinstance(content, str):
        return content or ""
    kept = [p for p in content if p["type"] != "text" or p["text"]]
    if all(p["type"] == "text" for p in kept):
        return "".join(p["text"] for p in kept)
    out = []
    for part in kept:
        if part["type"] == "text":
            out.append(("text", part["text"]))
        elif part["type"] == "image_url":
            out.append(("image", part["image_url"]["url"]))
        else:
            out.append(("file", part["file"]["file_data"]))
    return out


def _args_key(arguments: str) -> Any:
    return orjson.loads(arguments) if arguments else {}


def canonical_request(request: dict[str, Any], *, default_max: int) -> dict[str, Any]:
    """A hub request with what an Anthropic round trip may legitimately change made
    comparable. Anthropic's format cannot carry:

    * a system or developer message anywhere but at the top: all of them become one
      ``system`` prompt, each message's text parts concatenated and the messages joined
      by a blank line, and it comes back as the first message;
    * text split into parts: Anthropic text blocks come back joined; empty text is
      dropped; an assistant's empty content is ``None``;
    * tool call arguments as text: ``input`` is an object, so arguments compare parsed
      (and empty arguments are ``{}``);
    * an absent max_tokens (mandatory upstream: the target's default is sent), a
      temperature above 1 (clamped), a single stop string (a list upstream);
    * an unset tool_choice with parallel calls off (sent as auto) or parallel calls off
      with tool_choice none (nothing to run in parallel); tool fields without tools;
    * a tool with no or empty parameters (sent as an empty object schema).
    """
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for message in request["messages"]:
        role = message["role"]
        if role in ("system", "developer"):
            if text := _joined_text(message["content"]):
                system.append(text)
            continue
        out: dict[str, Any] = {"role": role}
        if role == "assistant":
            out["content"] = _joined_text(message.get("content")) or None
            calls = [{"id": c["id"], "name": c["function"]["name"],
                      "args": _args_key(c["function"].get("arguments"))}
                     for c in message.get("tool_calls") or ()]
            if calls:
                out["tool_calls"] = calls
        elif role == "tool":
            out["tool_call_id"] = message["tool_call_id"]
            out["content"] = _parts_key(message["content"])
        else:
            out["content"] = _parts_key(message["content"])
        messages.append(out)
    if system:
        messages.insert(0, {"role": "system", "content": "\n\n".join(system)})
    canonical: dict[str, Any] = {
        "messages": messages,
        "max_tokens": request.get("max_completion_tokens") or request.get("max_tokens")
        or default_max,
        "temperature": None if request.get("temperature") is None
        else min(float(request["temperature"]), 1.0),
        "top_p": request.get("top_p"),
        "stop": [request["stop"]] if isinstance(request.get("stop"), str)
        else request.get("stop") or None,
        "user": request.get("user"),
    }
    tools = request.get("tools")
    if tools:
        canonical["tools"] = [
            (t["function"]["name"], t["function"].get("description") or None,
             t["function"].get("parameters") or {"type": "object", "properties": {}})
            for t in tools]
        choice = request.get("tool_choice")
        parallel = request.get("parallel_tool_calls") is not False
        if choice is None and not parallel:
            choice = "auto"
        canonical["tool_choice"] = choice
        canonical["parallel_tool_calls"] = parallel or choice == "none"
    return canonical


def check_anthropic_wire(body: dict[str, Any], request: dict[str, Any]) -> None:
    """What the real API insists on: alternating turns, and every tool_use answered by
    tool_result blocks leading the very next user turn."""
    turns = body["messages"]
    assert all(turn["content"] for turn in turns)
    assert all(a["role"] != b["role"] for a, b in pairwise(turns))
    for index, turn in enumerate(turns):
        used = [b["id"] for b in turn["content"] if b["type"] == "tool_use"]
        if turn["role"] != "assistant" or not used:
            continue
        answer = turns[index + 1]["content"]
        assert [b["tool_use_id"] for b in answer[:len(used)]] == used
        assert all(b["type"] != "tool_result" for b in answer[len(used):])
    assert body["model"] == "claude-upstream"
    if request.get("temperature") is not None:
        assert 0 <= body["temperature"] <= 1


@settings(max_examples=500, **DETERMINISTIC)
@given(hub_requests(), st.one_of(st.none(), st.integers(1, 64_000)), st.booleans())
def test_a_hub_request_survives_the_trip_through_anthropic(
        request: dict[str, Any], target_max: int | None, stream: bool) -> None:
    deployment = target() if target_max is None else target(max_tokens=target_max)
    call = ADAPTER.chat_request(deployment, request, stream=stream)
    assert call.method == "POST" and call.url == "https://upstream.example/v1/messages"
    anthropic = orjson.loads(call.body)  # as sent on the wire
    check_anthropic_wire(anthropic, request)
    assert anthropic.get("stream", False) is stream

    back = anthropic_request_to_openai(anthropic)
    assert back["model"] == "claude-upstream"
    assert bool(back.get("stream")) is stream
    if stream:  # the ingress always asks its own upstream for usage when streaming
        assert back["stream_options"] == {"include_usage": True}
    default_max = DEFAULT_MAX_TOKENS if target_max is None else target_max
    assert canonical_request(back, default_max=default_max) == canonical_request(
        request, default_max=default_max)


def test_n_above_one_cannot_be_sent_to_anthropic() -> None:
    # Anthropic returns one answer per call; the adapter refuses rather than send n=1
    request = {"messages": [{"role": "user", "content": "hi"}], "n": 2}
    with pytest.raises(ProviderError) as caught:
        ADAPTER.chat_request(target(), request, stream=False)
    assert caught.value.status == 400 and "n" in caught.value.message


def test_consecutive_same_role_messages_merge_into_one_turn() -> None:
    # Anthropic requires alternating turns, so two user messages are one turn upstream
    # and come back as one message: a documented loss, pinned here.
    request = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                            {"role": "assistant", "content": "c"},
                            {"role": "assistant", "content": "d"}]}
    anthropic = orjson.loads(ADAPTER.chat_request(target(), request, stream=False).body)
    assert [t["role"] for t in anthropic["messages"]] == ["user", "assistant"]
    back = anthropic_request_to_openai(anthropic)
    assert back["messages"] == [{"role": "user", "content": "ab"},
                                {"role": "assistant", "content": "cd"}]


# -- (b) completion round trip: hub -> Anthropic message (ingress) -> hub (adapter) ----------


@st.composite
def hub_completions(draw: st.DrawFn) -> dict[str, Any]:
    # one choice: an Anthropic message carries one answer (the ingress takes the first)
    calls = [{"id": f"call_{i}_{draw(st.text('abc123', min_size=1, max_size=6))}",
              "type": "function",
              "function": {"name": draw(st.sampled_from(NAMES)),
                           "arguments": draw(st.one_of(
                               json_args.map(lambda a: orjson.dumps(a).decode()),
                               st.just("")))}}
             for i in range(draw(st.integers(0, 3)))]
    message: dict[str, Any] = {"role": "assistant",
                               "content": draw(st.one_of(st.none(), st.just(""), words))}
    if calls:
        message["tool_calls"] = calls
    if draw(st.booleans()):
        message["reasoning_content"] = draw(words)
    finish = draw(st.sampled_from(("tool_calls", "stop")) if calls else
                  st.sampled_from(("stop", "length", "content_filter")))
    prompt = draw(st.integers(0, 10**6))
    completion = draw(st.integers(0, 10**5))
    usage: dict[str, Any] = {
        "prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": draw(st.integers(0, prompt))}}
    return {"id": "chatcmpl-" + draw(st.text("abc123", min_size=1, max_size=8)),
            "object": "chat.completion", "created": 1, "model": "gpt-x",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage}


def canonical_completion(completion: dict[str, Any]) -> dict[str, Any]:
    """Empty text is no text; arguments compare parsed; a turn that calls tools
    finishes with tool_calls (Anthropic's stop_reason for it is always tool_use)."""
    choice = completion["choices"][0]
    message = choice["message"]
    calls = [(c["id"], c["function"]["name"], _args_key(c["function"]["arguments"]))
             for c in message.get("tool_calls") or ()]
    usage = completion["usage"]
    return {"content": message.get("content") or None,
            "reasoning": message.get("reasoning_content") or None,
            "calls": calls,
            "finish_reason": "tool_calls" if calls else choice["finish_reason"],
            "usage": (usage["prompt_tokens"], usage["completion_tokens"],
                      usage["prompt_tokens"] + usage["completion_tokens"],
                      usage["prompt_tokens_details"]["cached_tokens"])}


@settings(max_examples=400, **DETERMINISTIC)
@given(hub_completions())
def test_a_hub_completion_survives_the_trip_through_anthropic(
        completion: dict[str, Any]) -> None:
    message = openai_response_to_anthropic(completion, model="public-model")
    raw = orjson.dumps(message)
    assert message["stop_reason"] in STOP_REASON_TO_FINISH
    back = ADAPTER.chat_response(target(), 200, [], raw)
    assert back["object"] == "chat.completion" and back["model"] == "public-model"
    assert back["id"] == "msg_" + completion["id"]
    if back["usage"]["total_tokens"] != (back["usage"]["prompt_tokens"]
                                         + back["usage"]["completion_tokens"]):
        pytest.fail("total_tokens is not prompt + completion")
    assert canonical_completion(back) == canonical_completion(completion)
    # what the passthrough dialect bills for the same Anthropic body
    usage = completion["usage"]
    assert usage_of_body(raw) == Usage(usage["prompt_tokens"], usage["completion_tokens"],
                                       usage["prompt_tokens_details"]["cached_tokens"])


@pytest.mark.xfail(strict=True, reason=(
    "known bug: tool arguments are re-parsed with orjson, which reads an integer beyond "
    "64 bits as a float (arguments_object in providers/hub.py for the ingress, "
    "_tool_arguments in providers/anthropic.py for requests), while the stream path "
    "relays argument text untouched; so a non-streamed answer loses digits a streamed "
    "one keeps"))
def test_an_answer_has_the_same_tool_arguments_streamed_or_not() -> None:
    arguments = '{"order_id": 123456789012345678901234567890}'
    completion = {"id": "chatcmpl-7", "choices": [{"index": 0, "finish_reason": "tool_calls",
                  "message": {"role": "assistant", "content": None, "tool_calls": [
                      {"id": "call_1", "type": "function",
                       "function": {"name": "get_order", "arguments": arguments}}]}}]}
    decoder = ADAPTER.chat_stream_decoder(target(), include_usage=True)
    chunks = decoder.feed(encode([chunk({"tool_calls": [
        {"index": 0, "id": "call_1", "type": "function",
         "function": {"name": "get_order", "arguments": arguments}}]}), chunk({}, "tool_calls")]))
    streamed = "".join(call["function"].get("arguments") or "" for c in chunks
                       for choice in c["choices"] for call in choice["delta"].get("tool_calls", ()))
    # Python's json reads integers exactly: the reference here
    assert json.loads(streamed) == json.loads(arguments)  # the stream keeps every digit
    message = openai_response_to_anthropic(completion, model="public-model")
    back = ADAPTER.chat_response(target(), 200, [], orjson.dumps(message))
    call = back["choices"][0]["message"]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == json.loads(arguments)


# -- (c) stream round trip: hub chunks -> Anthropic SSE (ingress) -> hub chunks (adapter) ----


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None,
          usage: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": "chatcmpl-7", "object": "chat.completion.chunk", "created": 1,
                           "model": "gpt-x",
                           "choices": [{"index": 0, "delta": delta or {},
                                        "finish_reason": finish}]}
    if usage is not None:
        out["usage"] = usage
    return out


def usage_object(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion, "prompt_tokens_details": {"cached_tokens": cached}}


def usage_chunk(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {"id": "chatcmpl-7", "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-x", "choices": [], "usage": usage_object(prompt, completion, cached)}


def encode(chunks: list[dict[str, Any]], *, input_tokens: int = 0,
           keepalives: random.Random | None = None) -> bytes:
    """The encoder's bytes; with ``keepalives``, Anthropic pings and the relay's SSE
    comments put between events at random (as a relay does while the upstream is idle)."""
    encoder = AnthropicStreamEncoder("public-model", input_tokens=input_tokens)
    out = []
    for item in [*chunks, None]:
        if keepalives is not None and keepalives.random() < 0.3:
            out.append(keepalives.choice((encoder.ping(), SSE_KEEPALIVE)))
        out.append(encoder.feed(item) if item is not None else encoder.finish())
    return b"".join(out)


def assemble(chunks: list[dict[str, Any]], message_id: str = "msg_chatcmpl-7") -> dict[str, Any]:
    """What an OpenAI client accumulates from a stream (first choice)."""
    text: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    usage = None
    finishes = 0
    for item in chunks:
        assert item["object"] == "chat.completion.chunk" and item["model"] == "public-model"
        assert item["id"] == message_id  # the upstream chunk id, as a message id
        if item.get("usage"):
            assert usage is None, "usage sent twice"
            usage = item["usage"]
        for choice in item.get("choices") or ():
            assert choice["index"] == 0
            delta = choice["delta"]
            text.append(delta.get("content") or "")
            reasoning.append(delta.get("reasoning_content") or "")
            for call in delta.get("tool_calls") or ():
                slot = calls.get(call["index"])
                if slot is None:  # the first delta of a call names it
                    slot = calls[call["index"]] = {"id": call["id"],
                                                   "name": call["function"]["name"],
                                                   "arguments": ""}
                else:
                    assert "id" not in call and "name" not in call["function"]
                slot["arguments"] += call["function"].get("arguments") or ""
            if choice.get("finish_reason"):
                finishes += 1
                finish = choice["finish_reason"]
    assert finishes == 1
    assert sorted(calls) == list(range(len(calls)))
    return {"text": "".join(text), "reasoning": "".join(reasoning),
            "tool_calls": [{"id": c["id"], "name": c["name"], "args": orjson.loads(c["arguments"])}
                           for c in (calls[i] for i in sorted(calls))],
            "finish_reason": finish,
            "usage": None if usage is None else Usage(
                usage["prompt_tokens"], usage["completion_tokens"],
                usage["prompt_tokens_details"]["cached_tokens"])}


def decode(pieces: list[bytes], message_id: str = "msg_chatcmpl-7", *,
           include_usage: bool = True) -> dict[str, Any]:
    decoder = ADAPTER.chat_stream_decoder(target(), include_usage=include_usage)
    out: list[dict[str, Any]] = []
    for piece in pieces:
        out.extend(decoder.feed(piece))
    out.extend(decoder.close())
    result = assemble(out, message_id)
    if include_usage:
        assert decoder.usage == result["usage"]
    else:  # no usage chunk goes out, but the decoder still knows it (for billing)
        assert result["usage"] is None
        result["usage"] = decoder.usage
    assert decoder.finish_reason == result["finish_reason"]
    return result


def tap(pieces: list[bytes], *, framed: bool) -> Any:
    """The passthrough tap over the bytes: as relayed (through the relay's EventFramer,
    which hands it whole events) or raw, straight from the network split."""
    watcher = AnthropicTap(capture_text=framed)
    framer = EventFramer()
    for piece in pieces:
        data = framer.push(piece) if framed else piece
        if data:
            watcher.observe(data)
    if framed and (rest := framer.flush()):
        watcher.observe(rest)
    return watcher.outcome()


@st.composite
def hub_streams(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[str, Any], int]:
    """A chunk stream and what a client must assemble from it: text, reasoning and
    parallel tool calls' argument fragments interleaved in any order (each keeping its
    own order), some calls' deltas sharing a chunk, deltas of another choice between,
    then a finish chunk and a usage chunk in the shapes providers send."""
    texts = draw(st.lists(words, max_size=6))
    reasoning = draw(st.lists(words, max_size=3))
    calls = [(f"call_{i}", draw(st.sampled_from(NAMES)), draw(json_args))
             for i in range(draw(st.integers(0, 3)))]
    events: list[tuple[str, Any]] = [("reasoning", r) for r in reasoning]
    events += [("text", t) for t in texts]
    for position, (_, _, args) in enumerate(calls):
        encoded = orjson.dumps(args).decode()
        cuts = sorted(draw(st.lists(st.integers(0, len(encoded)), max_size=4)))
        events += [("call", (position, encoded[a:b]))
                   for a, b in zip([0, *cuts], [*cuts, len(encoded)], strict=True)]
    order = draw(st.permutations(range(len(events))))
    # OpenAI numbers parallel calls in the order they start: renumber to match
    firsts = [events[i][1][0] for i in order if events[i][0] == "call"]
    renumber = {old: new for new, old in enumerate(dict.fromkeys(firsts))}
    calls = [calls[old] for old in sorted(renumber, key=renumber.__getitem__)]
    events = [(kind, (renumber[value[0]], value[1]) if kind == "call" else value)
              for kind, value in events]
    queues: dict[Any, list[Any]] = {}
    for kind, value in events:
        queues.setdefault(kind if kind != "call" else value[0], []).append(value)
    chunks = [chunk({"role": "assistant", "content": ""})]
    started: set[int] = set()
    for which in order:
        kind, value = events[which]
        key = kind if kind != "call" else value[0]
        value = queues[key].pop(0)  # keep each stream of pieces in its own order
        if kind == "text":
            chunks.append(chunk({"content": value}))
        elif kind == "reasoning":
            chunks.append(chunk({"reasoning_content": value}))
        else:
            position, fragment = value
            delta: dict[str, Any] = {"index": position, "function": {"arguments": fragment}}
            if position not in started:
                started.add(position)
                call_id, name, _ = calls[position]
                delta.update(id=call_id, type="function")
                delta["function"]["name"] = name
            previous = chunks[-1]["choices"][0]["delta"]
            if set(previous) == {"tool_calls"} and draw(st.booleans()):
                previous["tool_calls"].append(delta)  # several calls' deltas in one chunk
            else:
                chunks.append(chunk({"tool_calls": [delta]}))
    for _ in range(draw(st.integers(0, 2))):  # another choice's deltas: not this answer
        noise = chunk({"content": "other answer"})
        noise["choices"][0]["index"] = 1
        chunks.insert(draw(st.integers(1, len(chunks))), noise)
    finish = draw(st.sampled_from(("tool_calls", "stop", None)) if calls else
                  st.sampled_from(("stop", "length", "content_filter", None)))
    usage_shape = draw(st.sampled_from(("separate", "on_finish", "none")))
    prompt, completion = draw(st.integers(0, 10**6)), draw(st.integers(0, 10**5))
    cached = draw(st.integers(0, prompt))
    estimate = draw(st.integers(0, 5000))  # the ingress's input estimate for message_start
    if usage_shape == "on_finish":
        chunks.append(chunk({}, finish, usage_object(prompt, completion, cached)))
    else:
        if finish is not None:
            chunks.append(chunk({}, finish))
        if usage_shape == "separate":
            chunks.append(usage_chunk(prompt, completion, cached))
    expected = {
        "text": "".join(texts), "reasoning": "".join(reasoning),
        "tool_calls": [{"id": c, "name": n, "args": a} for c, n, a in calls],
        # a turn that calls tools always stops for tool_use; no finish at all is end_turn
        "finish_reason": "tool_calls" if calls else finish or "stop",
        "usage": Usage(estimate) if usage_shape == "none" else Usage(prompt, completion, cached)}
    return chunks, expected, estimate


def check_tapped(outcome: Any, expected: dict[str, Any], *, text: bool) -> None:
    assert outcome.usage == expected["usage"]
    assert outcome.finish_reason == FINISH_TO_STOP_REASON[expected["finish_reason"]]
    if text:
        assert outcome.text == expected["text"]


@settings(max_examples=300, **DETERMINISTIC)
@given(hub_streams(), st.randoms(use_true_random=False))
def test_an_encoded_stream_decodes_to_the_original(
        stream: tuple[list[dict[str, Any]], dict[str, Any], int], rng: random.Random) -> None:
    chunks, expected, estimate = stream
    raw = encode(chunks, input_tokens=estimate, keepalives=rng)
    assert raw.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    assert decode([raw]) == expected
    assert decode([raw], include_usage=False) == expected
    check_tapped(tap([raw], framed=False), expected, text=False)
    check_tapped(tap([raw], framed=True), expected, text=True)
    for cuts in (1, 2, 5, 40):
        pieces = random_splits(raw, rng, cuts)
        assert decode(pieces) == expected, f"differs when split into {len(pieces)} pieces"
        check_tapped(tap(pieces, framed=False), expected, text=False)
        check_tapped(tap(pieces, framed=True), expected, text=True)


SAMPLE_STREAMS = [
    ([chunk({"role": "assistant", "content": ""}),
      chunk({"reasoning_content": "Let me thínk."}),
      chunk({"content": "Grüße "}),
      chunk({"content": "aus 🌍\n"}),
      chunk({"tool_calls": [{"index": 0, "id": "call_w", "type": "function",
                             "function": {"name": "get_weather", "arguments": '{"ci'}}]}),
      chunk({"tool_calls": [{"index": 1, "id": "call_t", "type": "function",
                             "function": {"name": "get_time", "arguments": ""}}]}),
      chunk({"content": "then more ✓"}),
      chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Köln"}'}}]}),
      chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"zone": "CET"}'}}]}),
      chunk({}, "tool_calls"),
      usage_chunk(30, 12, 10)],
     {"text": "Grüße aus 🌍\nthen more ✓", "reasoning": "Let me thínk.",
      "tool_calls": [{"id": "call_w", "name": "get_weather", "args": {"city": "Köln"}},
                     {"id": "call_t", "name": "get_time", "args": {"zone": "CET"}}],
      "finish_reason": "tool_calls", "usage": Usage(30, 12, 10)}),
    ([chunk({"role": "assistant", "content": ""}),
      chunk({"content": "A \"quoted\" \\ line\r\nand 日本語"}),
      chunk({}, "length", usage_object(1_000_000, 4096, 999_999))],
     {"text": "A \"quoted\" \\ line\r\nand 日本語", "reasoning": "", "tool_calls": [],
      "finish_reason": "length", "usage": Usage(1_000_000, 4096, 999_999)}),
]


@pytest.mark.parametrize(("chunks", "expected"), SAMPLE_STREAMS)
def test_a_stream_split_at_every_byte_decodes_and_taps_identically(
        chunks: list[dict[str, Any]], expected: dict[str, Any]) -> None:
    raw = encode(chunks)
    whole = ADAPTER.chat_stream_decoder(target(), include_usage=True)
    reference = [{k: v for k, v in c.items() if k != "created"}
                 for c in whole.feed(raw) + whole.close()]
    assert assemble(reference) == expected
    for cut in range(1, len(raw)):
        pieces = [raw[:cut], raw[cut:]]
        decoder = ADAPTER.chat_stream_decoder(target(), include_usage=True)
        got = decoder.feed(pieces[0]) + decoder.feed(pieces[1]) + decoder.close()
        assert [{k: v for k, v in c.items() if k != "created"} for c in got] == reference, (
            f"differs when split at byte {cut}")
        check_tapped(tap(pieces, framed=False), expected, text=False)
        check_tapped(tap(pieces, framed=True), expected, text=True)
    one_by_one = [raw[i:i + 1] for i in range(len(raw))]
    assert decode(one_by_one) == expected
    check_tapped(tap(one_by_one, framed=False), expected, text=False)
    check_tapped(tap(one_by_one, framed=True), expected, text=True)


def test_an_empty_stream_round_trips_as_an_empty_stopped_answer() -> None:
    raw = encode([])
    expected = {"text": "", "reasoning": "", "tool_calls": [], "finish_reason": "stop",
                "usage": Usage()}
    assert decode([raw], "msg_smartflow") == expected
    check_tapped(tap([raw], framed=True), expected, text=True)

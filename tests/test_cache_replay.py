"""Cache replay: a stored whole answer back out as each caller expects it, and a
stream as sent to a caller back into the whole answer the cache keeps.

The round trip is the core property: replay an answer as a stream, cut the
bytes anywhere, assemble them, and get exactly the answer a non-streaming
caller is sent. Every event is also read by the dialect's own client SDK
(its models, and its stream accumulators over an in-process transport), and
the assemblers read streams written by the gateway's existing encoders.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import anthropic
import httpx2
import openai
import orjson
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from smartflow.cache.replay import (
    CACHEABLE_DIALECTS,
    fresh_id,
    new_assembler,
    refreshed,
    replay_stream,
    replay_whole,
    stream_ids,
)
from smartflow.dialects.anthropic import AnthropicFromOpenAI
from smartflow.dialects.openai import DecodingTransform
from smartflow.dialects.responses import ResponsesFromOpenAI
from smartflow.gateway_error import GatewayError
from smartflow.providers.anthropic import AnthropicStreamDecoder
from smartflow.providers.anthropic_inbound import AnthropicStreamEncoder
from smartflow.providers.mock import MockOptions, chat_chunks, chat_completion
from smartflow.providers.openai import OpenAIStreamDecoder
from smartflow.providers.responses_inbound import (
    ResponsesStreamEncoder,
    response_shell,
    responses_usage,
)
from smartflow.providers.sse import SSE_DONE, sse_data, sse_event

NEW_ID = {"openai": "chatcmpl-replayed", "anthropic": "msg_replayed", "responses": "resp_replayed"}
CREATED = 1_800_000_000
ROUND_TRIP = settings(derandomize=True, max_examples=100, deadline=None)
THROUGH_SDK = settings(derandomize=True, max_examples=25, deadline=None)

ANTHROPIC_EVENT: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
RESPONSES_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


# -- helpers ------------------------------------------------------------------------


def event_payloads(events: list[bytes]) -> list[tuple[str, Any]]:
    """(event name, data) per event; each must be one whole event."""
    out = []
    for event in events:
        assert event.endswith(b"\n\n") and b"\n\n" not in event[:-2], event
        name, data = "", None
        for line in event[:-2].split(b"\n"):
            if line.startswith(b"event: "):
                name = line[7:].decode()
            elif line.startswith(b"data: "):
                data = line[6:]
        assert data is not None, event
        out.append((name, "[DONE]" if data == b"[DONE]" else orjson.loads(data)))
    return out


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` cut at ``points`` (taken modulo its length), as a network might."""
    marks = sorted({point % len(data) for point in points} | {0, len(data)})
    return [data[start:end] for start, end in itertools.pairwise(marks)]


def assembled(dialect: str, pieces: list[bytes]) -> dict[str, Any] | None:
    assembler = new_assembler(dialect)
    for piece in pieces:
        assembler.feed(piece)
    return assembler.result()


def whole(dialect: str, answer: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(replay_whole(dialect, answer, new_id=NEW_ID[dialect],
                                                     created=CREATED))
    return body


def stream(dialect: str, answer: dict[str, Any], *, include_usage: bool = True) -> list[bytes]:
    return replay_stream(dialect, answer, new_id=NEW_ID[dialect], created=CREATED,
                         include_usage=include_usage)


def sse_transport(body: bytes) -> httpx2.Client:
    """An HTTP client (of the SDKs' own HTTP library) answering every request with
    ``body`` as an event stream."""
    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)
    return httpx2.Client(transport=httpx2.MockTransport(answer))


# -- strategies ---------------------------------------------------------------------

text_st = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40),
    st.sampled_from(["data: [DONE]\n\n", "event: error\n", "caf\u00e9 \U0001f600 ok", "a\r\nb"]))
nonempty_text_st = text_st.filter(bool)
names_st = st.sampled_from(["get_weather", "search", "run_query"])
json_value_st = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False) | text_st,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text_st, inner, max_size=3),
    max_leaves=8)
json_object_st = st.dictionaries(st.sampled_from(["a", "city", "q", "n\u00e9"]), json_value_st,
                                 max_size=3)
counts_st = st.integers(0, 100_000)


@st.composite
def chat_answers(draw: st.DrawFn) -> dict[str, Any]:
    choices = []
    for index in range(draw(st.integers(1, 3))):
        calls = [{"id": f"call_{index}_{position}", "type": "function",
                  "function": {"name": draw(names_st),
                               "arguments": orjson.dumps(draw(json_object_st)).decode()}}
                 for position in range(draw(st.integers(0, 2)))]
        message: dict[str, Any] = {
            "role": "assistant",
            "content": draw(st.none() | text_st) if calls else draw(text_st),
            "refusal": None if calls else draw(st.none() | st.none() | text_st)}
        if calls:
            message["tool_calls"] = calls
        if draw(st.booleans()):
            message["reasoning_content"] = draw(nonempty_text_st)
        logprobs = None
        if draw(st.integers(0, 4)) == 0:
            logprobs = {"content": [{"token": "a", "logprob": -0.5, "bytes": [97],
                                     "top_logprobs": []}], "refusal": None}
        choices.append({"index": index, "message": message, "logprobs": logprobs,
                        "finish_reason": "tool_calls" if calls else draw(
                            st.sampled_from(["stop", "length", "content_filter"]))})
    prompt, completion = draw(counts_st), draw(counts_st)
    answer: dict[str, Any] = {
        "id": "chatcmpl-stored", "object": "chat.completion", "created": 1_700_000_000,
        "model": "gpt-4o-mini", "choices": choices,
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion,
                  "prompt_tokens_details": {"cached_tokens": 0}}}
    if draw(st.booleans()):
        answer["system_fingerprint"] = "fp_stored"
        answer["service_tier"] = "default"
    return answer


CITATION = {"type": "char_location", "cited_text": "the sky", "document_index": 0,
            "document_title": None, "start_char_index": 0, "end_char_index": 7}


@st.composite
def anthropic_blocks(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["text", "text", "thinking", "redacted_thinking", "tool_use"]))
    if kind == "text":
        block: dict[str, Any] = {"type": "text", "text": draw(text_st)}
        if draw(st.booleans()):
            block["citations"] = draw(st.sampled_from([None, [CITATION], [CITATION, CITATION]]))
        return block
    if kind == "thinking":
        return {"type": "thinking", "thinking": draw(text_st),
                "signature": draw(st.sampled_from(["", "EqQBCkYIBRgCKkB+sig=="]))}
    if kind == "redacted_thinking":
        return {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"}
    return {"type": "tool_use", "id": f"toolu_{draw(st.integers(0, 99))}",
            "name": draw(names_st), "input": draw(json_object_st)}


@st.composite
def anthropic_answers(draw: st.DrawFn) -> dict[str, Any]:
    content = draw(st.lists(anthropic_blocks(), min_size=1, max_size=4))
    has_tool = any(block["type"] == "tool_use" for block in content)
    stop_reason = "tool_use" if has_tool else draw(
        st.sampled_from(["end_turn", "max_tokens", "stop_sequence"]))
    usage: dict[str, Any] = {"input_tokens": draw(counts_st), "output_tokens": draw(counts_st),
                             "cache_creation_input_tokens": draw(counts_st),
                             "cache_read_input_tokens": draw(counts_st)}
    if draw(st.booleans()):
        usage["service_tier"] = "standard"
    return {"id": "msg_stored", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5", "content": content, "stop_reason": stop_reason,
            "stop_sequence": "###" if stop_reason == "stop_sequence" else None,
            "usage": usage}


ANNOTATION = {"type": "url_citation", "start_index": 0, "end_index": 3, "title": "Example",
              "url": "https://example.com/"}


@st.composite
def responses_items(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["message", "message", "function_call", "reasoning"]))
    number = draw(st.integers(0, 999))
    if kind == "message":
        parts: list[dict[str, Any]] = [
            {"type": "output_text", "text": draw(text_st),
             "annotations": draw(st.sampled_from([[], [ANNOTATION]])), "logprobs": []}]
        if draw(st.integers(0, 4)) == 0:
            parts = [{"type": "refusal", "refusal": draw(nonempty_text_st)}]
        return {"id": f"msg_stored{number}", "type": "message", "status": "completed",
                "role": "assistant", "content": parts}
    if kind == "function_call":
        return {"id": f"fc_stored{number}", "type": "function_call", "status": "completed",
                "call_id": f"call_stored{number}", "name": draw(names_st),
                "arguments": orjson.dumps(draw(json_object_st)).decode()}
    return {"id": f"rs_stored{number}", "type": "reasoning",
            "summary": [{"type": "summary_text", "text": draw(text_st)}
                        for _ in range(draw(st.integers(0, 2)))]}


@st.composite
def responses_answers(draw: st.DrawFn) -> dict[str, Any]:
    response = response_shell("resp_stored", "gpt-4.1", {"model": "gpt-4.1", "input": "hi"},
                              1_700_000_000)
    response["status"] = "completed"
    response["output"] = draw(st.lists(responses_items(), min_size=1, max_size=3))
    response["usage"] = sdk_usage(responses_usage({"prompt_tokens": draw(counts_st),
                                                   "completion_tokens": draw(counts_st)}))
    return response


def sdk_usage(usage: Any) -> dict[str, Any]:
    """Responses usage as the current SDK's model requires it (cache_write_tokens too)."""
    usage["input_tokens_details"]["cache_write_tokens"] = 0
    return dict(usage)


ANSWERS: dict[str, Callable[[], st.SearchStrategy[dict[str, Any]]]] = {
    "openai": chat_answers, "anthropic": anthropic_answers, "responses": responses_answers}


# -- the round trip -----------------------------------------------------------------


@ROUND_TRIP
@given(answer=chat_answers(), points=st.lists(st.integers(0, 10**6), max_size=12))
def test_a_replayed_chat_stream_assembles_back_into_the_whole_answer(
        answer: dict[str, Any], points: list[int]) -> None:
    body = whole("openai", answer)
    ChatCompletion.model_validate(body)
    assert body["id"] == NEW_ID["openai"] and body["created"] == CREATED
    assert body["usage"] == answer["usage"] and body["choices"] == answer["choices"]
    events = stream("openai", answer)
    payloads = event_payloads(events)
    assert payloads[-1] == ("", "[DONE]")
    for _, chunk in payloads[:-1]:
        ChatCompletionChunk.model_validate(chunk)
        assert chunk["id"] == NEW_ID["openai"] and chunk["created"] == CREATED
    assert payloads[-2][1]["choices"] == [] and payloads[-2][1]["usage"] == answer["usage"]
    assert assembled("openai", cut(b"".join(events), points)) == body


@ROUND_TRIP
@given(answer=anthropic_answers(), points=st.lists(st.integers(0, 10**6), max_size=12))
def test_a_replayed_anthropic_stream_assembles_back_into_the_whole_message(
        answer: dict[str, Any], points: list[int]) -> None:
    body = whole("anthropic", answer)
    Message.model_validate(body)
    assert body == {**answer, "id": NEW_ID["anthropic"]}
    events = stream("anthropic", answer)
    payloads = event_payloads(events)
    for name, event in payloads:
        assert name == event["type"]
        ANTHROPIC_EVENT.validate_python(event)
    assert [name for name, _ in payloads][:1] == ["message_start"]
    assert [name for name, _ in payloads][-2:] == ["message_delta", "message_stop"]
    assert payloads[0][1]["message"]["id"] == NEW_ID["anthropic"]
    assert assembled("anthropic", cut(b"".join(events), points)) == body


@ROUND_TRIP
@given(answer=responses_answers(), points=st.lists(st.integers(0, 10**6), max_size=12))
def test_a_replayed_responses_stream_assembles_back_into_the_whole_response(
        answer: dict[str, Any], points: list[int]) -> None:
    body = whole("responses", answer)
    Response.model_validate(body)
    assert body["id"] == NEW_ID["responses"] and body["created_at"] == CREATED
    events = stream("responses", answer)
    payloads = event_payloads(events)
    for name, event in payloads:
        assert name == event["type"]
        RESPONSES_EVENT.validate_python(event)
    assert [event["sequence_number"] for _, event in payloads] == list(range(len(payloads)))
    names = [name for name, _ in payloads]
    assert names[:2] == ["response.created", "response.in_progress"]
    assert names[-1] == "response.completed"
    # Every event about an item names the item's new id.
    item_ids = {item["id"] for item in body["output"]}
    assert all(event["item_id"] in item_ids for _, event in payloads if "item_id" in event)
    assert assembled("responses", cut(b"".join(events), points)) == body


@ROUND_TRIP
@given(answer=responses_answers())
def test_a_replayed_response_gets_fresh_item_ids_but_keeps_its_call_ids(
        answer: dict[str, Any]) -> None:
    body = whole("responses", answer)
    assert len(body["output"]) == len(answer["output"])
    for stored, replayed in zip(answer["output"], body["output"], strict=True):
        assert replayed["id"] != stored["id"]
        assert replayed["id"].split("_")[0] == stored["id"].split("_")[0]
        assert {**replayed, "id": stored["id"]} == stored
    assert len({item["id"] for item in body["output"]}) == len(body["output"])
    again = orjson.loads(replay_whole("responses", answer, new_id="resp_other", created=1))
    assert {item["id"] for item in again["output"]}.isdisjoint(
        item["id"] for item in body["output"])


# -- read by the real client SDKs ---------------------------------------------------


@THROUGH_SDK
@given(answer=chat_answers())
def test_the_openai_sdk_accumulates_a_replayed_chat_stream_into_the_same_answer(
        answer: dict[str, Any]) -> None:
    client = openai.OpenAI(api_key="sk-test", base_url="http://replay.test/v1",
                           http_client=sse_transport(b"".join(stream("openai", answer))))
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for chunk in client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True):
        state.handle_chunk(chunk)
    final = state.current_completion_snapshot
    body = whole("openai", answer)
    assert final.id == body["id"] and final.usage is not None
    assert final.usage.total_tokens == body["usage"]["total_tokens"]
    assert len(final.choices) == len(body["choices"])
    for got, want in zip(final.choices, body["choices"], strict=True):
        message = want["message"]
        assert got.finish_reason == want["finish_reason"]
        assert got.message.content == message["content"]
        assert got.message.refusal == message["refusal"]
        assert [(call.id, call.function.name, call.function.arguments)
                for call in got.message.tool_calls or ()] == [
            (call["id"], call["function"]["name"], call["function"]["arguments"])
            for call in message.get("tool_calls", ())]


@THROUGH_SDK
@given(answer=anthropic_answers())
def test_the_anthropic_sdk_accumulates_a_replayed_stream_into_the_same_message(
        answer: dict[str, Any]) -> None:
    client = anthropic.Anthropic(api_key="sk-ant-test", base_url="http://replay.test",
                                 http_client=sse_transport(b"".join(stream("anthropic", answer))))
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=64,
                                messages=[{"role": "user", "content": "hi"}]) as events:
        final = events.get_final_message()
    body = whole("anthropic", answer)
    assert final.id == body["id"] and final.stop_reason == body["stop_reason"]
    assert final.usage.output_tokens == body["usage"]["output_tokens"]
    assert final.usage.input_tokens == body["usage"]["input_tokens"]
    assert [block.model_dump(exclude_none=True) for block in final.content] == [
        block.model_dump(exclude_none=True) for block in Message.model_validate(body).content]


@THROUGH_SDK
@given(answer=responses_answers())
def test_the_openai_sdk_accumulates_a_replayed_responses_stream_into_the_same_response(
        answer: dict[str, Any]) -> None:
    client = openai.OpenAI(api_key="sk-test", base_url="http://replay.test/v1",
                           http_client=sse_transport(b"".join(stream("responses", answer))))
    with client.responses.stream(model="gpt-4.1", input="hi") as events:
        final = events.get_final_response()
    body = whole("responses", answer)
    assert final.id == body["id"] and final.status == "completed"
    assert [item.model_dump(exclude_none=True) for item in final.output] == [
        Response.model_validate(body).output[index].model_dump(exclude_none=True)
        for index in range(len(body["output"]))]


# -- what a caller sees of usage ----------------------------------------------------


@ROUND_TRIP
@given(answer=chat_answers())
def test_a_chat_stream_without_include_usage_has_no_usage_chunk(answer: dict[str, Any]) -> None:
    events = stream("openai", answer, include_usage=False)
    payloads = event_payloads(events)
    assert all("usage" not in chunk and chunk["choices"] for _, chunk in payloads[:-1])
    result = assembled("openai", events)
    assert result is not None and result["usage"] is None
    assert result == {**whole("openai", answer), "usage": None}


def test_an_anthropic_stream_reports_input_usage_first_and_the_whole_usage_at_the_end() -> None:
    answer = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
              "content": [{"type": "text", "text": "Hello there"}], "stop_reason": "end_turn",
              "stop_sequence": None,
              "usage": {"input_tokens": 12, "output_tokens": 30,
                        "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4}}
    payloads = event_payloads(stream("anthropic", answer))
    start_usage = payloads[0][1]["message"]["usage"]
    assert start_usage["input_tokens"] == 12 and start_usage["cache_read_input_tokens"] == 4
    assert start_usage["output_tokens"] <= 1
    assert payloads[-2][1]["usage"] == answer["usage"]
    assert payloads[-2][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    texts = [event["delta"]["text"] for name, event in payloads if name == "content_block_delta"]
    assert "".join(texts) == "Hello there" and len(texts) > 1


def test_a_chat_answer_streams_its_text_in_a_few_pieces_and_its_tool_call_head_first() -> None:
    answer = chat_completion({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    chunks = [chunk for _, chunk in event_payloads(stream("openai", answer))[:-1]]
    texts = [chunk["choices"][0]["delta"].get("content") for chunk in chunks if chunk["choices"]]
    pieces = [text for text in texts if text]
    assert 2 <= len(pieces) <= 4 and "".join(pieces) == answer["choices"][0]["message"]["content"]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    tool_answer = chat_completion({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                   "tools": [{"type": "function",
                                              "function": {"name": "lookup"}}]})
    calls = [chunk["choices"][0]["delta"]["tool_calls"][0]
             for _, chunk in event_payloads(stream("openai", tool_answer))[:-1]
             if chunk["choices"] and "tool_calls" in chunk["choices"][0]["delta"]]
    stored = tool_answer["choices"][0]["message"]["tool_calls"][0]
    assert calls[0] == {"index": 0, "id": stored["id"], "type": "function",
                        "function": {"name": "lookup", "arguments": ""}}
    assert "".join(call["function"]["arguments"] for call in calls[1:]) == "{}"


# -- streams that must not be cached ------------------------------------------------


@ROUND_TRIP
@given(dialect=st.sampled_from(sorted(CACHEABLE_DIALECTS)), data=st.data())
def test_a_stream_cut_before_its_terminal_event_assembles_to_nothing(
        dialect: str, data: st.DataObject) -> None:
    events = stream(dialect, data.draw(ANSWERS[dialect]()))
    raw = b"".join(events)
    last_starts = len(raw) - len(events[-1])
    end = data.draw(st.integers(0, last_starts + 1))
    assert assembled(dialect, [raw[:end]]) is None


def test_an_openai_error_event_mid_stream_means_no_answer() -> None:
    answer = chat_completion({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    events = stream("openai", answer)
    error = sse_data({"error": {"message": "upstream died", "type": "server_error",
                                "param": None, "code": None}})
    assert assembled("openai", [*events[:3], error]) is None
    assert assembled("openai", [*events[:-1], error, SSE_DONE]) is None


def test_a_done_chat_stream_with_a_choice_never_finished_means_no_answer() -> None:
    chunks = chat_chunks({"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 2})
    unfinished = [chunk for chunk in chunks if not (
        chunk["choices"] and chunk["choices"][0]["index"] == 1
        and chunk["choices"][0]["finish_reason"])]
    raw = b"".join(sse_data(chunk) for chunk in unfinished) + SSE_DONE
    assert assembled("openai", [raw]) is None
    assert assembled("openai", [b"".join(sse_data(chunk) for chunk in chunks) + SSE_DONE])


def test_an_anthropic_error_event_means_no_answer() -> None:
    answer = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
              "content": [{"type": "text", "text": "Hello there"}], "stop_reason": "end_turn",
              "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 2}}
    events = stream("anthropic", answer)
    error = sse_event("error", {"type": "error", "error": {"type": "overloaded_error",
                                                           "message": "Overloaded"}})
    assert assembled("anthropic", [*events[:3], error]) is None
    assert assembled("anthropic", [*events[:-1], error, events[-1]]) is None
    assert assembled("anthropic", events) is not None


def test_anthropic_tool_input_that_is_not_json_means_no_answer() -> None:
    answer = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
              "content": [{"type": "tool_use", "id": "toolu_1", "name": "f",
                           "input": {"city": "Paris"}}],
              "stop_reason": "tool_use", "stop_sequence": None,
              "usage": {"input_tokens": 1, "output_tokens": 2}}
    events = [event for event in stream("anthropic", answer)
              if b'"partial_json":"{' not in event]  # the opening brace is lost
    assert assembled("anthropic", events) is None


def test_a_failed_or_incomplete_responses_stream_means_no_answer() -> None:
    encoder = ResponsesStreamEncoder("resp_f", "m", {"model": "m"})
    raw = encoder.feed(_hub_text_chunk("Hello")) + encoder.error(GatewayError(503, "down"))
    assert b"response.failed" in raw
    assert assembled("responses", [raw]) is None
    encoder = ResponsesStreamEncoder("resp_i", "m", {"model": "m"})
    raw = (encoder.feed(_hub_text_chunk("Hello")) + encoder.feed(_hub_finish("length"))
           + encoder.finish())
    assert b"response.incomplete" in raw
    assert assembled("responses", [raw]) is None
    answer = {**whole("responses", _a_response()), "status": "incomplete",
              "incomplete_details": {"reason": "max_output_tokens"}}
    replayed = stream("responses", answer)
    assert event_payloads(replayed)[-1][0] == "response.incomplete"
    assert assembled("responses", replayed) is None


def test_an_assembler_answers_the_same_when_asked_twice_and_ignores_late_bytes() -> None:
    for dialect in sorted(CACHEABLE_DIALECTS):
        assembler = new_assembler(dialect)
        for event in stream(dialect, data_answer(dialect)):
            assembler.feed(event)
        first = assembler.result()
        assembler.feed(b"data: {\"error\": {}}\n\n")
        assert first is not None and assembler.result() == first


# -- streams the gateway's own encoders write ---------------------------------------


def _hub_text_chunk(text: str) -> dict[str, Any]:
    return {"id": "chatcmpl-hub", "object": "chat.completion.chunk", "created": 1,
            "model": "m", "choices": [{"index": 0, "delta": {"content": text},
                                       "logprobs": None, "finish_reason": None}]}


def _hub_finish(reason: str) -> dict[str, Any]:
    return {"id": "chatcmpl-hub", "object": "chat.completion.chunk", "created": 1,
            "model": "m", "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                       "finish_reason": reason}]}


def _a_response() -> dict[str, Any]:
    response = response_shell("resp_1", "gpt-4.1", {"model": "gpt-4.1"}, 1)
    response["status"] = "completed"
    response["output"] = [{"id": "msg_1", "type": "message", "status": "completed",
                           "role": "assistant", "content": [
                               {"type": "output_text", "text": "Hi there", "annotations": [],
                                "logprobs": []}]}]
    response["usage"] = sdk_usage(responses_usage({"prompt_tokens": 3, "completion_tokens": 2}))
    return response


def data_answer(dialect: str) -> dict[str, Any]:
    if dialect == "openai":
        return chat_completion({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    if dialect == "anthropic":
        return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
                "content": [{"type": "text", "text": "Hello"}], "stop_reason": "end_turn",
                "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 2}}
    return _a_response()


TOOL_REQUEST = {"model": "m", "messages": [{"role": "user", "content": "weather in Paris"}],
                "tools": [{"type": "function", "function": {"name": "get_weather"}}],
                "stream_options": {"include_usage": True}}
TEXT_REQUEST = {"model": "m", "messages": [{"role": "user", "content": "say something"}],
                "stream_options": {"include_usage": True}}


def _upstream_openai_stream(request: dict[str, Any]) -> bytes:
    options = MockOptions(chunk_count=5, completion_tokens=9)
    return b"".join(sse_data(chunk) for chunk in chat_chunks(request, options)) + SSE_DONE


def _in_pieces(transform: Any, raw: bytes, size: int = 11) -> bytes:
    out = b"".join(transform.feed(raw[at:at + size]) for at in range(0, len(raw), size))
    return bytes(out + transform.close())


@pytest.mark.parametrize("request_body", [TEXT_REQUEST, TOOL_REQUEST], ids=["text", "tool"])
def test_an_anthropic_stream_from_the_gateway_encoder_assembles_to_its_message(
        request_body: dict[str, Any]) -> None:
    expected = chat_completion(request_body, MockOptions(chunk_count=5, completion_tokens=9))
    transform = AnthropicFromOpenAI(OpenAIStreamDecoder(include_usage=True),
                                    AnthropicStreamEncoder("m"))
    message = assembled("anthropic", [_in_pieces(transform, _upstream_openai_stream(
        request_body))])
    assert message is not None
    Message.model_validate(message)
    reply = expected["choices"][0]["message"]
    texts = [block["text"] for block in message["content"] if block["type"] == "text"]
    tools = [(block["id"], block["name"], block["input"]) for block in message["content"]
             if block["type"] == "tool_use"]
    assert "".join(texts) == (reply["content"] or "")
    assert tools == [(call["id"], call["function"]["name"],
                      orjson.loads(call["function"]["arguments"]))
                     for call in reply.get("tool_calls", ())]
    assert message["stop_reason"] == ("tool_use" if tools else "end_turn")
    assert message["usage"]["output_tokens"] == expected["usage"]["completion_tokens"]


@pytest.mark.parametrize("request_body", [TEXT_REQUEST, TOOL_REQUEST], ids=["text", "tool"])
def test_a_responses_stream_from_the_gateway_encoder_assembles_to_its_final_response(
        request_body: dict[str, Any]) -> None:
    finals: list[dict[str, Any]] = []
    transform = ResponsesFromOpenAI(OpenAIStreamDecoder(include_usage=True),
                                    ResponsesStreamEncoder("resp_gw", "m", {"model": "m"}),
                                    on_final=finals.append)
    response = assembled("responses", [_in_pieces(transform, _upstream_openai_stream(
        request_body))])
    assert response is not None and finals == [response]
    expected = chat_completion(request_body, MockOptions(chunk_count=5, completion_tokens=9))
    reply = expected["choices"][0]["message"]
    texts = [part["text"] for item in response["output"] if item["type"] == "message"
             for part in item["content"]]
    calls = [(item["call_id"], item["name"], item["arguments"]) for item in response["output"]
             if item["type"] == "function_call"]
    assert "".join(texts) == (reply["content"] or "")
    assert calls == [(call["id"], call["function"]["name"], call["function"]["arguments"])
                     for call in reply.get("tool_calls", ())]
    # and what the gateway wrote replays to a caller as the same response
    again = replay_stream("responses", response, new_id="resp_hit", created=5)
    assert assembled("responses", again) == refreshed("responses", response,
                                                      new_id="resp_hit", created=5)


def test_an_upstream_openai_stream_with_two_choices_assembles_to_the_whole_completion() -> None:
    request = {**TEXT_REQUEST, "n": 2}
    options = MockOptions(chunk_count=5, completion_tokens=9)
    azure_filter_results = sse_data({"choices": [], "created": 0, "id": "", "model": "",
                                     "object": "", "prompt_filter_results": []})
    completion = assembled("openai", [azure_filter_results, _upstream_openai_stream(request)])
    expected = chat_completion(request, options)
    assert completion is not None
    ChatCompletion.model_validate(completion)
    assert completion["id"].startswith("chatcmpl-") and completion["model"] == "m"
    assert completion["created"] > 0
    assert completion["choices"] == expected["choices"]
    assert completion["usage"] == expected["usage"]
    assert completion["system_fingerprint"] == expected["system_fingerprint"]


def test_an_anthropic_upstream_translated_to_chat_chunks_assembles_to_a_completion() -> None:
    frames: list[dict[str, Any]] = [
        {"type": "message_start", "message": {
            "id": "msg_up", "type": "message", "role": "assistant", "model": "claude",
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text",
                                                                      "text": ""}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "text_delta", "text": "Let me "}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "text_delta", "text": "check."}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {
            "type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}},
        {"type": "content_block_delta", "index": 1,
         "delta": {"type": "input_json_delta", "partial_json": '{"city": '}},
        {"type": "content_block_delta", "index": 1,
         "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'}},
        {"type": "content_block_stop", "index": 1},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
         "usage": {"output_tokens": 7}},
        {"type": "message_stop"}]
    raw = b"".join(sse_event(str(frame["type"]), frame) for frame in frames)
    # the upstream itself, read by the Anthropic assembler
    message = assembled("anthropic", [raw])
    assert message is not None and message["content"][1]["input"] == {"city": "Paris"}
    assert message["usage"] == {"input_tokens": 10, "output_tokens": 7}
    # and as the gateway relays it to an OpenAI caller
    transform = DecodingTransform(AnthropicStreamDecoder("claude", include_usage=True))
    completion = assembled("openai", [_in_pieces(transform, raw, size=9)])
    assert completion is not None
    ChatCompletion.model_validate(completion)
    reply = completion["choices"][0]
    assert reply["message"]["content"] == "Let me check."
    assert reply["message"]["tool_calls"] == [{"id": "toolu_1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    assert reply["finish_reason"] == "tool_calls"
    assert completion["usage"]["prompt_tokens"] == 10
    assert completion["usage"]["completion_tokens"] == 7


# -- the small print ----------------------------------------------------------------


def test_ids_and_dialects() -> None:
    assert CACHEABLE_DIALECTS == {"openai", "anthropic", "responses"}
    assert stream_ids("openai") == ("chatcmpl-", "call_")
    assert stream_ids("anthropic") == ("msg_", "toolu_")
    assert stream_ids("responses") == ("resp_", "fc_")
    for dialect in sorted(CACHEABLE_DIALECTS):
        made = {fresh_id(dialect) for _ in range(3)}
        assert len(made) == 3 and all(i.startswith(stream_ids(dialect)[0]) for i in made)
    for call in (lambda: new_assembler("gemini"), lambda: stream_ids("embeddings"),
                 lambda: replay_whole("gemini", {}, new_id="x", created=0)):
        with pytest.raises(ValueError, match="cacheable"):
            call()


def test_replay_never_changes_the_stored_answer() -> None:
    for dialect in sorted(CACHEABLE_DIALECTS):
        answer = data_answer(dialect)
        before = orjson.dumps(answer)
        replay_whole(dialect, answer, new_id=NEW_ID[dialect], created=CREATED)
        replay_stream(dialect, answer, new_id=NEW_ID[dialect], created=CREATED)
        assert orjson.dumps(answer) == before

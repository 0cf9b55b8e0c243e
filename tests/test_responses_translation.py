"""The Responses API dialect: translation to and from the hub shapes, the stream
encoder and decoder, the relay tap, and round trips as property tests."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smartflow.dialects.responses import (
    DIALECT,
    ResponsesFromOpenAI,
    ResponsesTap,
    error_event,
    usage_of_body,
    validate_responses,
)
from smartflow.gateway_error import GatewayError
from smartflow.http.errors import HTTPError
from smartflow.providers.base import ProviderError, Usage
from smartflow.providers.responses_inbound import (
    ResponsesStreamDecoder,
    ResponsesStreamEncoder,
    input_items_of,
    new_response_id,
    openai_request_to_responses,
    openai_response_to_responses,
    responses_request_to_openai,
    responses_to_openai_response,
)
from smartflow.providers.sse import SSEParser

# -- fixtures ---------------------------------------------------------------------

CODEX_TOOLS: list[dict[str, Any]] = [
    {"type": "function", "name": "exec_command", "description": "Run a command.",
     "strict": False, "parameters": {"type": "object", "properties": {
         "cmd": {"type": "string"}}, "required": ["cmd"]}},
    {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents.",
     "tools": [{"type": "function", "name": "spawn_agent", "description": "Spawn one.",
                "strict": False, "parameters": {"type": "object", "properties": {}}}]},
    {"type": "custom", "name": "apply_patch", "description": "Edit files.",
     "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}},
    {"type": "web_search", "external_web_access": False},
]


def codex_request(**extra: Any) -> dict[str, Any]:
    """A request shaped like the ones Codex CLI sends (seen on the wire)."""
    return {
        "model": "gpt-5-codex", "instructions": "", "stream": True, "store": False,
        "tools": CODEX_TOOLS, "tool_choice": "auto", "parallel_tool_calls": True,
        "reasoning": {"summary": "auto"}, "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "thread-1",
        "input": [
            {"type": "message", "role": "developer",
             "content": [{"type": "input_text", "text": "You are Codex."}]},
            {"type": "message", "role": "user",
             "content": [{"type": "input_text", "text": "fix it"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "xyz"},
            {"type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "Looking."}]},
            {"type": "function_call", "call_id": "c1", "name": "exec_command",
             "arguments": '{"cmd":"ls"}'},
            {"type": "function_call", "call_id": "c2", "name": "spawn_agent",
             "namespace": "multi_agent_v1", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "a.py"},
            {"type": "function_call_output", "call_id": "c2", "output": "spawned"},
            {"type": "custom_tool_call", "call_id": "c3", "name": "apply_patch",
             "input": "*** Begin Patch"},
            {"type": "custom_tool_call_output", "call_id": "c3", "output": "Done!"},
            {"type": "web_search_call", "id": "ws_1", "status": "completed",
             "action": {"type": "search", "query": "x"}},
            *extra.pop("more_input", []),
        ],
        **extra,
    }


def parse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    parser = SSEParser()
    events = parser.feed(raw) + parser.close()
    return [(event.event, orjson.loads(event.data)) for event in events]


# -- request: Responses -> hub ----------------------------------------------------


def test_a_string_input_is_one_user_message_item() -> None:
    assert input_items_of({"input": "hi"}) == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]
    assert input_items_of({"input": [{"role": "user", "content": "yo"}]}) == [
        {"type": "message", "role": "user", "content": "yo"}]
    assert input_items_of({"previous_response_id": "resp_1"}) == []


def test_a_codex_request_becomes_a_chat_request() -> None:
    hub = responses_request_to_openai(codex_request())
    assert [m["role"] for m in hub["messages"]] == [
        "developer", "user", "assistant", "tool", "tool", "assistant", "tool"]
    assistant = hub["messages"][2]
    assert assistant["content"] == "Looking."
    assert [(c["id"], c["function"]["name"]) for c in assistant["tool_calls"]] == [
        ("c1", "exec_command"), ("c2", "multi_agent_v1__spawn_agent")]
    assert hub["messages"][3] == {"role": "tool", "tool_call_id": "c1", "content": "a.py"}
    custom_call = hub["messages"][5]["tool_calls"][0]
    assert custom_call["function"] == {"name": "apply_patch",
                                       "arguments": '{"input":"*** Begin Patch"}'}
    names = [t["function"]["name"] for t in hub["tools"]]
    assert names == ["exec_command", "multi_agent_v1__spawn_agent", "apply_patch"]  # no web_search
    patch_tool = hub["tools"][2]["function"]
    assert patch_tool["parameters"]["required"] == ["input"]
    assert "start: /.+/" in patch_tool["description"]
    assert hub["tools"][0]["function"]["strict"] is False
    assert hub["tool_choice"] == "auto" and hub["parallel_tool_calls"] is True
    assert hub["stream"] is True and hub["stream_options"] == {"include_usage": True}
    for dropped in ("store", "include", "prompt_cache_key", "reasoning", "instructions"):
        assert dropped not in hub


def test_instructions_then_prior_items_then_the_input() -> None:
    prior: list[dict[str, Any]] = [{"type": "message", "role": "user", "content": "one"},
             {"type": "message", "role": "assistant",
              "content": [{"type": "output_text", "text": "two", "annotations": []}]}]
    hub = responses_request_to_openai({"model": "m", "instructions": "be brief", "input": "three",
                                       "previous_response_id": "resp_x"}, prior_items=prior)
    assert hub["messages"] == [{"role": "system", "content": "be brief"},
                               {"role": "user", "content": "one"},
                               {"role": "assistant", "content": "two"},
                               {"role": "user", "content": "three"}]


def test_sampling_format_and_reasoning_parameters_map() -> None:
    hub = responses_request_to_openai({
        "model": "m", "input": "x", "max_output_tokens": 50, "temperature": 0.2, "top_p": 0.9,
        "user": "u1", "metadata": {"a": "b"}, "reasoning": {"effort": "high"},
        "text": {"format": {"type": "json_schema", "name": "out", "strict": True,
                            "schema": {"type": "object"}}}})
    assert hub["max_tokens"] == 50 and hub["temperature"] == 0.2 and hub["top_p"] == 0.9
    assert hub["user"] == "u1" and "metadata" not in hub
    assert hub["reasoning_effort"] == "high"
    assert hub["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "out", "schema": {"type": "object"}, "strict": True}}
    assert "stream" not in hub


def test_images_and_files_become_chat_parts() -> None:
    hub = responses_request_to_openai({"model": "m", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "see"},
        {"type": "input_image", "image_url": "data:image/png;base64,AA", "detail": "low"},
        {"type": "input_file", "file_data": "data:application/pdf;base64,AA",
         "filename": "a.pdf"}]}]})
    assert hub["messages"][0]["content"] == [
        {"type": "text", "text": "see"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA", "detail": "low"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,AA",
                                  "filename": "a.pdf"}}]


@pytest.mark.parametrize("choice", [
    {"type": "web_search_preview"}, {"type": "file_search"},
    {"type": "mcp", "server_label": "x"}, "required",
    {"type": "allowed_tools", "mode": "required", "tools": [{"type": "web_search"}]}])
def test_forcing_a_hosted_tool_is_refused(choice: Any) -> None:
    with pytest.raises(GatewayError) as caught:
        responses_request_to_openai({"model": "m", "input": "x", "tool_choice": choice,
                                     "tools": [{"type": "web_search"}]})
    error = caught.value
    assert (error.status, error.code, error.param, error.type) == (
        400, "unsupported_hosted_tool", "tools", "invalid_request_error")


def test_hosted_tools_alone_are_dropped_with_their_auto_choice() -> None:
    hub = responses_request_to_openai({"model": "m", "input": "x", "tool_choice": "auto",
                                       "tools": [{"type": "web_search"}]})
    assert "tools" not in hub and "tool_choice" not in hub


def test_forced_and_allowed_tool_choices_map() -> None:
    body = codex_request(tool_choice={"type": "function", "name": "spawn_agent",
                                      "namespace": "multi_agent_v1"})
    assert responses_request_to_openai(body)["tool_choice"] == {
        "type": "function", "function": {"name": "multi_agent_v1__spawn_agent"}}
    body = codex_request(tool_choice={"type": "allowed_tools", "mode": "required", "tools": [
        {"type": "function", "name": "exec_command"}]})
    hub = responses_request_to_openai(body)
    assert [t["function"]["name"] for t in hub["tools"]] == ["exec_command"]
    assert hub["tool_choice"] == "required"


@pytest.mark.parametrize("body", [
    {"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]},
    {"model": "m", "input": [{"type": "message", "role": "robot", "content": "x"}]},
    {"model": "m", "input": [{"type": "function_call_output", "output": "x"}]},
    {"model": "m", "input": "x", "max_output_tokens": 0},
    {"model": "m", "input": "x", "tools": [{"type": "function"}]},
    {"model": "m", "input": [{"role": "user", "content": [{"type": "input_image",
                                                           "file_id": "f"}]}]},
])
def test_bad_requests_are_400s_naming_the_field(body: dict[str, Any]) -> None:
    with pytest.raises(ProviderError) as caught:
        responses_request_to_openai(body)
    assert caught.value.status == 400 and caught.value.param


# -- response: hub -> Responses ---------------------------------------------------


def test_a_completion_becomes_a_response_with_namespaced_and_custom_calls() -> None:
    request = codex_request(max_output_tokens=99, metadata={"k": "v"})
    completion = {"id": "x", "created": 5, "choices": [{"index": 0, "finish_reason": "tool_calls",
        "message": {"role": "assistant", "content": "ok", "reasoning_content": "hmm",
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {
                            "name": "multi_agent_v1__spawn_agent", "arguments": "{}"}},
                        {"id": "c2", "type": "function", "function": {
                            "name": "apply_patch", "arguments": '{"input":"PATCH"}'}}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14,
                  "prompt_tokens_details": {"cached_tokens": 6},
                  "completion_tokens_details": {"reasoning_tokens": 2}}}
    response = openai_response_to_responses(completion, response_id="resp_1", model="pub",
                                            request=request)
    assert (response["id"], response["object"], response["status"], response["model"]) == (
        "resp_1", "response", "completed", "pub")
    assert response["created_at"] == 5 and response["error"] is None
    kinds = [item["type"] for item in response["output"]]
    assert kinds == ["reasoning", "message", "function_call", "custom_tool_call"]
    message = response["output"][1]
    assert message["id"].startswith("msg_") and message["content"][0] == {
        "type": "output_text", "text": "ok", "annotations": [], "logprobs": []}
    call = response["output"][2]
    assert call["id"].startswith("fc_")
    assert (call["name"], call["namespace"], call["call_id"], call["arguments"]) == (
        "spawn_agent", "multi_agent_v1", "c1", "{}")
    assert response["output"][3]["input"] == "PATCH"
    assert response["usage"] == {
        "input_tokens": 10, "input_tokens_details": {"cached_tokens": 6}, "output_tokens": 4,
        "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 14}
    assert response["tools"] == CODEX_TOOLS and response["max_output_tokens"] == 99
    assert response["metadata"] == {"k": "v"} and response["store"] is False
    assert response["parallel_tool_calls"] is True and response["tool_choice"] == "auto"


def test_a_truncated_completion_is_an_incomplete_response() -> None:
    completion = {"choices": [{"index": 0, "finish_reason": "length",
                               "message": {"role": "assistant", "content": "part"}}]}
    response = openai_response_to_responses(completion, response_id="resp_2", model="m",
                                            request={"model": "m", "input": "x"})
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete"


def test_ids_are_long_and_prefixed() -> None:
    response_id = new_response_id()
    assert response_id.startswith("resp_") and len(response_id) >= 5 + 32
    assert response_id != new_response_id()


# -- streaming --------------------------------------------------------------------


def text_stream() -> list[dict[str, Any]]:
    return [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
            {"choices": [{"index": 0, "delta": {"content": "Hel"}}]},
            {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
            {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2,
                                      "total_tokens": 5}}]


def encode(chunks: list[dict[str, Any]], request: dict[str, Any]) -> tuple[bytes, Any]:
    encoder = ResponsesStreamEncoder("resp_s", "m", request)
    raw = b"".join(encoder.feed(chunk) for chunk in chunks) + encoder.finish()
    return raw, encoder.response


def test_a_text_stream_is_the_full_typed_event_sequence() -> None:
    raw, final = encode(text_stream(), {"model": "m", "input": "x"})
    events = parse_events(raw)
    assert [name for name, _ in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert all(name == data["type"] for name, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    done = events[6][1]
    assert (done["text"], done["output_index"], done["content_index"]) == ("Hello", 0, 0)
    completed = events[-1][1]["response"]
    assert completed == final and completed["status"] == "completed"
    assert completed["usage"]["input_tokens"] == 3 and completed["usage"]["output_tokens"] == 2
    assert completed["output"][0]["content"][0]["text"] == "Hello"


def test_an_error_mid_stream_is_an_error_event_then_response_failed() -> None:
    encoder = ResponsesStreamEncoder("resp_e", "m", {"model": "m"})
    raw = encoder.feed(text_stream()[1])
    raw += encoder.error(ProviderError(429, "slow down"))
    assert encoder.finish() == b""
    events = parse_events(raw)
    assert [name for name, _ in events][-2:] == ["error", "response.failed"]
    error = events[-2][1]
    assert (error["code"], error["message"], error["param"]) == (
        "rate_limit_exceeded", "slow down", None)
    failed = events[-1][1]["response"]
    assert failed["status"] == "failed" and failed["error"]["message"] == "slow down"
    assert encoder.response == failed
    with pytest.raises(ProviderError) as caught:
        decoder = ResponsesStreamDecoder()
        decoder.feed(raw)
        decoder.close()
    assert caught.value.status == 429


def test_the_decoder_reads_items_that_come_whole() -> None:
    item_call = {"type": "function_call", "id": "fc_1", "call_id": "c9", "name": "f",
                 "arguments": '{"a":1}', "status": "completed"}
    item_text = {"type": "message", "id": "msg_1", "role": "assistant",
                 "content": [{"type": "output_text", "text": "hi", "annotations": []}]}
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.output_item.done", {"output_index": 0, "item": item_text}),
        ("response.output_item.done", {"output_index": 1, "item": item_call}),
        ("response.completed", {"response": {"status": "completed", "output": [],
                                             "usage": {"input_tokens": 1, "output_tokens": 2}}})]
    raw = b"".join(b"event: " + kind.encode() + b"\ndata: "
                   + orjson.dumps({"type": kind, **data}) + b"\n\n" for kind, data in events)
    decoder = ResponsesStreamDecoder()
    chunks = decoder.feed(raw) + decoder.close()
    text, calls, _ = collect(chunks)
    assert text == "hi" and calls == [("c9", "f", '{"a":1}')]
    assert decoder.finish_reason == "tool_calls" and decoder.usage == Usage(1, 2, 0)


# -- the dialect ------------------------------------------------------------------


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "x"}, "model"),
    ({"model": "m"}, "input"),
    ({"model": "m", "input": 3}, "input"),
    ({"model": "m", "input": ["x"]}, "input"),
    ({"model": "m", "input": "x", "stream": "yes"}, "stream"),
    ({"model": "m", "input": "x", "tools": [{"name": "f"}]}, "tools"),
    ({"model": "m", "input": "x", "tools": {}}, "tools"),
    ({"model": "m", "previous_response_id": 5}, "previous_response_id"),
])
def test_validation_refuses_bad_requests(body: dict[str, Any], param: str) -> None:
    with pytest.raises(HTTPError) as caught:
        validate_responses(body)
    assert caught.value.status == 400 and caught.value.param == param


def test_validation_accepts_codex_and_continuations() -> None:
    facts = validate_responses(codex_request())
    assert (facts.model, facts.is_stream, facts.wants_usage) == ("gpt-5-codex", True, True)
    assert not validate_responses({"model": "m", "previous_response_id": "resp_1"}).is_stream


def test_usage_of_a_whole_response_body() -> None:
    body = orjson.dumps({"id": "resp_1", "output": [{"type": "message", "content": [
        {"type": "output_text", "text": '{"usage": {"input_tokens": 999}}'}]}],
        "usage": {"input_tokens": 7, "input_tokens_details": {"cached_tokens": 3},
                  "output_tokens": 2, "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": 9}, "user": None, "metadata": {}})
    assert usage_of_body(body) == Usage(7, 2, 3)
    assert DIALECT.usage_of_body(b'{"error": {}}') is None


def test_the_dialect_error_renderers() -> None:
    error = GatewayError(500, "boom")
    name, data = parse_events(error_event(error))[0]
    assert name == "error" and data["type"] == "error" and data["message"] == "boom"
    assert data["code"] == "server_error"
    assert orjson.loads(DIALECT.error_body(GatewayError(404, "nope")))["error"]["message"] == (
        "nope")
    assert DIALECT.name == "responses"


def test_the_tap_reads_a_failed_stream_and_reports_it_once() -> None:
    encoder = ResponsesStreamEncoder("resp_f", "m", {"model": "m"})
    raw = encoder.feed(text_stream()[1]) + encoder.error(ProviderError(503, "down"))
    finals: list[dict[str, Any]] = []
    tap = ResponsesTap(on_final=finals.append)
    tap.observe(raw)
    outcome = tap.outcome()
    assert outcome.error is not None and outcome.error.message == "down"
    assert len(finals) == 1 and finals[0]["status"] == "failed"


def test_the_transform_re_encodes_a_decoded_stream_and_reports_the_final_response() -> None:
    raw, _ = encode(text_stream(), {"model": "m", "input": "x"})
    finals: list[dict[str, Any]] = []
    transform = ResponsesFromOpenAI(ResponsesStreamDecoder("m"),
                                    ResponsesStreamEncoder("resp_t", "m", {"model": "m"}),
                                    on_final=finals.append)
    out = b"".join(transform.feed(raw[i:i + 7]) for i in range(0, len(raw), 7))
    out += transform.close()
    tap = ResponsesTap(capture_text=True)
    tap.observe(out)
    assert tap.outcome().text == "Hello" and tap.outcome().usage == Usage(3, 2, 0)
    assert len(finals) == 1 and finals[0]["id"] == "resp_t"
    outcome = transform.outcome()
    assert outcome.usage == Usage(3, 2, 0) and outcome.finish_reason == "stop"
    assert outcome.approx_text_chars == 5


# -- property tests ---------------------------------------------------------------

names_st = st.sampled_from(["get_weather", "search", "ns__act", "apply_patch", "run"])
text_st = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)),
                  max_size=12)
json_args_st = st.dictionaries(st.sampled_from(["a", "b", "q"]),
                               st.one_of(st.integers(-10**9, 10**9), text_st), max_size=2).map(
    lambda value: orjson.dumps(value).decode())


@st.composite
def hub_requests(draw: st.DrawFn) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": draw(st.sampled_from(["system", "developer"])),
                         "content": draw(text_st)})
    call_number = 0
    for _ in range(draw(st.integers(1, 3))):
        messages.append({"role": "user", "content": draw(text_st)})
        calls = []
        for _ in range(draw(st.integers(0, 2))):
            call_number += 1
            calls.append({"id": f"call_{call_number}", "type": "function",
                          "function": {"name": draw(names_st), "arguments": draw(json_args_st)}})
        content = draw(st.one_of(st.none(), text_st.filter(bool))) if calls else draw(text_st)
        assistant: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            assistant["tool_calls"] = calls
        messages.append(assistant)
        for call in calls:
            messages.append({"role": "tool", "tool_call_id": call["id"],
                             "content": draw(text_st)})
    request: dict[str, Any] = {"model": "m", "messages": messages}
    tool_names = draw(st.lists(names_st, max_size=3, unique=True))
    if tool_names:
        request["tools"] = [{"type": "function", "function": {
            "name": name, "description": f"the {name} tool",
            "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}}}
            for name in tool_names]
        request["tool_choice"] = draw(st.sampled_from(
            ["auto", "none", "required",
             {"type": "function", "function": {"name": tool_names[0]}}]))
    if draw(st.booleans()):
        request["max_tokens"] = draw(st.integers(1, 4096))
    if draw(st.booleans()):
        request["temperature"] = draw(st.floats(0, 2))
    return request


@settings(max_examples=150, deadline=None)
@given(hub_requests())
def test_a_hub_request_survives_the_trip_through_responses(hub: dict[str, Any]) -> None:
    back = responses_request_to_openai(openai_request_to_responses(hub))
    assert back["messages"] == hub["messages"]
    for name in ("tools", "tool_choice", "max_tokens", "temperature", "model"):
        assert back.get(name) == hub.get(name)


@st.composite
def hub_completions(draw: st.DrawFn) -> dict[str, Any]:
    calls = [{"id": f"call_{i}", "type": "function",
              "function": {"name": draw(names_st), "arguments": draw(json_args_st)}}
             for i in range(draw(st.integers(0, 3)))]
    text = draw(st.one_of(st.none(), text_st.filter(bool)))
    finish = "tool_calls" if calls else draw(st.sampled_from(["stop", "length"]))
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = calls
    prompt, completion, cached = draw(st.integers(0, 10**6)), draw(st.integers(0, 10**5)), 0
    cached = draw(st.integers(0, prompt))
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": finish,
                         "logprobs": None}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion,
                      "prompt_tokens_details": {"cached_tokens": cached}}}


@settings(max_examples=150, deadline=None)
@given(hub_completions())
def test_a_hub_completion_survives_the_trip_through_responses(completion: dict[str, Any]) -> None:
    response = openai_response_to_responses(completion, response_id="resp_p", model="m",
                                            request={"model": "m", "input": "x"})
    back = responses_to_openai_response(response)
    assert back["choices"][0]["message"] == completion["choices"][0]["message"]
    assert back["choices"][0]["finish_reason"] == completion["choices"][0]["finish_reason"]
    assert back["usage"] == completion["usage"]


# Streams: a request whose tools cover plain, namespaced and custom calls.
STREAM_REQUEST: dict[str, Any] = {"model": "m", "input": "x", "tools": [
    {"type": "function", "name": "get_weather", "parameters": {}},
    {"type": "namespace", "name": "ns", "description": "n", "tools": [
        {"type": "function", "name": "act", "parameters": {}}]},
    {"type": "custom", "name": "apply_patch"}]}
stream_names_st = st.sampled_from(["get_weather", "ns__act", "apply_patch"])


def split_fragments(draw: st.DrawFn, text: str) -> list[str]:
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=3)))
    bounds = [0, *[c for c in cuts if c < len(text)], len(text)]
    return [text[a:b] for a, b in pairwise(bounds) if b > a]


@st.composite
def hub_streams(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Chunk streams: reasoning, text and tool calls, their fragments interleaved."""
    steps: list[tuple[str, Any]] = []
    for piece in draw(st.lists(text_st.filter(bool), max_size=2)):
        steps.append(("reasoning", piece))
    for piece in draw(st.lists(text_st.filter(bool), max_size=4)):
        steps.append(("content", piece))
    calls: list[list[dict[str, Any]]] = []
    for number in range(draw(st.integers(0, 3))):
        name = draw(stream_names_st)
        arguments = (orjson.dumps({"input": draw(text_st)}).decode() if name == "apply_patch"
                     else draw(json_args_st))
        fragments = split_fragments(draw, arguments)
        deltas = [{"index": number, "id": f"call_{number}", "type": "function",
                   "function": {"name": name, "arguments": fragments[0]}}]
        deltas += [{"index": number, "function": {"arguments": f}} for f in fragments[1:]]
        calls.append(deltas)
    # interleave: a call's deltas keep their order, calls and text mix
    pending = [list(deltas) for deltas in calls]
    tail: list[tuple[str, Any]] = []
    while any(pending):
        live = [p for p in pending if p]
        tail.append(("call", draw(st.sampled_from(live)).pop(0)))
    mixed = draw(st.permutations(steps))
    position = draw(st.integers(0, len(mixed)))
    steps = [*mixed[:position], *tail, *mixed[position:]]
    chunks: list[dict[str, Any]] = [{"choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
    for kind, value in steps:
        delta = ({"tool_calls": [value]} if kind == "call"
                 else {"reasoning_content": value} if kind == "reasoning" else {"content": value})
        chunks.append({"choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    finish = "tool_calls" if calls else draw(st.sampled_from(["stop", "length"]))
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    prompt, completion = draw(st.integers(0, 10**5)), draw(st.integers(0, 10**4))
    chunks.append({"choices": [], "usage": {
        "prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": draw(st.integers(0, prompt))}}})
    return chunks


def collect(chunks: list[dict[str, Any]]) -> tuple[str, list[tuple[str, str, str]], str]:
    """(text, tool calls in order of first appearance as (id, name, arguments), reasoning)."""
    text: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, list[str]] = {}
    for chunk in chunks:
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text.append(delta.get("content") or "")
            reasoning.append(delta.get("reasoning_content") or "")
            for call in delta.get("tool_calls") or ():
                entry = calls.setdefault(call["index"], ["", "", ""])
                function = call.get("function") or {}
                entry[0] += call.get("id") or ""
                entry[1] += function.get("name") or ""
                entry[2] += function.get("arguments") or ""
    return ("".join(text), [(c[0], c[1], c[2]) for c in calls.values()], "".join(reasoning))


def expected_of(chunks: list[dict[str, Any]]) -> tuple[Any, ...]:
    text, calls, reasoning = collect(chunks)
    finish = next(c["choices"][0]["finish_reason"] for c in reversed(chunks) if c["choices"])
    usage = chunks[-1]["usage"]
    return (text, [(i, n, orjson.loads(a)) for i, n, a in calls], reasoning, finish,
            Usage(usage["prompt_tokens"], usage["completion_tokens"],
                  usage["prompt_tokens_details"]["cached_tokens"]))


def decode(pieces: list[bytes]) -> tuple[Any, ...]:
    decoder = ResponsesStreamDecoder("m")
    chunks: list[dict[str, Any]] = []
    for piece in pieces:
        chunks += decoder.feed(piece)
    chunks += decoder.close()
    text, calls, reasoning = collect(chunks)
    assert decoder.usage is not None and chunks[-1]["usage"] is not None
    return (text, [(i, n, orjson.loads(a)) for i, n, a in calls], reasoning,
            decoder.finish_reason, decoder.usage)


def tap_outcome(pieces: list[bytes]) -> tuple[Any, ...]:
    finals: list[dict[str, Any]] = []
    tap = ResponsesTap(capture_text=True, on_final=finals.append)
    for piece in pieces:
        tap.observe(piece)
    outcome = tap.outcome()
    assert len(finals) == 1
    return outcome.text, outcome.finish_reason, outcome.usage, finals[0]


def check_well_formed(raw: bytes) -> None:
    events = parse_events(raw)
    names = [name for name, _ in events]
    assert names[:2] == ["response.created", "response.in_progress"]
    assert names[-1] in ("response.completed", "response.incomplete")
    assert names.count(names[-1]) == 1
    sequence = [data["sequence_number"] for _, data in events]
    assert sequence == list(range(len(events)))
    open_items: dict[int, str] = {}
    closed: set[int] = set()
    for name, data in events[2:-1]:
        index = data["output_index"]
        if name == "response.output_item.added":
            assert index not in open_items and index not in closed
            open_items[index] = data["item"]["id"]
        elif name == "response.output_item.done":
            assert open_items.pop(index) == data["item"]["id"]
            closed.add(index)
        else:  # every delta, part and done event sits inside its item's added/done pair
            assert open_items.get(index) == data["item_id"], name
    assert not open_items
    final = events[-1][1]["response"]
    done = sorted((data["output_index"], data["item"]) for name, data in events
                  if name == "response.output_item.done")
    assert final["output"] == [item for _, item in done]  # in output_index order


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hub_streams(), st.data())
def test_a_stream_survives_encoding_splitting_and_decoding(chunks: list[dict[str, Any]],
                                                           data: st.DataObject) -> None:
    raw, final = encode(chunks, STREAM_REQUEST)
    check_well_formed(raw)
    expected = expected_of(chunks)
    byte_by_byte = [raw[i:i + 1] for i in range(len(raw))]  # a split at every boundary at once
    cuts = sorted(data.draw(st.sets(st.integers(1, len(raw) - 1), max_size=12)))
    bounds = [0, *cuts, len(raw)]
    random_splits = [raw[a:b] for a, b in pairwise(bounds)]
    for pieces in ([raw], byte_by_byte, random_splits):
        assert decode(pieces) == expected
        text, finish, usage, tapped_final = tap_outcome(pieces)
        assert (text, finish, usage) == (expected[0], expected[3], expected[4])
        assert tapped_final == final
    by_name = {item.get("namespace", "") + item["name"]: item for item in final["output"]
               if item["type"] in ("function_call", "custom_tool_call")}
    if "nsact" in by_name:
        assert by_name["nsact"]["type"] == "function_call"
    if "apply_patch" in by_name:
        assert by_name["apply_patch"]["type"] == "custom_tool_call"


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hub_streams())
def test_every_single_split_point_decodes_the_same(chunks: list[dict[str, Any]]) -> None:
    raw, _ = encode(chunks, STREAM_REQUEST)
    expected = expected_of(chunks)
    for cut in range(len(raw) + 1):
        pieces = [raw[:cut], raw[cut:]]
        assert decode(pieces) == expected
        assert tap_outcome(pieces)[:3] == (expected[0], expected[3], expected[4])

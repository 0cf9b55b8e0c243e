"""The cache's keys, L1 bounds and per-request controls (no I/O)."""

from __future__ import annotations

import pytest

from smartflow.cache.controls import read_controls
from smartflow.cache.keys import identify
from smartflow.cache.l1 import LruCache
from smartflow.gateway_error import GatewayError
from smartflow.http.request import Request


def chat(text: str, **extra: object) -> dict:
    return {"model": "gpt", "messages": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": text}], **extra}


def ident(body: dict, dialect: str = "openai", operation: str = "chat", scope: str = "k|default"):
    return identify(dialect, operation, "gpt", scope, body, max_temperature=0.7)


def test_stream_and_delivery_fields_share_the_exact_key() -> None:
    plain = ident(chat("hi"))
    assert ident(chat("hi", stream=True, stream_options={"include_usage": True})).exact == plain.exact
    assert ident(chat("hi", user="u1", metadata={"a": "b"})).exact == plain.exact


@pytest.mark.parametrize("change", [
    {"temperature": 0.2}, {"top_p": 0.5}, {"max_tokens": 10}, {"seed": 3},
    {"response_format": {"type": "json_object"}}, {"stop": ["\n"]},
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
])
def test_every_answer_changing_parameter_changes_the_exact_key(change: dict) -> None:
    assert ident(chat("hi", **change)).exact != ident(chat("hi")).exact


def test_scope_dialect_and_model_are_part_of_the_key() -> None:
    base = ident(chat("hi"))
    assert ident(chat("hi"), scope="k2|default").exact != base.exact
    assert ident(chat("hi"), scope="k|team-a").exact != base.exact
    other_model = identify("openai", "chat", "gpt-other", "k|default", chat("hi"),
                           max_temperature=0.7)
    assert other_model.exact != base.exact


def test_semantic_context_ignores_only_the_last_user_turns_text() -> None:
    a, b = ident(chat("How do I reset my password?")), ident(chat("password reset steps?"))
    assert a.context == b.context and a.exact != b.exact
    assert a.prompt == "How do I reset my password?"
    other_system = chat("How do I reset my password?")
    other_system["messages"][0]["content"] = "Answer in French."
    assert ident(other_system).context != a.context
    assert ident(chat("How do I reset my password?", temperature=0.1)).context != a.context


def test_agent_turns_many_choices_and_hot_temperatures_are_exact_only() -> None:
    tool_turn = chat("x")
    tool_turn["messages"].append({"role": "tool", "tool_call_id": "c1", "content": "42"})
    assert ident(tool_turn).prompt is None and ident(tool_turn).semantic_refusal == "agent turn"
    assert ident(chat("x", n=2)).prompt is None
    assert ident(chat("x", temperature=1.2)).semantic_refusal == "temperature"
    assert ident(chat("x", temperature=0.5)).prompt == "x"
    anthropic = {"model": "c", "max_tokens": 5, "messages": [
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                      "content": "ok"}]}]}
    assert ident(anthropic, "anthropic", "messages").semantic_refusal == "agent turn"
    image = chat("x")
    image["messages"][-1]["content"] = [{"type": "image_url", "image_url": {"url": "u"}}]
    assert ident(image).prompt is None


def test_responses_input_forms() -> None:
    text = ident({"model": "gpt", "input": "What is DNS?"}, "responses", "responses")
    assert text.prompt == "What is DNS?"
    items = ident({"model": "gpt", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "What is DNS?"}]}]},
        "responses", "responses")
    assert items.prompt == "What is DNS?"
    loop = ident({"model": "gpt", "input": [
        {"type": "function_call_output", "call_id": "c", "output": "1"}]}, "responses",
        "responses")
    assert loop.prompt is None


def test_l1_is_bounded_by_entries_bytes_and_time() -> None:
    now = [0.0]
    cache: LruCache[str] = LruCache(3, 100, clock=lambda: now[0])
    for name in "abcd":
        cache.put(name, name, 10, 60)
    assert len(cache) == 3 and cache.get("a") is None and cache.get("d") == "d"
    cache.put("big", "big", 90, 60)
    assert cache.size_bytes <= 100 and cache.get("big") == "big"
    cache.put("huge", "huge", 101, 60)
    assert cache.get("huge") is None
    now[0] = 61
    assert cache.get("big") is None and cache.size_bytes <= 100


def request_with(*headers: tuple[str, str]) -> Request:
    return Request("POST", "/v1/chat/completions", b"",
                   [(k.lower().encode(), v.encode()) for k, v in headers], None, "1.1")


def test_controls() -> None:
    assert read_controls(request_with()).read is True
    controls = read_controls(request_with(("cache-control", "no-cache")))
    assert (controls.read, controls.write) == (False, True)
    controls = read_controls(request_with(("Cache-Control", "no-store")))
    assert (controls.read, controls.write) == (True, False)
    controls = read_controls(request_with(("x-smartflow-cache", "skip")))
    assert (controls.read, controls.write) == (False, False)
    controls = read_controls(request_with(("x-smartflow-cache-ttl", "30"),
                                          ("x-smartflow-cache-namespace", "team-a"),
                                          ("x-smartflow-cache-threshold", "0.97")))
    assert (controls.ttl_s, controls.namespace, controls.threshold) == (30.0, "team-a", 0.97)
    for bad in [("x-smartflow-cache-ttl", "-1"), ("x-smartflow-cache-ttl", "soon"),
                ("x-smartflow-cache-threshold", "2"), ("x-smartflow-cache-namespace", "a b"),
                ("x-smartflow-cache", "maybe")]:
        with pytest.raises(GatewayError) as caught:
            read_controls(request_with(bad))
        assert caught.value.status == 400

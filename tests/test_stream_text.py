"""Reading a stream's text deltas out of its SSE bytes, for the output guardrails.

``text_deltas`` must give exactly the text that decoding the events one by
one gives (``EventText.text_of``), or None so that the events are decoded:
never less text than the caller will see.
"""

from __future__ import annotations

import json
import random

import orjson
import pytest

from smartflow.dialects.stream_text import escaped_text, text_deltas, unescape
from smartflow.policy.sse_text import EventText, split_any_framing, split_events


def chat(content: object, *, spaced: bool = False, role: bool = False) -> bytes:
    delta: dict[str, object] = {"role": "assistant"} if role else {}
    delta["content"] = content
    chunk = {"id": "c1", "object": "chat.completion.chunk", "model": "m",
             "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    # Spaced as Python's json module writes it, which some servers use.
    body = (json.dumps(chunk, ensure_ascii=False).encode() if spaced
            else orjson.dumps(chunk))
    return b"data: " + body + b"\n\n"


def decoded(dialect: str, events: bytes) -> str:
    codec = EventText(dialect)
    return "".join(codec.text_of(event) or "" for event in split_events(events))


@pytest.mark.parametrize("spaced", [False, True])
def test_chat_text_is_the_text_decoding_gives(spaced: bool) -> None:
    pieces = ["Hello", ' "quoted" ', "line\nbreak\t", "caf\u00e9 \u2603 \U0001f600", "back\\slash",
              "", "</script>", 'say \\"content\\":\\"x\\"']
    events = (chat(pieces[0], spaced=spaced, role=True)
              + b"".join(chat(p, spaced=spaced) for p in pieces[1:])
              + b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":3}}\n\n'
              + b"data: [DONE]\n\n")
    assert text_deltas("openai", "chat", events) == "".join(pieces)
    assert decoded("openai", events) == "".join(pieces)


def test_a_text_key_in_another_layout_sends_the_events_to_be_decoded() -> None:
    tool_call = (b'data: {"choices":[{"index":0,"delta":{"content":null,"tool_calls":[]}}]}'
                 b"\n\n")
    spaced_key = b'data: {"choices":[{"index":0,"delta":{"content" : "hidden"}}]}\n\n'
    bad_escape = b'data: {"choices":[{"index":0,"delta":{"content":"\\q"}}]}\n\n'
    for odd in (tool_call, spaced_key, bad_escape):
        assert text_deltas("openai", "chat", chat("a") + odd + chat("b")) is None
    # What the caller then does sees the spaced one's text.
    assert decoded("openai", chat("a") + spaced_key) == "ahidden"


def test_text_quoting_a_key_is_text() -> None:
    tricky = 'he wrote "content": "x" and "text_delta"'
    assert text_deltas("openai", "chat", chat(tricky)) == tricky


def test_completions_and_anthropic_and_the_rest() -> None:
    completions = b"".join(
        b"data: " + orjson.dumps({"object": "text_completion",
                                  "choices": [{"text": t, "index": 0}]}) + b"\n\n"
        for t in ("Once", " upon"))
    assert text_deltas("openai", "completions", completions) == "Once upon"
    anthropic = (
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"text","text":""}}\n\n'
        + b"".join(b"event: content_block_delta\ndata: " + orjson.dumps(
            {"type": "content_block_delta", "index": 0,
             "delta": {"type": "text_delta", "text": t}}) + b"\n\n"
            for t in ("Bon", "jour \u00e9")))
    assert text_deltas("anthropic", "messages", anthropic) == "Bonjour \u00e9"
    assert decoded("anthropic", anthropic) == "Bonjour \u00e9"
    assert text_deltas("gemini", "generate", b'data: {"candidates":[]}\n\n') is None
    assert text_deltas("responses", "responses", b"data: {}\n\n") is None


def test_split_events_finds_the_boundaries_of_any_framing() -> None:
    rng = random.Random(7)
    parts = [b"data: x", b"\n", b"\n\n", b"\n\n\n", b"\r\n", b"\r", b": ping", b"{}"]
    for _ in range(3000):
        data = b"".join(rng.choice(parts) for _ in range(rng.randint(0, 12)))
        assert split_events(data) == split_any_framing(data), data


def test_the_audit_reads_responses_and_gemini_streams_as_decoding_does() -> None:
    # What the audit record keeps of a streamed answer: the same text the
    # events decode to, for the Responses and Gemini ingresses too.
    pieces = ["Hello", ' "quoted" ', "line\nbreak", "caf\u00e9 \U0001f600", "back\\slash"]
    full = "".join(pieces)

    def responses_event(kind: str, data: dict) -> bytes:
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"

    responses = b"".join([
        responses_event("response.created", {"response": {"id": "r1", "text": {"format": {
            "type": "text"}}, "output": []}}),
        *(responses_event("response.output_text.delta", {
            "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": piece,
            "logprobs": [], "sequence_number": i}) for i, piece in enumerate(pieces)),
        responses_event("response.output_text.done", {"item_id": "msg_1", "text": full}),
        responses_event("response.completed", {"response": {"id": "r1", "output": [{
            "type": "message", "content": [{"type": "output_text", "text": full}]}]}}),
    ])
    assert unescape(escaped_text("responses", "responses", responses)) == full
    assert decoded("responses", responses) == full

    frames = [{"candidates": [{"content": {"parts": [{"text": piece}], "role": "model"},
                               "index": 0}]} for piece in pieces]
    frames[-1]["usageMetadata"] = {"promptTokenCount": 3, "candidatesTokenCount": 5}
    sse = b"".join(b"data: " + orjson.dumps(frame) + b"\r\n\r\n" for frame in frames)
    assert unescape(escaped_text("gemini", "generate", sse)) == full
    assert decoded("gemini", sse) == full
    # Without alt=sse Gemini streams one JSON array.
    assert unescape(escaped_text("gemini", "generate", orjson.dumps(frames))) == full

"""The SSE relay: bytes unchanged, tap beside the path, keep-alives, timeouts, cancellation.

Sans-IO parts are fed bytes; the async relay is driven with in-memory
sources (a real upstream through the gateway is in test_proxy_relay_e2e.py).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smartflow.dialects.anthropic import AnthropicTap
from smartflow.dialects.base import StreamOutcome
from smartflow.dialects.openai import DecodingTransform, OpenAITap, find_usage_object
from smartflow.dialects.openai import error_event as openai_error_event
from smartflow.dialects.sse_events import TAIL_EVENTS, last_events
from smartflow.http.client import RemoteProtocolError
from smartflow.providers.base import Usage
from smartflow.providers.openai import OpenAIStreamDecoder
from smartflow.proxy.relay import SSE_KEEPALIVE, EventFramer, PassthroughTransform, relay


def chunk_event(content: str | None, finish: str | None = None, usage: dict | None = None,
                choices: bool = True) -> bytes:
    obj: dict = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                 "model": "gpt-4o-mini",
                 "choices": [{"index": 0, "delta": {"content": content} if content else {},
                              "finish_reason": finish}] if choices else []}
    if usage is not None:
        obj["usage"] = usage
    return b"data: " + orjson.dumps(obj) + b"\n\n"


USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18,
         "prompt_tokens_details": {"cached_tokens": 3}}
STREAM = [chunk_event("Hello"), chunk_event(" world"), chunk_event(None, "stop"),
          chunk_event(None, usage=USAGE, choices=False), b"data: [DONE]\n\n"]
BODY = b"".join(STREAM)


# -- sans-IO -----------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(BODY)), max_size=12),
       st.booleans())
def test_the_framer_never_changes_bytes_and_only_cuts_between_events(cuts: list[int],
                                                                    crlf: bool) -> None:
    body = BODY.replace(b"\n", b"\r\n") if crlf else BODY
    points = sorted({min(c, len(body)) for c in cuts} | {0, len(body)})
    framer = EventFramer()
    out = []
    for start, end in itertools.pairwise(points):
        piece = framer.push(body[start:end])
        if piece:
            assert piece.endswith(b"\r\n\r\n" if crlf else b"\n\n")
            out.append(piece)
    out.append(framer.flush())
    assert b"".join(out) == body


def test_a_chunk_ending_on_an_event_boundary_passes_as_the_same_object() -> None:
    framer = EventFramer()
    assert framer.push(STREAM[0]) is STREAM[0]


def test_the_openai_tap_reads_usage_and_finish_reason_from_the_end() -> None:
    tap = OpenAITap()
    for event in STREAM:
        tap.observe(event)
    outcome = tap.outcome()
    assert outcome.usage == Usage(11, 7, 3)
    assert outcome.finish_reason == "stop"
    assert outcome.text is None


@pytest.mark.parametrize("crlf", [False, True])
def test_the_openai_tap_reads_the_end_of_a_long_stream(crlf: bool) -> None:
    """Only the tail's last events are split out; a long answer, in LF or
    CRLF framing, still yields its usage and finish reason."""
    events = [chunk_event(f"word {i} ") for i in range(300)] + STREAM[2:]
    if crlf:
        events = [e.replace(b"\n", b"\r\n") for e in events]
    tap = OpenAITap(capture_text=True)
    for event in events:
        tap.observe(event)
    outcome = tap.outcome()
    assert outcome.usage == Usage(11, 7, 3)
    assert outcome.finish_reason == "stop"
    assert outcome.text == "".join(f"word {i} " for i in range(300))


def test_without_usage_a_long_streams_estimate_counts_its_framing_once() -> None:
    """The estimate takes the framing from the smallest event of the tail, and
    a stream's last events need not hold one with little text."""
    words = [" a"] * 20 + [" considerably longer words"] * 20
    tap = OpenAITap()
    for word in words:
        tap.observe(chunk_event(word))
    tap.observe(chunk_event(" end", "stop") + b"data: [DONE]\n\n")
    outcome = tap.outcome()
    assert outcome.usage is None and outcome.finish_reason == "stop"
    actual = len("".join(words)) + len(" end")
    # The smallest event still holds " a": it is counted as framing.
    assert 0.8 * actual <= outcome.approx_text_chars <= 1.1 * actual


def test_last_events_are_the_last_few_events_oldest_first() -> None:
    body = b"".join(b"data: %d\n\n" % i for i in range(20))
    tail = last_events(body)
    assert len(tail) == TAIL_EVENTS
    assert tail[-1] == b""  # what follows the last boundary
    assert tail[:-1] == [b"data: %d" % i for i in range(20 - TAIL_EVENTS + 1, 20)]
    assert last_events(b"data: 1\n\ndata: 2\n\n") == [b"data: 1", b"data: 2", b""]
    assert last_events(b"data: 1\r\n\r\ndata: 2\r\n\r\n") == [b"data: 1", b"data: 2", b""]


def test_without_usage_the_tap_estimates_the_text_length_from_bytes() -> None:
    tap = OpenAITap(capture_text=True)
    for event in [chunk_event("x" * 400), chunk_event(None, "length"), b"data: [DONE]\n\n"]:
        tap.observe(event)
    outcome = tap.outcome()
    assert outcome.usage is None
    assert outcome.finish_reason == "length"
    assert outcome.text == "x" * 400
    assert 300 <= outcome.approx_text_chars <= 500


def test_the_anthropic_tap_adds_message_start_and_message_delta_usage() -> None:
    start = {"type": "message_start", "message": {"id": "msg_1", "usage": {
        "input_tokens": 20, "cache_read_input_tokens": 5, "output_tokens": 1}}}
    delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
             "usage": {"output_tokens": 42}}
    tap = AnthropicTap(capture_text=True)
    tap.observe(b"event: message_start\ndata: " + orjson.dumps(start) + b"\n\n")
    tap.observe(b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                b'"delta":{"type":"text_delta","text":"Hi"}}\n\n')
    tap.observe(b"event: message_delta\ndata: " + orjson.dumps(delta) + b"\n\n"
                b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    outcome = tap.outcome()
    assert outcome.usage == Usage(prompt_tokens=25, completion_tokens=42, cached_tokens=5)
    assert outcome.finish_reason == "end_turn"
    assert outcome.text == "Hi"


# -- the async relay -----------------------------------------------------------------


class Source:
    """An upstream body in memory: yields ``chunks`` (a float = sleep that long)."""

    def __init__(self, *chunks: bytes | float | BaseException) -> None:
        self.chunks = chunks
        self.closed = False
        self.was_cancelled = False

    async def iterate(self) -> AsyncIterator[bytes]:
        try:
            for item in self.chunks:
                if isinstance(item, float):
                    await asyncio.sleep(item)
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        except asyncio.CancelledError:
            self.was_cancelled = True
            raise

    async def close(self) -> None:
        self.closed = True


def _appender(outcomes: list[StreamOutcome]) -> Callable[[StreamOutcome], Awaitable[None]]:
    async def on_end(outcome: StreamOutcome) -> None:
        outcomes.append(outcome)

    return on_end


async def collect(stream: AsyncIterator[bytes]) -> list[bytes]:
    return [piece async for piece in stream]


def passthrough() -> PassthroughTransform:
    return PassthroughTransform(OpenAITap(), openai_error_event)


async def test_relayed_bytes_are_the_upstream_bytes_and_the_same_objects() -> None:
    source = Source(STREAM[0], 0.02, *STREAM[1:])
    outcomes: list[StreamOutcome] = []

    async def on_end(outcome: StreamOutcome) -> None:
        outcomes.append(outcome)

    out = await collect(relay(source.iterate(), passthrough(), close_source=source.close,
                              keepalive_interval_s=30, idle_timeout_s=30, on_end=on_end))
    assert b"".join(out) == BODY  # the upstream's bytes and not one more
    assert out[0] is STREAM[0]  # no copy; chunks that arrived together may go out joined
    assert outcomes[0].usage == Usage(11, 7, 3)
    assert source.closed


async def test_keep_alive_comments_flow_while_the_upstream_is_silent_never_mid_event() -> None:
    half = len(STREAM[1]) // 2
    source = Source(STREAM[0], STREAM[1][:half], 0.4, STREAM[1][half:], 0.4, *STREAM[2:])
    out = await collect(relay(source.iterate(), passthrough(), close_source=source.close,
                              keepalive_interval_s=0.05, idle_timeout_s=30))
    joined = b"".join(out)
    assert SSE_KEEPALIVE in out
    assert joined.replace(SSE_KEEPALIVE, b"") == BODY
    # every keep-alive sits between whole events
    for position, piece in enumerate(out):
        if piece == SSE_KEEPALIVE:
            assert b"".join(out[:position]).endswith(b"\n\n")


async def test_a_stalled_upstream_ends_the_stream_with_an_idle_timeout_error_event() -> None:
    source = Source(STREAM[0], 3600.0)
    out = await asyncio.wait_for(collect(relay(
        source.iterate(), passthrough(), close_source=source.close,
        keepalive_interval_s=0.05, idle_timeout_s=0.3)), 10)
    last = out[-1]
    assert last.startswith(b"data: ")
    error = orjson.loads(last[6:])["error"]
    assert error["code"] == "stream_idle_timeout"
    assert source.was_cancelled and source.closed


async def test_an_upstream_dying_mid_stream_ends_with_an_error_event_not_a_hang() -> None:
    source = Source(STREAM[0], STREAM[1][:10], RemoteProtocolError("peer closed"))
    out = await asyncio.wait_for(collect(relay(
        source.iterate(), passthrough(), close_source=source.close,
        keepalive_interval_s=30, idle_timeout_s=30)), 10)
    assert out[0] == STREAM[0]
    assert out[-1].startswith(b"data: {\"error\"")
    assert b"".join(out).count(b"\n\n") == 2  # the half event was never sent
    assert orjson.loads(out[-1][6:])["error"]["code"] == "upstream_error"
    assert source.closed


async def test_the_capture_keeps_what_the_caller_was_sent_without_keep_alives() -> None:
    half = len(STREAM[1]) // 2
    source = Source(STREAM[0], STREAM[1][:half], 0.3, STREAM[1][half:], *STREAM[2:])
    kept: list[bytes] = []
    out = await collect(relay(source.iterate(), passthrough(), close_source=source.close,
                              keepalive_interval_s=0.05, idle_timeout_s=30,
                              capture=kept, capture_cap=1 << 20))
    assert SSE_KEEPALIVE in out  # one was sent, and is not part of the answer
    assert b"".join(kept) == BODY
    assert b"".join(kept) == b"".join(out).replace(SSE_KEEPALIVE, b"")
    assert all(any(piece is sent for sent in out) for piece in kept)  # references, no copy


async def test_the_capture_stops_once_its_cap_is_reached_and_the_caller_still_gets_all() -> None:
    # A pause after each event: the relay sends them one by one.
    source = Source(*itertools.chain.from_iterable((part, 0.01) for part in STREAM))
    kept: list[bytes] = []
    cap = len(STREAM[0]) + 1
    out = await collect(relay(source.iterate(), passthrough(), close_source=source.close,
                              keepalive_interval_s=30, idle_timeout_s=30,
                              capture=kept, capture_cap=cap))
    assert b"".join(out) == BODY
    # Events until the cap is reached (the one that passes it whole), then none.
    assert kept == STREAM[:2]


async def test_the_capture_keeps_the_error_event_that_ended_a_broken_stream() -> None:
    source = Source(STREAM[0], STREAM[1][:10], RemoteProtocolError("peer closed"))
    kept: list[bytes] = []
    out = await asyncio.wait_for(collect(relay(
        source.iterate(), passthrough(), close_source=source.close,
        keepalive_interval_s=30, idle_timeout_s=30, capture=kept, capture_cap=1 << 20)), 10)
    assert kept == out
    assert kept[-1].startswith(b'data: {"error"')


async def test_closing_the_relay_mid_stream_cancels_the_upstream_read_and_closes_it() -> None:
    source = Source(STREAM[0], 3600.0, STREAM[1])
    ended: list[StreamOutcome] = []
    stream = relay(source.iterate(), passthrough(), close_source=source.close,
                   keepalive_interval_s=30, idle_timeout_s=3600,
                   on_end=_appender(ended))
    assert await stream.__anext__() == STREAM[0]
    before = len(asyncio.all_tasks())
    reader = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.05)
    reader.cancel()  # what the server does when the client goes away
    with pytest.raises(asyncio.CancelledError):
        await reader
    await stream.aclose()
    assert source.was_cancelled and source.closed
    assert len(ended) == 1  # accounting still happened
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) < before  # the pump task is gone


async def test_a_decoded_stream_is_re_encoded_as_openai_sse_and_ends_with_done() -> None:
    source = Source(*STREAM)
    transform = DecodingTransform(OpenAIStreamDecoder(include_usage=False))
    out = b"".join(await collect(relay(source.iterate(), transform, close_source=source.close,
                                       keepalive_interval_s=30, idle_timeout_s=30)))
    assert out.endswith(b"data: [DONE]\n\n")
    assert b'"usage"' not in out  # the caller did not ask for it
    assert transform.outcome().usage == Usage(11, 7, 3)
    assert transform.outcome().approx_text_chars == len("Hello world")


@pytest.mark.parametrize(("body", "expected"), [
    ((b'{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,'
     b'"prompt_tokens_details":{"cached_tokens":1}}}'), 3),
    (b'{"usage": {"prompt_tokens": 5, "completion_tokens": 1}, "choices": []}', 5),
    (b'{"choices":[{"message":{"content":"the \\"usage\\": {} word"}}]}', None),
    (b'{"choices":[]}', None),
    (b'{"usage":null}', None),
    # nested objects on both sides of the usage object, and an object after it
    ((b'{"a":{"b":{}},"usage":{"prompt_tokens":7,"completion_tokens_details":{"x":{"y":1}},'
      b'"prompt_tokens_details":{}},"tail":{"z":{}}}'), 7),
    # a provider's string holding braces inside usage: still found
    (b'{"usage":{"note":"a } and a {","prompt_tokens":9,"completion_tokens":1}}', 9),
])
def test_the_usage_of_a_whole_response_is_found_without_decoding_the_rest(
        body: bytes, expected: int | None) -> None:
    found = find_usage_object(body)
    if expected is None:
        assert found is None
    else:
        assert found is not None and found["prompt_tokens"] == expected

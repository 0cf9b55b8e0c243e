"""Fuzzing the real gateway: no input may kill or wedge a worker.

One `smartflow serve` process (supervisor, two workers, embedded redis) takes
thousands of hypothesis-made inputs in three phases:

* random, truncated and mutated HTTP/1.1 requests (health, metrics, models
  and the proxy routes, pipelined, chunked, 100-continue, h2c upgrade);
* the h2c preface followed by random or mutated HTTP/2 frames, and mutated
  whole h2 conversations (proxy calls included);
* well-framed requests (exact content-length, over HTTP/1.1 and h2) whose
  JSON bodies are garbage: wrong types, huge numbers, NaN, deep nesting,
  lone surrogates, invalid UTF-8, nulls, missing fields, oversized strings,
  byte-level mutations of valid bodies. Each must get a well-formed answer:
  200, or a 4xx in the route's error shape, never a 5xx and never a hang.

After each phase, /health answers 200 over HTTP/1.1 and h2c, every original
worker still answers on a fresh connection (none wedged), the worker pids are
unchanged (none died and was respawned), and the gateway printed no
traceback. Hypothesis runs derandomized with no example database, so a CI
run replays exactly the inputs of a local one.
"""

from __future__ import annotations

import copy
import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import h2.config
import h2.connection
import httpx
import orjson
import pytest
from harness.gateway import GatewayProcess
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from smartflow.config import PROVIDERS
from smartflow.proxy.catalog import NAME_PREFIX_RULES

pytestmark = pytest.mark.timeout(240)

MAX_BODY_BYTES = 64 * 1024
RAW_ANSWER_WAIT_S = 0.5  # a garbage connection gets this long to answer or close
JSON_ANSWER_TIMEOUT_S = 10.0  # a well-framed request must be answered: past this it hung
WORKER_PROBE_DEADLINE_S = 20.0
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

GATEWAY_CONFIG: dict[str, object] = {
    "server": {
        "bench_routes": True,  # /bench/worker names the worker that answered
        "max_body_bytes": MAX_BODY_BYTES,
        # Long idle timeouts: the JSON phase reuses keep-alive connections, and
        # an idle close racing a reused connection would be a flaky failure.
        "keepalive_timeout": 60.0,
    },
    # Belt and braces: no fuzzed model may reach a real provider (see
    # routes_off_machine), but if one did it must fail fast.
    "proxy": {"connect_timeout": 1.0, "first_byte_timeout": 2.0},
}


def fuzz_settings(max_examples: int) -> Callable[[Any], Any]:
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


# -- the gateway --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class FuzzedGateway:
    process: GatewayProcess
    worker_pids: tuple[int, ...]

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def url(self) -> str:
        return self.process.url


@pytest.fixture(scope="module")
def gateway() -> Iterator[FuzzedGateway]:
    with GatewayProcess(GATEWAY_CONFIG, workers=2) as process:
        pids = tuple(process.wait_worker_pids(2))
        yield FuzzedGateway(process, pids)


def answering_worker_pids(gateway: FuzzedGateway) -> set[int]:
    """Pids of the workers that answer /bench/worker on fresh connections.

    SO_REUSEPORT spreads connections over the workers by source port, so a
    few dozen fresh connections reach every worker that is alive and not
    wedged; a wedged one shows up as a timeout here.
    """
    seen: set[int] = set()
    deadline = time.monotonic() + WORKER_PROBE_DEADLINE_S
    with httpx.Client(timeout=5.0, headers={"connection": "close"}) as client:
        while time.monotonic() < deadline and seen != set(gateway.worker_pids):
            try:
                response = client.get(f"{gateway.url}/bench/worker")
            except httpx.TimeoutException:
                continue
            assert response.status_code == 200, response.text
            seen.add(response.json()["pid"])
    return seen


def assert_gateway_unharmed(gateway: FuzzedGateway) -> None:
    with httpx.Client(timeout=10.0) as client:
        response = client.get(f"{gateway.url}/health")
        assert response.status_code == 200 and response.http_version == "HTTP/1.1"
    with httpx.Client(http1=False, http2=True, timeout=10.0) as client:
        response = client.get(f"{gateway.url}/health")
        assert response.status_code == 200 and response.http_version == "HTTP/2"
    assert answering_worker_pids(gateway) == set(gateway.worker_pids), (
        f"not every worker answered; output:\n{gateway.process.output_tail()}"
    )
    assert tuple(gateway.process.worker_pids()) == gateway.worker_pids, (
        f"a worker died and was respawned; output:\n{gateway.process.output_tail()}"
    )
    output = gateway.process.output_text()
    assert "Traceback" not in output, output
    assert '"level":"error"' not in output, output
    assert "worker_exited" not in output, output


# -- raw bytes ----------------------------------------------------------------------

def send_raw(port: int, data: bytes) -> bytes:
    """Send `data`, half-close, and collect what comes back within RAW_ANSWER_WAIT_S.

    The half-close tells the server the client is done, so a well-behaved
    server answers what it has and closes at once; only a server that sits
    on the connection costs the full wait.
    """
    received = bytearray()
    deadline = time.monotonic() + RAW_ANSWER_WAIT_S
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=RAW_ANSWER_WAIT_S) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            while (left_s := deadline - time.monotonic()) > 0:
                sock.settimeout(left_s)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
    except OSError:  # reset, refused mid-write, or the wait ran out: all fine here
        pass
    return bytes(received)


def edit(seed: bytes, script: bytes, keep_prefix: int = 0) -> bytes:
    """`seed` changed by an edit script, four bytes per edit (op, where, where, value).

    Ops: overwrite a byte, insert a byte, delete a run, repeat a run,
    cut the rest. `keep_prefix` bytes are never touched (the h2 preface).
    """
    data = bytearray(seed)
    for start in range(0, len(script) - 3, 4):
        op, high, low, value = script[start : start + 4]
        room = len(data) - keep_prefix
        if room <= 0:
            data += bytes([value])
            continue
        at = keep_prefix + ((high << 8) | low) % room
        match op % 5:
            case 0:
                data[at] = value
            case 1:
                data.insert(at, value)
            case 2:
                del data[at : at + 1 + value % 16]
            case 3:
                data[at:at] = data[at : at + 1 + value % 64]
            case _:
                del data[at:]
    return bytes(data)


def mutations_of(seeds: list[bytes], keep_prefix: int = 0) -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda seed, script: edit(seed, script, keep_prefix),
        st.sampled_from(seeds),
        st.binary(max_size=32),
    )


def truncations_of(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda seed, cut: seed[: int(len(seed) * cut)],
        st.sampled_from(seeds),
        st.floats(min_value=0.0, max_value=1.0),
    )


CHAT_BODY = orjson.dumps(
    {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
)
CHAT_STREAM_BODY = orjson.dumps(
    {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}], "stream": True,
     "stream_options": {"include_usage": True}}
)
EMBEDDINGS_BODY = orjson.dumps({"model": "mock-gpt", "input": ["a", "b"], "dimensions": 8})
MESSAGES_BODY = orjson.dumps(
    {"model": "mock-gpt", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
)


def h1_post(path: str, body: bytes, *extra_headers: bytes) -> bytes:
    head = b"POST %s HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n" % path.encode()
    head += b"".join(h + b"\r\n" for h in extra_headers)
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def h1_chunked_post(path: str, body: bytes) -> bytes:
    half = len(body) // 2
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:half], body[half:]))
    return (
        b"POST %s HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n" % path.encode()
        + chunks + b"0\r\n\r\n"
    )


H1_SEEDS = [
    b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n",
    b"GET /health/ready HTTP/1.0\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: gw\r\nAccept: */*\r\n\r\n",
    b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n\r\nGET /v1/models/mock-gpt HTTP/1.1\r\nHost: gw\r\n\r\n",
    h1_post("/v1/chat/completions", CHAT_BODY),
    h1_post("/v1/chat/completions", CHAT_STREAM_BODY, b"Expect: 100-continue"),
    h1_chunked_post("/v1/embeddings", EMBEDDINGS_BODY),
    h1_post("/v1/messages", MESSAGES_BODY, b"anthropic-version: 2023-06-01"),
    h1_post("/v1/completions", orjson.dumps({"model": "mock-gpt", "prompt": "hi"}))
    + b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n",
    (
        b"GET /health HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    ),
]

H1_INPUT = st.one_of(
    st.binary(max_size=300),
    mutations_of(H1_SEEDS),
    truncations_of(H1_SEEDS),
)


def h2_conversation(
    requests: list[tuple[str, str, bytes]],
    *,
    extra: Callable[[Any], object] | None = None,
    declared_length: int | None = None,
) -> bytes:
    """The bytes an h2 client sends for `requests` (method, path, body), preface included.

    `declared_length` replaces every body's true content-length."""
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    for index, (method, path, body) in enumerate(requests):
        stream_id = 1 + 2 * index
        headers = [
            (b":method", method.encode()), (b":path", path.encode()),
            (b":scheme", b"http"), (b":authority", b"gw"),
        ]
        if body:
            headers += [(b"content-type", b"application/json"),
                        (b"content-length", str(declared_length or len(body)).encode())]
        client.send_headers(stream_id, headers, end_stream=not body)
        if body:
            client.send_data(stream_id, body, end_stream=True)
    if extra is not None:
        extra(client)
    return client.data_to_send()


H2_SEEDS = [
    h2_conversation([("GET", "/health", b"")]),
    h2_conversation([("POST", "/v1/chat/completions", CHAT_BODY), ("GET", "/metrics", b"")]),
    h2_conversation([("POST", "/v1/chat/completions", CHAT_STREAM_BODY)],
                    extra=lambda c: c.reset_stream(1)),
    h2_conversation([("POST", "/v1/embeddings", EMBEDDINGS_BODY),
                     ("POST", "/v1/messages", MESSAGES_BODY)],
                    extra=lambda c: (c.ping(b"fuzzping"), c.increment_flow_control_window(1024))),
    h2_conversation([("GET", "/v1/models", b"")],
                    extra=lambda c: (c.update_settings({4: 1, 3: 1}), c.close_connection())),
    h2_conversation([("POST", "/v1/messages", MESSAGES_BODY), ("GET", "/health", b"")],
                    declared_length=MAX_BODY_BYTES + 1),
]

H2_INPUT = st.one_of(
    st.binary(max_size=200).map(lambda frames: H2_PREFACE + frames),
    mutations_of(H2_SEEDS, keep_prefix=len(H2_PREFACE)),
    mutations_of(H2_SEEDS),
    truncations_of(H2_SEEDS),
)


def status_lines(response: bytes) -> list[bytes]:
    return [line for line in response.split(b"\r\n") if line.startswith(b"HTTP/1.")]


def test_random_and_mutated_http1_requests_never_kill_or_wedge_a_worker(
    gateway: FuzzedGateway,
) -> None:
    @fuzz_settings(1500)
    @given(data=H1_INPUT)
    def fuzz(data: bytes) -> None:
        response = send_raw(gateway.port, data)
        if response and not data.startswith(H2_PREFACE):  # random bytes may spell the preface
            assert response.startswith(b"HTTP/1.1 "), response[:200]
            # A 500 is a handler that crashed; 4xx, 501 and 505 are fine answers.
            assert all(not line.startswith(b"HTTP/1.1 500") for line in status_lines(response)), (
                response[:500]
            )

    fuzz()
    assert_gateway_unharmed(gateway)


def test_random_and_mutated_http2_frames_never_kill_or_wedge_a_worker(
    gateway: FuzzedGateway,
) -> None:
    @fuzz_settings(1000)
    @given(data=H2_INPUT)
    def fuzz(data: bytes) -> None:
        send_raw(gateway.port, data)

    fuzz()
    assert_gateway_unharmed(gateway)


# -- garbage JSON, well framed --------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RawJSON:
    """JSON text placed as-is: deep nesting, NaN, numbers no float can hold."""

    text: str


def encode_json(value: object, ensure_ascii: bool) -> str:
    """JSON text for `value`, RawJSON pieces inlined; with ensure_ascii=False lone
    surrogates stay raw (and become invalid UTF-8 on the wire)."""
    if isinstance(value, RawJSON):
        return value.text
    if isinstance(value, dict):
        members = (
            json.dumps(str(key), ensure_ascii=ensure_ascii) + ":" + encode_json(item, ensure_ascii)
            for key, item in value.items()
        )
        return "{" + ",".join(members) + "}"
    if isinstance(value, list):
        return "[" + ",".join(encode_json(item, ensure_ascii) for item in value) + "]"
    return json.dumps(value, ensure_ascii=ensure_ascii)


# orjson parses up to 1024 levels but serialises only 255: bodies in between
# must still get a clear answer when the proxy re-encodes them.
INTERESTING_DEPTHS = [2, 64, 250, 253, 254, 255, 256, 300, 1000, 1023, 1024, 1025, 5000]
# Depths the fuzz keeps clear of; empty since the proxy refuses bodies nested
# deeper than it can forward (see the deep-body test at the end).
UNSERIALISABLE_DEPTHS = range(0)


def nested(depth: int, kind: int) -> RawJSON:
    """A JSON value `depth` containers deep."""
    if depth in UNSERIALISABLE_DEPTHS:
        depth = UNSERIALISABLE_DEPTHS.start - 1
    if kind == 0:
        return RawJSON("[" * depth + "]" * depth)
    if kind == 1:
        return RawJSON('{"a":' * depth + "null" + "}" * depth)
    pairs = max(1, depth // 2)  # content blocks in content blocks: two levels each
    return RawJSON('[{"type":"text","text":' * pairs + '"x"' + "}]" * pairs)


ODD_STRINGS = st.sampled_from([
    "", " ", "\x00", "\ud800", "a\udfffb", "\u202e\u0000\uffff", "🙂" * 50, "null", "[]",
    "\r\n\r\nHTTP/1.1 200 OK", "%s%n", "user", "assistant", "system", "tool", "text",
    "image_url", "function", "data:image/png;base64,!!!", "é" * 300,
])
HUGE_NUMBERS = st.sampled_from([
    RawJSON("1e400"), RawJSON("-1e400"), RawJSON("NaN"), RawJSON("Infinity"), RawJSON("-0"),
    RawJSON("123456789012345678901234567890"), RawJSON("1.5e-400"), RawJSON("0x10"),
    RawJSON("01"), 2**63, 2**64, -(2**63) - 1, 2**64 - 1, -1, 0, 1.5, 1e308,
])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
    ODD_STRINGS, HUGE_NUMBERS,
)
GARBAGE = st.one_of(
    SCALARS,
    st.recursive(
        SCALARS,
        lambda inner: st.lists(inner, max_size=4)
        | st.dictionaries(st.one_of(st.text(max_size=8), ODD_STRINGS), inner, max_size=4),
        max_leaves=10,
    ),
    st.builds(nested, st.sampled_from(INTERESTING_DEPTHS) | st.integers(1, 3000),
              st.integers(0, 2)),
    st.sampled_from([MAX_BODY_BYTES - 200, MAX_BODY_BYTES + 1, 2 * MAX_BODY_BYTES])
    .map(lambda size: "x" * size),
)

# Models that stay on this machine: the built-in mock, unknown names (404), and
# names no catalog rule sends to a real provider.
MODEL = st.integers(0, 9).flatmap(
    lambda pick: st.just("mock-gpt") if pick < 7
    else st.sampled_from(["mock/mock-gpt", "no-such-model", "", "MOCK-GPT", "mock-gpt ",
                          "mock-gpt[1m]", "mock/"]) if pick < 9
    else st.text(max_size=20).map(lambda name: "x-" + name)
)
TEXT = st.one_of(st.text(max_size=40), ODD_STRINGS)
COUNT = st.integers(1, 64)


def fields(
    required: dict[str, st.SearchStrategy[Any]] | None = None,
    **optional: st.SearchStrategy[Any],
) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(required or {}, optional=optional)


# Plausible requests: mostly what a real client sends. Damage comes after.
OPENAI_PART = st.one_of(
    fields({"type": st.just("text"), "text": TEXT}),
    fields({"type": st.just("image_url"),
            "image_url": fields({"url": st.just("data:image/png;base64,AAAA")},
                                detail=st.sampled_from(["low", "high", "auto"]))}),
)
OPENAI_MESSAGE = st.one_of(
    fields({"role": st.sampled_from(["user", "system", "developer"]),
            "content": st.one_of(TEXT, st.lists(OPENAI_PART, min_size=1, max_size=3))},
           name=TEXT),
    fields({"role": st.just("assistant"), "content": st.one_of(TEXT, st.none())},
           tool_calls=st.lists(fields({
               "id": st.just("call_1"), "type": st.just("function"),
               "function": fields({"name": st.just("f"), "arguments": st.just("{}")})}),
               min_size=1, max_size=2)),
    fields({"role": st.just("tool"), "tool_call_id": st.just("call_1"), "content": TEXT}),
)
OPENAI_TOOL = fields({
    "type": st.just("function"),
    "function": fields({"name": st.just("f")}, description=TEXT,
                       parameters=st.just({"type": "object", "properties": {}})),
})
STREAM_OPTIONS = fields(include_usage=st.booleans())

CHAT_REQUEST = fields(
    {"model": MODEL, "messages": st.lists(OPENAI_MESSAGE, min_size=1, max_size=4)},
    stream=st.booleans(), stream_options=STREAM_OPTIONS, n=COUNT, max_tokens=COUNT,
    max_completion_tokens=COUNT, temperature=st.floats(0, 2), top_p=st.floats(0, 1),
    seed=st.integers(), stop=st.one_of(TEXT, st.lists(TEXT, max_size=4)),
    tools=st.lists(OPENAI_TOOL, min_size=1, max_size=2),
    tool_choice=st.sampled_from(["auto", "none", "required",
                                 {"type": "function", "function": {"name": "f"}}]),
    response_format=st.sampled_from([{"type": "text"}, {"type": "json_object"}]),
    logprobs=st.booleans(), top_logprobs=st.integers(0, 20), user=TEXT,
    metadata=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
)
COMPLETIONS_REQUEST = fields(
    {"model": MODEL, "prompt": st.one_of(TEXT, st.lists(TEXT, min_size=1, max_size=3))},
    max_tokens=COUNT, n=COUNT, stream=st.booleans(), stream_options=STREAM_OPTIONS,
    echo=st.booleans(), suffix=TEXT, logprobs=st.integers(0, 5),
)
EMBEDDINGS_REQUEST = fields(
    {"model": MODEL,
     "input": st.one_of(TEXT, st.lists(TEXT, min_size=1, max_size=4),
                        st.lists(st.integers(0, 100_000), min_size=1, max_size=6),
                        st.lists(st.lists(st.integers(0, 100_000), min_size=1, max_size=4),
                                 min_size=1, max_size=3))},
    dimensions=st.integers(1, 256), encoding_format=st.sampled_from(["float", "base64"]),
    user=TEXT,
)
ANTHROPIC_BLOCK = st.one_of(
    fields({"type": st.just("text"), "text": TEXT},
           cache_control=st.just({"type": "ephemeral"})),
    fields({"type": st.just("image"),
            "source": st.just({"type": "base64", "media_type": "image/png", "data": "AAAA"})}),
    fields({"type": st.just("tool_result"), "tool_use_id": st.just("toolu_1"),
            "content": st.one_of(TEXT, st.just([{"type": "text", "text": "r"}]))},
           is_error=st.booleans()),
)
ANTHROPIC_MESSAGE = st.one_of(
    fields({"role": st.just("user"),
            "content": st.one_of(TEXT, st.lists(ANTHROPIC_BLOCK, min_size=1, max_size=3))}),
    fields({"role": st.just("assistant"), "content": st.one_of(TEXT, st.just([
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
        {"type": "thinking", "thinking": "hm", "signature": "sig"}]))}),
)
ANTHROPIC_TOOL = fields({"name": st.just("f"),
                         "input_schema": st.just({"type": "object", "properties": {}})},
                        description=TEXT)
ANTHROPIC_OPTIONAL: dict[str, st.SearchStrategy[Any]] = {
    "system": st.one_of(TEXT, st.lists(ANTHROPIC_BLOCK, min_size=1, max_size=2)),
    "tools": st.lists(ANTHROPIC_TOOL, min_size=1, max_size=2),
    "tool_choice": st.sampled_from([{"type": "auto"}, {"type": "any"}, {"type": "none"},
                                    {"type": "tool", "name": "f"}]),
    "thinking": st.just({"type": "enabled", "budget_tokens": 1024}),
    "stop_sequences": st.lists(TEXT, max_size=3), "temperature": st.floats(0, 1),
    "metadata": st.just({"user_id": "u1"}),
}
ANTHROPIC_MESSAGES = st.lists(ANTHROPIC_MESSAGE, min_size=1, max_size=4)
MESSAGES_REQUEST = fields(
    {"model": MODEL, "max_tokens": COUNT, "messages": ANTHROPIC_MESSAGES},
    stream=st.booleans(), **ANTHROPIC_OPTIONAL,
)
COUNT_TOKENS_REQUEST = fields({"model": MODEL, "messages": ANTHROPIC_MESSAGES},
                              **ANTHROPIC_OPTIONAL)

RESPONSES_PART = st.one_of(
    fields({"type": st.just("input_text"), "text": TEXT}),
    fields({"type": st.just("input_image"), "image_url": st.just("data:image/png;base64,AAAA")},
           detail=st.sampled_from(["low", "high", "auto"])),
)
RESPONSES_ITEM = st.one_of(
    fields({"role": st.sampled_from(["user", "system", "developer", "assistant"]),
            "content": st.one_of(TEXT, st.lists(RESPONSES_PART, min_size=1, max_size=3))},
           type=st.just("message")),
    fields({"type": st.just("function_call"), "call_id": st.just("call_1"),
            "name": st.just("f"), "arguments": st.just("{}")}),
    fields({"type": st.just("function_call_output"), "call_id": st.just("call_1"),
            "output": TEXT}),
    fields({"type": st.just("reasoning"), "summary": st.just([])},
           encrypted_content=TEXT),
)
RESPONSES_TOOL = st.one_of(
    fields({"type": st.just("function"), "name": st.just("f")}, description=TEXT,
           parameters=st.just({"type": "object", "properties": {}}), strict=st.booleans()),
    st.just({"type": "web_search"}),
    fields({"type": st.just("namespace"), "name": st.just("ns"),
            "tools": st.just([{"type": "function", "name": "g",
                               "parameters": {"type": "object", "properties": {}}}])}),
)
RESPONSES_REQUEST = fields(
    {"model": MODEL, "input": st.one_of(TEXT, st.lists(RESPONSES_ITEM, min_size=1, max_size=4))},
    instructions=TEXT, stream=st.booleans(), max_output_tokens=COUNT,
    temperature=st.floats(0, 2), top_p=st.floats(0, 1), store=st.booleans(),
    tools=st.lists(RESPONSES_TOOL, min_size=1, max_size=3),
    tool_choice=st.sampled_from(["auto", "none", "required", {"type": "function", "name": "f"},
                                 {"type": "web_search"}]),
    previous_response_id=st.just("resp_not_stored"), parallel_tool_calls=st.booleans(),
    reasoning=st.just({"effort": "low"}),
    text=st.sampled_from([{"format": {"type": "text"}}, {"format": {"type": "json_object"}}]),
)
GEMINI_PART = st.one_of(
    fields({"text": TEXT}),
    st.just({"inlineData": {"mimeType": "image/png", "data": "AAAA"}}),
    st.just({"functionCall": {"name": "f", "args": {}}}),
    st.just({"functionResponse": {"name": "f", "response": {"ok": True}}}),
)
GEMINI_CONTENT = fields({"parts": st.lists(GEMINI_PART, min_size=1, max_size=3)},
                        role=st.sampled_from(["user", "model"]))
GEMINI_OPTIONAL: dict[str, st.SearchStrategy[Any]] = {
    "systemInstruction": fields({"parts": st.lists(fields({"text": TEXT}), min_size=1,
                                                   max_size=2)}),
    "tools": st.just([{"functionDeclarations": [
        {"name": "f", "parameters": {"type": "OBJECT", "properties": {}}}]}]),
    "toolConfig": st.sampled_from([{"functionCallingConfig": {"mode": mode}}
                                   for mode in ("AUTO", "ANY", "NONE")]),
    "generationConfig": fields(temperature=st.floats(0, 2), maxOutputTokens=COUNT,
                               candidateCount=st.integers(1, 3),
                               stopSequences=st.lists(TEXT, max_size=3),
                               responseMimeType=st.sampled_from(["text/plain",
                                                                 "application/json"])),
}
GEMINI_REQUEST = fields({"contents": st.lists(GEMINI_CONTENT, min_size=1, max_size=4)},
                        **GEMINI_OPTIONAL)

ROUTES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "/v1/chat/completions": CHAT_REQUEST,
    "/v1/completions": COMPLETIONS_REQUEST,
    "/v1/embeddings": EMBEDDINGS_REQUEST,
    "/v1/messages": MESSAGES_REQUEST,
    "/v1/messages/count_tokens": COUNT_TOKENS_REQUEST,
    "/v1/responses": RESPONSES_REQUEST,
    "/v1beta/models/mock-gpt:generateContent": GEMINI_REQUEST,
    "/v1beta/models/mock-gpt:streamGenerateContent?alt=sse": GEMINI_REQUEST,
    "/v1beta/models/mock-gpt:countTokens": GEMINI_REQUEST,
}
ANTHROPIC_ROUTES = frozenset({"/v1/messages", "/v1/messages/count_tokens"})
GEMINI_ROUTE_PREFIX = "/v1beta/"
# Field names any route knows: damage may add one where it does not belong.
KNOWN_FIELDS = sorted({
    "model", "messages", "max_tokens", "stream", "stream_options", "n", "tools", "tool_choice",
    "input", "prompt", "dimensions", "encoding_format", "system", "thinking", "metadata",
    "role", "content", "type", "text", "name", "function", "arguments", "tool_calls",
    "tool_call_id", "image_url", "url", "source", "input_schema", "include_usage",
    "instructions", "previous_response_id", "call_id", "output", "max_output_tokens",
    "contents", "parts", "systemInstruction", "generationConfig", "functionCall",
    "functionResponse", "functionDeclarations", "toolConfig", "args",
})

Spot = tuple[dict[str, Any] | list[Any], Any]


def spots(value: object) -> list[Spot]:
    """Every (container, key or index) in `value`, for damage to land on."""
    found: list[Spot] = []
    pending = [value]
    while pending:
        container = pending.pop()
        if isinstance(container, dict):
            for key, item in container.items():
                found.append((container, key))
                pending.append(item)
        elif isinstance(container, list):
            for index, item in enumerate(container):
                found.append((container, index))
                pending.append(item)
    return found


@st.composite
def damaged(draw: st.DrawFn, request: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A plausible request with up to three things wrong anywhere in it:
    a value replaced by garbage, a field removed, a field added, a value
    wrapped in a list."""
    body = copy.deepcopy(draw(request))  # st.just values are shared between examples
    for _ in range(draw(st.integers(0, 3))):
        where = spots(body)
        action = draw(st.integers(0, 3))
        if action == 2 or not where:
            containers = [body, *(c[k] for c, k in where if isinstance(c[k], dict))]
            target = draw(st.sampled_from(containers))
            target[draw(st.sampled_from(KNOWN_FIELDS))] = draw(GARBAGE)
            continue
        container, key = draw(st.sampled_from(where))
        if action == 0:
            container[key] = draw(GARBAGE)
        elif action == 1:
            del container[key]
        else:
            container[key] = [container[key]]
    return body


def without_mock_failure(body: object) -> object:
    """The mock fails on purpose when metadata.mock_fail says so: not a finding."""
    if isinstance(body, dict) and isinstance(body.get("metadata"), dict):
        body["metadata"].pop("mock_fail", None)
    return body


def to_wire(body: object, ensure_ascii: bool) -> bytes:
    return encode_json(without_mock_failure(body), ensure_ascii).encode("utf-8", "surrogatepass")


@st.composite
def json_calls(draw: st.DrawFn) -> tuple[str, bytes]:
    """(path, body bytes): a route and a damaged, byte-mutated, or whole-garbage body."""
    path = draw(st.sampled_from(sorted(ROUTES)))
    kind = draw(st.integers(0, 9))
    if kind <= 6:  # plausible, then damaged here and there
        body = to_wire(draw(damaged(ROUTES[path])), draw(st.booleans()))
    elif kind <= 8:  # plausible, then byte-level damage
        body = edit(to_wire(draw(ROUTES[path]), True), draw(st.binary(min_size=4, max_size=24)))
    elif draw(st.booleans()):  # any JSON value at all
        body = to_wire(draw(GARBAGE), draw(st.booleans()))
    else:
        body = draw(st.binary(max_size=200))
    return path, body


def routes_off_machine(body: bytes) -> bool:
    """Whether the catalog would send this body's model to a real provider.

    No network here: such a call could only fail upstream (a fair 502), which
    is not what this test is about.
    """
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    model = parsed.get("model") if isinstance(parsed, dict) else None
    if not isinstance(model, str):
        return False
    name = model.strip().lower()
    provider = name.split("/", 1)[0] if "/" in name else ""
    return (provider in PROVIDERS and provider != "mock") or any(
        name.startswith(prefix) for prefix, _provider in NAME_PREFIX_RULES
    )


CONTENT_TYPES = st.sampled_from([
    "application/json", "application/json", "application/json; charset=utf-8", "text/plain",
    "application/x-www-form-urlencoded", None,
])


def assert_well_formed_answer(path: str, response: httpx.Response) -> None:
    status = response.status_code
    context = f"{path} -> {status}: {response.content[:400]!r}"
    assert status == 200 or 400 <= status < 500, context
    if status == 200:
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            assert response.content, context
        else:
            orjson.loads(response.content)
        return
    payload = orjson.loads(response.content)
    assert isinstance(payload, dict), context
    if path in ANTHROPIC_ROUTES:
        assert payload.get("type") == "error", context
        error = payload.get("error")
        assert isinstance(error, dict), context
        assert isinstance(error.get("type"), str) and error["type"], context
    elif path.startswith(GEMINI_ROUTE_PREFIX) and status != 413:
        # (413 is the HTTP server's, before any route: it has one shape for all)
        assert set(payload) == {"error"}, context
        error = payload["error"]
        assert isinstance(error, dict), context
        assert error.get("code") == status and isinstance(error.get("status"), str), context
    else:
        assert set(payload) == {"error"}, context
        error = payload["error"]
        assert isinstance(error, dict), context
        assert set(error) == {"message", "type", "param", "code"}, context
    assert isinstance(error.get("message"), str) and error["message"], context


def test_garbage_json_bodies_get_a_clear_answer_never_a_5xx_or_a_hang(
    gateway: FuzzedGateway,
) -> None:
    clients = {
        "h1": httpx.Client(timeout=JSON_ANSWER_TIMEOUT_S),
        "h2": httpx.Client(http1=False, http2=True, timeout=JSON_ANSWER_TIMEOUT_S),
    }

    @fuzz_settings(900)
    @given(call=json_calls(), protocol=st.sampled_from(sorted(clients)),
           content_type=CONTENT_TYPES)
    def fuzz(call: tuple[str, bytes], protocol: str, content_type: str | None) -> None:
        path, body = call
        assume(not routes_off_machine(body))
        if protocol == "h2" and len(body) > MAX_BODY_BYTES:
            # The gateway answers 413 early and resets the stream (RFC 9113
            # 8.1); httpcore misses the reset and waits for flow-control
            # credit until the idle timeout. The h2 frame phase covers this.
            protocol = "h1"
        headers = {"content-type": content_type} if content_type else {}
        response = clients[protocol].post(gateway.url + path, content=body, headers=headers)
        assert_well_formed_answer(path, response)

    try:
        fuzz()
    finally:
        for client in clients.values():
            client.close()
    assert_gateway_unharmed(gateway)


DEEP_BODIES = [
    ("/v1/chat/completions",
     '{"model":"mock-gpt","messages":[{"role":"user","content":"hi"}],"metadata":%s}'),
    ("/v1/completions", '{"model":"mock-gpt","prompt":"hi","user":%s}'),
    ("/v1/embeddings", '{"model":"mock-gpt","input":"hi","user":%s}'),
    ("/v1/messages",
     ('{"model":"mock-gpt","max_tokens":4,"messages":[{"role":"user","content":"hi"}],'
      '"tools":[{"name":"f","input_schema":%s}]}')),
]


def test_json_nested_past_what_the_encoder_takes_gets_a_clear_400_not_a_500(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    # orjson reads 1024 levels but writes only 255, and the proxy writes the
    # body again for its upstream: such a body must be refused up front.
    process = gateway_factory({"server": {"access_log": False}}, workers=1)
    with httpx.Client(timeout=JSON_ANSWER_TIMEOUT_S) as client:
        for path, template in DEEP_BODIES:
            body = (template % ('{"a":' * 300 + "null" + "}" * 300)).encode()
            response = client.post(process.url + path, content=body)
            assert_well_formed_answer(path, response)
            assert response.status_code == 400, (path, response.content[:300])
    assert "Traceback" not in process.output_text()

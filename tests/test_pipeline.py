"""The call pipeline: stage order, hooks that cost nothing, stages added without touching a route,
and one error model rendered per dialect."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import orjson
import pytest
from harness.h1_trailers import post_json_h1

from smartflow.config import ModelConfig, ServerSettings, Settings
from smartflow.dialects import anthropic_errors
from smartflow.dialects import openai as openai_dialect
from smartflow.gateway_error import GatewayError, Phase, Reason
from smartflow.http.client import ConnectError, ConnectTimeout, FirstByteTimeout
from smartflow.http.client.connection import StaleConnection
from smartflow.http.response import Response
from smartflow.http.router import Router
from smartflow.http.transport import HTTPServer
from smartflow.proxy import register_proxy_routes
from smartflow.proxy.call import Call
from smartflow.proxy.context import build_proxy_context
from smartflow.proxy.errors import error_from_upstream_failure
from smartflow.proxy.pipeline import SLOTS, Pipeline, Reply, Stage
from smartflow.proxy.relay import StreamTransform

HELLO = [{"role": "user", "content": "Hello there"}]


# -- the pipeline object ----------------------------------------------------------------


@dataclass
class Trace:
    events: list[str] = field(default_factory=list)


class Recording(Stage):
    def __init__(self, slot: str, trace: Trace) -> None:
        self.slot = slot
        self._trace = trace

    async def on_enter(self, call: Call) -> Reply | None:
        self._trace.events.append(f"enter:{self.slot}")
        return None

    async def on_exit(self, call: Call) -> None:
        self._trace.events.append(f"exit:{self.slot}")


class EnterOnly(Stage):
    slot = "pre_call"


def test_stages_run_in_slot_order_whatever_order_they_were_given_in() -> None:
    trace = Trace()
    given = [Recording(slot, trace) for slot in reversed(SLOTS)]
    pipeline = Pipeline(given)
    assert [stage.slot for stage in pipeline.stages] == list(SLOTS)


async def test_exit_hooks_run_in_slot_order_and_all_run_when_one_fails() -> None:
    trace = Trace()

    class Failing(Stage):
        slot = "admit"

        async def on_exit(self, call: Call) -> None:
            trace.events.append("exit:failing")
            raise RuntimeError("commit failed")

    pipeline = Pipeline([Recording("record", trace), Failing(), Recording("post_call", trace)])
    with pytest.raises(RuntimeError, match="commit failed"):
        await pipeline.exit(None)  # type: ignore[arg-type]
    assert trace.events == ["exit:failing", "exit:post_call", "exit:record"]


def test_hooks_a_stage_does_not_override_are_not_called_at_all() -> None:
    pipeline = Pipeline([EnterOnly()])
    assert pipeline._enter == () and pipeline._exit == () and pipeline._stream == ()


def test_a_stage_in_an_unknown_slot_is_refused() -> None:
    class Lost(Stage):
        slot = "after_everything"

    with pytest.raises(ValueError, match="unknown slot"):
        Pipeline([Lost()])


# -- stages added to a running gateway, no route edited -----------------------------------


class CacheHit(Stage):
    """Answers one magic prompt itself, in the caller's dialect."""

    slot = "cache_lookup"

    async def on_enter(self, call: Call) -> Reply | None:
        body = call.body or {}
        if body.get("messages") == [{"role": "user", "content": "cached?"}]:
            call.cache_outcome = "hit"
            return Response(200, orjson.dumps({"cached": True, "dialect": call.dialect.name}))
        return None


class Budget(Stage):
    """Refuses a model as a spent budget would."""

    slot = "admit"

    async def on_enter(self, call: Call) -> Reply | None:
        if call.model == "over-budget":
            raise GatewayError(429, "Budget exceeded.", code="budget_exceeded",
                               reason=Reason.LIMIT)
        return None


class Broken(Stage):
    """A stage with a bug."""

    slot = "pre_call"

    async def on_enter(self, call: Call) -> Reply | None:
        if call.model == "buggy":
            raise RuntimeError("a bug in a stage")
        return None


class Uppercase(Stage):
    """A stream transform chained after the usage tap."""

    slot = "relay"

    def wrap_stream(self, call: Call, transform: StreamTransform) -> StreamTransform:
        return _Upper(transform)


class _Upper:
    def __init__(self, inner: StreamTransform) -> None:
        self._inner = inner

    def feed(self, data: bytes) -> bytes:
        return self._inner.feed(data).upper()

    def close(self) -> bytes:
        return self._inner.close().upper()

    def error_event(self, error: GatewayError) -> bytes:
        return self._inner.error_event(error)

    def outcome(self):  # type: ignore[no-untyped-def]
        return self._inner.outcome()


@dataclass
class Seen(Stage):
    calls: list[Call] = field(default_factory=list)
    slot: str = "record"

    async def on_exit(self, call: Call) -> None:
        self.calls.append(call)


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[str, Seen]]:
    settings = Settings(models=(
        ModelConfig(name="m", provider="mock", input_price_per_mtok=1.0,
                    output_price_per_mtok=2.0),
        ModelConfig(name="over-budget", provider="mock"),
        ModelConfig(name="buggy", provider="mock"),
    ))
    seen = Seen()
    router = Router()
    context = build_proxy_context(settings)
    register_proxy_routes(router, context, [Uppercase(), seen, CacheHit(), Budget(), Broken()])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = HTTPServer(router, ServerSettings(port=0, access_log=False))
    await server.start(sock)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", seen
    finally:
        await server.drain(1.0)
        await context.aclose()


async def test_a_cache_stage_answers_before_any_upstream_call_on_every_dialect(
        gateway: tuple[str, Seen]) -> None:
    url, seen = gateway
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        openai = await client.post("/v1/chat/completions", json={
            "model": "m", "messages": [{"role": "user", "content": "cached?"}]})
        anthropic = await client.post("/v1/messages", json={
            "model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "cached?"}]})
    assert openai.json() == {"cached": True, "dialect": "openai"}
    assert anthropic.json() == {"cached": True, "dialect": "anthropic"}
    assert openai.headers["x-smartflow-cache-hit"] == "true"
    assert openai.headers["x-smartflow-call-id"] == seen.calls[0].call_id
    assert [call.cache_outcome for call in seen.calls] == ["hit", "hit"]
    assert all(call.first_byte_s is None for call in seen.calls)  # nothing was sent


async def test_an_admit_refusal_is_rendered_in_each_callers_dialect(
        gateway: tuple[str, Seen]) -> None:
    url, seen = gateway
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        openai = await client.post("/v1/chat/completions",
                                   json={"model": "over-budget", "messages": HELLO})
        anthropic = await client.post("/v1/messages", json={
            "model": "over-budget", "max_tokens": 5, "messages": HELLO})
    assert openai.status_code == anthropic.status_code == 429
    assert openai.json() == {"error": {"message": "Budget exceeded.", "type": "rate_limit_error",
                                       "param": None, "code": "budget_exceeded"}}
    assert anthropic.json() == {"type": "error", "error": {"type": "rate_limit_error",
                                                          "message": "Budget exceeded."}}
    assert [(c.error.phase, c.error.reason) for c in seen.calls if c.error] == [
        (Phase.BEFORE_SEND, Reason.LIMIT)] * 2


async def test_a_bug_in_a_stage_is_a_500_in_the_callers_shape_and_the_call_is_recorded(
        gateway: tuple[str, Seen]) -> None:
    url, seen = gateway
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        anthropic = await client.post("/v1/messages", json={
            "model": "buggy", "max_tokens": 5, "messages": HELLO})
    assert anthropic.status_code == 500
    assert anthropic.json() == {"type": "error", "error": {
        "type": "api_error", "message": "The gateway failed while handling this call."}}
    assert seen.calls[-1].error is not None
    assert seen.calls[-1].error.reason is Reason.INTERNAL


async def test_a_stream_stage_sees_the_bytes_and_the_exit_sees_usage_and_cost(
        gateway: tuple[str, Seen]) -> None:
    url, seen = gateway
    answer = await post_json_h1(url, "/v1/chat/completions",
                                {"model": "m", "stream": True, "messages": HELLO,
                                 "stream_options": {"include_usage": True}})
    assert answer.status == 200
    assert b"MOCK RESPONSE TO" in answer.body  # the chained transform ran
    call = seen.calls[-1]
    assert call.usage is not None and call.usage.completion_tokens > 0
    expected = (call.usage.prompt_tokens * 1.0 + call.usage.completion_tokens * 2.0) / 1e6
    assert call.cost is not None and call.cost.usd == pytest.approx(expected)
    assert float(answer.trailers["x-smartflow-response-cost"]) == pytest.approx(expected)


async def test_a_whole_answer_carries_its_cost_and_the_exit_saw_it_first(
        gateway: tuple[str, Seen]) -> None:
    url, seen = gateway
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        response = await client.post("/v1/chat/completions",
                                     json={"model": "m", "messages": HELLO})
    call = seen.calls[-1]
    assert response.headers["x-smartflow-call-id"] == call.call_id
    assert response.headers["x-smartflow-cache-hit"] == "false"
    assert float(response.headers["x-smartflow-response-cost"]) == pytest.approx(call.cost.usd)
    assert len(call.trace_id) == 32


async def test_a_callers_traceparent_becomes_the_trace_id(gateway: tuple[str, Seen]) -> None:
    url, seen = gateway
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        await client.post("/v1/chat/completions", json={"model": "m", "messages": HELLO},
                          headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"})
    assert seen.calls[-1].trace_id == trace


# -- one error model --------------------------------------------------------------------


@pytest.mark.parametrize(("status", "openai_type", "anthropic_type"), [
    (400, "invalid_request_error", "invalid_request_error"),
    (401, "authentication_error", "authentication_error"),
    (404, "not_found_error", "not_found_error"),
    (429, "rate_limit_error", "rate_limit_error"),
    (500, "server_error", "api_error"),
    (502, "server_error", "api_error"),
    (503, "server_error", "overloaded_error"),
    (504, "timeout_error", "timeout_error"),
    (529, "server_error", "overloaded_error"),
])
def test_each_dialect_names_a_status_from_its_own_table(
        status: int, openai_type: str, anthropic_type: str) -> None:
    error = GatewayError(status, "x")
    assert orjson.loads(openai_dialect.error_body(error))["error"]["type"] == openai_type
    assert orjson.loads(anthropic_errors.error_body(error))["error"]["type"] == anthropic_type
    event = anthropic_errors.error_event(error)
    assert event.startswith(b"event: error\ndata: ") and anthropic_type.encode() in event


def test_upstream_client_failures_are_told_apart_by_type_not_name() -> None:
    class RenamedTimeout(ConnectTimeout):  # a name without "Timeout" in it is still one
        pass

    RenamedTimeout.__name__ = "Slow"
    timeout = error_from_upstream_failure(RenamedTimeout("slow"), Phase.BEFORE_FIRST_BYTE)
    assert (timeout.status, timeout.reason) == (504, Reason.TIMEOUT)
    first_byte = error_from_upstream_failure(FirstByteTimeout("x"), Phase.BEFORE_FIRST_BYTE)
    assert first_byte.reason is Reason.TIMEOUT
    for exc in (ConnectError("refused"), StaleConnection("reset")):
        error = error_from_upstream_failure(exc, Phase.BEFORE_FIRST_BYTE)
        assert (error.status, error.reason) == (502, Reason.CONNECTION)


@pytest.mark.parametrize(("error", "may_fail_over"), [
    (GatewayError(503, "x", reason=Reason.UPSTREAM_STATUS, phase=Phase.BEFORE_FIRST_BYTE), True),
    (GatewayError(429, "x", reason=Reason.UPSTREAM_STATUS, phase=Phase.BEFORE_FIRST_BYTE), True),
    (GatewayError(400, "x", reason=Reason.UPSTREAM_STATUS, phase=Phase.BEFORE_FIRST_BYTE), False),
    (GatewayError(504, "x", reason=Reason.TIMEOUT, phase=Phase.BEFORE_FIRST_BYTE), True),
    (GatewayError(502, "x", reason=Reason.CONNECTION, phase=Phase.BEFORE_FIRST_BYTE), True),
    (GatewayError(502, "x", reason=Reason.CONNECTION, phase=Phase.MID_STREAM), False),
    (GatewayError(429, "x", reason=Reason.LIMIT, phase=Phase.BEFORE_SEND), False),
    (GatewayError(401, "x", reason=Reason.AUTH, phase=Phase.BEFORE_SEND), False),
])
def test_only_an_upstream_failure_before_the_first_byte_may_fail_over(
        error: GatewayError, may_fail_over: bool) -> None:
    assert error.may_fail_over is may_fail_over

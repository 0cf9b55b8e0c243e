"""Failover, retries and fallback chains, through a real gateway and fault-injecting upstreams.

One gateway (one worker, so the order of attempts is deterministic) in front
of three upstreams A, B and C that fail on command (``FaultyUpstream``):

* ``grp`` — A (priority 0) then B (priority 1): A is always asked first;
* ``solo`` — A alone, for retries on one deployment;
* ``chained`` — served by the config chain ``c1`` = [deployment a-solo, deployment b-only];
* ``big`` — C, the larger-context fallback of ``grp``;
* ``claude-grp`` — two Anthropic mocks, for failover of a native passthrough.

Each test scripts the faults it needs and asserts what the caller sees (status,
body, ``x-smartflow-*`` headers) and what each upstream saw (which calls, in
which order, how far apart).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from harness.gateway import GatewayProcess
from upstreams.anthropic_mock import ProviderMockState, build_anthropic_mock
from upstreams.faulty_openai import FaultyUpstream
from upstreams.server import UpstreamThread

BACKOFF_S = 0.3
CHAT = {"model": "grp", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, FaultyUpstream]]:
    ups = {name: FaultyUpstream(name=name, seed=7).start() for name in ("A", "B", "C")}
    try:
        yield ups
    finally:
        for up in ups.values():
            up.stop()


@pytest.fixture(scope="module")
def claude_states() -> Iterator[tuple[ProviderMockState, ProviderMockState, str, str]]:
    first, second = ProviderMockState(), ProviderMockState()
    with UpstreamThread(build_anthropic_mock(first)) as one, \
            UpstreamThread(build_anthropic_mock(second)) as two:
        yield first, second, one.url, two.url


def _model(name: str, up: FaultyUpstream, deployment_id: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "provider": "openai", "model": "gpt-4o-mini",
            "api_base": up.url + "/v1", "api_key": "sk-test", "id": deployment_id, **extra}


@pytest.fixture(scope="module")
def gateway(upstreams: dict[str, FaultyUpstream], claude_states: Any,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    a, b, c = upstreams["A"], upstreams["B"], upstreams["C"]
    _, _, claude_one, claude_two = claude_states
    config = {
        "routing": {
            "strategy": "priority",
            "retries": 1,  # a model without a chain: one retry (chains: 1 by default)
            "retry_backoff": BACKOFF_S,
            "max_retry_after": 2.0,
            "attempt_timeout": 1.0,
            "cooldown_failures": 1000,  # these tests look at single calls, not cooldowns
            "context_window_fallbacks": {"grp": "big"},
            "fallback_chains": [{"name": "c1", "model": "chained",
                                 "targets": ["a-solo", "b-only"]},
                                {"name": "dear-chain", "targets": ["dear"]}],
        },
        "models": [
            _model("grp", a, "a", priority=0),
            _model("grp", b, "b", priority=1),
            _model("solo", a, "a-solo"),
            _model("only-b", b, "b-only"),
            _model("big", c, "big"),
            _model("dear", c, "dear", input_price_per_mtok=0.0,
                   output_price_per_mtok=1000.0),  # $0.016 for 16 tokens out
            {"name": "claude-grp", "provider": "anthropic", "model": "claude-sonnet-4-5",
             "api_base": claude_one, "api_key": "sk-ant-test", "id": "claude-1",
             "priority": 0},
            {"name": "claude-grp", "provider": "anthropic", "model": "claude-sonnet-4-5",
             "api_base": claude_two, "api_key": "sk-ant-test", "id": "claude-2",
             "priority": 1},
        ],
    }
    process = GatewayProcess(config, directory=tmp_path_factory.mktemp("failover"), workers=1)
    process.start()
    try:
        yield process
    finally:
        process.close()


@pytest.fixture(autouse=True)
def clean(upstreams: dict[str, FaultyUpstream]) -> Iterator[None]:
    for up in upstreams.values():
        up._script.clear()
        up.set_mix({})
        up.reset_stats()
    yield


def _chat(gateway: GatewayProcess, body: dict[str, Any] | None = None, *,
          headers: dict[str, str] | None = None, timeout: float = 30.0) -> httpx.Response:
    return httpx.post(gateway.url + "/v1/chat/completions", json=body or CHAT,
                      headers=headers or {}, timeout=timeout)


def _faults(up: FaultyUpstream) -> list[str]:
    return [hit.fault for hit in up.requests]


@pytest.mark.parametrize("fault", ["500", "502", "503", "429", "reset", "hang", "slow"])
def test_a_retryable_failure_moves_to_the_next_deployment_at_once(
        gateway: GatewayProcess, upstreams: dict[str, FaultyUpstream], fault: str) -> None:
    a, b = upstreams["A"], upstreams["B"]
    # A reset on a reused keep-alive connection looks like a stale connection, which
    # the upstream pool reconnects once by itself: script two so the attempt fails.
    a.script(*([fault] * (2 if fault == "reset" else 1)))
    started = time.monotonic()
    answer = _chat(gateway)
    elapsed = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    assert "answer from B" in answer.json()["choices"][0]["message"]["content"]
    assert answer.headers["x-smartflow-attempts"] == "2"
    assert answer.headers["x-smartflow-deployment"] == "b"
    assert answer.headers["x-smartflow-provider"] == "openai"
    assert set(_faults(a)) == {fault} and _faults(b) == ["ok"]
    # Moving to another deployment waits for no backoff: B is asked as soon as A
    # failed (a hang or a slow head fails at the 1 s attempt timeout).
    gap = b.requests[0].t - a.requests[0].t
    if fault in ("hang", "slow"):
        assert 0.9 <= gap < 10, gap
    else:
        assert gap < BACKOFF_S * 0.5 + 2.0, gap  # loose: a loaded machine
    assert elapsed < 15


def test_retries_on_one_deployment_back_off_with_jitter(
        gateway: GatewayProcess, upstreams: dict[str, FaultyUpstream]) -> None:
    a = upstreams["A"]
    a.script("503")
    answer = _chat(gateway, {**CHAT, "model": "solo"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-smartflow-attempts"] == "2"
    assert _faults(a) == ["503", "ok"]
    gap = a.requests[1].t - a.requests[0].t
    assert gap >= BACKOFF_S * 0.5 - 0.02, gap  # jitter keeps at least half the backoff


def test_retry_after_is_honoured(gateway: GatewayProcess,
                                 upstreams: dict[str, FaultyUpstream]) -> None:
    a = upstreams["A"]
    a.retry_after_s = 1.0
    a.script("429-retry-after")
    answer = _chat(gateway, {**CHAT, "model": "solo"})
    assert answer.status_code == 200, answer.text
    assert _faults(a) == ["429-retry-after", "ok"]
    assert a.requests[1].t - a.requests[0].t >= 0.95


def test_a_retry_after_longer_than_the_limit_is_not_waited_for(
        gateway: GatewayProcess, upstreams: dict[str, FaultyUpstream]) -> None:
    a = upstreams["A"]
    a.retry_after_s = 30.0
    a.script("429-retry-after")
    started = time.monotonic()
    answer = _chat(gateway, {**CHAT, "model": "solo"})
    assert time.monotonic() - started < 10
    # Nowhere else to go: the caller gets the 429 and its Retry-After, at once.
    assert answer.status_code == 429
    assert answer.headers["retry-after"] == "30"
    assert answer.headers["x-smartflow-attempts"] == "1"
    assert answer.json()["error"]["type"]
    assert _faults(a) == ["429-retry-after"]


def test_the_retry_budget_is_spent_then_the_error_is_the_answer(
        gateway: GatewayProcess, upstreams: dict[str, FaultyUpstream]) -> None:
    a = upstreams["A"]
    a.script("500", "500", "500")
    answer = _chat(gateway, {**CHAT, "model": "solo"})
    assert answer.status_code == 500
    assert answer.headers["x-smartflow-attempts"] == "2"  # one try + retries = 1
    assert _faults(a) == ["500", "500"]
    error = answer.json()["error"]
    assert set(error) >= {"message", "type", "code"}


@pytest.mark.parametrize("fault", ["400", "401"])
def test_a_non_retryable_error_in_a_group_is_never_retried(
        gateway: GatewayProcess, upstreams: dict[str, FaultyUpstream], fault: str) -> None:
    a, b = upstreams["A"], upstreams["B"]
    a.script(fault)
    answer = _chat(gateway)
    assert answer.status_code == int(fault)
    assert answer.headers["x-smartflow-attempts"] == "1"
    assert _faults(a) == [fault] and _faults(b) == []


@pytest.mark.parametrize("fault", ["400", "401"])
def test_a_chain_moves_on_at_once_after_a_non_retryable_error(
        gateway: GatewayProcess, upstreams: dict[str, FaultyUpstream], fault: str) -> None:
    a, b = upstreams["A"], upstreams["B"]
    a.script(fault)
    answer = _chat(gateway, {**CHAT, "model": "chained"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-smartflow-fallback-chain"] == "c1"
    assert answer.headers["x-smartflow-attempts"] == "2"
    assert answer.headers["x-smartflow-deployment"] == "b-only"
    assert _faults(a) == [fault]  # not retried, although retries = 1
    assert _faults(b) == ["ok"]
    assert b.requests[0].t - a.requests[0].t < BACKOFF_S * 0.5 + 2.0


def test_a_chain_retries_a_step_before_moving_on(
        gateway: GatewayProcess, upstreams: dict[str, FaultyUpstream]) -> None:
    a, b = upstreams["A"], upstreams["B"]
    a.script("502", "502")
    answer = _chat(gateway, {**CHAT, "model": "chained"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-smartflow-attempts"] == "3"
    assert _faults(a) == ["502", "502"] and _faults(b) == ["ok"]
    assert a.requests[1].t - a.requests[0].t >= BACKOFF_S * 0.5 - 0.02
    assert b.requests[0].t >= a.requests[1].t


def test_a_chain_step_waits_for_retry_after_before_its_retry(
        gateway: GatewayProcess, upstreams: dict[str, FaultyUpstream]) -> None:
    a, b = upstreams["A"], upstreams["B"]
    a.retry_after_s = 1.0
    a.script("429-retry-after", "429-retry-after")
    answer = _chat(gateway, {**CHAT, "model": "chained"})
    assert answer.status_code == 200, answer.text
    # The step's one retry (the chains' default budget) waits for Retry-After,
    # then the chain moves on at once.
    assert answer.headers["x-smartflow-attempts"] == "3"
    assert _faults(a) == ["429-retry-after", "429-retry-after"] and _faults(b) == ["ok"]
    assert a.requests[1].t - a.requests[0].t >= 0.95
    assert b.requests[0].t - a.requests[1].t < 0.9


def test_a_chain_chosen_by_header_and_an_unknown_one(
        gateway: GatewayProcess, upstreams: dict[str, FaultyUpstream]) -> None:
    a, b = upstreams["A"], upstreams["B"]
    a.script("500", "500")
    answer = _chat(gateway, {**CHAT, "model": "anything"},
                   headers={"x-smartflow-fallback-chain": "c1"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-smartflow-fallback-chain"] == "c1"
    assert _faults(b) == ["ok"]
    unknown = _chat(gateway, headers={"x-smartflow-fallback-chain": "no-such-chain"})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "unknown_fallback_chain"
    assert _faults(a) == ["500", "500"]


def test_every_deployment_failing_answers_the_last_error_with_the_attempts(
        gateway: GatewayProcess, upstreams: dict[str, FaultyUpstream]) -> None:
    a, b = upstreams["A"], upstreams["B"]
    a.set_mix({"503": 1.0})
    b.set_mix({"502": 1.0})
    answer = _chat(gateway)
    assert answer.status_code in (502, 503)
    # a, b, then one retry (budget 1) on the group's first choice
    assert answer.headers["x-smartflow-attempts"] == "3"
    assert len(a.requests) + len(b.requests) == 3
    assert answer.json()["error"]["message"]


def test_a_context_window_error_goes_to_the_larger_context_model(
        gateway: GatewayProcess, upstreams: dict[str, FaultyUpstream]) -> None:
    a, b, c = upstreams["A"], upstreams["B"], upstreams["C"]
    a.script("context")
    answer = _chat(gateway)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-smartflow-deployment"] == "big"
    assert "answer from C" in answer.json()["choices"][0]["message"]["content"]
    assert _faults(a) == ["context"] and _faults(b) == [] and _faults(c) == ["ok"]


def _stream(gateway: GatewayProcess, model: str = "grp") -> tuple[httpx.Response, bytes]:
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", timeout=30,
                      json={**CHAT, "model": model, "stream": True}) as response:
        body = b"".join(response.iter_bytes())
    return response, body


def test_a_stream_fails_over_before_its_first_byte(
        gateway: GatewayProcess, upstreams: dict[str, FaultyUpstream]) -> None:
    a, b = upstreams["A"], upstreams["B"]
    a.script("reset", "reset")  # two: see the first test
    response, body = _stream(gateway)
    assert response.status_code == 200
    assert response.headers["x-smartflow-attempts"] == "2"
    assert response.headers["x-smartflow-deployment"] == "b"
    events = [line for line in body.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]"
    text = "".join(
        choice["delta"].get("content") or ""
        for event in events[:-1] for choice in orjson.loads(event[6:])["choices"])
    assert text.startswith("answer from B")
    assert set(_faults(a)) == {"reset"} and _faults(b) == ["ok"]


def test_a_stream_never_fails_over_once_bytes_reached_the_caller(
        gateway: GatewayProcess, upstreams: dict[str, FaultyUpstream]) -> None:
    a, b = upstreams["A"], upstreams["B"]
    a.script("mid-stream-reset")
    response, body = _stream(gateway)
    assert response.status_code == 200
    assert response.headers["x-smartflow-attempts"] == "1"
    events = [orjson.loads(line[6:]) for line in body.split(b"\n")
              if line.startswith(b"data: ") and line != b"data: [DONE]"]
    assert b"data: [DONE]" not in body  # the caller learns the stream broke ...
    assert "error" in events[-1] and "error" not in events[0]  # ... from one error event
    text = "".join(choice["delta"].get("content") or ""
                   for event in events[:-1] for choice in event["choices"])
    assert text.startswith("answer")  # A's first chunks had reached the caller
    assert _faults(a) == ["mid-stream-reset"] and _faults(b) == []


def test_a_failed_attempt_costs_the_caller_nothing(
        gateway: GatewayProcess, upstreams: dict[str, FaultyUpstream]) -> None:
    upstreams["A"].script("500")
    answer = _chat(gateway)
    assert answer.status_code == 200
    ok = _chat(gateway)
    assert ok.headers["x-smartflow-attempts"] == "1"
    # The failed attempt is not billed: the same answer costs the same either way.
    assert answer.headers["x-smartflow-response-cost"] == ok.headers["x-smartflow-response-cost"]


def test_a_native_anthropic_passthrough_fails_over_and_relays_the_last_error_as_it_came(
        gateway: GatewayProcess, claude_states: Any) -> None:
    first, second, _, _ = claude_states
    first.requests.clear()
    second.requests.clear()
    message = {"model": "claude-grp", "max_tokens": 32,
               "messages": [{"role": "user", "content": "hello"}]}
    headers = {"anthropic-version": "2023-06-01"}
    first.fail_next = (529, "Overloaded")
    answer = httpx.post(gateway.url + "/v1/messages", json=message, headers=headers,
                        timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["type"] == "message"
    assert answer.headers["x-smartflow-attempts"] == "2"
    assert answer.headers["x-smartflow-deployment"] == "claude-2"
    assert len(first.requests) == 1 and len(second.requests) == 1

    first.fail_next = (400, "messages: bad request")
    refused = httpx.post(gateway.url + "/v1/messages", json=message, headers=headers,
                         timeout=30)
    assert refused.status_code == 400
    assert refused.headers["x-smartflow-attempts"] == "1"  # not retried, no chain
    assert refused.json()["type"] == "error"  # Anthropic's own error body
    assert refused.json()["error"]["message"] == "messages: bad request"
    assert len(second.requests) == 1


def test_the_routing_status_shows_deployments_chains_and_cooldowns(
        gateway: GatewayProcess, upstreams: dict[str, FaultyUpstream]) -> None:
    answer = httpx.get(gateway.url + "/api/routing/status", timeout=30)
    assert answer.status_code == 200, answer.text
    status = answer.json()
    by_id = {d["id"]: d for d in status["deployments"]}
    assert by_id["a"]["model"] == "grp" and by_id["a"]["strategy"] == "priority"
    assert by_id["b"]["priority"] == 1 and by_id["a"]["cooling_down"] is False
    assert {"name": "c1", "model": "chained", "targets": ["a-solo", "b-only"],
            "source": "config"} in status["fallback_chains"]
    assert status["provider_budgets"] == []
    assert "sk-test" not in answer.text  # never a provider key


def test_models_lists_groups_and_chains_made_through_the_admin_api(
        gateway: GatewayProcess, upstreams: dict[str, FaultyUpstream]) -> None:
    def listed() -> set[str]:
        answer = httpx.get(gateway.url + "/v1/models", timeout=30)
        assert answer.status_code == 200
        return {model["id"] for model in answer.json()["data"]}

    assert {"grp", "solo", "chained", "claude-grp"} <= listed()  # config groups and chains
    group = {"name": "managed-grp", "strategy": "round_robin", "deployments": [
        {"id": "m1", "provider": "openai", "model": "gpt-4o-mini",
         "api_base": upstreams["C"].url + "/v1"}]}
    created = httpx.post(gateway.url + "/api/routing/groups", json=group, timeout=30)
    assert created.status_code == 201, created.text
    try:
        deadline = time.monotonic() + 10
        while "managed-grp" not in listed():
            assert time.monotonic() < deadline, "the new group never showed in /v1/models"
            time.sleep(0.05)
        one = httpx.get(gateway.url + "/v1/models/managed-grp", timeout=30)
        assert one.status_code == 200 and one.json()["owned_by"] == "openai"
        answer = _chat(gateway, {**CHAT, "model": "managed-grp"})
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-smartflow-deployment"] == "managed-grp:m1"
    finally:
        httpx.delete(gateway.url + "/api/routing/groups/managed-grp", timeout=30)
    deadline = time.monotonic() + 10
    while "managed-grp" in listed():
        assert time.monotonic() < deadline, "the deleted group stayed in /v1/models"
        time.sleep(0.05)


def test_a_budget_holds_the_worst_case_of_the_chain_a_call_names(
        gateway: GatewayProcess, upstreams: dict[str, FaultyUpstream]) -> None:
    created = httpx.post(gateway.url + "/api/enterprise/vkeys", timeout=30,
                         json={"alias": "chain-budget", "max_budget": 0.01})
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    headers = {"authorization": f"Bearer {key}"}
    cheap = _chat(gateway, {**CHAT, "model": "solo"}, headers=headers)
    assert cheap.status_code == 200, cheap.text
    # The chain it names may end on a deployment whose worst case ($0.016) does
    # not fit in the key's $0.01: refused before any provider is called.
    calls_before = len(upstreams["A"].requests) + len(upstreams["C"].requests)
    refused = _chat(gateway, {**CHAT, "model": "solo"},
                    headers={**headers, "x-smartflow-fallback-chain": "dear-chain"})
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert len(upstreams["A"].requests) + len(upstreams["C"].requests) == calls_before

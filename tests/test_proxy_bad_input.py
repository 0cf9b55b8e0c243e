"""Bad requests get a clear error in the right shape and never reach a provider.

Against the real gateway process, with a mock upstream that records every
request it gets: for each case, the status, the error shape, `param`, and
that the upstream saw nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from harness.gateway import GatewayProcess
from upstreams.openai_mock import build_openai_mock
from upstreams.server import UpstreamThread
from upstreams.state import UpstreamState

MAX_BODY_BYTES = 64 * 1024
OK_MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[str, UpstreamState, GatewayProcess]]:
    state = UpstreamState()
    with UpstreamThread(build_openai_mock(state)) as upstream:
        config = {"server": {"access_log": False, "max_body_bytes": MAX_BODY_BYTES},
                  "models": [{"name": "gpt-test", "provider": "openai", "model": "gpt-4o-mini",
                              "api_base": upstream.url + "/v1", "api_key": "sk-openai-test"}]}
        with GatewayProcess(config, workers=1) as gateway:
            yield gateway.url, state, gateway


def _post(url: str, path: str, content: bytes) -> httpx.Response:
    return httpx.post(url + path, content=content, timeout=10,
                      headers={"content-type": "application/json"})


def _j(obj: Any) -> bytes:
    return orjson.dumps(obj)


def _assert_openai_error(response: httpx.Response, status: int, param: str | None,
                         code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error  # type: ignore[no-any-return]


CHAT_CASES = [
    ("invalid JSON", b"{not json", 400, None),
    ("empty body", b"", 400, None),
    ("a JSON array", _j([1, 2]), 400, None),
    ("a JSON string", _j("hello"), 400, None),
    ("a JSON null", b"null", 400, None),
    ("missing model", _j({"messages": OK_MESSAGES}), 400, "model"),
    ("model is a number", _j({"model": 4, "messages": OK_MESSAGES}), 400, "model"),
    ("model is empty", _j({"model": "", "messages": OK_MESSAGES}), 400, "model"),
    ("missing messages", _j({"model": "gpt-test"}), 400, "messages"),
    ("messages is an object", _j({"model": "gpt-test", "messages": {"role": "user"}}), 400,
     "messages"),
    ("messages is empty", _j({"model": "gpt-test", "messages": []}), 400, "messages"),
    ("a message is a string", _j({"model": "gpt-test", "messages": ["hi"]}), 400, "messages"),
    ("a bad role", _j({"model": "gpt-test", "messages": [{"role": "wizard", "content": "x"}]}),
     400, "messages"),
    ("a missing role", _j({"model": "gpt-test", "messages": [{"content": "x"}]}), 400,
     "messages"),
    ("content is a number", _j({"model": "gpt-test",
                                "messages": [{"role": "user", "content": 5}]}), 400, "messages"),
    ("stream is a string", _j({"model": "gpt-test", "messages": OK_MESSAGES, "stream": "yes"}),
     400, "stream"),
    ("stream_options is a list", _j({"model": "gpt-test", "messages": OK_MESSAGES,
                                     "stream": True, "stream_options": []}), 400,
     "stream_options"),
    ("n is zero", _j({"model": "gpt-test", "messages": OK_MESSAGES, "n": 0}), 400, "n"),
]


@pytest.mark.parametrize(("case", "body", "status", "param"), CHAT_CASES,
                         ids=[case[0] for case in CHAT_CASES])
def test_bad_chat_requests_are_rejected_before_any_upstream_call(
        stack: tuple[str, UpstreamState, GatewayProcess], case: str, body: bytes, status: int,
        param: str | None) -> None:
    url, state, _gateway = stack
    before = len(state.requests)
    _assert_openai_error(_post(url, "/v1/chat/completions", body), status, param)
    assert len(state.requests) == before


def test_an_unknown_model_is_404_model_not_found(
        stack: tuple[str, UpstreamState, GatewayProcess]) -> None:
    url, state, _gateway = stack
    before = len(state.requests)
    response = _post(url, "/v1/chat/completions",
                     _j({"model": "no-such-model", "messages": OK_MESSAGES}))
    _assert_openai_error(response, 404, "model", "model_not_found")
    assert len(state.requests) == before


def test_a_body_past_max_body_bytes_is_413(
        stack: tuple[str, UpstreamState, GatewayProcess]) -> None:
    url, state, _gateway = stack
    before = len(state.requests)
    big = _j({"model": "gpt-test", "messages": [{"role": "user",
                                                 "content": "x" * (MAX_BODY_BYTES * 2)}]})
    response = _post(url, "/v1/chat/completions", big)
    assert response.status_code == 413
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert len(state.requests) == before


@pytest.mark.parametrize("path", ["/v1/messages", "/anthropic/v1/messages"])
def test_a_body_past_max_body_bytes_on_anthropic_routes_is_413_in_anthropic_shape(
        stack: tuple[str, UpstreamState, GatewayProcess], path: str) -> None:
    # Refused from the declared length, before any route runs: the caller
    # still gets the error shape of the API it speaks.
    url, state, _gateway = stack
    before = len(state.requests)
    big = _j({"model": "claude-test", "max_tokens": 8,
              "messages": [{"role": "user", "content": "x" * (MAX_BODY_BYTES * 2)}]})
    response = _post(url, path, big)
    assert response.status_code == 413
    payload = response.json()
    assert payload["type"] == "error"
    assert payload["error"]["type"] == "request_too_large"
    assert len(state.requests) == before


OTHER_CASES = [
    ("/v1/embeddings", _j({"model": "gpt-test"}), 400, "input"),
    ("/v1/embeddings", _j({"model": "gpt-test", "input": 5}), 400, "input"),
    ("/v1/embeddings", _j({"input": "x"}), 400, "model"),
    ("/v1/completions", _j({"model": "gpt-test"}), 400, "prompt"),
    ("/v1/completions", _j({"model": "gpt-test", "prompt": {"a": 1}}), 400, "prompt"),
    ("/v1/completions", _j({"model": "gpt-test", "prompt": "x", "stream": 1}), 400, "stream"),
]


@pytest.mark.parametrize(("path", "body", "status", "param"), OTHER_CASES)
def test_bad_embeddings_and_completions_requests_are_rejected(
        stack: tuple[str, UpstreamState, GatewayProcess], path: str, body: bytes, status: int,
        param: str) -> None:
    url, state, _gateway = stack
    before = len(state.requests)
    _assert_openai_error(_post(url, path, body), status, param)
    assert len(state.requests) == before


@pytest.mark.parametrize(("body", "status"), [
    (b"{oops", 400),
    (_j({"messages": OK_MESSAGES, "max_tokens": 5}), 400),
    (_j({"model": "no-such-model", "messages": OK_MESSAGES, "max_tokens": 5}), 404),
    (_j({"model": "gpt-test", "messages": "hi", "max_tokens": 5}), 400),
])
def test_bad_anthropic_messages_get_anthropic_shaped_errors(
        stack: tuple[str, UpstreamState, GatewayProcess], body: bytes, status: int) -> None:
    url, state, _gateway = stack
    before = len(state.requests)
    response = _post(url, "/v1/messages", body)
    assert response.status_code == status
    payload = response.json()
    assert payload["type"] == "error"
    assert payload["error"]["type"] in ("invalid_request_error", "not_found_error")
    assert payload["error"]["message"]
    assert len(state.requests) == before


def test_no_bad_request_left_a_traceback_or_a_dead_worker(
        stack: tuple[str, UpstreamState, GatewayProcess]) -> None:
    url, _state, gateway = stack
    assert httpx.get(url + "/health", timeout=5).status_code == 200
    assert "Traceback" not in gateway.output_text()

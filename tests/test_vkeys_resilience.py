"""Virtual keys when things go wrong: Redis goes away and comes back, a streamed call
ends or is abandoned, a failed call, a worst case that does not fit."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from harness.gateway import GatewayProcess
from harness.redis_server import RedisServer
from harness.waiting import wait_until_sync

MASTER = "sk-master-resilience-0123456789"
CHAT = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 16}


def _config(redis_url: str) -> dict[str, Any]:
    return {
        "auth": {"master_key": MASTER},
        "state": {"redis_url": redis_url, "redis_timeout": 0.5},
        "models": [
            {"name": "penny", "provider": "mock", "model": "mock-gpt",
             "price_per_request": 0.01, "input_price_per_mtok": 0.0,
             "output_price_per_mtok": 0.0},
            {"name": "slow", "provider": "mock", "model": "mock-gpt",
             "price_per_request": 0.01, "input_price_per_mtok": 0.0,
             "output_price_per_mtok": 0.0,
             "options": {"chunk_count": 40, "chunk_interval_ms": 100}},
            {"name": "failing", "provider": "mock", "model": "mock-gpt",
             "price_per_request": 0.01, "options": {"fail_status": 500}},
            {"name": "dear", "provider": "mock", "model": "mock-gpt",
             "input_price_per_mtok": 0.0, "output_price_per_mtok": 1000.0},
        ],
    }


def _admin(url: str, method: str, path: str, body: Any = None) -> httpx.Response:
    return httpx.request(method, url + path, json=body, timeout=30,
                         headers={"authorization": f"Bearer {MASTER}"})


def _key(url: str, **fields: Any) -> dict[str, Any]:
    answer = _admin(url, "POST", "/api/enterprise/vkeys", fields)
    assert answer.status_code == 201, answer.text
    return answer.json()  # type: ignore[no-any-return]


def _chat(url: str, key: str, model: str, **extra: Any) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json={"model": model, **CHAT, **extra},
                      headers={"authorization": f"Bearer {key}"}, timeout=30)


def _view(url: str, key_id: str) -> dict[str, Any]:
    return _admin(url, "GET", f"/api/enterprise/vkeys/{key_id}").json()  # type: ignore[no-any-return]


@pytest.fixture
def setup(redis_server_factory: Callable[..., RedisServer],
          gateway_factory: Callable[..., GatewayProcess]) -> tuple[RedisServer, GatewayProcess]:
    redis = redis_server_factory(persistence=True)
    gateway = gateway_factory(_config(redis.url), workers=1)
    return redis, gateway


def test_without_redis_a_virtual_key_gets_503_and_the_master_key_still_works(
        setup: tuple[RedisServer, GatewayProcess]) -> None:
    redis, gateway = setup
    created = _key(gateway.url, alias="blip", max_budget=1.0)
    assert _chat(gateway.url, created["key"], "penny").status_code == 200
    redis.stop()
    down = _chat(gateway.url, created["key"], "penny")
    assert down.status_code == 503
    assert down.json()["error"]["code"] == "state_unavailable"
    anthropic = httpx.post(gateway.url + "/v1/messages", json={"model": "penny", **CHAT},
                           headers={"x-api-key": created["key"],
                                    "anthropic-version": "2023-06-01"}, timeout=30)
    assert anthropic.status_code == 503 and anthropic.json()["type"] == "error"
    assert _chat(gateway.url, MASTER, "penny").status_code == 200
    redis.start()
    wait_until_sync(lambda: _chat(gateway.url, created["key"], "penny").status_code == 200,
                    timeout_s=15)
    assert "Traceback" not in gateway.output_text()


def test_a_streamed_call_commits_its_cost_after_the_last_byte(
        setup: tuple[RedisServer, GatewayProcess]) -> None:
    _redis, gateway = setup
    created = _key(gateway.url, alias="stream", max_budget=1.0)
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", timeout=30,
                      json={"model": "penny", **CHAT, "stream": True},
                      headers={"authorization": f"Bearer {created['key']}"}) as answer:
        assert answer.status_code == 200
        body = b"".join(answer.iter_bytes())
    assert body.rstrip().endswith(b"data: [DONE]")
    wait_until_sync(lambda: _view(gateway.url, created["id"])["spend"] == 0.01, timeout_s=10)
    assert _view(gateway.url, created["id"])["reserved"] == 0.0


def test_an_abandoned_stream_releases_its_hold(
        setup: tuple[RedisServer, GatewayProcess]) -> None:
    _redis, gateway = setup
    created = _key(gateway.url, alias="abandon", max_budget=0.01)

    async def start_and_leave() -> None:
        async with httpx.AsyncClient(timeout=30) as client, client.stream(
                "POST", gateway.url + "/v1/chat/completions",
                json={"model": "slow", **CHAT, "stream": True},
                headers={"authorization": f"Bearer {created['key']}"}) as answer:
            assert answer.status_code == 200
            async for _chunk in answer.aiter_bytes():
                break  # one chunk, then hang up
    asyncio.run(start_and_leave())
    # The hold is released at once, not after the reservation TTL; what the
    # provider delivered before the hang-up is billed (a caller cannot get an
    # answer free by disconnecting before its last chunk).
    wait_until_sync(lambda: _view(gateway.url, created["id"])["reserved"] == 0.0,
                    timeout_s=15)
    assert _view(gateway.url, created["id"])["spend"] == 0.01
    refused = _chat(gateway.url, created["key"], "penny")
    assert refused.status_code == 429


def test_a_failed_call_costs_nothing_and_frees_its_hold(
        setup: tuple[RedisServer, GatewayProcess]) -> None:
    _redis, gateway = setup
    created = _key(gateway.url, alias="fail", max_budget=0.01)
    for _ in range(3):
        assert _chat(gateway.url, created["key"], "failing").status_code == 500
    wait_until_sync(lambda: _view(gateway.url, created["id"])["reserved"] == 0.0, timeout_s=10)
    assert _view(gateway.url, created["id"])["spend"] == 0.0
    assert _chat(gateway.url, created["key"], "penny").status_code == 200


def test_a_worst_case_that_does_not_fit_is_refused_before_the_provider(
        setup: tuple[RedisServer, GatewayProcess]) -> None:
    _redis, gateway = setup
    # $1000 per million output tokens: max_tokens 2000 could cost $2.
    created = _key(gateway.url, alias="worst", max_budget=1.0)
    refused = _chat(gateway.url, created["key"], "dear", max_tokens=2000)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert refused.headers["x-smartflow-budget-remaining"] == "1"
    fits = _chat(gateway.url, created["key"], "dear", max_tokens=100)
    assert fits.status_code == 200
    assert float(fits.headers["x-smartflow-response-cost"]) <= 0.1


def test_a_slow_redis_fails_the_call_fast_instead_of_hanging(
        setup: tuple[RedisServer, GatewayProcess]) -> None:
    redis, gateway = setup
    created = _key(gateway.url, alias="slow-redis", max_budget=1.0)
    assert _chat(gateway.url, created["key"], "penny").status_code == 200
    with socket.create_connection(("127.0.0.1", redis.port)) as sock:
        sock.sendall(b"*3\r\n$6\r\nCLIENT\r\n$5\r\nPAUSE\r\n$4\r\n3000\r\n")
        sock.recv(64)
        started = time.monotonic()
        answer = _chat(gateway.url, created["key"], "penny")
        elapsed = time.monotonic() - started
    assert answer.status_code == 503
    assert elapsed < 2.9  # the 0.5 s state timeout, not Redis's 3 s pause

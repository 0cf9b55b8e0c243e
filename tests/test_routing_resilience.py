"""Routing when Redis goes away: calls keep being routed and failed over (the shared
state is a hint, never a dependency of a call), and it all works again once
Redis is back."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from harness.gateway import GatewayProcess
from harness.redis_server import RedisServer
from harness.waiting import wait_until_sync
from upstreams.faulty_openai import FaultyUpstream

MASTER = "sk-master-routing-resilience-0123"


@pytest.fixture
def upstreams() -> Iterator[tuple[FaultyUpstream, FaultyUpstream]]:
    a, b = FaultyUpstream(name="A").start(), FaultyUpstream(name="B").start()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def _deployment(name: str, deployment_id: str, up: FaultyUpstream) -> dict[str, Any]:
    return {"name": name, "provider": "openai", "model": "gpt-4o-mini", "id": deployment_id,
            "api_base": up.url + "/v1", "api_key": "sk-test"}


def _chat(gateway: GatewayProcess, model: str) -> httpx.Response:
    return httpx.post(gateway.url + "/v1/chat/completions", timeout=30,
                      headers={"authorization": f"Bearer {MASTER}"},
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}]})


def test_calls_are_routed_and_failed_over_while_redis_is_down(
        redis_server_factory: Callable[..., RedisServer],
        gateway_factory: Callable[..., GatewayProcess],
        upstreams: tuple[FaultyUpstream, FaultyUpstream]) -> None:
    a, b = upstreams
    redis = redis_server_factory(persistence=True)
    gateway = gateway_factory({
        "auth": {"master_key": MASTER},
        "state": {"redis_url": redis.url, "redis_timeout": 0.5},
        "routing": {"strategy_by_model": {"lc": "least_connections"},
                    "cooldown_failures": 2, "cooldown_time": 60},
        "models": [_deployment("lc", "lc-a", a), _deployment("lc", "lc-b", b),
                   _deployment("rr", "rr-a", a), _deployment("rr", "rr-b", b)],
    }, workers=1)
    assert {_chat(gateway, "lc").status_code for _ in range(4)} == {200}

    redis.stop()
    # least_connections cannot ask Redis: the call still goes out, in rotation.
    answers = [_chat(gateway, "lc") for _ in range(6)]
    assert [r.status_code for r in answers] == [200] * 6
    assert {r.headers["x-smartflow-deployment"] for r in answers} == {"lc-a", "lc-b"}
    # Failover needs no Redis either; the failure report is lost, not the call.
    a.script("500")
    failed_over = [_chat(gateway, "rr") for _ in range(2)]
    assert [r.status_code for r in failed_over] == [200, 200]
    assert sorted(r.headers["x-smartflow-attempts"] for r in failed_over) == ["1", "2"]

    redis.start()
    # Back: the shared state works again (two failures in a row cool "rr-a" down).
    wait_until_sync(lambda: _chat(gateway, "lc").headers.get("x-smartflow-attempts") == "1",
                    timeout_s=20)
    a.set_mix({"500": 1.0})

    def cooled() -> bool:
        answer = _chat(gateway, "rr")
        assert answer.status_code == 200, answer.text
        status = httpx.get(gateway.url + "/api/routing/status", timeout=30,
                           headers={"authorization": f"Bearer {MASTER}"}).json()
        return any(d["id"] == "rr-a" and d["cooling_down"] for d in status["deployments"])

    wait_until_sync(cooled, timeout_s=30)
    a.reset_stats()
    assert [_chat(gateway, "rr").headers["x-smartflow-deployment"] for _ in range(6)] == \
        ["rr-b"] * 6
    assert a.counts() == {}  # cooling: not asked at all
    assert "Traceback" not in gateway.output_text()

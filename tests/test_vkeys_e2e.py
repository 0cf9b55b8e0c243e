"""Virtual keys through real gateway processes sharing one Redis.

Two nodes (two supervisors on two ports, two workers each) share a Redis:
budgets and rate limits must hold across all four workers, exactly; a key
blocked, regenerated or deleted on one node must stop working on the other
on its next call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness.gateway import GatewayNodes
from harness.waiting import wait_until_sync

MASTER = "sk-master-e2e-0123456789"
MODELS = [
    {"name": "penny", "provider": "mock", "model": "mock-gpt", "price_per_request": 0.01,
     "input_price_per_mtok": 0.0, "output_price_per_mtok": 0.0},
    {"name": "free", "provider": "mock", "model": "mock-gpt", "price_per_request": 0.0,
     "input_price_per_mtok": 0.0, "output_price_per_mtok": 0.0},
    {"name": "claude-mock", "provider": "mock", "model": "mock-claude",
     "price_per_request": 0.0, "input_price_per_mtok": 0.0, "output_price_per_mtok": 0.0},
]
CHAT = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 16}


def _config(redis_url: str, *, cluster: bool = False) -> dict[str, Any]:
    return {"auth": {"master_key": MASTER},
            "state": {"redis_url": redis_url, "redis_cluster": cluster},
            "models": MODELS}


@pytest.fixture(scope="module")
def nodes(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayNodes]:
    if not redis_server.is_running:
        redis_server.start()
    pair = GatewayNodes(_config(redis_server.url), tmp_path_factory.mktemp("vkeys-nodes"))
    try:
        yield pair
    finally:
        pair.close()


def admin(url: str, method: str, path: str, body: Any = None,
          token: str = MASTER) -> httpx.Response:
    return httpx.request(method, url + path, json=body,
                         headers={"authorization": f"Bearer {token}"}, timeout=30)


def create_key(url: str, **fields: Any) -> dict[str, Any]:
    answer = admin(url, "POST", "/api/enterprise/vkeys", fields)
    assert answer.status_code == 201, answer.text
    return answer.json()  # type: ignore[no-any-return]


def chat(url: str, key: str, model: str = "free", **extra: Any) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json={"model": model, **CHAT, **extra},
                      headers={"authorization": f"Bearer {key}"}, timeout=30)


async def _burst(urls: list[str], key: str, count: int, model: str) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        async def one(index: int) -> httpx.Response:
            return await client.post(urls[index % len(urls)] + "/v1/chat/completions",
                                     json={"model": model, **CHAT},
                                     headers={"authorization": f"Bearer {key}"})
        return list(await asyncio.gather(*(one(i) for i in range(count))))


def spend_of(url: str, key_id: str) -> float:
    answer = admin(url, "GET", f"/api/enterprise/vkeys/{key_id}")
    assert answer.status_code == 200, answer.text
    return float(answer.json()["spend"])


def assert_exact_budget(urls: list[str]) -> None:
    created = create_key(urls[0], alias="exact", max_budget=1.00)
    answers = asyncio.run(_burst(urls, created["key"], 300, "penny"))
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) == 100, sorted(set(statuses))
    assert statuses.count(429) == 200
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert refused.headers["x-smartflow-budget-limit"] == "1"
    assert refused.headers["x-smartflow-budget-remaining"] == "0"
    assert refused.headers["x-smartflow-budget-reset"] == "never"
    # Commits land after the answers: wait for them, then the figure is exact.
    wait_until_sync(lambda: spend_of(urls[1], created["id"]) >= 1.0, timeout_s=20)
    view = admin(urls[1], "GET", f"/api/enterprise/vkeys/{created['id']}").json()
    assert view["spend"] == 1.0
    assert view["remaining"] == 0.0
    assert view["reserved"] == 0.0


def test_a_one_dollar_budget_admits_exactly_100_of_300_concurrent_calls_over_two_nodes(
        nodes: GatewayNodes) -> None:
    assert_exact_budget(nodes.urls)


def _counted(urls: list[str], line_start: str) -> float:
    """The sum over every node's /metrics of the samples whose line starts so."""
    total = 0.0
    for url in urls:
        for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
            if line.startswith(line_start):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_rpm_60_lets_exactly_60_of_a_200_burst_through_over_two_nodes(nodes: GatewayNodes) -> None:
    created = create_key(nodes.urls[0], alias="rpm", rpm_limit=60)
    refused_rpm = 'smartflow_vkey_refused_total{reason="rpm",scope="key"}'
    admitted = 'smartflow_vkey_admitted_total{via="redis"}'
    refused_before = _counted(nodes.urls, refused_rpm)
    admitted_before = _counted(nodes.urls, admitted)
    answers = asyncio.run(_burst(nodes.urls, created["key"], 200, "free"))
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) == 60, sorted(set(statuses))
    assert statuses.count(429) == 140
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-limit-requests"] == "60"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    first = next(a for a in answers if a.status_code == 200)
    assert first.headers["x-ratelimit-limit-requests"] == "60"
    assert 0 <= int(first.headers["x-ratelimit-remaining-requests"]) < 60
    # /metrics counts them too (each worker exports about once a second).
    wait_until_sync(lambda: _counted(nodes.urls, refused_rpm) - refused_before == 140,
                    timeout_s=15)
    # RPM 60 is far too small to lease from: every admitted call went to Redis.
    wait_until_sync(lambda: _counted(nodes.urls, admitted) - admitted_before >= 60,
                    timeout_s=15)


def test_the_create_answer_shows_the_key_once_and_get_shows_spend_and_what_remains(
        nodes: GatewayNodes) -> None:
    url = nodes.urls[0]
    created = create_key(url, alias="crud", user_id="alice", models=["free", "pen*"],
                         max_budget=0.05, budget_period="daily", rpm_limit=100,
                         tpm_limit=100000, max_parallel_requests=4,
                         expires_at="2099-01-01T00:00:00Z", tags=["ci"],
                         metadata={"owner": "qa"})
    assert created["key"].startswith("sk-sf-") and len(created["key"]) == 54
    assert created["id"]
    assert chat(url, created["key"], "penny").status_code == 200
    wait_until_sync(lambda: spend_of(url, created["id"]) > 0, timeout_s=10)
    view = admin(url, "GET", f"/api/enterprise/vkeys/{created['id']}").json()
    assert "key" not in view
    assert view["spend"] == pytest.approx(0.01)
    assert view["remaining"] == pytest.approx(0.04)
    assert view["budget_period"] == "daily"
    assert view["alias"] == "crud" and view["user_id"] == "alice"
    assert view["models"] == ["free", "pen*"] and view["tags"] == ["ci"]
    assert view["metadata"] == {"owner": "qa"}
    listed = admin(url, "GET", "/api/enterprise/vkeys").json()["data"]
    assert any(item["id"] == created["id"] for item in listed)
    assert all("key" not in item for item in listed)
    assert created["key"] not in admin(url, "GET", "/api/enterprise/vkeys").text
    patched = admin(url, "PATCH", f"/api/enterprise/vkeys/{created['id']}",
                    {"alias": "renamed", "rpm_limit": 5})
    assert patched.status_code == 200 and patched.json()["alias"] == "renamed"
    assert patched.json()["rpm_limit"] == 5


def _refused_everywhere(urls: list[str], key: str) -> None:
    """The change reaches every worker by pub/sub, normally before the next
    call; a worker descheduled on a loaded machine may read it a few ms late."""
    for url in urls:
        wait_until_sync(lambda url=url: chat(url, key).status_code == 401, timeout_s=5)  # type: ignore[misc]
        for _ in range(4):  # and it stays refused, on both workers of the node
            refused = chat(url, key)
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "invalid_api_key"


def test_block_regenerate_and_delete_reach_the_other_node(nodes: GatewayNodes) -> None:
    first, second = nodes.urls
    created = create_key(first, alias="lifecycle")
    key, key_id = created["key"], created["id"]
    for _ in range(8):  # both workers of the second node cache the key (and lease)
        assert chat(second, key).status_code == 200
    assert admin(first, "POST", f"/api/enterprise/vkeys/{key_id}/block").status_code == 200
    _refused_everywhere(nodes.urls, key)
    assert admin(first, "POST", f"/api/enterprise/vkeys/{key_id}/unblock").status_code == 200
    wait_until_sync(lambda: chat(second, key).status_code == 200, timeout_s=5)
    renewed = admin(first, "POST", f"/api/enterprise/vkeys/{key_id}/regenerate").json()
    assert renewed["key"] != key and renewed["id"] == key_id
    _refused_everywhere([second], key)
    assert chat(second, renewed["key"]).status_code == 200
    assert admin(first, "DELETE", f"/api/enterprise/vkeys/{key_id}").status_code == 200
    _refused_everywhere(nodes.urls, renewed["key"])
    assert admin(first, "GET", f"/api/enterprise/vkeys/{key_id}").status_code == 404


def test_a_lowered_budget_stops_a_leasing_worker(nodes: GatewayNodes) -> None:
    first, second = nodes.urls
    # $100 for $0.01 calls: far from the limit, so workers serve it from leases.
    created = create_key(first, alias="leased", max_budget=100.0)
    for _ in range(8):
        assert chat(second, created["key"], "penny").status_code == 200
    lowered = admin(first, "PATCH", f"/api/enterprise/vkeys/{created['id']}",
                    {"max_budget": 0.01})
    assert lowered.status_code == 200
    wait_until_sync(lambda: chat(second, created["key"], "penny").status_code == 429,
                    timeout_s=5)
    for url in nodes.urls:
        for _ in range(4):
            assert chat(url, created["key"], "penny").status_code == 429
    def settled() -> bool:
        view = admin(first, "GET", f"/api/enterprise/vkeys/{created['id']}").json()
        return view["spend"] >= 0.08 and view["reserved"] == 0.0  # every lease went back

    wait_until_sync(settled, timeout_s=10)
    view = admin(first, "GET", f"/api/enterprise/vkeys/{created['id']}").json()
    assert view["spend"] == pytest.approx(0.08, abs=0.011)  # 8, or 9 if one raced the PATCH


def test_unknown_malformed_expired_and_missing_keys_get_the_same_401(nodes: GatewayNodes) -> None:
    url = nodes.urls[0]
    expired = create_key(url, alias="old", expires_at="2001-01-01T00:00:00Z")
    for key in ("sk-sf-" + "0" * 48, "sk-sf-nothex", "garbage", expired["key"]):
        answer = chat(url, key)
        assert answer.status_code == 401, key
        assert answer.json()["error"]["message"] == "Incorrect API key provided."
    missing = httpx.post(url + "/v1/chat/completions", json={"model": "free", **CHAT})
    assert missing.status_code == 401
    anthropic = httpx.post(url + "/v1/messages", json={"model": "claude-mock", **CHAT},
                           headers={"x-api-key": expired["key"],
                                    "anthropic-version": "2023-06-01"})
    assert anthropic.status_code == 401
    assert anthropic.json()["type"] == "error"
    assert anthropic.json()["error"]["type"] == "authentication_error"


def test_a_model_outside_the_keys_patterns_is_403_in_each_dialect(nodes: GatewayNodes) -> None:
    url = nodes.urls[0]
    created = create_key(url, alias="scoped", models=["free"])
    assert chat(url, created["key"], "free").status_code == 200
    refused = chat(url, created["key"], "penny")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "model_not_allowed"
    anthropic = httpx.post(url + "/v1/messages", json={"model": "claude-mock", **CHAT},
                           headers={"x-api-key": created["key"],
                                    "anthropic-version": "2023-06-01"})
    assert anthropic.status_code == 403
    assert anthropic.json()["error"]["type"] == "permission_error"
    headers = {"authorization": f"Bearer {created['key']}"}
    listed = httpx.get(url + "/v1/models", headers=headers).json()["data"]
    assert [model["id"] for model in listed] == ["free"]
    assert httpx.get(url + "/v1/models/penny", headers=headers).status_code == 404
    assert httpx.get(url + "/v1/models/free", headers=headers).status_code == 200


def test_a_team_budget_binds_every_key_of_the_team(nodes: GatewayNodes) -> None:
    url = nodes.urls[0]
    team = admin(url, "POST", "/api/enterprise/teams",
                 {"team_id": "team-budget", "max_budget": 0.03, "models": ["penny"]})
    assert team.status_code == 201, team.text
    keys = [create_key(url, alias=f"member-{i}", team_id="team-budget")["key"]
            for i in range(2)]
    statuses = [chat(url, keys[i % 2], "penny").status_code for i in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    refused = chat(url, keys[0], "penny")
    assert "team" in refused.json()["error"]["message"]
    assert chat(url, keys[0], "free").status_code == 403  # the team allows only penny


def test_a_user_budget_binds_all_of_the_users_keys(nodes: GatewayNodes) -> None:
    url = nodes.urls[0]
    user = admin(url, "POST", "/api/enterprise/users",
                 {"user_id": "budget-user", "max_budget": 0.02, "budget_period": "daily"})
    assert user.status_code == 201, user.text
    keys = [create_key(url, alias=f"user-key-{i}", user_id="budget-user")["key"]
            for i in range(2)]
    statuses = [chat(url, keys[i % 2], "penny").status_code for i in range(4)]
    assert statuses == [200, 200, 429, 429]
    refused = chat(url, keys[1], "penny")
    assert "user" in refused.json()["error"]["message"]
    assert refused.headers["x-smartflow-budget-reset"].endswith("T00:00:00Z")
    wait_until_sync(lambda: admin(url, "GET", "/api/enterprise/users/budget-user").json()[
        "spend"] == 0.02, timeout_s=10)
    ledger = admin(url, "GET", "/api/enterprise/spend/user/budget-user?days=2").json()
    assert ledger["ledger_total"] == 0.02
    assert [(row["model"], row["requests"]) for row in ledger["data"]] == [("penny", 2)]


def test_keys_work_on_the_anthropic_routes_and_passthrough_with_x_api_key(
        nodes: GatewayNodes) -> None:
    url = nodes.urls[1]
    created = create_key(url, alias="anthropic")
    answer = httpx.post(url + "/v1/messages", json={"model": "claude-mock", **CHAT},
                        headers={"x-api-key": created["key"],
                                 "anthropic-version": "2023-06-01"}, timeout=30)
    assert answer.status_code == 200, answer.text
    answer = httpx.post(url + "/anthropic/v1/messages",
                        json={"model": "claude-mock", **CHAT},
                        headers={"x-api-key": created["key"],
                                 "anthropic-version": "2023-06-01"}, timeout=30)
    assert answer.status_code == 200, answer.text


def test_the_openai_and_anthropic_sdks_work_with_a_virtual_key(nodes: GatewayNodes) -> None:
    import anthropic
    import openai

    url = nodes.urls[0]
    created = create_key(url, alias="sdk", max_budget=10.0, rpm_limit=1000, tpm_limit=10**6)
    client = openai.OpenAI(base_url=url + "/v1", api_key=created["key"])
    completion = client.chat.completions.create(model="penny", messages=CHAT["messages"])
    assert completion.choices[0].message.content
    chunks = list(client.chat.completions.create(model="penny", messages=CHAT["messages"],
                                                 stream=True))
    assert chunks
    claude = anthropic.Anthropic(base_url=url, api_key=created["key"])
    message = claude.messages.create(model="claude-mock", max_tokens=16,
                                     messages=[{"role": "user", "content": "Hi"}])
    assert message.content
    bad = openai.OpenAI(base_url=url + "/v1", api_key="sk-sf-" + "1" * 48)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="penny", messages=CHAT["messages"])


def test_no_secret_reaches_the_logs(nodes: GatewayNodes) -> None:
    url = nodes.urls[0]
    created = create_key(url, alias="secret-check")
    chat(url, created["key"])
    chat(url, created["key"][:-1] + "0")
    text = nodes.output()
    for gateway in nodes.gateways:
        log = gateway.data_dir / "access.log"
        if log.exists():
            text += log.read_text()
    metrics = httpx.get(url + "/metrics").text
    for seen in (text, metrics):
        assert created["key"] not in seen
        assert created["key"][6:] not in seen
        assert MASTER not in seen


def test_the_cluster_holds_the_budget_exactly_too(redis_cluster_url: str,
                                                  tmp_path: Path) -> None:
    pair = GatewayNodes(_config(redis_cluster_url, cluster=True), tmp_path)
    try:
        assert_exact_budget(pair.urls)
    finally:
        pair.close()

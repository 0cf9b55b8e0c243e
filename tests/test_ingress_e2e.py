"""Every ingress dialect through real gateway processes: keys, budgets, audit, chains.

Two nodes (two supervisors, one worker each) share a Redis. The Responses
API and the Gemini API must be held to a virtual key's budget exactly as
chat completions are, refused in their own error shapes, and leave one
audit record per call (read back from the audit stream); a Responses chain
started on one node continues on the other.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from harness.gateway import GatewayNodes
from harness.waiting import wait_until_sync
from upstreams.recording_anthropic import RequestLog, build_recording_anthropic
from upstreams.server import UpstreamThread

from smartflow.audit.energy import load_energy_model
from smartflow.audit.framing import unpack
from smartflow.audit.record import record_fields
from smartflow.dialects.stream_text import unescape
from smartflow.store.keyspace import AUDIT_STREAM

MASTER = "sk-master-ingress-0123456789"
REPLY = "Recorded Anthropic answer."
PENNY = {"name": "penny", "provider": "mock", "model": "mock-gpt", "price_per_request": 0.01,
         "input_price_per_mtok": 0.0, "output_price_per_mtok": 0.0}
GEMINI_HELLO = {"contents": [{"role": "user", "parts": [{"text": "Hello"}]}]}


def _config(redis_url: str, anthropic_url: str) -> dict[str, Any]:
    models = [PENNY, {"name": "claude-rec", "provider": "anthropic",
                      "model": "claude-sonnet-4-5", "api_base": anthropic_url,
                      "api_key": "sk-ant-upstream", "price_per_request": 0.0}]
    return {"auth": {"master_key": MASTER}, "state": {"redis_url": redis_url},
            "audit": {"mode": "on"}, "models": models}


@pytest.fixture(scope="module")
def anthropic_log() -> Iterator[tuple[RequestLog, str]]:
    log = RequestLog()
    with UpstreamThread(build_recording_anthropic(log, REPLY)) as upstream:
        yield log, upstream.url


@pytest.fixture(scope="module")
def nodes(redis_server: Any, anthropic_log: tuple[RequestLog, str],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayNodes]:
    if not redis_server.is_running:
        redis_server.start()
    pair = GatewayNodes(_config(redis_server.url, anthropic_log[1]),
                        tmp_path_factory.mktemp("ingress"), workers=1)
    try:
        yield pair
    finally:
        pair.close()


def create_key(url: str, **fields: Any) -> dict[str, Any]:
    answer = httpx.post(url + "/api/enterprise/vkeys", json=fields,
                        headers={"authorization": f"Bearer {MASTER}"}, timeout=30)
    assert answer.status_code == 201, answer.text
    return answer.json()  # type: ignore[no-any-return]


def responses(url: str, key: str, **body: Any) -> httpx.Response:
    return httpx.post(url + "/v1/responses", json=body,
                      headers={"authorization": f"Bearer {key}"}, timeout=30)


def gemini(url: str, key: str, model: str = "penny", *, in_query: bool = False
           ) -> httpx.Response:
    path = f"/v1beta/models/{model}:generateContent"
    if in_query:
        return httpx.post(url + path + f"?key={key}", json=GEMINI_HELLO, timeout=30)
    return httpx.post(url + path, json=GEMINI_HELLO, headers={"x-goog-api-key": key},
                      timeout=30)


def audit_records(redis_server: Any) -> list[dict[str, Any]]:
    """Every record in the audit stream, its captured answer as ``_answer``."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    try:
        entries = client.xrange(AUDIT_STREAM, "-", "+")
    finally:
        client.close()
    energy = load_energy_model()
    records = []
    for _, fields in entries:
        for record, _request, answer in unpack(fields[b"b"]):
            records.append({**record_fields(orjson.loads(record), energy), "_answer": answer})
    return records


def test_budgets_hold_on_the_responses_and_gemini_routes_in_their_own_shapes(
        nodes: GatewayNodes) -> None:
    created = create_key(nodes.urls[0], alias="ingress-budget", max_budget=0.02)
    key = created["key"]
    first = responses(nodes.urls[0], key, model="penny", input="one")
    assert first.status_code == 200, first.text
    second = gemini(nodes.urls[1], key)
    assert second.status_code == 200, second.text
    refused = responses(nodes.urls[1], key, model="penny", input="three")
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert refused.headers["x-smartflow-budget-remaining"] == "0"
    refused_gemini = gemini(nodes.urls[0], key, in_query=True)
    assert refused_gemini.status_code == 429, refused_gemini.text
    error = refused_gemini.json()["error"]
    assert error["code"] == 429 and error["status"] == "RESOURCE_EXHAUSTED"
    assert refused_gemini.headers["x-smartflow-budget-limit"] == "0.02"


def test_a_wrong_key_is_refused_on_every_ingress(nodes: GatewayNodes) -> None:
    url = nodes.urls[0]
    assert responses(url, "sk-sf-" + "0" * 48, model="penny", input="x").status_code == 401
    refused = gemini(url, "sk-sf-" + "0" * 48, in_query=True)
    assert refused.status_code == 401
    assert refused.json()["error"]["status"] == "UNAUTHENTICATED"


def test_each_ingress_leaves_one_audit_record_without_the_key(
        nodes: GatewayNodes, redis_server: Any) -> None:
    created = create_key(nodes.urls[0], alias="ingress-audit")
    key = created["key"]
    answers = [responses(nodes.urls[0], key, model="penny", input="audit me"),
               gemini(nodes.urls[1], key, in_query=True),
               gemini(nodes.urls[0], key, model="claude-rec")]
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    call_ids = {answer.headers["x-smartflow-call-id"] for answer in answers}

    def mine() -> list[dict[str, Any]]:
        return [r for r in audit_records(redis_server) if r["call_id"] in call_ids]

    wait_until_sync(lambda: len(mine()) == 3, timeout_s=20)
    by_route = {record["route"]: record for record in mine()}
    assert set(by_route) == {"/v1/responses", "/v1beta/models/penny:generateContent",
                             "/v1beta/models/claude-rec:generateContent"}
    assert by_route["/v1/responses"]["dialect"] == "responses"
    assert by_route["/v1beta/models/penny:generateContent"]["dialect"] == "gemini"
    claude = by_route["/v1beta/models/claude-rec:generateContent"]
    assert claude["provider"] == "anthropic" and claude["status"] == 200
    assert claude["completion_tokens"] > 0
    for record in mine():
        assert record["key_alias"] == "ingress-audit"
        answer = record.pop("_answer")
        assert key not in orjson.dumps(record).decode() and key.encode() not in answer


def test_streamed_answers_of_every_ingress_are_recorded_as_their_text(
        nodes: GatewayNodes, redis_server: Any) -> None:
    url = nodes.urls[0]
    streamed_responses = httpx.post(url + "/v1/responses", timeout=30,
                                    headers={"authorization": f"Bearer {MASTER}"},
                                    json={"model": "penny", "input": "stream me", "stream": True})
    streamed_gemini = httpx.post(url + "/v1beta/models/penny:streamGenerateContent?alt=sse",
                                 json=GEMINI_HELLO, headers={"x-goog-api-key": MASTER},
                                 timeout=30)
    assert [streamed_responses.status_code, streamed_gemini.status_code] == [200, 200]
    sent = {}
    for answer, route in ((streamed_responses, "/v1/responses"),
                          (streamed_gemini, "/v1beta/models/penny:streamGenerateContent")):
        events = [orjson.loads(line[5:]) for line in answer.text.splitlines()
                  if line.startswith("data:") and line[5:].strip().startswith("{")]
        if route == "/v1/responses":
            text = "".join(e["delta"] for e in events
                           if e.get("type") == "response.output_text.delta")
        else:
            text = "".join(part.get("text", "") for e in events
                           for c in e.get("candidates", []) for part in c["content"]["parts"])
        assert text.startswith("Mock response to:"), answer.text[:300]
        sent[answer.headers["x-smartflow-call-id"]] = (route, text)

    def mine() -> list[dict[str, Any]]:
        return [r for r in audit_records(redis_server) if r["call_id"] in sent]

    wait_until_sync(lambda: len(mine()) == 2, timeout_s=20)
    for record in mine():
        route, text = sent[record["call_id"]]
        assert (record["route"], record["stream"]) == (route, True)
        assert unescape(record["_answer"]) == text


def test_a_responses_chain_started_on_one_node_continues_on_the_other(
        nodes: GatewayNodes, anthropic_log: tuple[RequestLog, str]) -> None:
    log = anthropic_log[0]
    first = responses(nodes.urls[0], MASTER, model="claude-rec", input="My name is Ada.")
    assert first.status_code == 200, first.text
    before = len(log.requests)
    second = responses(nodes.urls[1], MASTER, model="claude-rec", input="What is my name?",
                       previous_response_id=first.json()["id"])
    assert second.status_code == 200, second.text
    assert len(log.requests) == before + 1
    sent = log.requests[-1].json
    flat = orjson.dumps(sent["messages"]).decode()
    assert "My name is Ada." in flat and REPLY in flat and "What is my name?" in flat
    fetched = httpx.get(nodes.urls[0] + f"/v1/responses/{second.json()['id']}",
                        headers={"authorization": f"Bearer {MASTER}"}, timeout=30)
    assert fetched.status_code == 200 and fetched.json()["id"] == second.json()["id"]


def test_a_stored_response_is_shown_only_to_the_key_that_made_it(nodes: GatewayNodes) -> None:
    owner = create_key(nodes.urls[0], alias="resp-owner")["key"]
    stranger = create_key(nodes.urls[0], alias="resp-stranger")["key"]
    made = responses(nodes.urls[0], owner, model="penny", input="mine")
    assert made.status_code == 200, made.text
    response_id = made.json()["id"]

    def get(url: str, key: str, suffix: str = "") -> httpx.Response:
        return httpx.get(url + f"/v1/responses/{response_id}{suffix}",
                         headers={"authorization": f"Bearer {key}"}, timeout=30)

    assert get(nodes.urls[1], owner).status_code == 200
    assert get(nodes.urls[1], MASTER).status_code == 200
    assert get(nodes.urls[1], stranger).status_code == 404
    assert get(nodes.urls[1], stranger, "/input_items").status_code == 404
    chained = responses(nodes.urls[1], stranger, model="penny", input="theirs",
                        previous_response_id=response_id)
    assert chained.status_code == 404, chained.text
    assert chained.json()["error"]["code"] == "previous_response_not_found"
    deleted = httpx.delete(nodes.urls[0] + f"/v1/responses/{response_id}",
                           headers={"authorization": f"Bearer {stranger}"}, timeout=30)
    assert deleted.status_code == 404
    assert get(nodes.urls[0], owner).status_code == 200

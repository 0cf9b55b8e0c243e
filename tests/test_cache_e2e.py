"""MetaCache through real gateway processes: two nodes on one real Redis.

The upstream quotes each question in its answer, so a replay shows which
question it answered (a wrong hit would be visible), and it records every
call (a hit makes none). Unchanged SDK clients read the replays: the openai
SDK (chat, streamed chat, Responses) and the anthropic SDK (Messages).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from harness.gateway import GatewayNodes
from harness.waiting import wait_until_sync
from upstreams.echo_upstream import build_echo_upstream, echo_of
from upstreams.recording_anthropic import RequestLog
from upstreams.server import UpstreamThread

MASTER = "sk-master-cache-0123456789"
ADMIN = {"authorization": f"Bearer {MASTER}"}


def _config(redis_url: str, upstream_url: str) -> dict[str, Any]:
    common = {"api_base": upstream_url + "/v1", "api_key": "sk-upstream",
              "price_per_request": 0.002}
    return {
        "auth": {"master_key": MASTER}, "state": {"redis_url": redis_url},
        "cache": {"mode": "semantic", "ttl": 600.0,
                  "models": {"echo-exact": {"mode": "exact"}, "echo-off": {"mode": "off"}}},
        "models": [
            {"name": "echo-gpt", "provider": "openai", "model": "gpt-4o-mini", **common},
            {"name": "echo-exact", "provider": "openai", "model": "gpt-4o-mini", **common},
            {"name": "echo-off", "provider": "openai", "model": "gpt-4o-mini", **common},
            {"name": "echo-claude", "provider": "anthropic", "model": "claude-sonnet-4-5",
             **common, "api_base": upstream_url},
        ],
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[RequestLog, str]]:
    log = RequestLog()
    with UpstreamThread(build_echo_upstream(log)) as server:
        yield log, server.url


@pytest.fixture(scope="module")
def nodes(redis_server: Any, upstream: tuple[RequestLog, str],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayNodes]:
    if not redis_server.is_running:
        redis_server.start()
    pair = GatewayNodes(_config(redis_server.url, upstream[1]),
                        tmp_path_factory.mktemp("cache"), workers=1)
    try:
        yield pair
    finally:
        pair.close()


def unique(text: str) -> str:
    """A question no other test asked (entries outlive a test within the module)."""
    return f"{text} [{uuid.uuid4().hex[:6]}]"


def chat(url: str, text: str, *, model: str = "echo-gpt", key: str = MASTER,
         headers: dict[str, str] | None = None, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=60,
                      headers={"authorization": f"Bearer {key}", **(headers or {})})


def content(answer: httpx.Response) -> str:
    assert answer.status_code == 200, answer.text
    return answer.json()["choices"][0]["message"]["content"]  # type: ignore[no-any-return]


def upstream_calls(log: RequestLog, text: str) -> int:
    return sum(1 for r in log.requests if r.body and text.encode() in r.body)


def wait_for_entry(url: str, text: str, **kwargs: Any) -> httpx.Response:
    """Ask again until the first answer's entry is there (the fill is in the background)."""
    found: list[httpx.Response] = []

    def hit() -> bool:
        answer = chat(url, text, **kwargs)
        found.append(answer)
        return answer.headers.get("x-smartflow-cache-hit") == "true"

    wait_until_sync(hit, timeout_s=20, what=f"a cache hit for {text!r}")
    return found[-1]


def index_rows(url: str) -> int:
    stats = httpx.get(url + "/api/cache/stats", headers=ADMIN, timeout=30)
    assert stats.status_code == 200, stats.text
    return int(stats.json().get("index_rows", 0))


def test_an_exact_repeat_is_served_from_the_cache_on_both_nodes(
        nodes: GatewayNodes, upstream: tuple[RequestLog, str]) -> None:
    log = upstream[0]
    text = unique("What is the capital of Australia?")
    first = chat(nodes.urls[0], text)
    assert content(first) == echo_of(text)
    assert first.headers["x-smartflow-cache-hit"] == "false"
    key = first.headers["x-smartflow-cache-key"]
    again = wait_for_entry(nodes.urls[0], text)
    calls = upstream_calls(log, text)
    assert content(again) == echo_of(text)
    assert again.headers["x-smartflow-cache-key"] == key
    assert again.headers["x-smartflow-cache-tier"] in ("l1", "l3")
    assert again.json()["id"] != first.json()["id"]
    assert again.json()["usage"] == first.json()["usage"]
    other = chat(nodes.urls[1], text)
    assert content(other) == echo_of(text)
    assert other.headers["x-smartflow-cache-tier"] == "l3"
    assert upstream_calls(log, text) == calls


def test_a_streaming_caller_gets_the_cached_answer_as_sse_with_usage(
        nodes: GatewayNodes, upstream: tuple[RequestLog, str]) -> None:
    log = upstream[0]
    text = unique("Name three primary colours.")
    assert content(chat(nodes.urls[0], text)) == echo_of(text)
    wait_for_entry(nodes.urls[0], text)
    calls = upstream_calls(log, text)
    client = openai.OpenAI(base_url=nodes.urls[1] + "/v1", api_key=MASTER)
    stream = client.chat.completions.create(
        model="echo-gpt", messages=[{"role": "user", "content": text}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == echo_of(text)
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 16
    assert upstream_calls(log, text) == calls


def test_a_streamed_answer_is_cached_when_it_completes(
        nodes: GatewayNodes, upstream: tuple[RequestLog, str]) -> None:
    log = upstream[0]
    text = unique("Spell 'cache' backwards.")
    client = openai.OpenAI(base_url=nodes.urls[0] + "/v1", api_key=MASTER)
    streamed = client.chat.completions.create(
        model="echo-gpt", messages=[{"role": "user", "content": text}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) \
        == echo_of(text)
    again = wait_for_entry(nodes.urls[1], text)
    assert content(again) == echo_of(text)
    # The stream's own entry served the other node (a miss there would have
    # filled one, but the stream's fill lands within milliseconds).
    assert upstream_calls(log, text) <= 2


def test_a_paraphrase_hits_the_semantic_tier_on_the_other_node(
        nodes: GatewayNodes, upstream: tuple[RequestLog, str]) -> None:
    log = upstream[0]
    system = unique("You are the help desk of Example Corp.")
    question = "How do I reset my password?"
    paraphrase = "What are the steps to reset my password?"

    def ask(url: str, text: str) -> httpx.Response:
        body = {"model": "echo-gpt", "messages": [{"role": "system", "content": system},
                                                  {"role": "user", "content": text}]}
        return httpx.post(url + "/v1/chat/completions", json=body, headers=ADMIN, timeout=60)

    rows_before = index_rows(nodes.urls[1])
    assert content(ask(nodes.urls[0], question)) == echo_of(question)
    wait_until_sync(lambda: index_rows(nodes.urls[1]) > rows_before, timeout_s=20,
                    what="the entry in the other node's index")
    hit = ask(nodes.urls[1], paraphrase)
    assert hit.headers["x-smartflow-cache-hit"] == "true", hit.headers
    assert hit.headers["x-smartflow-cache-tier"] == "l2"
    assert float(hit.headers["x-smartflow-cache-similarity"]) >= 0.86
    assert content(hit) == echo_of(question)
    assert sum(1 for r in log.requests if r.body and system.encode() in r.body) == 1


@pytest.mark.parametrize(("first", "second"), [
    ("What is the maximum daily dose of ibuprofen 200mg tablets?",
     "What is the maximum daily dose of ibuprofen 800mg tablets?"),
    ("How do I enable two-factor authentication?", "How do I disable two-factor authentication?"),
    ("Which is faster, Python or Rust?", "Which is faster, Rust or Python?"),
    ("Write a function to reverse a string in Python.",
     "Write a function to reverse a string in Rust."),
])
def test_a_near_miss_is_never_served_another_questions_answer(
        nodes: GatewayNodes, upstream: tuple[RequestLog, str], first: str, second: str) -> None:
    system = unique("Answer precisely.")

    def ask(text: str) -> httpx.Response:
        body = {"model": "echo-gpt", "messages": [{"role": "system", "content": system},
                                                  {"role": "user", "content": text}]}
        return httpx.post(nodes.urls[0] + "/v1/chat/completions", json=body, headers=ADMIN,
                          timeout=60)

    assert content(ask(first)) == echo_of(first)
    wait_until_sync(lambda: ask(first).headers["x-smartflow-cache-hit"] == "true",
                    timeout_s=20, what="the first answer cached")
    answer = ask(second)
    assert content(answer) == echo_of(second)
    assert answer.headers["x-smartflow-cache-hit"] == "false"


def test_per_request_controls(nodes: GatewayNodes, upstream: tuple[RequestLog, str]) -> None:
    log, url = upstream[0], nodes.urls[0]
    text = unique("List the planets.")
    chat(url, text, headers={"cache-control": "no-store"})
    time.sleep(0.3)  # a fill, had there been one, would have landed by now
    assert chat(url, text, headers={"cache-control": "no-store"}).headers[
        "x-smartflow-cache-hit"] == "false"
    assert upstream_calls(log, text) == 2
    wait_for_entry(url, text)  # stored by the first request without no-store
    calls = upstream_calls(log, text)
    skipped = chat(url, text, headers={"cache-control": "no-cache"})
    assert skipped.headers["x-smartflow-cache-hit"] == "false"
    bypass = chat(url, text, headers={"x-smartflow-cache": "skip"})
    assert bypass.headers["x-smartflow-cache-hit"] == "false"
    assert upstream_calls(log, text) == calls + 2
    other_namespace = chat(url, text, headers={"x-smartflow-cache-namespace": "team-b"})
    assert other_namespace.headers["x-smartflow-cache-hit"] == "false"
    bad = chat(url, text, headers={"x-smartflow-cache-ttl": "soon"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-smartflow-cache-ttl"


def test_entries_never_cross_virtual_keys(nodes: GatewayNodes,
                                          upstream: tuple[RequestLog, str]) -> None:
    url = nodes.urls[0]
    keys = []
    for alias in ("cache-a", "cache-b"):
        made = httpx.post(url + "/api/enterprise/vkeys", json={"alias": unique(alias)},
                          headers=ADMIN, timeout=30)
        assert made.status_code == 201, made.text
        keys.append(made.json()["key"])
    text = unique("Summarise our refund policy.")
    assert content(chat(url, text, key=keys[0])) == echo_of(text)
    wait_for_entry(url, text, key=keys[0])
    assert chat(url, text, key=keys[1]).headers["x-smartflow-cache-hit"] == "false"


def test_per_model_modes_and_hot_temperatures(nodes: GatewayNodes,
                                              upstream: tuple[RequestLog, str]) -> None:
    url = nodes.urls[0]
    text = unique("Define entropy.")
    chat(url, text, model="echo-off")
    time.sleep(0.3)
    assert chat(url, text, model="echo-off").headers["x-smartflow-cache-hit"] == "false"
    assert "x-smartflow-cache-key" not in chat(url, text, model="echo-off").headers
    exact_only = unique("Explain what a mutex is.")
    chat(url, exact_only, model="echo-exact")
    wait_for_entry(url, exact_only, model="echo-exact")
    assert chat(url, exact_only + " please", model="echo-exact").headers[
        "x-smartflow-cache-hit"] == "false"


def test_anthropic_messages_are_replayed_in_anthropics_format(
        nodes: GatewayNodes, upstream: tuple[RequestLog, str]) -> None:
    log = upstream[0]
    text = unique("What does HTTP 418 mean?")
    client = anthropic.Anthropic(base_url=nodes.urls[0], api_key=MASTER)
    first = client.messages.create(model="echo-claude", max_tokens=50,
                                   messages=[{"role": "user", "content": text}])
    assert first.content[0].text == echo_of(text)  # type: ignore[union-attr]

    def replayed() -> bool:
        raw = client.messages.with_raw_response.create(
            model="echo-claude", max_tokens=50, messages=[{"role": "user", "content": text}])
        return raw.headers.get("x-smartflow-cache-hit") == "true"

    wait_until_sync(replayed, timeout_s=20, what="an Anthropic cache hit")
    calls = upstream_calls(log, text)
    other = anthropic.Anthropic(base_url=nodes.urls[1], api_key=MASTER)
    with other.messages.stream(model="echo-claude", max_tokens=50,
                               messages=[{"role": "user", "content": text}]) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == echo_of(text)
    assert final.usage.output_tokens == first.usage.output_tokens
    prefixed = anthropic.Anthropic(base_url=nodes.urls[1] + "/anthropic", api_key=MASTER)
    raw = prefixed.messages.with_raw_response.create(
        model="echo-claude", max_tokens=50, messages=[{"role": "user", "content": text}])
    assert raw.headers["x-smartflow-cache-hit"] == "true"
    assert raw.parse().content[0].text == echo_of(text)  # type: ignore[union-attr]
    assert upstream_calls(log, text) == calls


def test_responses_are_replayed_and_a_replay_can_be_continued(
        nodes: GatewayNodes, upstream: tuple[RequestLog, str]) -> None:
    log = upstream[0]
    text = unique("Give me a haiku about caches.")
    client = openai.OpenAI(base_url=nodes.urls[0] + "/v1", api_key=MASTER)
    first = client.responses.create(model="echo-gpt", input=text)
    assert first.output_text == echo_of(text)

    def replayed() -> bool:
        raw = client.responses.with_raw_response.create(model="echo-gpt", input=text)
        return raw.headers.get("x-smartflow-cache-hit") == "true"

    wait_until_sync(replayed, timeout_s=20, what="a Responses cache hit")
    calls = upstream_calls(log, text)
    events = list(client.responses.create(model="echo-gpt", input=text, stream=True))
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == echo_of(text)
    assert completed.response.id != first.id
    follow = client.responses.create(model="echo-gpt", input=unique("And another one."),
                                     previous_response_id=completed.response.id)
    assert follow.status == "completed"
    # The replay went upstream only as the follow-up's history.
    assert upstream_calls(log, text) == calls + 1


def test_stats_and_delete(nodes: GatewayNodes, upstream: tuple[RequestLog, str]) -> None:
    url = nodes.urls[0]
    text = unique("What is a monad?")
    namespace = "ns-" + uuid.uuid4().hex[:6]
    headers = {"x-smartflow-cache-namespace": namespace}
    chat(url, text, headers=headers)
    wait_for_entry(url, text, headers=headers)
    assert chat(nodes.urls[1], text, headers=headers).headers["x-smartflow-cache-tier"] == "l3"

    def stats() -> dict[str, Any]:
        answer = httpx.get(url + "/api/cache/stats", headers=ADMIN, timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()  # type: ignore[no-any-return]

    summary = stats()
    assert summary["mode"] == "semantic"
    assert summary["hits"] >= 1 and summary["misses"] >= 1
    assert summary["saved_usd"] > 0
    assert summary["by_model"]["echo-gpt"]["hits"] >= 1
    metrics = httpx.get(url + "/metrics", timeout=30).text
    assert 'smartflow_cache_requests_total{model="echo-gpt",outcome="hit"' in metrics
    assert "smartflow_cache_saved_usd_total" in metrics
    deleted = httpx.delete(url + "/api/cache", params={"namespace": namespace}, headers=ADMIN,
                           timeout=30)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["deleted"] == 1
    # Every worker's L1 drops it (the other node's on the pub/sub message).
    unstored = {**headers, "cache-control": "no-store"}
    for node in nodes.urls:
        wait_until_sync(lambda node=node: chat(node, text, headers=unstored).headers[
            "x-smartflow-cache-hit"] == "false", timeout_s=10, what="the entry gone")
    refused = httpx.delete(url + "/api/cache", timeout=30)
    assert refused.status_code == 401


def test_the_local_embedding_model_is_served_on_v1_embeddings(nodes: GatewayNodes) -> None:
    client = openai.OpenAI(base_url=nodes.urls[0] + "/v1", api_key=MASTER)
    answer = client.embeddings.create(model="smartflow/local-embed",
                                      input=["How do I reset my password?",
                                             "password reset instructions",
                                             "The weather in Paris is mild."])
    vectors = [item.embedding for item in answer.data]
    assert [len(v) for v in vectors] == [384, 384, 384]

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert abs(cosine(vectors[0], vectors[0]) - 1.0) < 1e-3
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
    assert answer.usage.prompt_tokens > 0


def test_vector_stores_and_rag_through_the_gateway_across_nodes(nodes: GatewayNodes) -> None:
    """Ingest on one node, search on the other (its index fed through the stream)."""
    first = openai.OpenAI(base_url=nodes.urls[0] + "/v1", api_key=MASTER)
    second = openai.OpenAI(base_url=nodes.urls[1] + "/v1", api_key=MASTER)
    store = first.vector_stores.create(name=unique("handbook"))
    documents = {
        "refunds.md": "Refunds are paid back to the original card within 14 days of a return.",
        "support.md": "The support desk answers phone calls from 8am to 6pm CET on weekdays.",
        "travel.md": "Business travel must be booked through the internal portal in advance.",
    }
    for name, text in documents.items():
        added = first.post(f"/vector_stores/{store.id}/files", cast_to=httpx.Response,
                           body={"text": text, "filename": name,
                                 "attributes": {"topic": name.removesuffix(".md")}})
        assert added.status_code == 200, added.text

    def found_on_second() -> bool:
        page = second.vector_stores.search(store.id, query="How do I get my money back?")
        return bool(page.data) and page.data[0].filename == "refunds.md"

    wait_until_sync(found_on_second, timeout_s=20, what="the refunds file found on node 2")
    filtered = second.vector_stores.search(
        store.id, query="How do I get my money back?",
        filters={"type": "eq", "key": "topic", "value": "support"})
    assert [hit.filename for hit in filtered.data] == ["support.md"]
    rag = httpx.post(nodes.urls[1] + "/v1/rag/query", headers=ADMIN, timeout=60, json={
        "vector_store_id": store.id, "query": "When can I call the support desk?", "top_k": 2})
    assert rag.status_code == 200, rag.text
    answer = rag.json()
    assert answer["chunks"][0]["file_id"] and "8am to 6pm" in answer["context"]
    deleted = second.vector_stores.delete(store.id)
    assert deleted.deleted is True
    missing = httpx.post(nodes.urls[0] + f"/v1/vector_stores/{store.id}/search", headers=ADMIN,
                         json={"query": "refund"}, timeout=30)
    assert missing.status_code == 404


def test_the_cache_and_vector_stores_work_on_a_redis_cluster(
        redis_cluster_url: str, upstream: tuple[RequestLog, str],
        tmp_path_factory: pytest.TempPathFactory) -> None:
    config = _config(redis_cluster_url, upstream[1])
    config["state"]["redis_cluster"] = True
    pair = GatewayNodes(config, tmp_path_factory.mktemp("cache-cluster"), workers=1)
    try:
        first, second = pair.urls
        text = unique("What is a hash slot?")
        assert content(chat(first, text)) == echo_of(text)
        assert content(wait_for_entry(second, text)) == echo_of(text)
        system = unique("Cluster help desk.")

        def ask(url: str, question: str) -> httpx.Response:
            body = {"model": "echo-gpt", "messages": [
                {"role": "system", "content": system}, {"role": "user", "content": question}]}
            return httpx.post(url + "/v1/chat/completions", json=body, headers=ADMIN,
                              timeout=60)

        rows = index_rows(second)
        assert content(ask(first, "How do I reset my password?")) \
            == echo_of("How do I reset my password?")
        wait_until_sync(lambda: index_rows(second) > rows, timeout_s=20,
                        what="the entry in the other node's index")
        hit = ask(second, "What are the steps to reset my password?")
        assert hit.headers["x-smartflow-cache-tier"] == "l2"
        client = openai.OpenAI(base_url=first + "/v1", api_key=MASTER)
        store = client.vector_stores.create(name=unique("cluster-store"))
        added = client.post(f"/vector_stores/{store.id}/files", cast_to=httpx.Response,
                            body={"text": "Refunds are paid back within 14 days.",
                                  "filename": "refunds.md"})
        assert added.status_code == 200, added.text
        page = client.vector_stores.search(store.id, query="When do I get my money back?")
        assert page.data[0].filename == "refunds.md"
        assert client.vector_stores.delete(store.id).deleted is True
    finally:
        pair.close()


def test_entry_ttls_follow_the_header_and_the_prompts_volatility(
        nodes: GatewayNodes, redis_server: Any) -> None:
    import redis

    url = nodes.urls[0]
    client = redis.Redis.from_url(redis_server.url)

    def ttl_of(text: str, **kwargs: Any) -> int:
        key = chat(url, text, **kwargs).headers["x-smartflow-cache-key"]
        wait_for_entry(url, text, **kwargs)
        return int(client.ttl(f"sf:cache:e:{key[:16]}"))

    try:
        assert 60 <= ttl_of(unique("Explain recursion."),
                            headers={"x-smartflow-cache-ttl": "90"}) <= 90
        volatile = ttl_of(unique("What is the latest Bitcoin price today?"))
        stable = ttl_of(unique("Explain what a hash function is."))
        assert 60 <= volatile < stable <= 86400
    finally:
        client.close()

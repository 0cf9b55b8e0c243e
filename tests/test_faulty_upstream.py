"""The fault-injecting OpenAI upstream (tests/upstreams/faulty_openai.py) does what its
fault names promise, over a real socket.

Timing asserts are lower bounds (a delay happened) or very generous upper
bounds, so that a loaded 2-core machine does not make them flaky.
"""

from __future__ import annotations

import asyncio
import json
import math
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from upstreams.faulty_openai import FAULTS, FaultyUpstream

REPO_ROOT = Path(__file__).resolve().parent.parent
BODY: dict[str, Any] = {"model": "gpt-4o-mini",
                        "messages": [{"role": "user", "content": "Say hello"}]}
STREAM_BODY: dict[str, Any] = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
CLIENT_TIMEOUT = httpx.Timeout(30.0)


@pytest.fixture
def upstream() -> Iterator[FaultyUpstream]:
    with FaultyUpstream(name="A", seed=7) as server:
        yield server


@pytest.fixture
def client(upstream: FaultyUpstream) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=upstream.url + "/v1", timeout=CLIENT_TIMEOUT) as http:
        yield http


def wait_until(predicate: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def sse_payloads(text: str) -> list[str]:
    return [line[len("data: "):] for line in text.split("\n") if line.startswith("data: ")]


def post(client: httpx.Client, fault: str | None = None, **body: Any) -> httpx.Response:
    headers = {"x-fault": fault} if fault else {}
    return client.post("/chat/completions", json={**BODY, **body}, headers=headers)


# -- answering ---------------------------------------------------------------


def test_ok_answers_a_chat_completion_with_usage(upstream: FaultyUpstream,
                                                 client: httpx.Client) -> None:
    response = post(client)
    assert response.status_code == 200
    assert response.headers["x-upstream-name"] == "A"
    assert response.headers["content-type"] == "application/json"
    completion = response.json()
    assert completion["object"] == "chat.completion"
    assert completion["id"].startswith("chatcmpl-")
    assert completion["model"] == "gpt-4o-mini"
    [choice] = completion["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].startswith("answer from A")
    usage = completion["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_stream_sends_chunks_then_usage_then_done(client: httpx.Client) -> None:
    response = client.post("/chat/completions", json=STREAM_BODY)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-upstream-name"] == "A"
    payloads = sse_payloads(response.text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["total_tokens"] > 0
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks[:-1])
    assert text.startswith("answer from A")
    assert len(text.split()) == usage_chunk["usage"]["completion_tokens"]


def test_stream_without_include_usage_has_no_usage(client: httpx.Client) -> None:
    response = post(client, stream=True)
    payloads = sse_payloads(response.text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    assert all("usage" not in chunk and chunk["choices"] for chunk in chunks)


def test_keep_alive_serves_many_requests_on_one_connection(upstream: FaultyUpstream,
                                                          client: httpx.Client) -> None:
    for _ in range(3):
        assert post(client).status_code == 200
        assert post(client, stream=True).status_code == 200
    assert upstream.connections == 1
    assert upstream.counts() == {"ok": 6}


def test_models_and_unknown_paths(upstream: FaultyUpstream, client: httpx.Client) -> None:
    models = client.get("/models")
    assert models.status_code == 200
    assert models.json()["object"] == "list"
    assert [model["id"] for model in models.json()["data"]] == upstream.models
    missing = client.get("/nope")
    assert missing.status_code == 404
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    assert client.get("/chat/completions").status_code == 405
    bad_json = client.post("/chat/completions", content=b"{not json",
                           headers={"content-type": "application/json"})
    assert bad_json.status_code == 400
    assert upstream.counts() == {}  # none of these is a chat request that was recorded


def test_records_each_request(upstream: FaultyUpstream, client: httpx.Client) -> None:
    before = time.monotonic()
    post(client, "500", user="u1")
    client.post("/chat/completions", json=STREAM_BODY, headers={"authorization": "Bearer k"})
    after = time.monotonic()
    first, second = upstream.requests
    assert before <= first.t <= second.t <= after
    assert (first.fault, first.model, first.stream) == ("500", "gpt-4o-mini", False)
    assert first.body["user"] == "u1"
    assert first.headers["x-fault"] == "500"
    assert (second.fault, second.stream) == ("ok", True)
    assert second.headers["authorization"] == "Bearer k"
    upstream.reset_stats()
    assert upstream.requests == [] and upstream.counts() == {}


# -- error faults --------------------------------------------------------------


@pytest.mark.parametrize(("fault", "status", "error_type", "code"), [
    ("429", 429, "requests", "rate_limit_exceeded"),
    ("429-retry-after", 429, "requests", "rate_limit_exceeded"),
    ("500", 500, "server_error", None),
    ("502", 502, "server_error", None),
    ("503", 503, "server_error", None),
    ("400", 400, "invalid_request_error", None),
    ("401", 401, "invalid_request_error", "invalid_api_key"),
    ("context", 400, "invalid_request_error", "context_length_exceeded"),
])
def test_error_faults(upstream: FaultyUpstream, client: httpx.Client, fault: str, status: int,
                      error_type: str, code: str | None) -> None:
    for stream in (False, True):  # OpenAI answers errors as JSON even to stream requests
        response = post(client, fault, stream=stream)
        assert response.status_code == status
        assert response.headers["x-upstream-name"] == "A"
        assert response.headers["content-type"] == "application/json"
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == error_type
        assert error["code"] == code
        assert error["message"]
        if fault == "429-retry-after":
            assert response.headers["retry-after"] == "1"
        else:
            assert "retry-after" not in response.headers
    # An error leaves the connection usable.
    assert post(client).status_code == 200
    assert upstream.connections == 1


def test_context_fault_uses_openais_message(client: httpx.Client) -> None:
    error = post(client, "context").json()["error"]
    assert error["message"].startswith("This model's maximum context length is ")
    assert error["param"] == "messages"


def test_retry_after_is_configurable(upstream: FaultyUpstream, client: httpx.Client) -> None:
    upstream.retry_after_s = 7
    assert post(client, "429-retry-after").headers["retry-after"] == "7"
    upstream.retry_after_s = 0.5
    assert post(client, "429-retry-after").headers["retry-after"] == "0.5"


# -- transport faults ------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_slow_delays_the_head(upstream: FaultyUpstream, client: httpx.Client,
                              stream: bool) -> None:
    upstream.slow_s = 0.5
    started = time.monotonic()
    with client.stream("POST", "/chat/completions", json={**BODY, "stream": stream},
                       headers={"x-fault": "slow"}) as response:
        head_after = time.monotonic() - started
        response.read()
    assert head_after >= 0.5
    assert head_after < 20.0
    assert response.status_code == 200
    if stream:
        assert sse_payloads(response.text)[-1] == "[DONE]"
    else:
        assert response.json()["choices"][0]["message"]["content"].startswith("answer from A")


def test_latency_is_added_before_every_head(upstream: FaultyUpstream,
                                            client: httpx.Client) -> None:
    upstream.latency_s = 0.3
    for fault in (None, "500"):
        started = time.monotonic()
        post(client, fault)
        assert time.monotonic() - started >= 0.3
    upstream.latency_s = 0.0
    started = time.monotonic()
    assert post(client).status_code == 200
    assert time.monotonic() - started < 20.0


def test_hang_never_answers(upstream: FaultyUpstream) -> None:
    with httpx.Client(base_url=upstream.url + "/v1", timeout=0.5) as http:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            post(http, "hang")
        assert time.monotonic() - started >= 0.5
    assert upstream.counts() == {"hang": 1}
    # The client closed the socket: the server notices and stops counting it.
    wait_until(lambda: upstream.in_flight == 0)
    assert upstream.max_in_flight == 1


def test_stop_releases_hanging_clients() -> None:
    upstream = FaultyUpstream(name="H").start()
    outcome: queue.Queue[BaseException | None] = queue.Queue()

    def hang() -> None:
        try:
            with httpx.Client(timeout=60.0) as http:
                http.post(upstream.url + "/v1/chat/completions", json=BODY,
                          headers={"x-fault": "hang"})
            outcome.put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.put(exc)

    thread = threading.Thread(target=hang, daemon=True)
    thread.start()
    wait_until(lambda: upstream.in_flight == 1)
    upstream.stop()
    error = outcome.get(timeout=30.0)
    assert isinstance(error, httpx.TransportError)
    assert not isinstance(error, httpx.TimeoutException)
    thread.join(10.0)


@pytest.mark.parametrize("stream", [False, True])
def test_reset_drops_the_connection(upstream: FaultyUpstream, client: httpx.Client,
                                    stream: bool) -> None:
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        post(client, "reset", stream=stream)
    assert post(client).status_code == 200  # a new connection is served as usual
    assert upstream.counts() == {"reset": 1, "ok": 1}


def test_mid_stream_reset_cuts_a_stream(upstream: FaultyUpstream, client: httpx.Client) -> None:
    upstream.mid_stream_chunks = 3
    payloads: list[str] = []
    with client.stream("POST", "/chat/completions", json=STREAM_BODY,
                       headers={"x-fault": "mid-stream-reset"}) as response:
        assert response.status_code == 200
        assert response.headers["x-upstream-name"] == "A"
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            for line in response.iter_lines():
                if line.startswith("data: "):
                    payloads.append(line[len("data: "):])
    assert "[DONE]" not in payloads
    chunks = [json.loads(payload) for payload in payloads]
    contents = [chunk for chunk in chunks if chunk["choices"][0]["delta"].get("content")]
    assert 1 <= len(contents) <= 3
    assert all(chunk["choices"][0]["finish_reason"] is None for chunk in chunks)


def test_mid_stream_reset_without_stream_is_a_reset(client: httpx.Client) -> None:
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        post(client, "mid-stream-reset")


# -- choosing faults --------------------------------------------------------------


def test_script_is_used_in_order_before_the_mix(upstream: FaultyUpstream,
                                                client: httpx.Client) -> None:
    upstream.script("500", "429", "ok", "503")
    upstream.script("401")
    statuses = [post(client).status_code for _ in range(6)]
    assert statuses == [500, 429, 200, 503, 401, 200]
    assert [hit.fault for hit in upstream.requests] == ["500", "429", "ok", "503", "401", "ok"]


def test_x_fault_header_wins_and_leaves_the_script_alone(upstream: FaultyUpstream,
                                                        client: httpx.Client) -> None:
    upstream.script("500")
    upstream.set_mix({"503": 1.0})
    assert post(client, "ok").status_code == 200
    assert post(client, "429").status_code == 429
    assert post(client).status_code == 500  # the script
    assert post(client).status_code == 503  # the mix


def test_unknown_faults_are_refused(upstream: FaultyUpstream, client: httpx.Client) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        upstream.script("ok", "explode")
    with pytest.raises(ValueError, match="unknown fault"):
        upstream.set_mix({"explode": 0.1})
    with pytest.raises(ValueError, match="add up"):
        upstream.set_mix({"500": 0.7, "503": 0.7})
    with pytest.raises(ValueError):
        FaultyUpstream(mix={"500": -0.1})
    response = post(client, "explode")
    assert response.status_code == 400
    assert "explode" in response.json()["error"]["message"]
    assert upstream.counts() == {}
    assert post(client).status_code == 200  # the refused script queued nothing


def test_mix_proportions(upstream: FaultyUpstream, client: httpx.Client) -> None:
    mix = {"500": 0.3, "429": 0.1, "503": 0.05}
    upstream.set_mix(mix)
    total = 2000
    statuses = [post(client).status_code for _ in range(total)]
    counts = upstream.counts()
    assert sum(counts.values()) == total
    for fault, probability in mix.items():
        sigma = math.sqrt(total * probability * (1 - probability))
        assert abs(counts[fault] - total * probability) < 5 * sigma, (fault, counts)
    assert statuses.count(200) == counts["ok"]
    assert statuses.count(500) == counts["500"]


def test_same_seed_same_faults() -> None:
    sequences = []
    for _ in range(2):
        with FaultyUpstream(seed=42, mix={"500": 0.5, "429": 0.2}) as upstream, \
                httpx.Client(base_url=upstream.url + "/v1", timeout=CLIENT_TIMEOUT) as http:
            for _ in range(100):
                post(http)
            sequences.append([hit.fault for hit in upstream.requests])
    assert sequences[0] == sequences[1]
    assert len(set(sequences[0])) == 3


def test_settings_change_while_running(upstream: FaultyUpstream, client: httpx.Client) -> None:
    upstream.set_mix({"502": 1.0})
    assert post(client).status_code == 502
    upstream.set_mix({})
    assert post(client).status_code == 200
    upstream.name = "B"
    response = post(client)
    assert response.headers["x-upstream-name"] == "B"
    assert response.json()["choices"][0]["message"]["content"].startswith("answer from B")


# -- concurrency accounting ---------------------------------------------------------


async def test_in_flight_counts_concurrent_requests() -> None:
    upstream = FaultyUpstream(name="C")
    await upstream.astart()
    try:
        async with httpx.AsyncClient(base_url=upstream.url + "/v1",
                                     timeout=CLIENT_TIMEOUT) as http:
            tasks = [asyncio.create_task(http.post("/chat/completions", json=BODY,
                                                   headers={"x-fault": "hang"}))
                     for _ in range(8)]
            deadline = time.monotonic() + 15.0
            while upstream.in_flight < 8:
                assert time.monotonic() < deadline, upstream.in_flight
                await asyncio.sleep(0.01)
            assert upstream.max_in_flight == 8
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        deadline = time.monotonic() + 15.0
        while upstream.in_flight:
            assert time.monotonic() < deadline, upstream.in_flight
            await asyncio.sleep(0.01)
        assert upstream.max_in_flight == 8
        upstream.reset_stats()
        assert upstream.max_in_flight == 0
        async with httpx.AsyncClient(base_url=upstream.url + "/v1",
                                     timeout=CLIENT_TIMEOUT) as http:
            response = await http.post("/chat/completions", json=BODY)
        assert response.status_code == 200
        assert upstream.in_flight == 0 and upstream.max_in_flight == 1
    finally:
        await upstream.astop()


async def test_runs_on_the_current_loop() -> None:
    async with FaultyUpstream(name="L") as upstream:
        assert upstream.port and upstream.url == f"http://127.0.0.1:{upstream.port}"
        async with httpx.AsyncClient(base_url=upstream.url + "/v1",
                                     timeout=CLIENT_TIMEOUT) as http:
            response = await http.post("/chat/completions", json=STREAM_BODY)
    assert response.headers["x-upstream-name"] == "L"
    assert sse_payloads(response.text)[-1] == "[DONE]"


def test_unnamed_upstream_is_named_after_its_port() -> None:
    with FaultyUpstream() as upstream:
        assert upstream.name == f"upstream-{upstream.port}"


def test_fault_names_are_the_contract() -> None:
    assert set(FAULTS) == {"ok", "429", "429-retry-after", "500", "502", "503", "400", "401",
                           "context", "slow", "hang", "reset", "mid-stream-reset"}


# -- the CLI -------------------------------------------------------------------------


def test_cli_serves_and_reports_counts_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.upstreams.faulty_openai", "--port", "0", "--name", "cli",
         "--mix", "500=0.5", "--mix", "hang=0", "--latency-ms", "1", "--seed", "3"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines: queue.Queue[str] = queue.Queue()
        assert process.stdout is not None
        stdout = process.stdout

        def pump() -> None:
            for line in stdout:
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        first = lines.get(timeout=60.0)
        assert first.startswith("listening on "), first
        port = int(first.split()[-1])
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/v1",
                          timeout=CLIENT_TIMEOUT) as http:
            responses = [post(http) for _ in range(20)]
        assert {response.headers["x-upstream-name"] for response in responses} == {"cli"}
        statuses = [response.status_code for response in responses]
        assert set(statuses) == {200, 500}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30.0) == 0
        counts = json.loads(lines.get(timeout=10.0))
        assert counts == {"ok": statuses.count(200), "500": statuses.count(500)}
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10.0)


def test_cli_rejects_an_unknown_fault() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.upstreams.faulty_openai", "--mix", "explode=0.1"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60.0, check=False)
    assert result.returncode == 2
    assert "unknown fault" in result.stderr

"""Routing and resilience through real gateway processes, as a caller sees them.

Every test starts real gateways (``gateway_factory``; two on one Redis are two
nodes) in front of fault-injecting OpenAI upstreams (``FaultyUpstream``, on
threads of this process) and asserts what a caller and an operator see: which
upstream got the calls, the ``x-smartflow-*`` answer headers, the webhook
messages a local receiver got, /metrics.

Thousands of calls are driven by a small raw HTTP/1.1 keep-alive client
(``Conn``): httpx costs a few ms of CPU per call in this process, which would
make the test process, not the gateway, the bottleneck. A ``Conn`` can be
pinned to one worker (``GET /bench/worker`` names the process that answered
on that connection), so a test can show that *every* worker of every node
behaves. Admin calls go through httpx.

Robustness on a loaded machine: waits poll with deadlines far beyond the
normal case; shares are checked against thresholds several standard
deviations away from both the expected value and the value a broken strategy
would give; seeds are fixed; the upstreams' request timestamps
(``time.monotonic()``, the clock this process reads too) say when a cooldown
tripped, instead of a guess from sleeps.
"""

from __future__ import annotations

import asyncio
import collections
import re
import statistics
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
import uvloop
from harness.gateway import GatewayProcess
from upstreams.faulty_openai import FaultyUpstream, Hit
from upstreams.server import UpstreamThread

from smartflow.http.request import Request
from smartflow.http.response import Response
from smartflow.http.router import Router

MASTER = "sk-master-routing-e2e-0123456789"
CHAT_PATH = "/v1/chat/completions"
UPSTREAM_MODEL = "routing-test-model"  # not in the price table: prices are the config's
REQUEST_TIMEOUT_S = 60.0  # one call; only a wedged gateway gets near it
PIN_DEADLINE_S = 30.0
PROPAGATION_S = 3.0  # an admin change or a cooldown reaches every worker within this
ADAPTIVE_CARD = "application/vnd.microsoft.card.adaptive"
# What the real services answer: Slack 200 "ok", Teams workflows 202, Discord 204.
WEBHOOK_STATUS = {"slack": 200, "teams": 202, "discord": 204}

T = TypeVar("T")


# -- gateways and upstreams -------------------------------------------------------------


def gateway_config(redis_url: str, models: list[dict[str, Any]], *,
                   routing: dict[str, Any] | None = None,
                   alerts: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        # bench_routes: /bench/worker lets a connection be pinned to a worker;
        # a long keep-alive keeps a pinned connection open between steps.
        "server": {"access_log": False, "bench_routes": True, "keepalive_timeout": 120.0},
        "auth": {"master_key": MASTER},
        "state": {"redis_url": redis_url},
        "routing": routing or {},
        "alerts": alerts or {},
        "models": models,
    }


def deployment(name: str, deployment_id: str, upstream: FaultyUpstream, *,
               provider: str = "openai", **extra: Any) -> dict[str, Any]:
    """One ``[[models]]`` entry: a deployment of ``name`` served by ``upstream``."""
    return {"name": name, "id": deployment_id, "provider": provider, "model": UPSTREAM_MODEL,
            "api_base": upstream.url + "/v1", "api_key": "sk-upstream-test",
            "input_price_per_mtok": 0.0, "output_price_per_mtok": 0.0, **extra}


@pytest.fixture
def upstreams() -> Iterator[Callable[..., FaultyUpstream]]:
    """make(name, **FaultyUpstream kwargs) -> a started upstream (seeded, stopped at the end).

    Ask for this fixture before ``gateway_factory``: teardown runs in reverse, so the
    gateways stop before their upstreams do.
    """
    started: list[FaultyUpstream] = []

    def make(name: str, **kwargs: Any) -> FaultyUpstream:
        kwargs.setdefault("seed", 1000 + len(started))
        upstream = FaultyUpstream(name=name, **kwargs).start()
        started.append(upstream)
        return upstream

    try:
        yield make
    finally:
        for upstream in started:
            upstream.stop()


def run(scenario: Coroutine[Any, Any, T]) -> T:
    """Run a client scenario on a fresh uvloop loop (sync tests, real gateways)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(scenario)


def admin(url: str, method: str, path: str, body: Any = None) -> httpx.Response:
    return httpx.request(method, url + path, json=body, timeout=30,
                         headers={"authorization": f"Bearer {MASTER}"})


# -- a small raw HTTP/1.1 client --------------------------------------------------------


@dataclass(slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    started: float  # time.monotonic()
    ended: float
    node: int  # which gateway (index in the test's list)
    pid: int | None  # the worker that answered, when the connection is pinned

    @property
    def deployment(self) -> str:
        return self.headers.get("x-smartflow-deployment", "")

    @property
    def attempts(self) -> int:
        return int(self.headers.get("x-smartflow-attempts", "0"))

    @property
    def error_code(self) -> str | None:
        error = orjson.loads(self.body).get("error") or {}
        return error.get("code")  # type: ignore[no-any-return]


class Conn:
    """One keep-alive HTTP/1.1 connection; reconnects (and forgets its pin) if closed."""

    def __init__(self, url: str, node: int = 0) -> None:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        self.host, self.port, self.node = parts.hostname, parts.port, node
        self.pid: int | None = None
        self.connects = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: Sequence[tuple[str, str]] = ()) -> Answer:
        if self._writer is None:
            if self.connects:
                self.pid = None  # a new connection may land on another worker
            self.connects += 1
            await self._connect()
        assert self._reader is not None and self._writer is not None
        head = [f"{method} {path} HTTP/1.1", f"host: {self.host}:{self.port}",
                f"authorization: Bearer {MASTER}", f"content-length: {len(body)}"]
        if body:
            head.append("content-type: application/json")
        head += [f"{name}: {value}" for name, value in headers]
        started = time.monotonic()
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                self._writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
                status, answer_headers, data = await self._read_answer(self._reader)
        except BaseException:
            await self.close()
            raise
        if answer_headers.get("connection", "").lower() == "close":
            await self.close()
        return Answer(status, answer_headers, data, started, time.monotonic(), self.node,
                      self.pid)

    @staticmethod
    async def _read_answer(reader: asyncio.StreamReader
                           ) -> tuple[int, dict[str, str], bytes]:
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            return status, headers, await reader.readexactly(int(headers["content-length"]))
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":
                        pass
                    return status, headers, b"".join(parts)
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
        return status, headers, await reader.read()

    async def chat(self, payload: bytes, headers: Sequence[tuple[str, str]] = ()) -> Answer:
        return await self.request("POST", CHAT_PATH, payload, headers)


def chat_body(model: str, **extra: Any) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}],
                         "max_tokens": 8, **extra})


async def open_conns(urls: Sequence[str], per_node: int) -> list[Conn]:
    conns = [Conn(url, node) for node, url in enumerate(urls) for _ in range(per_node)]
    for conn in conns:
        await conn.request("GET", "/health")
    return conns


async def pin(gateways: Sequence[GatewayProcess], per_worker: int) -> list[Conn]:
    """``per_worker`` open connections to every worker of every gateway, each knowing
    its worker's pid (SO_REUSEPORT spreads fresh connections over the workers)."""
    kept: list[Conn] = []
    for node, gateway in enumerate(gateways):
        wanted = dict.fromkeys(gateway.wait_worker_pids(gateway.workers), per_worker)
        deadline = time.monotonic() + PIN_DEADLINE_S
        while any(wanted.values()):
            assert time.monotonic() < deadline, f"could not reach every worker: {wanted}"
            conn = Conn(gateway.url, node)
            answer = await conn.request("GET", "/bench/worker")
            pid = orjson.loads(answer.body)["pid"]
            if wanted.get(pid, 0) > 0:
                wanted[pid] -= 1
                conn.pid = pid
                kept.append(conn)
            else:
                await conn.close()
    return kept


async def close_all(conns: Sequence[Conn]) -> None:
    for conn in conns:
        await conn.close()


async def drive(conns: Sequence[Conn], payload: bytes, *, count: int | None = None,
                until: Callable[[list[Answer]], bool] | None = None,
                deadline_s: float = 60.0, what: str = "",
                headers: Sequence[tuple[str, str]] = (), pace_s: float = 0.0
                ) -> list[Answer]:
    """Calls on every connection at once (each one call at a time, ``pace_s``
    apart) until ``count`` calls were made or ``until(answers)`` holds;
    AssertionError if ``until`` does not hold by the deadline."""
    answers: list[Answer] = []
    issued = 0
    deadline = time.monotonic() + deadline_s
    done = False

    async def loop(conn: Conn) -> None:
        nonlocal issued, done
        while not done:
            if count is not None and issued >= count:
                return
            if until is not None and until(answers):
                done = True
                return
            if time.monotonic() > deadline:
                return
            issued += 1
            answers.append(await conn.chat(payload, headers))
            if pace_s:
                await asyncio.sleep(pace_s)

    await asyncio.gather(*(loop(conn) for conn in conns))
    if until is not None and not done and not until(answers):
        raise AssertionError(f"{what or 'the condition'}: not reached within {deadline_s:g} s "
                             f"({len(answers)} calls)")
    return answers


def share(answers: Sequence[Answer], deployment_id: str) -> float:
    return sum(a.deployment == deployment_id for a in answers) / max(1, len(answers))


def statuses(answers: Sequence[Answer]) -> collections.Counter[int]:
    return collections.Counter(a.status for a in answers)


def chat_hits(upstream: FaultyUpstream) -> list[Hit]:
    return list(upstream.requests)


# -- webhook receivers and metrics -------------------------------------------------------


class WebhookReceiver:
    """Slack, Teams and Discord webhooks on one local server: ``url(channel)``.

    Answers like the real services do (``WEBHOOK_STATUS``)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, Any]] = []
        router = Router()
        router.add("POST", "/hook/{channel}", self._hook)
        self._thread = UpstreamThread(router)

    async def _hook(self, request: Request) -> Response:
        channel = request.path_params["channel"]
        self.received.append((channel, orjson.loads(await request.body())))
        status = WEBHOOK_STATUS.get(channel, 200)
        return Response(status, b"" if status == 204 else b"ok", content_type="text/plain")

    def url(self, channel: str) -> str:
        return f"{self._thread.url}/hook/{channel}"

    def titled(self, channel: str, needle: str) -> list[Any]:
        """The bodies ``channel`` received whose title contains ``needle``."""
        return [body for got, body in list(self.received)
                if got == channel and needle in title_of(channel, body)]

    def stop(self) -> None:
        self._thread.stop()


def title_of(channel: str, body: Any) -> str:
    if channel == "slack":
        return str(body["blocks"][0]["text"]["text"])
    if channel == "discord":
        return str(body["embeds"][0]["title"])
    return str(body["attachments"][0]["content"]["body"][0]["text"])


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    found = WebhookReceiver()
    try:
        yield found
    finally:
        found.stop()


def metric(text: str, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly ``labels`` (0 when absent)."""
    for line in text.splitlines():
        metric_name, _, rest = line.partition("{")
        if metric_name != name or not rest:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', rest.split("}")[0]))
        if found == labels:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def scrape(gateway: GatewayProcess) -> str:
    answer = httpx.get(gateway.url + "/metrics", timeout=30)
    assert answer.status_code == 200
    return answer.text


def wait_for(predicate: Callable[[], bool], *, timeout_s: float, what: str,
             interval_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            if predicate():
                return
            raise AssertionError(f"{what}: not reached within {timeout_s:g} s")
        time.sleep(interval_s)


# -- 1. weighted ------------------------------------------------------------------------


def test_weighted_3_to_1_holds_over_4000_calls_on_each_of_two_workers(
        redis_url: str, upstreams: Callable[..., FaultyUpstream],
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    heavy, light = upstreams("heavy"), upstreams("light")
    gateway = gateway_factory(gateway_config(
        redis_url,
        [deployment("weighted-model", "heavy", heavy, weight=3),
         deployment("weighted-model", "light", light, weight=1)],
        routing={"strategy_by_model": {"weighted-model": "weighted"}}), workers=2)

    async def scenario() -> list[Answer]:
        conns = await pin([gateway], per_worker=8)
        try:
            return await drive(conns, chat_body("weighted-model"), count=4000)
        finally:
            await close_all(conns)

    answers = run(scenario())
    assert statuses(answers) == {200: 4000}
    by_deployment = collections.Counter(a.deployment for a in answers)
    # What the callers were told is what the upstreams saw.
    assert by_deployment == {"heavy": heavy.counts()["ok"], "light": light.counts()["ok"]}
    assert {a.attempts for a in answers} == {1}
    assert {a.headers["x-smartflow-provider"] for a in answers} == {"openai"}
    heavy_share = by_deployment["heavy"] / len(answers)
    assert abs(heavy_share - 0.75) < 0.02, by_deployment
    # Smooth weighted round robin is exact per worker, not only on the whole.
    per_worker: dict[int | None, list[Answer]] = collections.defaultdict(list)
    for answer in answers:
        per_worker[answer.pid].append(answer)
    assert None not in per_worker and len(per_worker) == 2
    for pid, served in per_worker.items():
        assert len(served) > 400, {p: len(s) for p, s in per_worker.items()}
        assert abs(share(served, "heavy") - 0.75) < 0.02, (pid, len(served))


# -- 2. least connections ---------------------------------------------------------------


def test_least_connections_balances_in_flight_calls_and_favours_the_fast_deployment(
        redis_url: str, upstreams: Callable[..., FaultyUpstream],
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    even_a, even_b = upstreams("even-a", latency_s=0.3), upstreams("even-b", latency_s=0.3)
    fast, slow = upstreams("fast"), upstreams("slow", latency_s=0.3)
    gateway = gateway_factory(gateway_config(
        redis_url,
        [deployment("lc-even", "even-a", even_a), deployment("lc-even", "even-b", even_b),
         deployment("lc-skew", "fast", fast), deployment("lc-skew", "slow", slow)],
        routing={"strategy": "least_connections"}), workers=2)
    burst, sustained, sustained_calls = 60, 32, 400

    async def scenario() -> tuple[list[Answer], list[Answer]]:
        conns = await pin([gateway], per_worker=burst // 2)
        try:
            # 60 calls at once, one per connection, over both workers.
            even = await drive(conns, chat_body("lc-even"), count=burst)
            skewed = await drive(conns[:sustained], chat_body("lc-skew"),
                                 count=sustained_calls)
            return even, skewed
        finally:
            await close_all(conns)

    even, skewed = run(scenario())
    assert statuses(even) == {200: burst}
    assert statuses(skewed) == {200: sustained_calls}
    # Equal latency: the in-flight calls are split evenly at every moment, so both
    # the totals and the peaks of concurrent calls each upstream saw are even.
    counts = (even_a.counts()["ok"], even_b.counts()["ok"])
    peaks = (even_a.max_in_flight, even_b.max_in_flight)
    assert sum(counts) == burst
    assert abs(counts[0] - counts[1]) <= 6, (counts, peaks)
    assert abs(peaks[0] - peaks[1]) <= 6, (counts, peaks)
    # One slow deployment: it holds its calls 0.3 s, so it is the busier one and
    # new calls go to the fast one. Its in-flight count never gets much past half
    # of the callers (round robin would pile nearly all of them on it).
    fast_calls, slow_calls = fast.counts()["ok"], slow.counts()["ok"]
    assert fast_calls + slow_calls == sustained_calls
    assert fast_calls >= 2 * slow_calls, (fast_calls, slow_calls)
    assert slow.max_in_flight <= sustained // 2 + 4, (slow.max_in_flight, fast.max_in_flight)


# -- 3. latency -------------------------------------------------------------------------


def test_latency_routing_leaves_a_deployment_that_slows_down_and_returns_when_it_recovers(
        redis_url: str, upstreams: Callable[..., FaultyUpstream],
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    # "steady" answers in a constant 0.1 s, so which deployment is fastest never
    # depends on scheduling noise: "quick" while it answers at once, "steady"
    # while quick takes 0.35 s.
    quick, steady = upstreams("quick"), upstreams("steady", latency_s=0.1)
    gateway = gateway_factory(gateway_config(
        redis_url,
        [deployment("lat", "quick", quick), deployment("lat", "steady", steady)],
        routing={"strategy_by_model": {"lat": "latency"}, "latency_exploration": 0.2}),
        workers=2)
    payload = chat_body("lat")
    window = 150
    # With exploration 0.2 the fastest of two takes ~80% of calls, the other ~20%.
    # Over 150 calls: sd ~5 calls, so 2/3 and 1/3 are each 4 sd from what is
    # expected, and 4 sd from the 50% a strategy that ignored latency would give.
    mostly, rarely = 2 / 3, 1 / 3

    async def until_share(conns: list[Conn], wanted: Callable[[float], bool], what: str,
                          deadline_s: float) -> list[float]:
        seen: list[float] = []
        deadline = time.monotonic() + deadline_s
        while True:
            answers = await drive(conns, payload, count=window)
            assert statuses(answers) == {200: window}
            seen.append(round(share(answers, "quick"), 3))
            if wanted(seen[-1]):
                return seen
            assert time.monotonic() < deadline, f"{what}: quick's share per window {seen}"

    async def scenario() -> dict[str, Any]:
        conns = await pin([gateway], per_worker=8)
        try:
            await drive(conns, payload, count=40)  # both get measured
            fast_phase = await until_share(conns, lambda s: s >= mostly,
                                           "quick takes most calls", 30)
            quick.latency_s = 0.35
            before = quick.counts()["ok"]
            slow_phase = await until_share(conns, lambda s: s <= rarely,
                                           "traffic moves off quick once it is slow", 30)
            explored = quick.counts()["ok"] - before
            quick.latency_s = 0.0
            back_phase = await until_share(conns, lambda s: s >= mostly,
                                           "traffic comes back to quick once it recovers", 40)
            return {"fast": fast_phase, "slow": slow_phase, "back": back_phase,
                    "explored": explored}
        finally:
            await close_all(conns)

    phases = run(scenario())
    # While slow, quick was still tried now and then: that is how it was
    # measured again, and how the traffic found its way back.
    assert phases["explored"] > 0, phases


# -- 4. cooldown across workers and nodes -----------------------------------------------


COOLDOWN_S = 5.0


def test_a_failing_deployment_cools_down_on_every_worker_of_both_nodes_then_is_probed(
        redis_url: str, upstreams: Callable[..., FaultyUpstream],
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    good = upstreams("good")
    bad = upstreams("bad", mix={"500": 1.0})
    config = gateway_config(
        redis_url,
        [deployment("cool", "good", good), deployment("cool", "bad", bad)],
        routing={"cooldown_failures": 3, "cooldown_window": 30.0,
                 "cooldown_time": COOLDOWN_S})
    nodes = [gateway_factory(config, workers=2) for _ in range(2)]

    def probe_seen_then_quiet(_answers: list[Answer]) -> bool:
        """The cooldown tripped, was over, a probe came, and 2.5 s passed after it."""
        hits = chat_hits(bad)
        if len(hits) < 3:
            return False
        tripped = hits[2].t
        probes = [h.t for h in hits[3:] if h.t > tripped + COOLDOWN_S - 1.0]
        return bool(probes) and time.monotonic() > probes[0] + 2.5

    async def scenario() -> list[Answer]:
        conns = await pin(nodes, per_worker=2)
        try:
            # ~100 calls a second per connection: plenty to see where they go,
            # without saturating the machine for the whole cooldown.
            return await drive(conns, chat_body("cool"), until=probe_seen_then_quiet,
                               deadline_s=40.0, what="the bad deployment probed again",
                               pace_s=0.01)
        finally:
            await close_all(conns)

    answers = run(scenario())
    # Every caller got an answer from the healthy deployment.
    assert statuses(answers) == {200: len(answers)}
    assert {a.deployment for a in answers} == {"good"}
    assert any(a.attempts == 2 for a in answers)  # the calls that went to "bad" first
    hits = [h.t for h in chat_hits(bad)]
    tripped = hits[2]  # the third failure takes it out (cooldown_failures = 3)
    quiet_from, quiet_to = tripped + 1.0, tripped + COOLDOWN_S - 1.0
    during = [h for h in hits if quiet_from < h < quiet_to]
    first_burst = [h for h in hits if h <= quiet_from]
    assert len(during) <= 1, (
        f"calls reached the cooling deployment {[round(h - tripped, 2) for h in during]} s "
        "after it tripped")
    assert len(first_burst) <= 20, len(first_burst)
    # ... while every worker of both nodes was busy routing calls for the model.
    busy = collections.Counter((a.node, a.pid) for a in answers
                               if quiet_from < a.started and a.ended < quiet_to)
    assert len(busy) == 4 and min(busy.values()) >= 5, busy
    # After the cooldown, it was tried again: the probe(s) ...
    probes = [h for h in hits if h >= quiet_to]
    assert probes and probes[0] <= tripped + COOLDOWN_S + 3.0, [h - tripped for h in hits]
    # ... failed, and one failure on probation takes it out again at once.
    after_probe = [h for h in hits if probes[0] + 1.0 < h]
    assert after_probe == [], [round(h - probes[0], 2) for h in after_probe]


# -- 5. tags ----------------------------------------------------------------------------


def test_tag_routing_matches_tags_refuses_unmatched_and_uses_the_default_tag(
        redis_url: str, upstreams: Callable[..., FaultyUpstream],
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    eu, us, fallback = upstreams("eu"), upstreams("us"), upstreams("fallback")
    models = [deployment("tagged", "eu", eu, tags=["eu"]),
              deployment("tagged", "us-gpu", us, tags=["us", "gpu"]),
              deployment("tagged", "fallback", fallback, tags=["default"])]
    routing = {"strategy_by_model": {"tagged": "tag"}}
    strict = gateway_factory(gateway_config(redis_url, models, routing=routing), workers=2)
    with_default = gateway_factory(gateway_config(
        redis_url, models, routing={**routing, "tag_default": "default"}), workers=2)
    payload = chat_body("tagged")

    async def calls(gateway: GatewayProcess, tags: str | None, count: int = 20
                    ) -> list[Answer]:
        conns = await open_conns([gateway.url], 4)
        try:
            headers = [("x-smartflow-tags", tags)] if tags is not None else []
            return await drive(conns, payload, count=count, headers=headers)
        finally:
            await close_all(conns)

    def deployments_of(answers: list[Answer]) -> set[str]:
        assert statuses(answers) == {200: len(answers)}, [a.body for a in answers[:3]]
        return {a.deployment for a in answers}

    assert deployments_of(run(calls(strict, "eu"))) == {"eu"}
    assert deployments_of(run(calls(strict, "us"))) == {"us-gpu"}
    assert deployments_of(run(calls(strict, " gpu , us "))) == {"us-gpu"}
    # No tags asked for and no default tag: any deployment.
    assert deployments_of(run(calls(strict, None, 30))) == {"eu", "us-gpu", "fallback"}
    before = sum(up.counts().total() for up in (eu, us, fallback))
    refused = run(calls(strict, "eu,gpu", 10))
    assert statuses(refused) == {400: 10}
    error = orjson.loads(refused[0].body)["error"]
    assert error["code"] == "no_deployment_for_tags"
    assert error["type"] == "invalid_request_error"
    assert "eu,gpu" in error["message"] and "tagged" in error["message"]
    assert sum(up.counts().total() for up in (eu, us, fallback)) == before  # none was called
    # tag_default: what matches no deployment goes to the default-tagged one.
    assert deployments_of(run(calls(with_default, "eu"))) == {"eu"}
    assert deployments_of(run(calls(with_default, "eu,gpu"))) == {"fallback"}
    assert deployments_of(run(calls(with_default, "mars"))) == {"fallback"}
    assert deployments_of(run(calls(with_default, None))) == {"fallback"}


def test_a_tagged_call_whose_deployment_fails_gets_the_failure_not_a_missing_tag_400(
        redis_url: str, upstreams: Callable[..., FaultyUpstream],
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    # "eu" exists but answers 500: the caller must learn that the upstream failed
    # (a 5xx), not be told that no deployment carries its tags (a 400 blaming
    # the request), neither right away nor while "eu" cools down.
    eu, us = upstreams("eu", mix={"500": 1.0}), upstreams("us")
    gateway = gateway_factory(gateway_config(
        redis_url,
        [deployment("tagged", "eu", eu, tags=["eu"]),
         deployment("tagged", "us", us, tags=["us"])],
        routing={"strategy_by_model": {"tagged": "tag"}, "cooldown_failures": 3}), workers=1)

    async def scenario() -> list[Answer]:
        conns = await open_conns([gateway.url], 1)
        try:
            return await drive(conns, chat_body("tagged"), count=6,
                               headers=[("x-smartflow-tags", "eu")])
        finally:
            await close_all(conns)

    answers = run(scenario())
    seen = [(a.status, a.attempts, a.error_code) for a in answers]
    assert all(a.status >= 500 for a in answers), seen
    assert all(a.error_code != "no_deployment_for_tags" for a in answers), seen
    assert us.counts().total() == 0


# -- 6. priority ------------------------------------------------------------------------


def test_priority_keeps_traffic_on_the_first_tier_and_fails_over_to_the_next(
        redis_url: str, upstreams: Callable[..., FaultyUpstream],
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    first_a, first_b, second = upstreams("first-a"), upstreams("first-b"), upstreams("second")
    gateway = gateway_factory(gateway_config(
        redis_url,
        [deployment("tiered", "second", second, priority=1),
         deployment("tiered", "first-a", first_a, priority=0),
         deployment("tiered", "first-b", first_b, priority=0)],
        routing={"strategy": "priority", "cooldown_failures": 3}), workers=2)
    payload = chat_body("tiered")

    async def scenario() -> tuple[list[Answer], int, list[Answer]]:
        conns = await open_conns([gateway.url], 8)
        try:
            healthy = await drive(conns, payload, count=200)
            second_calls = second.counts().total()
            first_a.set_mix({"500": 1.0})
            first_b.set_mix({"500": 1.0})
            failing = await drive(conns, payload, count=200)
            return healthy, second_calls, failing
        finally:
            await close_all(conns)

    healthy, second_calls, failing = run(scenario())
    assert statuses(healthy) == {200: 200}
    by_deployment = collections.Counter(a.deployment for a in healthy)
    assert second_calls == 0, by_deployment
    # Round robin inside the first tier.
    assert set(by_deployment) == {"first-a", "first-b"}
    assert min(by_deployment.values()) >= 50, by_deployment
    # The whole first tier fails: every caller still gets a 200, from the next tier.
    assert statuses(failing) == {200: 200}
    assert {a.deployment for a in failing} == {"second"}
    assert second.counts()["ok"] == 200
    attempts = [a.attempts for a in failing]
    assert max(attempts) >= 2  # failed over from the first tier ...
    # ... until the first tier was cooling down: from then on one attempt a call.
    # Counted, not "the last call took one": in one loaded run the call that
    # completed last was a 3-attempt one, and completion order under load is
    # not what this test is about.
    assert sum(1 for n in attempts if n == 1) >= 150, attempts


# -- 7. cost ----------------------------------------------------------------------------


def test_cost_routing_sends_calls_to_the_cheapest_deployment_for_the_request(
        redis_url: str, upstreams: Callable[..., FaultyUpstream],
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    pricey, middle, cheap = upstreams("pricey"), upstreams("middle"), upstreams("cheap")
    reads, writes = upstreams("cheap-input"), upstreams("cheap-output")
    gateway = gateway_factory(gateway_config(
        redis_url,
        [deployment("cost-model", "pricey", pricey, input_price_per_mtok=10.0,
                    output_price_per_mtok=30.0),
         deployment("cost-model", "middle", middle, input_price_per_mtok=1.0,
                    output_price_per_mtok=3.0),
         deployment("cost-model", "cheap", cheap, input_price_per_mtok=0.1,
                    output_price_per_mtok=0.3),
         # Cheap to read or cheap to write: which is cheaper depends on the request.
         deployment("cost-shape", "cheap-input", reads, input_price_per_mtok=0.1,
                    output_price_per_mtok=50.0),
         deployment("cost-shape", "cheap-output", writes, input_price_per_mtok=50.0,
                    output_price_per_mtok=0.1)],
        routing={"strategy": "cost"}), workers=2)
    long_prompt = orjson.dumps({"model": "cost-shape", "max_tokens": 1, "messages": [
        {"role": "user", "content": "summarise this: " + "lorem ipsum " * 1000}]})
    long_answer = orjson.dumps({"model": "cost-shape", "max_tokens": 8000, "messages": [
        {"role": "user", "content": "write a long story"}]})

    async def scenario() -> dict[str, list[Answer]]:
        conns = await open_conns([gateway.url], 4)
        try:
            found = {"cheapest": await drive(conns, chat_body("cost-model"), count=100),
                     "long_prompt": await drive(conns, long_prompt, count=20),
                     "long_answer": await drive(conns, long_answer, count=20)}
            cheap.set_mix({"500": 1.0})
            found["cheap_failing"] = await drive(conns, chat_body("cost-model"), count=50)
            return found
        finally:
            await close_all(conns)

    found = run(scenario())
    for answers in found.values():
        assert statuses(answers) == {200: len(answers)}
    assert {a.deployment for a in found["cheapest"]} == {"cheap"}
    assert cheap.counts()["ok"] == 100
    assert {a.deployment for a in found["long_prompt"]} == {"cheap-input"}
    assert {a.deployment for a in found["long_answer"]} == {"cheap-output"}
    # The cheapest fails: the next cheapest takes over, never the most expensive.
    assert {a.deployment for a in found["cheap_failing"]} == {"middle"}
    assert pricey.counts().total() == 0


# -- 8. groups and chains through the admin API -----------------------------------------


def test_admin_groups_and_fallback_chains_reach_every_worker_of_both_nodes(
        redis_url: str, upstreams: Callable[..., FaultyUpstream],
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    one, two, base, broken = (upstreams("one"), upstreams("two"), upstreams("base"),
                              upstreams("broken", mix={"500": 1.0}))
    config = gateway_config(redis_url, [deployment("base", "base", base),
                                        deployment("broken", "broken", broken)])
    nodes = [gateway_factory(config, workers=2) for _ in range(2)]
    group = {"name": "api-made", "strategy": "round_robin", "deployments": [
        {"id": "one", "provider": "openai_compatible", "model": UPSTREAM_MODEL,
         "api_base": one.url + "/v1", "api_key": "", "weight": 1, "priority": 0,
         "tags": ["a"], "input_price_per_mtok": 0.0, "output_price_per_mtok": 0.0},
        {"id": "two", "provider": "openai_compatible", "model": UPSTREAM_MODEL,
         "api_base": two.url + "/v1", "api_key": ""}]}
    chain = {"name": "rescue", "model": "broken", "targets": ["broken", "base"]}
    chain_header = [("x-smartflow-fallback-chain", "rescue")]

    def group_served(answer: Answer) -> bool:
        return answer.status == 200 and answer.deployment in ("api-made:one", "api-made:two")

    def group_gone(answer: Answer) -> bool:
        return answer.status == 404 and answer.error_code == "model_not_found"

    def chained(answer: Answer) -> bool:
        return (answer.status == 200 and answer.deployment == "base"
                and answer.headers.get("x-smartflow-fallback-chain") == "rescue")

    def no_chain(answer: Answer) -> bool:
        return answer.status == 400 and answer.error_code == "unknown_fallback_chain"

    async def on_every_worker(conns: list[Conn], payload: bytes, check: Callable[[Answer], bool],
                              headers: Sequence[tuple[str, str]] = ()) -> float:
        """Poll every pinned worker until ``check`` holds on each; the seconds it took."""
        started = time.monotonic()
        pending = list(conns)
        last: dict[int | None, Answer] = {}
        while pending:
            for conn in list(pending):
                answer = await conn.chat(payload, headers)
                last[conn.pid] = answer
                if check(answer):
                    pending.remove(conn)
            if pending and time.monotonic() - started > 15.0:
                seen = [(pid, a.status, a.body[:120]) for pid, a in last.items()]
                raise AssertionError(f"not on every worker: {seen}")
            await asyncio.sleep(0.02)
        took = time.monotonic() - started
        for conn in conns:  # it stays so
            answer = await conn.chat(payload, headers)
            assert check(answer), (conn.node, conn.pid, answer.status, answer.body[:200])
        assert all(conn.pid is not None for conn in conns)  # still the pinned workers
        return took

    async def scenario() -> dict[str, float]:
        conns = await pin(nodes, per_worker=1)
        took: dict[str, float] = {}
        group_call, broken_call = chat_body("api-made"), chat_body("broken")
        try:
            await on_every_worker(conns, group_call, group_gone)
            await on_every_worker(conns, broken_call, no_chain, chain_header)
            async with httpx.AsyncClient(timeout=30, headers={
                    "authorization": f"Bearer {MASTER}"}) as client:
                created = await client.post(nodes[0].url + "/api/routing/groups", json=group)
                assert created.status_code == 201, created.text
                took["group created"] = await on_every_worker(conns, group_call, group_served)
                listed = await client.get(nodes[1].url + "/api/routing/groups/api-made")
                assert listed.status_code == 200, listed.text
                assert [d["id"] for d in listed.json()["deployments"]] == ["one", "two"]

                created = await client.post(nodes[1].url + "/api/routing/fallback-chains",
                                            json=chain)
                assert created.status_code == 201, created.text
                took["chain created"] = await on_every_worker(conns, broken_call, chained,
                                                              chain_header)
                # The chain serves its model without the header too.
                took["chain by model"] = await on_every_worker(conns, broken_call, chained)
                listed = await client.get(nodes[0].url + "/api/routing/fallback-chains")
                assert "rescue" in [c["name"] for c in listed.json()["data"]]

                deleted = await client.delete(nodes[1].url + "/api/routing/groups/api-made")
                assert deleted.status_code == 200, deleted.text
                took["group deleted"] = await on_every_worker(conns, group_call, group_gone)
                deleted = await client.delete(nodes[0].url + "/api/routing/fallback-chains/rescue")
                assert deleted.status_code == 200, deleted.text
                took["chain deleted"] = await on_every_worker(conns, broken_call, no_chain,
                                                              chain_header)
                missing = await client.get(nodes[1].url + "/api/routing/fallback-chains/rescue")
                assert missing.status_code == 404
            return took
        finally:
            await close_all(conns)

    took = run(scenario())
    assert max(took.values()) < PROPAGATION_S, took
    assert one.counts()["ok"] > 0 and two.counts()["ok"] > 0


# -- 9. provider daily budgets and their alerts -----------------------------------------


def test_a_provider_over_its_daily_budget_is_skipped_and_alerts_reach_each_channel(
        redis_url: str, upstreams: Callable[..., FaultyUpstream], receiver: WebhookReceiver,
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    capped, other = upstreams("capped"), upstreams("other")
    # Each call to the openai deployment costs exactly $0.01; openai may spend $0.05
    # a day (the variable overrides the file's figure), so the 4th call crosses 80%
    # and the 5th 100%.
    gateway = gateway_factory(gateway_config(
        redis_url,
        [deployment("budgeted", "openai-first", capped, priority=0, price_per_request=0.01),
         deployment("budgeted", "compatible-second", other, provider="openai_compatible",
                    priority=1, price_per_request=0.001),
         deployment("openai-only", "openai-only", capped)],
        routing={"strategy": "priority", "provider_daily_budgets": {"openai": 1000.0}},
        alerts={"slack_webhook_url": receiver.url("slack"),
                "teams_webhook_url": receiver.url("teams"),
                "discord_webhook_url": receiver.url("discord")}),
        workers=2, env={"SMARTFLOW_PROVIDER_BUDGETS": "openai:0.05"})
    payload = chat_body("budgeted")

    def recent_all_other(answers: list[Answer]) -> bool:
        tail = answers[-20:]
        return len(tail) == 20 and all(a.deployment == "compatible-second" for a in tail)

    async def scenario() -> tuple[list[Answer], list[Answer], list[Answer]]:
        conns = await pin([gateway], per_worker=1)
        try:
            # One call at a time, alternating between the two workers.
            until_capped: list[Answer] = []
            deadline = time.monotonic() + 30
            while not recent_all_other(until_capped):
                assert time.monotonic() < deadline, [a.deployment for a in until_capped]
                until_capped.append(await conns[len(until_capped) % 2].chat(payload))
            after = await drive(conns, payload, count=100)
            only = await drive(conns, chat_body("openai-only"), count=10)
            return until_capped, after, only
        finally:
            await close_all(conns)

    calls_before = capped.counts()["ok"]
    until_capped, after, only = run(scenario())
    capped_calls = capped.counts()["ok"]
    assert calls_before == 0
    assert statuses(until_capped) == {200: len(until_capped)}
    assert statuses(after) == {200: 100}
    # The cap needs 5 calls; a call or two may be in flight while it is reached.
    assert 5 <= capped_calls <= 8, capped_calls
    first = [a for a in until_capped if a.deployment == "openai-first"]
    assert len(first) == capped_calls
    assert {a.headers["x-smartflow-provider"] for a in first} == {"openai"}
    assert first[0].headers["x-smartflow-response-cost"] == "0.01"
    # Once capped, the capped provider gets no more calls, from either worker.
    assert {a.deployment for a in after} == {"compatible-second"}
    assert {a.headers["x-smartflow-provider"] for a in after} == {"openai_compatible"}
    # A model that only the capped provider serves is refused, with the reason.
    assert statuses(only) == {429: 10}
    assert {a.error_code for a in only} == {"provider_budget_exceeded"}
    assert capped.counts()["ok"] == capped_calls
    # The admin view says so too, with today's spend (to an admin only).
    assert httpx.get(gateway.url + "/api/routing/status", timeout=30).status_code == 401
    status = httpx.get(gateway.url + "/api/routing/status", timeout=30,
                       headers={"authorization": f"Bearer {MASTER}"}).json()
    (openai,) = status["provider_budgets"]
    assert openai["provider"] == "openai" and openai["capped"] is True
    assert openai["daily_budget_usd"] == 0.05
    assert openai["spend_today_usd"] == pytest.approx(0.01 * capped_calls)
    assert {d["id"]: d["provider_capped"] for d in status["deployments"]}["openai-first"]

    def budget_alerts_arrived() -> bool:
        return all(receiver.titled(channel, f"at {percent}%")
                   for channel in ("slack", "teams", "discord") for percent in (80, 100))

    wait_for(budget_alerts_arrived, timeout_s=20, what="80% and 100% alerts in every channel")
    # Every alert raised is accounted for in the metrics: then nothing more is coming.
    wait_for(lambda: all(metric(scrape(gateway), "smartflow_alerts_total", channel=channel,
                                kind="provider_budget", outcome="sent") >= 2
                         for channel in ("slack", "teams", "discord")),
             timeout_s=20, what="alerts counted as sent")
    for channel in ("slack", "teams", "discord"):
        for percent in (80, 100):
            assert len(receiver.titled(channel, f"at {percent}%")) == 1, (channel, percent)
    title80, title100 = ("Provider openai at 80% of its budget",
                         "Provider openai at 100% of its budget")
    (slack80,), (slack100,) = receiver.titled("slack", "80%"), receiver.titled("slack", "100%")
    assert slack80["text"] == f"[WARNING] {title80}"
    assert slack100["text"] == f"[CRITICAL] {title100}"
    assert slack80["blocks"][0] == {"type": "header",
                                    "text": {"type": "plain_text", "text": title80}}
    assert "$0.05" in str(slack100["blocks"])
    (discord80,), (discord100,) = (receiver.titled("discord", "80%"),
                                   receiver.titled("discord", "100%"))
    assert discord80["embeds"][0]["title"] == title80
    assert discord100["embeds"][0]["title"] == title100
    assert discord80["embeds"][0]["color"] != discord100["embeds"][0]["color"]
    assert discord80["allowed_mentions"] == {"parse": []}
    (teams80,) = receiver.titled("teams", "80%")
    assert teams80["type"] == "message"
    (attachment,) = teams80["attachments"]
    assert attachment["contentType"] == ADAPTIVE_CARD
    assert attachment["content"]["type"] == "AdaptiveCard"
    assert attachment["content"]["body"][0]["text"] == title80
    facts = {fact["title"]: fact["value"] for block in attachment["content"]["body"]
             if block["type"] == "FactSet" for fact in block["facts"]}
    assert facts["Provider"] == "openai" and facts["Budget"] == "$0.05"


# -- 10. a burst of failures ------------------------------------------------------------


@pytest.mark.parametrize("shape", ["single-deployment", "two-deployments"])
def test_a_burst_of_500_failures_sends_a_handful_of_alerts_and_calls_stay_prompt(
        shape: str, redis_url: str, upstreams: Callable[..., FaultyUpstream],
        receiver: WebhookReceiver, refusing_port: int,
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    failing = [upstreams("failing-a", mix={"500": 1.0})]
    if shape == "two-deployments":
        failing.append(upstreams("failing-b", mix={"500": 1.0}))
    gateway = gateway_factory(gateway_config(
        redis_url,
        [deployment("flaky", f"flaky-{i}", up) for i, up in enumerate(failing)],
        alerts={"slack_webhook_url": receiver.url("slack"),
                "discord_webhook_url": receiver.url("discord"),
                # Nothing listens there: that channel's deliveries fail.
                "teams_webhook_url": f"http://127.0.0.1:{refusing_port}/hook/teams",
                "failure_spike_count": 5, "failure_spike_window": 60.0}), workers=2)
    burst = 500

    async def scenario() -> list[Answer]:
        conns = await open_conns([gateway.url], 16)
        try:
            return await drive(conns, chat_body("flaky"), count=burst)
        finally:
            await close_all(conns)

    started = time.monotonic()
    answers = run(scenario())
    took = time.monotonic() - started
    assert set(statuses(answers)) <= {500, 502, 503}, statuses(answers)
    assert len(answers) == burst
    durations = sorted(a.ended - a.started for a in answers)
    # Prompt: alerting is off the request path (the dead channel costs nothing).
    assert statistics.median(durations) < 1.0, durations[len(durations) // 2]
    assert durations[-1] < 5.0, durations[-1]
    assert took < 30.0, took

    def spike_alerts(channel: str) -> list[Any]:
        return receiver.titled(channel, "Failure spike on openai")

    wait_for(lambda: bool(spike_alerts("slack")) and bool(spike_alerts("discord")),
             timeout_s=20, what=f"a failure-spike alert in Slack and Discord ({shape})")
    # The dead channel was tried and counted as failed, the others as sent: every
    # alert raised is accounted for, so no more deliveries are on their way.
    wait_for(lambda: metric(scrape(gateway), "smartflow_alerts_total", channel="teams",
                            kind="failure_spike", outcome="failed") >= 1,
             timeout_s=20, what="the dead Teams webhook counted as failed")
    for channel in ("slack", "discord"):
        assert 1 <= len(spike_alerts(channel)) <= 3, (channel, len(spike_alerts(channel)))
    (slack,) = spike_alerts("slack")[:1]
    assert slack["text"] == "[CRITICAL] Failure spike on openai"
    assert "HTTP 500" in str(slack["blocks"])


# -- 11. metrics ------------------------------------------------------------------------


def test_metrics_count_attempts_failovers_and_cooldowns(
        redis_url: str, upstreams: Callable[..., FaultyUpstream],
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    healthy, failing = upstreams("healthy"), upstreams("failing", mix={"500": 1.0})
    gateway = gateway_factory(gateway_config(
        redis_url,
        [deployment("metered", "metered-failing", failing),
         deployment("metered", "metered-healthy", healthy)],
        routing={"cooldown_failures": 3, "cooldown_time": 30.0}), workers=2)

    async def scenario() -> list[Answer]:
        conns = await open_conns([gateway.url], 4)
        try:
            return await drive(conns, chat_body("metered"), count=60)
        finally:
            await close_all(conns)

    answers = run(scenario())
    assert statuses(answers) == {200: 60}
    failures = failing.counts()["500"]
    assert failures >= 3 and healthy.counts()["ok"] == 60
    text = ""

    def flushed() -> bool:
        nonlocal text
        text = scrape(gateway)
        return (metric(text, "smartflow_routing_attempts_total", provider="openai",
                       outcome="success") == 60
                and metric(text, "smartflow_routing_attempts_total", provider="openai",
                           outcome="failure") == failures
                and metric(text, "smartflow_routing_failovers_total", model="metered")
                == failures
                and metric(text, "smartflow_routing_cooldowns_total",
                           deployment="metered-failing") >= 1)

    wait_for(flushed, timeout_s=20, what="routing counters in /metrics")
    # Each failed attempt led to exactly one failover; the healthy one never cooled.
    assert metric(text, "smartflow_routing_cooldowns_total",
                  deployment="metered-healthy") == 0


# -- 12. retries and the attempt timeout ------------------------------------------------


def test_retries_back_off_on_the_same_deployment_and_a_hanging_one_times_out(
        redis_url: str, upstreams: Callable[..., FaultyUpstream], receiver: WebhookReceiver,
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    hanging, good, lone = upstreams("hanging", mix={"hang": 1.0}), upstreams("good"), \
        upstreams("lone")
    gateway = gateway_factory(gateway_config(
        redis_url,
        [deployment("hangs", "hanging", hanging), deployment("hangs", "good", good),
         deployment("retried", "lone", lone)],
        routing={"retries": 2, "retry_backoff": 0.2, "attempt_timeout": 1.0,
                 "cooldown_failures": 10},
        alerts={"slack_webhook_url": receiver.url("slack"), "slow_call_seconds": 0.5}),
        workers=1)

    async def scenario() -> dict[str, list[Answer]]:
        conns = await open_conns([gateway.url], 1)
        try:
            found = {"hangs": await drive(conns, chat_body("hangs"), count=4)}
            lone.script("500", "503")
            found["recovers"] = await drive(conns, chat_body("retried"), count=1)
            lone.script("500", "502", "503")
            found["gives_up"] = await drive(conns, chat_body("retried"), count=1)
            found["after"] = await drive(conns, chat_body("retried"), count=1)
            return found
        finally:
            await close_all(conns)

    found = run(scenario())
    hangs = found["hangs"]
    assert statuses(hangs) == {200: 4}
    assert {a.deployment for a in hangs} == {"good"}
    timed_out = [a for a in hangs if a.attempts == 2]
    # Round robin puts "hanging" first every other call: those wait out the 1 s
    # first-byte timeout, then move to "good" at once.
    assert len(timed_out) == 2 == hanging.counts()["hang"], [a.attempts for a in hangs]
    for answer in timed_out:
        assert 0.9 <= answer.ended - answer.started < 10.0
    # Two failures, then a success on the same deployment, after two backoffs
    # (0.1-0.2 s, then 0.2-0.4 s).
    (recovered,) = found["recovers"]
    assert recovered.status == 200 and recovered.attempts == 3
    assert recovered.ended - recovered.started >= 0.28
    # Three failures: the retry budget is spent and the last failure is the answer.
    (gave_up,) = found["gives_up"]
    assert gave_up.status == 503 and gave_up.attempts == 3, (gave_up.status, gave_up.body)
    assert found["after"][0].status == 200
    assert lone.counts() == {"500": 2, "503": 2, "502": 1, "ok": 2}
    # A deployment that never answered is a slow call worth an alert.
    wait_for(lambda: bool(receiver.titled("slack", "Hanging calls to hanging")), timeout_s=20,
             what="a slow-call alert for the hanging deployment")

"""Alerting webhooks: payload formats, dedupe, rate limits, dead endpoints.

Deliveries go through a real UpstreamPool to real local receivers (our
HTTPServer on a free port); cross-worker dedupe runs against the session's
real Redis. Dedupe and rate-limit arithmetic uses a fake clock and an
in-memory sender, so it does not depend on the machine's speed. Every wait
polls with a generous deadline; "this many alerts arrived, and no more" is
checked once the alerter has accounted for every alert raised (each alert
yields exactly one outcome per destination), not after a fixed sleep.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from harness.waiting import wait_until
from upstreams.server import start_upstream, stop_upstream

from smartflow.config import Settings
from smartflow.http.client import UpstreamPool
from smartflow.http.request import Request
from smartflow.http.response import Response
from smartflow.http.router import Router
from smartflow.proxy.context import build_pool
from smartflow.store.fast_client import StoreClient, create_store_client
from smartflow.telemetry.alerts import (
    CLAIM_KEY_PREFIX,
    KIND_FAILURE_SPIKE,
    KIND_PROVIDER_BUDGET,
    Alert,
    Alerter,
    WebhookDestination,
    destinations_from,
    discord_payload,
    failure_spike_alert,
    pool_sender,
    provider_budget_alert,
    slack_payload,
    slow_call_alert,
    store_claim,
    teams_payload,
)

DEADLINE_S = 20.0  # far beyond any normal wait; only a real failure reaches it
ADAPTIVE_CARD = "application/vnd.microsoft.card.adaptive"
# The answers the real services give: Slack "200 ok", Teams workflows 202, Discord 204.
CHANNEL_STATUS = {"slack": 200, "teams": 202, "discord": 204}


# -- real webhook receivers ------------------------------------------------------------


class Receiver:
    """Records each POST to /hook/{channel}/{token}: (channel, token, content-type, JSON)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str, str | None, Any]] = []
        self.status_override: dict[str, int] = {}
        self.router = Router()
        self.router.add("POST", "/hook/{channel}/{token}", self._hook)
        self.port = 0

    async def _hook(self, request: Request) -> Response:
        channel = request.path_params["channel"]
        token = request.path_params["token"]
        body = await request.body()
        self.received.append((channel, token, request.header("content-type"),
                              orjson.loads(body)))
        status = self.status_override.get(token, CHANNEL_STATUS.get(channel, 200))
        return Response(status, b"" if status == 204 else b"ok", content_type="text/plain")

    def url(self, channel: str, token: str = "T0K3N") -> str:
        return f"http://127.0.0.1:{self.port}/hook/{channel}/{token}"

    def destinations(self, *channels: str) -> tuple[WebhookDestination, ...]:
        return tuple(WebhookDestination(channel, self.url(channel)) for channel in channels)

    def bodies(self, channel: str) -> list[Any]:
        return [body for got, _, _, body in self.received if got == channel]


class HangingServer:
    """Accepts connections, reads whatever comes, never answers."""

    def __init__(self) -> None:
        self.accepted = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        while await reader.read(65536):
            pass

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    recv = Receiver()
    server, recv.port = await start_upstream(recv.router)
    try:
        yield recv
    finally:
        await stop_upstream(server)


@pytest.fixture
async def hanging_server() -> AsyncIterator[HangingServer]:
    server = HangingServer()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    upstream_pool = build_pool(Settings())  # as a gateway worker builds it
    try:
        yield upstream_pool
    finally:
        await upstream_pool.aclose()


@pytest.fixture
async def make_alerter() -> AsyncIterator[Callable[..., Alerter]]:
    """Build Alerters that are closed at teardown, however the test ended."""
    made: list[Alerter] = []

    def make(*args: Any, **kwargs: Any) -> Alerter:
        alerter = Alerter(*args, **kwargs)
        made.append(alerter)
        return alerter

    try:
        yield make
    finally:
        for alerter in made:
            await alerter.aclose(timeout_s=1.0)


@pytest.fixture
async def store_clients(redis_url: str) -> AsyncIterator[Callable[[], StoreClient]]:
    clients: list[StoreClient] = []

    def make() -> StoreClient:
        client = create_store_client(redis_url)
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for client in clients:
            await client.aclose()


# -- helpers ---------------------------------------------------------------------------


class Tally:
    """Accumulates an Alerter's `take_counts()` across polls."""

    def __init__(self, alerter: Alerter) -> None:
        self.alerter = alerter
        self.counts: Counter[tuple[str, str, str]] = Counter()

    def poll(self) -> Counter[tuple[str, str, str]]:
        self.counts.update(self.alerter.take_counts())
        return self.counts

    def total(self) -> int:
        return sum(self.poll().values())

    def outcomes(self, channel: str) -> dict[str, int]:
        found: Counter[str] = Counter()
        for (got, _kind, outcome), count in self.poll().items():
            if got == channel:
                found[outcome] += count
        return dict(found)

    async def wait_accounted(self, expected: int) -> None:
        """Until every alert raised has an outcome per destination."""
        await wait_until(lambda: self.total() >= expected, timeout_s=DEADLINE_S,
                         what=f"{expected} alert outcomes")
        assert self.total() == expected


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class MemorySender:
    """An in-memory Sender for arithmetic tests; optionally held until `release()`."""

    def __init__(self, status: int = 200) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.status = status
        self._gate = asyncio.Event()
        self._gate.set()

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    async def __call__(self, url: str, body: bytes) -> int:
        await self._gate.wait()
        self.calls.append((url, orjson.loads(body)))
        return self.status


def spike(subject: str = "openai", failures: int = 20) -> Alert:
    return failure_spike_alert(subject, failures, 60.0, "FirstByteTimeout: no answer in 120 s")


def distinct(index: int) -> Alert:
    return Alert(KIND_FAILURE_SPIKE, f"deployment-{index}", "critical", f"Spike {index}", "x")


# -- payload formats -------------------------------------------------------------------


def test_alert_dedupe_key_defaults_to_kind_and_subject() -> None:
    assert spike().dedupe_key == "failure_spike:openai"
    assert Alert("k", "s", "warning", "t", "x", dedupe_key="custom").dedupe_key == "custom"
    budget_80 = provider_budget_alert("openai", 81.0, 100.0, 0.8)
    budget_100 = provider_budget_alert("openai", 100.5, 100.0, 1.0)
    assert (budget_80.severity, budget_100.severity) == ("warning", "critical")
    assert budget_80.dedupe_key != budget_100.dedupe_key  # 100 % alerts soon after 80 %


def test_slack_payload_has_fallback_text_and_header_section_fields_blocks() -> None:
    alert = Alert("slow_call", "gpt-4o", "warning", "Slow <call>", "took 61 s & more",
                  fields=tuple((f"f{i}", f"v{i}") for i in range(12)))
    payload = slack_payload(alert)
    assert payload["text"] == "[WARNING] Slow &lt;call&gt;"
    blocks = payload["blocks"]
    assert blocks[0] == {"type": "header", "text": {"type": "plain_text", "text": "Slow <call>"}}
    assert blocks[1]["text"] == {"type": "mrkdwn", "text": "took 61 s &amp; more"}
    field_sections = [b for b in blocks if "fields" in b]
    assert [len(b["fields"]) for b in field_sections] == [10, 2]  # Slack allows 10 a section
    assert field_sections[0]["fields"][0] == {"type": "mrkdwn", "text": "*f0*\nv0"}
    assert blocks[-1]["type"] == "context"


def test_teams_payload_is_an_adaptive_card_message() -> None:
    payload = teams_payload(spike())
    assert payload["type"] == "message"
    (attachment,) = payload["attachments"]
    assert attachment["contentType"] == ADAPTIVE_CARD
    card = attachment["content"]
    assert (card["type"], card["version"]) == ("AdaptiveCard", "1.4")
    title, text, facts = card["body"][:3]
    assert title["type"] == "TextBlock" and title["text"] == "Failure spike on openai"
    assert title["color"] == "Attention"
    assert text["type"] == "TextBlock" and "20 failed calls" in text["text"]
    assert facts["type"] == "FactSet"
    assert {"title": "Failures", "value": "20"} in facts["facts"]


def test_discord_payload_embed_colour_follows_severity_and_mentions_are_off() -> None:
    critical = discord_payload(spike(), now_s=0.0)
    warning = discord_payload(slow_call_alert("gpt-4o", 75.0, 60.0, "req-1"))
    assert critical["allowed_mentions"] == {"parse": []}
    (embed,) = critical["embeds"]
    assert embed["title"] == "Failure spike on openai"
    assert embed["timestamp"] == "1970-01-01T00:00:00+00:00"
    assert {"name": "Failures", "value": "20", "inline": True} in embed["fields"]
    assert isinstance(embed["color"], int)
    red, amber = embed["color"], warning["embeds"][0]["color"]
    assert red >> 16 > (red >> 8) & 0xFF  # red dominates
    assert amber >> 16 > 0xC0 and 0x60 < (amber >> 8) & 0xFF < 0xD0  # amber: red plus some green
    empty = discord_payload(Alert("k", "s", "warning", "t", "x", fields=(("name", ""),)))
    assert empty["embeds"][0]["fields"][0]["value"] == "-"  # Discord rejects empty values


def test_destinations_from_skips_empty_urls_and_checks_channels() -> None:
    found = destinations_from("https://hooks.slack.com/services/a", "", "https://discord.com/x")
    assert [d.channel for d in found] == ["slack", "discord"]
    assert destinations_from("", "", "") == ()
    with pytest.raises(ValueError):
        WebhookDestination("pagerduty", "https://example.com")
    with pytest.raises(ValueError):
        WebhookDestination("slack", "ftp://example.com")


# -- delivery to real receivers --------------------------------------------------------


async def test_each_channel_receives_its_own_format_through_the_upstream_pool(
    receiver: Receiver, pool: UpstreamPool, make_alerter: Callable[..., Alerter],
    loop_guard: object,
) -> None:
    alerter = make_alerter(receiver.destinations("slack", "teams", "discord"),
                           send=pool_sender(pool, 5.0))
    tally = Tally(alerter)
    alerter.start()
    alerter.alert(provider_budget_alert("openai", 1000.0, 1000.0, 1.0))
    await tally.wait_accounted(3)

    assert {(channel, token, ctype) for channel, token, ctype, _ in receiver.received} == {
        (channel, "T0K3N", "application/json") for channel in ("slack", "teams", "discord")
    }
    (slack,) = receiver.bodies("slack")
    assert slack["text"] == "[CRITICAL] Provider openai at 100% of its budget"
    assert [block["type"] for block in slack["blocks"]] == [
        "header", "section", "section", "context"]
    (teams,) = receiver.bodies("teams")
    assert teams["type"] == "message"
    assert teams["attachments"][0]["contentType"] == ADAPTIVE_CARD
    assert teams["attachments"][0]["content"]["body"][2]["type"] == "FactSet"
    (discord,) = receiver.bodies("discord")
    assert discord["embeds"][0]["title"] == "Provider openai at 100% of its budget"
    assert discord["allowed_mentions"] == {"parse": []}
    assert tally.poll() == {(channel, KIND_PROVIDER_BUDGET, "sent"): 1
                            for channel in ("slack", "teams", "discord")}


async def test_burst_of_500_identical_failures_sends_one_alert_per_destination(
    receiver: Receiver, pool: UpstreamPool, make_alerter: Callable[..., Alerter],
) -> None:
    alerter = make_alerter(receiver.destinations("slack", "teams", "discord"),
                           send=pool_sender(pool, 5.0))
    tally = Tally(alerter)
    alerter.start()
    for failures in range(500):  # the text changes, the dedupe key does not
        alerter.alert(spike("openai", failures))
    await tally.wait_accounted(500 * 3)

    assert len(receiver.received) == 3
    for channel in ("slack", "teams", "discord"):
        assert tally.outcomes(channel) == {"sent": 1, "deduplicated": 499}


async def test_500_failures_over_three_subjects_send_three_alerts_per_destination(
    receiver: Receiver, pool: UpstreamPool, make_alerter: Callable[..., Alerter],
) -> None:
    alerter = make_alerter(receiver.destinations("slack", "discord"),
                           send=pool_sender(pool, 5.0))
    tally = Tally(alerter)
    alerter.start()
    subjects = ("openai", "anthropic", "azure/eu-west")
    for index in range(500):
        alerter.alert(spike(subjects[index % 3], index))
    await tally.wait_accounted(500 * 2)

    assert len(receiver.received) == 6
    for channel in ("slack", "discord"):
        assert sorted(body["embeds"][0]["title"] if channel == "discord" else body["text"]
                      for body in receiver.bodies(channel)) == sorted(
            (f"Failure spike on {s}" if channel == "discord" else
             f"[CRITICAL] Failure spike on {s}") for s in subjects)
        assert tally.outcomes(channel) == {"sent": 3, "deduplicated": 497}


async def test_an_error_answer_counts_as_failed_and_is_not_retried(
    receiver: Receiver, pool: UpstreamPool, make_alerter: Callable[..., Alerter],
) -> None:
    receiver.status_override["gone"] = 404
    receiver.status_override["busy"] = 429
    alerter = make_alerter(
        (WebhookDestination("slack", receiver.url("slack", "gone")),
         WebhookDestination("discord", receiver.url("discord", "busy")),
         WebhookDestination("teams", receiver.url("teams"))),
        send=pool_sender(pool, 5.0))
    tally = Tally(alerter)
    alerter.start()
    alerter.alert(spike())
    await tally.wait_accounted(3)
    assert tally.poll() == {("slack", KIND_FAILURE_SPIKE, "failed"): 1,
                            ("discord", KIND_FAILURE_SPIKE, "failed"): 1,
                            ("teams", KIND_FAILURE_SPIKE, "sent"): 1}
    assert len(receiver.received) == 3  # one attempt each


# -- cross-worker dedupe through Redis --------------------------------------------------


async def test_two_workers_sharing_redis_deliver_an_alert_once(
    receiver: Receiver, pool: UpstreamPool, make_alerter: Callable[..., Alerter],
    store_clients: Callable[[], StoreClient],
) -> None:
    workers = [
        make_alerter(receiver.destinations("slack"), send=pool_sender(pool, 5.0),
                     claim=store_claim(store_clients()), dedupe_window_s=300.0)
        for _ in range(2)
    ]
    tallies = [Tally(worker) for worker in workers]
    for worker in workers:
        worker.start()
    for _ in range(50):  # both workers see the same outage
        for worker in workers:
            worker.alert(spike("openai"))
    for tally in tallies:
        await tally.wait_accounted(50)

    assert len(receiver.received) == 1
    outcomes = [tally.outcomes("slack") for tally in tallies]
    assert sorted(o.get("sent", 0) for o in outcomes) == [0, 1]
    assert sum(o.get("deduplicated", 0) for o in outcomes) == 99
    ttl_ms = await store_clients().execute(
        "PTTL", CLAIM_KEY_PREFIX + "failure_spike:openai", key="x")
    assert 0 < ttl_ms <= 300_000

    workers[1].alert(spike("anthropic"))  # another subject is not held by the claim
    await tallies[1].wait_accounted(51)
    assert [body["text"] for body in receiver.bodies("slack")][-1] == (
        "[CRITICAL] Failure spike on anthropic")


async def test_store_claim_is_won_once_until_it_expires(
    store_clients: Callable[[], StoreClient],
) -> None:
    claim_a, claim_b = store_claim(store_clients()), store_claim(store_clients())
    key = CLAIM_KEY_PREFIX + "test:expiry"
    assert await claim_a(key, 0.3) is True
    assert await claim_b(key, 0.3) is False
    deadline = time.monotonic() + DEADLINE_S
    while not await claim_b(key, 60.0):
        assert time.monotonic() < deadline, "the claim never expired"
        await asyncio.sleep(0.05)
    assert await claim_a(key, 60.0) is False


async def test_an_unreachable_redis_still_lets_the_alert_out(
    receiver: Receiver, pool: UpstreamPool, make_alerter: Callable[..., Alerter],
    refusing_port: int,
) -> None:
    dead_redis = create_store_client(f"redis://127.0.0.1:{refusing_port}",
                                     timeout_s=0.5, connect_timeout_s=0.5)
    try:
        alerter = make_alerter(receiver.destinations("slack"), send=pool_sender(pool, 5.0),
                               claim=store_claim(dead_redis))
        tally = Tally(alerter)
        alerter.start()
        alerter.alert(spike())
        await tally.wait_accounted(1)
        assert tally.outcomes("slack") == {"sent": 1}
    finally:
        await dead_redis.aclose()


# -- dead endpoints --------------------------------------------------------------------


async def test_dead_endpoints_never_slow_alert_and_close_is_bounded(
    receiver: Receiver, pool: UpstreamPool, make_alerter: Callable[..., Alerter],
    hanging_server: HangingServer, refusing_port: int, loop_guard: object,
) -> None:
    send_timeout_s = 3.0
    alerter = make_alerter(
        (WebhookDestination("slack", f"http://127.0.0.1:{refusing_port}/hook"),
         WebhookDestination("discord", f"http://127.0.0.1:{hanging_server.port}/hook"),
         WebhookDestination("teams", receiver.url("teams"))),
        send=pool_sender(pool, send_timeout_s), send_timeout_s=send_timeout_s)
    tally = Tally(alerter)
    alerter.start()

    started = time.monotonic()
    alerter.alert(spike("subject-0"))
    await wait_until(lambda: len(receiver.received) == 1, timeout_s=DEADLINE_S,
                     what="the healthy endpoint's alert")
    # Sent alongside the hanging endpoint, not behind it.
    assert time.monotonic() - started < send_timeout_s

    started = time.perf_counter()
    for index in range(1000):
        alerter.alert(spike(f"subject-{index % 50}", index))
    elapsed_s = time.perf_counter() - started
    assert elapsed_s < 0.5, f"1000 alert() calls took {elapsed_s:.3f} s"

    await wait_until(
        lambda: tally.outcomes("slack").get("failed", 0) >= 1
        and tally.outcomes("discord").get("failed", 0) >= 1,
        timeout_s=DEADLINE_S, what="both dead endpoints counted as failed")
    assert hanging_server.accepted >= 1

    started = time.monotonic()
    await alerter.aclose(timeout_s=1.0)  # sends to the hanging endpoint are still pending
    assert time.monotonic() - started < 5.0
    alerter.alert(spike("after-close"))  # dropped and counted, never raises
    assert tally.outcomes("teams").get("dropped", 0) >= 1


# -- rate limits, queue bound, local dedupe (fake clock, in-memory sender) -------------


async def test_rate_limit_is_a_token_bucket_per_destination(
    make_alerter: Callable[..., Alerter],
) -> None:
    clock, sender, claims = FakeClock(), MemorySender(), []

    async def claim(key: str, ttl_s: float) -> bool:
        claims.append(key)
        return True

    alerter = make_alerter(destinations_from("http://s.test/a", "", "http://d.test/b"),
                           send=sender, claim=claim, max_per_minute=3, clock=clock)
    tally = Tally(alerter)
    alerter.start()
    for index in range(10):
        alerter.alert(distinct(index))
    await tally.wait_accounted(20)
    for channel in ("slack", "discord"):
        assert tally.outcomes(channel) == {"sent": 3, "rate_limited": 7}
    assert len(claims) == 3  # no claim is spent on an alert no destination may send

    clock.now += 20.0  # 3 per minute: one token back
    alerter.alert(distinct(10))
    alerter.alert(distinct(11))
    await tally.wait_accounted(24)
    for channel in ("slack", "discord"):
        assert tally.outcomes(channel) == {"sent": 4, "rate_limited": 8}
    assert len(sender.calls) == 8


async def test_a_full_queue_drops_and_counts_without_blocking(
    make_alerter: Callable[..., Alerter],
) -> None:
    sender = MemorySender()
    alerter = make_alerter(destinations_from("http://s.test/a", "", ""), send=sender,
                           queue_size=2)
    tally = Tally(alerter)
    for index in range(5):  # not started yet: nothing drains the queue
        alerter.alert(distinct(index))
    assert tally.poll() == {("slack", KIND_FAILURE_SPIKE, "dropped"): 3}

    alerter.start()
    await tally.wait_accounted(5)
    assert tally.outcomes("slack") == {"sent": 2, "dropped": 3}
    alerter.alert(distinct(4))  # a dropped alert was not remembered as sent
    await tally.wait_accounted(6)
    assert [body["text"] for _, body in sender.calls] == [
        "[CRITICAL] Spike 0", "[CRITICAL] Spike 1", "[CRITICAL] Spike 4"]


async def test_local_dedupe_window_expires(make_alerter: Callable[..., Alerter]) -> None:
    clock, sender = FakeClock(), MemorySender()
    alerter = make_alerter(destinations_from("", "http://t.test/a", ""), send=sender,
                           dedupe_window_s=300.0, clock=clock)
    tally = Tally(alerter)
    alerter.start()
    alerter.alert(spike())
    clock.now += 299.0
    alerter.alert(spike())
    clock.now += 2.0
    alerter.alert(spike())
    await tally.wait_accounted(3)
    assert tally.outcomes("teams") == {"sent": 2, "deduplicated": 1}


async def test_a_disabled_alerter_counts_drops_and_take_counts_drains(
    make_alerter: Callable[..., Alerter],
) -> None:
    alerter = make_alerter((), send=MemorySender())
    assert not alerter.enabled
    alerter.start()
    alerter.alert(spike())
    alerter.alert(spike())
    assert alerter.take_counts() == {("none", KIND_FAILURE_SPIKE, "dropped"): 2}
    assert alerter.take_counts() == {}


async def test_a_sender_that_raises_or_hangs_is_counted_failed(
    make_alerter: Callable[..., Alerter],
) -> None:
    async def broken(url: str, body: bytes) -> int:
        if "hang" in url:
            await asyncio.sleep(3600)
        raise OSError("boom")

    alerter = make_alerter(
        (WebhookDestination("slack", "http://x.test/raise"),
         WebhookDestination("teams", "http://x.test/hang")),
        send=broken, send_timeout_s=0.2)
    tally = Tally(alerter)
    alerter.start()
    alerter.alert(spike())
    await tally.wait_accounted(2)
    assert tally.poll() == {("slack", KIND_FAILURE_SPIKE, "failed"): 1,
                            ("teams", KIND_FAILURE_SPIKE, "failed"): 1}

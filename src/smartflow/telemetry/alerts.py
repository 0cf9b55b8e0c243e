"""Alerting webhooks: Slack, Microsoft Teams and Discord, off the request path.

Whoever notices trouble (a provider budget past 80 % or 100 %, a spike of
provider failures, a slow or hanging call) calls `Alerter.alert(alert)`. That
call is synchronous and O(1): a local dedupe lookup, then `put_nowait` on a
bounded queue. It never awaits, never raises and never does I/O, so a dead
webhook endpoint cannot slow a request.

Why an outage sends a handful of alerts, not thousands, in three layers:

1. Local dedupe, before queueing: a dedupe key (default "kind:subject") that
   fired in this process within `dedupe_window_s` is dropped at once. A burst
   of 500 identical failures costs 500 dict lookups and queues one alert.
2. Cross-worker dedupe: the sender task asks `claim("sf:alert:<key>", ttl)`
   (Redis `SET NX PX` via `store_claim`) once per alert; only the worker that
   wins sends. A claim that fails counts as won: a duplicate alert is better
   than a lost one.
3. A token bucket per destination (`max_per_minute`) caps what still gets
   through when many distinct keys fire at once.

Each destination gets the alert in its own format (`slack_payload`,
`teams_payload`, `discord_payload`), sent concurrently, each send bounded by
`send_timeout_s`. A failed or slow endpoint is logged and counted, never
retried: retrying a dead endpoint is how an alerter becomes the outage.
Webhook URLs carry their secret in the path or query, so logs name only the
channel and host.

Every alert raised yields exactly one outcome per destination in
`take_counts()` ("sent", "failed", "deduplicated", "rate_limited",
"dropped"); a metrics flusher drains it, like `RequestMetrics`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import orjson

from smartflow.store.keyspace import ALERT_CLAIM_PREFIX

if TYPE_CHECKING:
    from smartflow.config import AlertSettings
    from smartflow.http.client import UpstreamPool
    from smartflow.store.fast_client import StoreClient

log = logging.getLogger("smartflow.alerts")

KIND_PROVIDER_BUDGET: Final = "provider_budget"
KIND_FAILURE_SPIKE: Final = "failure_spike"
KIND_SLOW_CALL: Final = "slow_call"

SEVERITY_WARNING: Final = "warning"
SEVERITY_CRITICAL: Final = "critical"

CHANNELS: Final = ("slack", "teams", "discord")
OUTCOMES: Final = ("sent", "failed", "deduplicated", "rate_limited", "dropped")
# The channel label of alerts raised while no destination is configured, so
# the metrics still show that alerts were lost.
NO_CHANNEL: Final = "none"

CLAIM_KEY_PREFIX: Final = ALERT_CLAIM_PREFIX

# Bounds of what a receiver accepts (Slack header 150, section 3000, 10
# fields a section; Discord title 256, description 4096, 25 fields of
# name 256 / value 1024, content 2000). Longer text is cut, not rejected.
_SLACK_HEADER_MAX = 150
_SLACK_TEXT_MAX = 3000
_SLACK_FIELDS_PER_SECTION = 10
_DISCORD_TITLE_MAX = 256
_DISCORD_DESCRIPTION_MAX = 4096
_DISCORD_CONTENT_MAX = 2000
_DISCORD_FIELDS_MAX = 25
_DISCORD_FIELD_NAME_MAX = 256
_DISCORD_FIELD_VALUE_MAX = 1024
_DISCORD_RED = 0xD92D20
_DISCORD_AMBER = 0xF59E0B

# Local dedupe keys remembered at most; past it the oldest is forgotten (its
# next alert may then repeat early, still bounded by the token buckets).
_MAX_REMEMBERED_KEYS = 4096
# A webhook's answer is read (so the connection can be reused) up to this
# much, then the connection is closed: the body is never used.
_MAX_RESPONSE_BYTES = 64 * 1024
_STOP: Final = None  # queue sentinel from aclose()

Sender = Callable[[str, bytes], Awaitable[int]]
Claim = Callable[[str, float], Awaitable[bool]]
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Alert:
    kind: str  # KIND_* or free text
    subject: str  # what it is about ("openai", a deployment id); part of the dedupe key
    severity: str  # SEVERITY_WARNING | SEVERITY_CRITICAL
    title: str
    text: str
    fields: tuple[tuple[str, str], ...] = ()
    dedupe_key: str = ""  # default: f"{kind}:{subject}"

    def __post_init__(self) -> None:
        if not self.dedupe_key:
            object.__setattr__(self, "dedupe_key", f"{self.kind}:{self.subject}")


@dataclass(frozen=True, slots=True)
class WebhookDestination:
    channel: str  # "slack" | "teams" | "discord"
    url: str

    def __post_init__(self) -> None:
        if self.channel not in CHANNELS:
            raise ValueError(f"unknown alert channel {self.channel!r} (one of {CHANNELS})")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"{self.channel} webhook URL must be http(s)")


def destinations_from(
    slack_url: str, teams_url: str, discord_url: str
) -> tuple[WebhookDestination, ...]:
    """The configured destinations; an empty URL means that channel is off."""
    pairs = (("slack", slack_url), ("teams", teams_url), ("discord", discord_url))
    return tuple(WebhookDestination(channel, url) for channel, url in pairs if url)


# -- alerts for the three product cases ------------------------------------------------


def provider_budget_alert(
    provider: str, spent_usd: float, budget_usd: float, threshold: float
) -> Alert:
    """`threshold` is the share crossed (alerts.budget_thresholds: 0.8, 1.0): below 1 a
    warning, from 1 critical. Each threshold dedupes on its own, so 100 % still
    alerts minutes after 80 % did."""
    percent = round(threshold * 100)
    used = spent_usd / budget_usd if budget_usd > 0 else threshold
    return Alert(
        kind=KIND_PROVIDER_BUDGET,
        subject=provider,
        severity=SEVERITY_CRITICAL if threshold >= 1.0 else SEVERITY_WARNING,
        title=f"Provider {provider} at {percent}% of its budget",
        text=f"{provider} has spent ${spent_usd:,.2f} of its ${budget_usd:,.2f} budget.",
        fields=(
            ("Provider", provider),
            ("Spent", f"${spent_usd:,.2f}"),
            ("Budget", f"${budget_usd:,.2f}"),
            ("Used", f"{used:.0%}"),
        ),
        dedupe_key=f"{KIND_PROVIDER_BUDGET}:{provider}:{percent}",
    )


def failure_spike_alert(subject: str, failures: int, window_s: float, last_error: str) -> Alert:
    return Alert(
        kind=KIND_FAILURE_SPIKE,
        subject=subject,
        severity=SEVERITY_CRITICAL,
        title=f"Failure spike on {subject}",
        text=f"{failures} failed calls to {subject} in the last {window_s:g} s.",
        fields=(("Subject", subject), ("Failures", str(failures)), ("Last error", last_error)),
    )


def slow_call_alert(subject: str, elapsed_s: float, threshold_s: float, request_id: str) -> Alert:
    return Alert(
        kind=KIND_SLOW_CALL,
        subject=subject,
        severity=SEVERITY_WARNING,
        title=f"Slow call to {subject}",
        text=f"A call to {subject} ran {elapsed_s:.1f} s (threshold {threshold_s:g} s).",
        fields=(("Subject", subject), ("Elapsed", f"{elapsed_s:.1f} s"),
                ("Request id", request_id)),
    )


# -- payload formats -------------------------------------------------------------------


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _slack_escape(text: str) -> str:
    # Slack mrkdwn reads &, < and > as control characters (links, mentions).
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _context_line(alert: Alert) -> str:
    return f"{alert.severity.upper()} · {alert.kind} · {alert.subject}"


def _iso_now(now_s: float | None) -> str:
    return datetime.fromtimestamp(time.time() if now_s is None else now_s, UTC).isoformat()


def slack_payload(alert: Alert) -> dict[str, Any]:
    """Slack incoming webhook: `text` is the notification fallback, `blocks` the message."""
    blocks: list[dict[str, Any]] = [
        {"type": "header",
         "text": {"type": "plain_text", "text": _cut(alert.title, _SLACK_HEADER_MAX)}},
        {"type": "section",
         "text": {"type": "mrkdwn",
                  "text": _cut(_slack_escape(alert.text or alert.title), _SLACK_TEXT_MAX)}},
    ]
    fields = [
        {"type": "mrkdwn", "text": _cut(f"*{_slack_escape(name)}*\n{_slack_escape(value)}", 2000)}
        for name, value in alert.fields
    ]
    for start in range(0, len(fields), _SLACK_FIELDS_PER_SECTION):
        blocks.append(
            {"type": "section", "fields": fields[start : start + _SLACK_FIELDS_PER_SECTION]}
        )
    blocks.append(
        {"type": "context",
         "elements": [{"type": "mrkdwn", "text": _slack_escape(_context_line(alert))}]}
    )
    fallback = f"[{alert.severity.upper()}] {alert.title}"
    return {"text": _slack_escape(fallback), "blocks": blocks}


def teams_payload(alert: Alert) -> dict[str, Any]:
    """Teams (Workflows or incoming webhook): one Adaptive Card 1.4 attachment."""
    card: dict[str, Any] = {
        "type": "AdaptiveCard",
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "version": "1.4",
        "body": [
            {"type": "TextBlock", "text": alert.title, "size": "Large", "weight": "Bolder",
             "wrap": True,
             "color": "Attention" if alert.severity == SEVERITY_CRITICAL else "Warning"},
            {"type": "TextBlock", "text": alert.text, "wrap": True},
            {"type": "FactSet",
             "facts": [{"title": name, "value": value} for name, value in alert.fields]},
            {"type": "TextBlock", "text": _context_line(alert), "isSubtle": True,
             "size": "Small", "wrap": True},
        ],
    }
    return {
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None,
             "content": card}
        ],
    }


def discord_payload(alert: Alert, *, now_s: float | None = None) -> dict[str, Any]:
    """Discord webhook: one embed; `allowed_mentions` keeps "@everyone" in a text inert."""
    embed = {
        "title": _cut(alert.title, _DISCORD_TITLE_MAX),
        "description": _cut(alert.text, _DISCORD_DESCRIPTION_MAX),
        "color": _DISCORD_RED if alert.severity == SEVERITY_CRITICAL else _DISCORD_AMBER,
        "fields": [
            # Discord rejects an empty field name or value.
            {"name": _cut(name or "-", _DISCORD_FIELD_NAME_MAX),
             "value": _cut(value or "-", _DISCORD_FIELD_VALUE_MAX), "inline": True}
            for name, value in alert.fields[:_DISCORD_FIELDS_MAX]
        ],
        "footer": {"text": _context_line(alert)},
        "timestamp": _iso_now(now_s),
    }
    return {
        "content": _cut(f"[{alert.severity.upper()}] {alert.title}", _DISCORD_CONTENT_MAX),
        "embeds": [embed],
        "allowed_mentions": {"parse": []},
    }


def _encode(channel: str, alert: Alert, now_s: float) -> bytes:
    if channel == "slack":
        return orjson.dumps(slack_payload(alert))
    if channel == "teams":
        return orjson.dumps(teams_payload(alert))
    return orjson.dumps(discord_payload(alert, now_s=now_s))


# -- transport adapters ----------------------------------------------------------------


def pool_sender(pool: UpstreamPool, timeout_s: float) -> Sender:
    """POST the JSON body through the gateway's UpstreamPool; returns the HTTP status."""
    headers = [("content-type", "application/json"), ("user-agent", "smartflow-alerts")]

    async def send(url: str, body: bytes) -> int:
        response = await pool.request("POST", url, headers, body, first_byte_timeout_s=timeout_s)
        try:
            # Read the (unused) answer to its end so the connection goes back
            # to the pool; a huge one is cut off by closing instead.
            received = 0
            async for chunk in response.iter_bytes():
                received += len(chunk)
                if received > _MAX_RESPONSE_BYTES:
                    break
        finally:
            response.close()  # no-op once the body was read to the end
        return response.status

    return send


def store_claim(client: StoreClient) -> Claim:
    """Cross-worker dedupe: the first `SET key 1 NX PX ttl` wins until the key expires."""

    async def claim(key: str, ttl_s: float) -> bool:
        ttl_ms = max(1, int(ttl_s * 1000))
        reply = await client.execute("SET", key, "1", "NX", "PX", str(ttl_ms), key=key)
        return bool(reply == "OK" or reply == b"OK")  # nil when another worker holds it

    return claim


def build_alerter(
    settings: AlertSettings, *, pool: UpstreamPool, client: StoreClient | None
) -> Alerter:
    """A worker's Alerter from `[alerts]`; `client` None means dedupe in this process only."""
    return Alerter(
        destinations_from(
            settings.slack_webhook_url, settings.teams_webhook_url, settings.discord_webhook_url
        ),
        send=pool_sender(pool, settings.timeout),
        claim=store_claim(client) if client is not None else None,
        dedupe_window_s=settings.dedupe_window,
        max_per_minute=settings.max_per_minute,
        send_timeout_s=settings.timeout,
    )


# -- the alerter -----------------------------------------------------------------------


class _TokenBucket:
    """`per_minute` sends, refilled continuously; a full bucket allows a burst of that many."""

    __slots__ = ("_capacity", "_per_s", "_tokens", "_updated")

    def __init__(self, per_minute: int, now: float) -> None:
        self._capacity = float(per_minute)
        self._per_s = per_minute / 60.0
        self._tokens = float(per_minute)
        self._updated = now

    def _refill(self, now: float) -> None:
        elapsed = now - self._updated
        if elapsed > 0:
            self._tokens = min(self._capacity, self._tokens + elapsed * self._per_s)
        self._updated = now

    def has_token(self, now: float) -> bool:
        self._refill(now)
        return self._tokens >= 1.0

    def take(self, now: float) -> bool:
        self._refill(now)
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class Alerter:
    """Queues alerts synchronously; one background task claims, formats and sends them.

    Use from the event loop's thread: `start()` on the running loop, then
    `alert()` from anywhere on that loop, `aclose()` at shutdown.
    """

    def __init__(
        self,
        destinations: Sequence[WebhookDestination],
        *,
        send: Sender,
        claim: Claim | None = None,
        dedupe_window_s: float = 300.0,
        max_per_minute: int = 10,
        queue_size: int = 256,
        send_timeout_s: float = 5.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if dedupe_window_s < 0:
            raise ValueError(f"dedupe_window_s must be >= 0, got {dedupe_window_s!r}")
        if max_per_minute < 1:
            raise ValueError(f"max_per_minute must be >= 1, got {max_per_minute!r}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size!r}")
        if not send_timeout_s > 0:
            raise ValueError(f"send_timeout_s must be > 0, got {send_timeout_s!r}")
        self._destinations = tuple(destinations)
        self._channels = tuple(d.channel for d in self._destinations) or (NO_CHANNEL,)
        self._send = send
        self._claim = claim
        self._dedupe_window_s = dedupe_window_s
        self._send_timeout_s = send_timeout_s
        self._clock = clock
        now = clock()
        self._buckets = tuple(_TokenBucket(max_per_minute, now) for _ in self._destinations)
        # One slot more than queue_size, kept free for aclose()'s stop sentinel.
        self._queue_size = queue_size
        self._queue: asyncio.Queue[tuple[Alert, float] | None] = asyncio.Queue(queue_size + 1)
        # dedupe key -> when it was last queued; insertion order is time order
        # (a key is popped before it is re-inserted), so expiry pops from the front.
        self._fired: dict[str, float] = {}
        self._counts: dict[tuple[str, str, str], int] = {}
        self._task: asyncio.Task[None] | None = None
        self._is_closed = False

    @property
    def enabled(self) -> bool:
        return bool(self._destinations)

    @property
    def destinations(self) -> tuple[WebhookDestination, ...]:
        return self._destinations

    def alert(self, alert: Alert) -> None:
        """Queue `alert` for sending unless it is a local duplicate; never blocks or raises."""
        try:
            if not self._destinations or self._is_closed:
                self._count_all(alert.kind, "dropped")
                return
            key = alert.dedupe_key
            now = self._clock()
            fired = self._fired
            last = fired.get(key)
            if last is not None and now - last < self._dedupe_window_s:
                self._count_all(alert.kind, "deduplicated")
                return
            if self._queue.qsize() >= self._queue_size:
                self._count_all(alert.kind, "dropped")
                return
            self._queue.put_nowait((alert, time.time()))
            if last is not None:
                del fired[key]
            fired[key] = now
            self._forget_expired(now)
        except Exception:  # a bug here must not fail the request that raised the alert
            log.exception("alert %r not queued", alert.dedupe_key)

    def start(self) -> None:
        """Start the sender task on the running loop (once)."""
        if self._task is None and not self._is_closed:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="smartflow-alerts"
            )

    async def aclose(self, timeout_s: float = 2.0) -> None:
        """Send what is queued for up to `timeout_s`, then stop; returns within ~timeout_s."""
        self._is_closed = True
        task = self._task
        if task is None or task.done():
            return
        try:
            self._queue.put_nowait(_STOP)  # the slot reserved for it
        except asyncio.QueueFull:  # a second aclose() took it: just stop
            task.cancel()
        await asyncio.wait((task,), timeout=timeout_s)
        if not task.done():
            task.cancel()
            await asyncio.wait((task,), timeout=1.0)
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("alert sender task failed", exc_info=task.exception())

    def take_counts(self) -> dict[tuple[str, str, str], int]:
        """(channel, kind, outcome) -> count since the last call."""
        counts, self._counts = self._counts, {}
        return counts

    # -- internals ---------------------------------------------------------------------

    def _count(self, channel: str, kind: str, outcome: str) -> None:
        key = (channel, kind, outcome)
        self._counts[key] = self._counts.get(key, 0) + 1

    def _count_all(self, kind: str, outcome: str) -> None:
        for channel in self._channels:
            self._count(channel, kind, outcome)

    def _forget_expired(self, now: float) -> None:
        fired = self._fired
        window_s = self._dedupe_window_s
        while fired:
            oldest_key = next(iter(fired))
            if now - fired[oldest_key] < window_s and len(fired) <= _MAX_REMEMBERED_KEYS:
                return
            del fired[oldest_key]

    async def _run(self) -> None:
        queue = self._queue
        while True:
            item = await queue.get()
            if item is _STOP:
                return
            alert, wall_time_s = item
            try:
                await self._deliver(alert, wall_time_s)
            except Exception:  # keep the sender alive whatever one alert did
                log.exception("alert %r not delivered", alert.dedupe_key)

    async def _deliver(self, alert: Alert, wall_time_s: float) -> None:
        now = self._clock()
        # Claim only when some destination can send: a claim this worker
        # cannot use would silence the alert on workers that could.
        if not any(bucket.has_token(now) for bucket in self._buckets):
            self._count_all(alert.kind, "rate_limited")
            return
        if not await self._won_claim(alert):
            self._count_all(alert.kind, "deduplicated")
            return
        sends = []
        now = self._clock()
        for destination, bucket in zip(self._destinations, self._buckets, strict=True):
            if bucket.take(now):
                sends.append(self._send_one(destination, alert, wall_time_s))
            else:
                self._count(destination.channel, alert.kind, "rate_limited")
        await asyncio.gather(*sends)

    async def _won_claim(self, alert: Alert) -> bool:
        if self._claim is None:
            return True
        key = CLAIM_KEY_PREFIX + alert.dedupe_key
        try:
            return await asyncio.wait_for(
                self._claim(key, self._dedupe_window_s), self._send_timeout_s
            )
        except Exception as exc:  # noqa: BLE001 - better a duplicate alert than a lost one
            log.warning("alert claim for %r failed (%s); sending anyway",
                        alert.dedupe_key, _describe(exc))
            return True

    async def _send_one(self, destination: WebhookDestination, alert: Alert,
                        wall_time_s: float) -> None:
        channel = destination.channel
        try:
            body = _encode(channel, alert, wall_time_s)
            status = await asyncio.wait_for(
                self._send(destination.url, body), self._send_timeout_s
            )
        except Exception as exc:  # noqa: BLE001 - any failure is counted, never retried
            self._count(channel, alert.kind, "failed")
            log.warning("%s alert %r to %s failed: %s", channel, alert.dedupe_key,
                        _host_of(destination.url), _describe(exc))
            return
        if 200 <= status < 300:
            self._count(channel, alert.kind, "sent")
        else:
            self._count(channel, alert.kind, "failed")
            log.warning("%s alert %r to %s answered HTTP %d", channel, alert.dedupe_key,
                        _host_of(destination.url), status)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _host_of(url: str) -> str:
    """scheme://host[:port] of a webhook URL: the path and query hold its secret."""
    scheme_end = url.find("://")
    rest = url[scheme_end + 3 :] if scheme_end != -1 else url
    for stop in "/?#":
        rest = rest.split(stop, 1)[0]
    return f"{url[:scheme_end]}://{rest}" if scheme_end != -1 else rest

"""Routing counters in /metrics: attempts, failovers, cooldowns, alerts.

The request path only bumps plain dicts (``routing.runtime.RoutingCounts``,
``Alerter.take_counts``); ``RoutingMetrics.apply`` moves a batch into the
shared Prometheus files about once a second, so the cost of a multiprocess
metric write is never paid per call.
"""

from __future__ import annotations

from collections.abc import Mapping


class RoutingMetrics:
    def __init__(self) -> None:
        from prometheus_client import Counter

        self._attempts = Counter(
            "smartflow_routing_attempts",
            "Upstream calls made by routed calls, by provider and outcome (success, failure).",
            ("provider", "outcome"), registry=None)
        self._failovers = Counter(
            "smartflow_routing_failovers",
            "Times a call moved to another deployment or chain target, by requested model.",
            ("model",), registry=None)
        self._cooldowns = Counter(
            "smartflow_routing_cooldowns",
            "Times a deployment was taken out of rotation (as seen by each worker).",
            ("deployment",), registry=None)
        self._alerts = Counter(
            "smartflow_alerts",
            "Alerts by channel, kind and outcome (sent, failed, deduplicated, rate_limited, "
            "dropped).",
            ("channel", "kind", "outcome"), registry=None)

    def apply(self, attempts: Mapping[tuple[str, str], int], failovers: Mapping[str, int],
              cooldowns: Mapping[str, int],
              alerts: Mapping[tuple[str, str, str], int]) -> None:
        for (provider, outcome), count in attempts.items():
            self._attempts.labels(provider, outcome).inc(count)
        for model, count in failovers.items():
            self._failovers.labels(model).inc(count)
        for deployment, count in cooldowns.items():
            self._cooldowns.labels(deployment).inc(count)
        for (channel, kind, outcome), count in alerts.items():
            self._alerts.labels(channel, kind, outcome).inc(count)

"""Virtual-key counters in /metrics: calls admitted (from a lease or by Redis),
calls refused (by scope and reason), leases taken.

The admission path only bumps plain ints and a dict (``keys.admission.AdmissionCounts``);
``KeysMetrics.apply`` moves a batch into the shared Prometheus files about once
a second, so no call pays for a multiprocess metric write.
"""

from __future__ import annotations

from collections.abc import Mapping


class KeysMetrics:
    def __init__(self) -> None:
        from prometheus_client import Counter

        self._admitted = Counter(
            "smartflow_vkey_admitted",
            "Virtual-key calls admitted, by how: from a worker's lease (no round trip) "
            "or by the admission script in Redis.", ("via",), registry=None)
        self._refused = Counter(
            "smartflow_vkey_refused",
            "Virtual-key calls refused before any provider was called, by the scope that "
            "refused (key, team, user) and why (budget, rpm, tpm, parallel, blocked).",
            ("scope", "reason"), registry=None)
        self._leases = Counter(
            "smartflow_vkey_leases",
            "Leases taken: room held in Redis for many calls of one scope.", registry=None)

    def apply(self, leased: int, by_redis: int, leases: int,
              refused: Mapping[tuple[str, str], int]) -> None:
        if leased:
            self._admitted.labels("lease").inc(leased)
        if by_redis:
            self._admitted.labels("redis").inc(by_redis)
        if leases:
            self._leases.inc(leases)
        for (scope, reason), count in refused.items():
            self._refused.labels(scope, reason).inc(count)

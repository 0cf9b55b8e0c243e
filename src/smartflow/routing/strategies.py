"""Balancing strategies: in which order a group's deployments are tried.

``Balancer.order(group, available, request)`` returns the available
deployments with the one to call first at the front; the rest is the order
failover walks. Everything here is per worker and synchronous; the state
shared across workers (latencies, in-flight counts) is read from snapshots
the routing runtime keeps fresh (``routing.health``), and
``least_connections`` makes its pick atomically in Redis (``routing.health``)
with this order only as the tie-break.

* ``round_robin`` — rotate; each worker rotates on its own, so the spread
  across workers is even too.
* ``weighted`` — smooth weighted round robin (the nginx algorithm): exact
  proportions per worker, with no bursts to one deployment.
* ``random`` — uniform.
* ``priority`` — the lowest ``priority`` tier first, round robin inside it.
* ``latency`` — fastest rolling p95 first; a deployment with no recent
  measurement is tried first, and a small share of calls goes elsewhere, so
  a recovered deployment gets measured again.
* ``cost`` — cheapest for the request's expected tokens first.
* ``tag`` — only deployments carrying every tag of ``x-smartflow-tags``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from smartflow.routing.deployments import Deployment, Group

DEFAULT_EXPECTED_OUTPUT_TOKENS = 256
MAX_REQUEST_TAGS = 16


@dataclass(slots=True)
class RouteRequest:
    """What a strategy may look at: the request's tags and its token estimate."""

    tags: frozenset[str] = frozenset()
    prompt_tokens: Callable[[], int] = field(default=lambda: 0)
    output_tokens: int = 0  # the request's own max; 0 = unknown


def parse_tags(header: str | None) -> frozenset[str]:
    if not header:
        return frozenset()
    tags = [tag.strip() for tag in header.split(",")]
    return frozenset(tag for tag in tags[:MAX_REQUEST_TAGS] if tag)


class NoTaggedDeployment(LookupError):
    pass


class Balancer:
    """Per-worker balancing state for every group (counters, smooth weights)."""

    def __init__(self, *, latency_p95: Callable[[str], float | None],
                 exploration: float = 0.05, tag_default: str = "",
                 rng: random.Random | None = None) -> None:
        self._latency_p95 = latency_p95
        self._exploration = exploration
        self._tag_default = tag_default
        self._rng = rng or random.Random()
        self._counters: dict[str, int] = {}
        self._current: dict[str, dict[str, float]] = {}  # group -> deployment -> smooth weight

    def order(self, group: Group, available: list[Deployment],
              request: RouteRequest) -> list[Deployment]:
        if len(available) <= 1:
            return available
        strategy = group.strategy
        if strategy == "weighted":
            return self._weighted(group, available)
        if strategy == "random":
            shuffled = list(available)
            self._rng.shuffle(shuffled)
            return shuffled
        if strategy == "priority":
            return self._priority(group, available)
        if strategy == "latency":
            return self._latency(available)
        if strategy == "cost":
            return self._cost(group, available, request)
        # tag: ``tagged()`` already narrowed the group (before cooldowns and tries
        # were filtered out, so a failing tagged deployment is a failure, not a 400)
        # round_robin, and least_connections' tie-break order
        return self._rotate(group, available)

    # -- strategies ----------------------------------------------------------

    def _rotate(self, group: Group, available: list[Deployment]) -> list[Deployment]:
        if len(available) <= 1:
            return available
        count = self._counters.get(group.name, 0)
        self._counters[group.name] = count + 1
        start = count % len(available)
        return available[start:] + available[:start]

    def _weighted(self, group: Group, available: list[Deployment]) -> list[Deployment]:
        current = self._current.setdefault(group.name, {})
        total = 0.0
        best: Deployment | None = None
        best_weight = 0.0
        for deployment in available:
            weight = current.get(deployment.id, 0.0) + deployment.weight
            current[deployment.id] = weight
            total += deployment.weight
            if best is None or weight > best_weight:
                best, best_weight = deployment, weight
        assert best is not None
        current[best.id] = best_weight - total
        rest = sorted((d for d in available if d is not best), key=lambda d: -d.weight)
        return [best, *rest]

    def _priority(self, group: Group, available: list[Deployment]) -> list[Deployment]:
        tiers: dict[int, list[Deployment]] = {}
        for deployment in available:
            tiers.setdefault(deployment.priority, []).append(deployment)
        ordered: list[Deployment] = []
        for priority in sorted(tiers):
            tier = tiers[priority]
            ordered += self._rotate(_tier_group(group, priority), tier) if not ordered else tier
        return ordered

    def _latency(self, available: list[Deployment]) -> list[Deployment]:
        unmeasured = []
        measured: list[tuple[float, Deployment]] = []
        for deployment in available:
            p95 = self._latency_p95(deployment.id)
            if p95 is None:
                unmeasured.append(deployment)
            else:
                measured.append((p95, deployment))
        measured.sort(key=lambda item: item[0])
        ordered = unmeasured + [deployment for _, deployment in measured]
        if len(ordered) > 1 and not unmeasured and self._rng.random() < self._exploration:
            # Exploration: someone else goes first now and then, so a deployment
            # that was slow and has recovered is measured again.
            pick = self._rng.randrange(1, len(ordered))
            ordered.insert(0, ordered.pop(pick))
        return ordered

    def _cost(self, group: Group, available: list[Deployment],
              request: RouteRequest) -> list[Deployment]:
        prompt = request.prompt_tokens()
        output = request.output_tokens or DEFAULT_EXPECTED_OUTPUT_TOKENS

        def expected_usd(deployment: Deployment) -> float:
            prices = deployment.target.prices
            return (prompt * prices.input_per_mtok + output * prices.output_per_mtok) / 1e6 \
                + prices.per_request

        rotated = self._rotate(group, available)  # equal prices take turns
        return sorted(rotated, key=expected_usd)

    def tagged(self, group: Group, tags: frozenset[str]) -> tuple[Deployment, ...]:
        """The tag strategy's share of a group; NoTaggedDeployment when none matches."""
        if group.strategy != "tag":
            return group.deployments
        return tuple(self._tagged(list(group.deployments), tags))

    def _tagged(self, available: list[Deployment], tags: frozenset[str]) -> list[Deployment]:
        if tags:
            matched = [d for d in available if tags <= d.tags]
            if matched:
                return matched
        elif not self._tag_default:
            return available
        if self._tag_default:
            fallback = [d for d in available if self._tag_default in d.tags]
            if fallback:
                return fallback
        raise NoTaggedDeployment(",".join(sorted(tags)))


def _tier_group(group: Group, priority: int) -> Group:
    return Group(f"{group.name}\0{priority}", (), group.strategy)


def expected_output_tokens(body: Mapping[str, Any] | None) -> int:
    if body is None:
        return 0
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(name)
        if value.__class__ is int and value > 0:
            return value  # type: ignore[no-any-return]
    return 0

"""The routing decisions themselves, without sockets: strategies, failure
classes, Retry-After, backoff, and a plan's walk through groups and chains."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from smartflow.config import ModelConfig, RoutingSettings, load_settings
from smartflow.gateway_error import GatewayError, Phase, Reason
from smartflow.providers.base import Prices, ProviderError, Target
from smartflow.routing.deployments import Deployment, Group, config_groups, deployment_ids
from smartflow.routing.planner import RoutePlan, failure_kind, retry_after_seconds
from smartflow.routing.strategies import Balancer, NoTaggedDeployment, RouteRequest, parse_tags


def _deployment(name: str, *, weight: float = 1.0, priority: int = 0,
                tags: tuple[str, ...] = (), price: float = 0.0,
                provider: str = "openai") -> Deployment:
    target = Target(public_name="m", provider=provider, model=name, api_base="",
                    prices=Prices(input_per_mtok=price, output_per_mtok=price))
    return Deployment(name, target, weight, priority, frozenset(tags))


def _balancer(p95: dict[str, float] | None = None, **kwargs: Any) -> Balancer:
    table = p95 or {}
    return Balancer(latency_p95=table.get, rng=random.Random(3), **kwargs)


def _firsts(balancer: Balancer, group: Group, n: int,
            request: RouteRequest | None = None) -> Counter[str]:
    request = request or RouteRequest()
    return Counter(balancer.order(group, list(group.deployments), request)[0].id
                   for _ in range(n))


def test_weighted_is_exact_per_worker_and_never_bursts() -> None:
    group = Group("m", (_deployment("a", weight=3), _deployment("b", weight=1)), "weighted")
    balancer = _balancer()
    picks = [balancer.order(group, list(group.deployments), RouteRequest())[0].id
             for _ in range(400)]
    assert Counter(picks) == {"a": 300, "b": 100}
    assert "bb" not in "".join(picks)  # smooth: b never twice in a row at 3:1


def test_round_robin_rotates_and_failover_order_is_the_rest() -> None:
    group = Group("m", tuple(_deployment(x) for x in "abc"), "round_robin")
    balancer = _balancer()
    orders = [[d.id for d in balancer.order(group, list(group.deployments), RouteRequest())]
              for _ in range(3)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]


def test_priority_uses_the_lowest_tier_then_the_next() -> None:
    group = Group("m", (_deployment("a", priority=1), _deployment("b", priority=0),
                        _deployment("c", priority=0)), "priority")
    balancer = _balancer()
    assert _firsts(balancer, group, 100) == {"b": 50, "c": 50}
    ordered = balancer.order(group, list(group.deployments), RouteRequest())
    assert ordered[-1].id == "a"


def test_latency_prefers_the_fastest_and_explores_a_little() -> None:
    group = Group("m", (_deployment("fast"), _deployment("slow")), "latency")
    balancer = _balancer({"fast": 0.1, "slow": 0.9}, exploration=0.05)
    firsts = _firsts(balancer, group, 2000)
    assert 0.02 < firsts["slow"] / 2000 < 0.09
    unmeasured = _balancer({"fast": 0.1}, exploration=0.0)
    assert unmeasured.order(group, list(group.deployments), RouteRequest())[0].id == "slow"


def test_cost_picks_the_cheapest_for_the_expected_tokens() -> None:
    group = Group("m", (_deployment("dear", price=10.0), _deployment("cheap", price=0.5)),
                  "cost")
    request = RouteRequest(prompt_tokens=lambda: 1000, output_tokens=100)
    assert _firsts(_balancer(), group, 10, request) == {"cheap": 10}


def test_tags_filter_and_fall_back_to_the_default_tag() -> None:
    group = Group("m", (_deployment("eu", tags=("eu", "gdpr")), _deployment("us", tags=("us",)),
                        _deployment("any", tags=("default",))), "tag")
    balancer = _balancer()
    assert [d.id for d in balancer.tagged(group, parse_tags("eu, gdpr"))] == ["eu"]
    assert len(balancer.tagged(group, frozenset())) == 3  # no tags asked: the whole group
    with pytest.raises(NoTaggedDeployment):
        balancer.tagged(group, frozenset({"apac"}))
    defaulted = _balancer(tag_default="default")
    assert [d.id for d in defaulted.tagged(group, frozenset({"apac"}))] == ["any"]
    assert parse_tags(" a, ,b ") == frozenset({"a", "b"})


def test_a_failing_tagged_deployment_is_a_failure_not_a_missing_tag() -> None:
    group = Group("m", (_deployment("eu", tags=("eu",)), _deployment("us", tags=("us",))), "tag")
    runtime = _Runtime({})
    request = RouteRequest(tags=frozenset({"eu"}))
    plan = RoutePlan(runtime, [group], request)  # type: ignore[arg-type]
    assert _walk(plan, [ProviderError(500, "x")]) == [("eu", 0.0)]  # nowhere else: the 500
    runtime.health.cooling = {"eu"}
    plan = RoutePlan(runtime, [group], request)  # type: ignore[arg-type]
    assert _walk(plan, [])[0][0] == "eu"  # cooling, but the only match: tried anyway
    plan = RoutePlan(runtime, [group], RouteRequest(tags=frozenset({"apac"})))  # type: ignore[arg-type]
    with pytest.raises(GatewayError) as refused:
        _walk(plan, [])
    assert refused.value.status == 400 and refused.value.code == "no_deployment_for_tags"


@pytest.mark.parametrize(("error", "kind"), [
    (ProviderError(500, "boom"), "retryable"),
    (ProviderError(429, "slow down"), "retryable"),
    (ProviderError(503, "unavailable"), "retryable"),
    (GatewayError(504, "timed out", reason=Reason.TIMEOUT, phase=Phase.BEFORE_FIRST_BYTE),
     "retryable"),
    (GatewayError(502, "reset", reason=Reason.CONNECTION, phase=Phase.BEFORE_FIRST_BYTE),
     "retryable"),
    (ProviderError(400, "bad"), "client"),
    (ProviderError(401, "key"), "client"),
    (ProviderError(400, "too long", code="context_length_exceeded"), "context"),
    (GatewayError(502, "cut", reason=Reason.CONNECTION, phase=Phase.MID_STREAM), "final"),
    (GatewayError(500, "vault", reason=Reason.INTERNAL), "final"),
])
def test_failure_kinds(error: GatewayError, kind: str) -> None:
    assert failure_kind(error) == kind


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert retry_after_seconds("2") == 2.0
    assert retry_after_seconds("0.5") == 0.5
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= (retry_after_seconds(later) or 0) <= 31


def test_deployment_ids_are_stable_and_unique() -> None:
    configs = [ModelConfig(name="m", provider="openai", model="x", api_base="http://h"),
               ModelConfig(name="m", provider="openai", model="x", api_base="http://h"),
               ModelConfig(name="m", provider="openai", model="x", id="mine")]
    first, second = deployment_ids(configs), deployment_ids(configs)
    assert first == second and len(set(first)) == 3 and first[2] == "mine"


class _Health:
    def __init__(self) -> None:
        self.cooling: set[str] = set()
        self.failed: list[str] = []

    def is_available(self, deployment_id: str, now: float) -> bool:
        return deployment_id not in self.cooling

    def release(self, group: str, deployment_id: str) -> None:
        pass


class _Runtime:
    def __init__(self, groups: dict[str, Group]) -> None:
        self.health = _Health()
        self.balancer = _balancer()
        self.capped: set[str] = set()
        self.routing = RoutingSettings(max_attempts=8, retry_backoff=0.2,
                                       retry_backoff_max=5.0, max_retry_after=10.0)
        self._groups = groups

    def is_capped(self, provider: str) -> bool:
        return provider in self.capped

    def on_attempt_failed(self, deployment: Deployment, error: GatewayError) -> None:
        self.health.failed.append(deployment.id)

    def group_for_target(self, name: str) -> Group | None:
        return self._groups.get(name)


def _walk(plan: RoutePlan, errors: list[GatewayError]) -> list[tuple[str, float]]:
    async def run() -> list[tuple[str, float]]:
        steps = [((await plan.first()).id, 0.0)]
        for error in errors:
            following = await plan.after_failure(error)
            if following is None:
                break
            steps.append((following[0].id, following[1]))
        return steps
    return asyncio.run(run())


GROUP = Group("m", (_deployment("a"), _deployment("b")), "round_robin")
OTHER = Group("o", (_deployment("x", provider="anthropic"),), "round_robin")


def test_a_plan_tries_the_other_deployment_then_retries_with_backoff() -> None:
    runtime = _Runtime({})
    plan = RoutePlan(runtime, [GROUP], RouteRequest(), retries=1,  # type: ignore[arg-type]
                     rng=random.Random(1))
    walked = _walk(plan, [ProviderError(500, "x")] * 3)
    assert [step[0] for step in walked] == ["a", "b", "a"]
    assert walked[1][1] == 0.0 and 0.1 <= walked[2][1] <= 0.2
    assert runtime.health.failed == ["a", "b", "a"]


def test_a_plan_skips_cooling_and_capped_deployments_but_tries_cooling_ones_last() -> None:
    runtime = _Runtime({})
    runtime.health.cooling = {"a"}
    plan = RoutePlan(runtime, [GROUP, OTHER], RouteRequest(), chain="c")  # type: ignore[arg-type]
    assert [s[0] for s in _walk(plan, [ProviderError(500, "x")] * 3)] == ["b", "x"]
    runtime.capped = {"openai"}
    plan = RoutePlan(runtime, [GROUP, OTHER], RouteRequest(), chain="c")  # type: ignore[arg-type]
    assert [s[0] for s in _walk(plan, [])] == ["x"]
    runtime.health.cooling = {"a", "b", "x"}
    runtime.capped = set()
    plan = RoutePlan(runtime, [GROUP], RouteRequest())  # type: ignore[arg-type]
    assert _walk(plan, [])[0][0] in ("a", "b")  # everything cooling: tried anyway
    runtime.capped = {"openai"}
    plan = RoutePlan(runtime, [GROUP], RouteRequest())  # type: ignore[arg-type]
    with pytest.raises(GatewayError) as refused:
        _walk(plan, [])
    assert refused.value.status == 429 and refused.value.code == "provider_budget_exceeded"


def test_retry_after_beyond_the_limit_moves_on_and_within_it_is_waited() -> None:
    runtime = _Runtime({})
    single = Group("s", (_deployment("a"),), "round_robin")
    plan = RoutePlan(runtime, [single, OTHER], RouteRequest(), chain="c",  # type: ignore[arg-type]
                     retries=2)
    walked = _walk(plan, [ProviderError(429, "x", retry_after="3"),
                          ProviderError(429, "x", retry_after="60")])
    assert walked == [("a", 0.0), ("a", 3.0), ("x", 0.0)]


def test_non_retryable_errors_move_on_only_in_a_chain_and_attempts_are_capped() -> None:
    runtime = _Runtime({})
    plan = RoutePlan(runtime, [GROUP], RouteRequest(), retries=3)  # type: ignore[arg-type]
    assert _walk(plan, [ProviderError(400, "bad")]) == [("a", 0.0)]
    plan = RoutePlan(runtime, [GROUP, OTHER], RouteRequest(), chain="c")  # type: ignore[arg-type]
    assert [s[0] for s in _walk(plan, [ProviderError(401, "key")])] == ["b", "x"]
    runtime.routing = replace(runtime.routing, max_attempts=2)
    plan = RoutePlan(runtime, [GROUP], RouteRequest(), retries=5)  # type: ignore[arg-type]
    assert len(_walk(plan, [ProviderError(500, "x")] * 5)) == 2


def test_a_context_error_jumps_to_the_larger_model_once() -> None:
    runtime = _Runtime({"big": OTHER})
    plan = RoutePlan(runtime, [GROUP], RouteRequest(),  # type: ignore[arg-type]
                     context_fallback="big")
    context = ProviderError(400, "long", code="context_length_exceeded")
    assert [s[0] for s in _walk(plan, [context, context])] == ["a", "x"]


def test_config_groups_and_the_strategy_of_each_model(tmp_path: Any) -> None:
    path = tmp_path / "c.toml"
    path.write_text("""
[routing]
strategy = "weighted"
strategy_by_model = { fast = "latency" }
[[models]]
name = "fast"
provider = "mock"
weight = 2
[[models]]
name = "fast"
provider = "mock"
model = "other"
[[models]]
name = "plain"
provider = "mock"
""")
    settings = load_settings(str(path), environ={})
    from smartflow.proxy.catalog import Catalog
    from smartflow.proxy.cost import load_price_table

    catalog = Catalog(settings.models, load_price_table())
    groups = config_groups(catalog.configured_entries(), settings.routing.strategy,
                           settings.routing.strategy_by_model)
    assert groups["fast"].strategy == "latency" and groups["plain"].strategy == "weighted"
    assert [d.weight for d in groups["fast"].deployments] == [2.0, 1.0]

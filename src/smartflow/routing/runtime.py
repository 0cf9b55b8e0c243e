"""A worker's routing: its groups and chains, deployment health, provider caps, alerts.

Built once per worker (``build_routing_runtime``). Groups come from
``[[models]]`` and from the admin API; chains from ``[[routing.fallback_chains]]``
and from the admin API (Redis wins on a name clash). The worker keeps a copy,
reloaded when the routing channel announces a change (and checked every few
seconds against the stored revision, should a message be lost).

``plan(model, chain, request)`` is what the route stage asks: None with a
plain target when a call has nowhere to fail over to (the common case costs
a dict lookup), else a ``RoutePlan``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from smartflow.config import FallbackChainConfig, ModelConfig, RoutingSettings, Settings
from smartflow.gateway_error import GatewayError, Reason
from smartflow.keys.periods import PeriodClock
from smartflow.providers.base import Target
from smartflow.proxy.catalog import Catalog, ModelNotFound
from smartflow.routing.deployments import Deployment, Group, config_groups
from smartflow.routing.health import DeploymentHealth
from smartflow.routing.planner import RoutePlan
from smartflow.routing.provider_budgets import ProviderBudgets
from smartflow.routing.records import FallbackChain, ManagedGroup
from smartflow.routing.route_store import RouteStore
from smartflow.routing.strategies import Balancer, RouteRequest
from smartflow.store.keyspace import ROUTING_CHANNEL, failure_spike
from smartflow.store.subscription import listen_forever
from smartflow.telemetry.alerts import (
    KIND_SLOW_CALL,
    SEVERITY_WARNING,
    Alert,
    Alerter,
    failure_spike_alert,
    provider_budget_alert,
    slow_call_alert,
)

if TYPE_CHECKING:
    from smartflow.store.fast_client import StoreClient
    from smartflow.telemetry.routing_metrics import RoutingMetrics

logger = logging.getLogger("smartflow.routing")

REVISION_CHECK_S = 5.0
METRICS_FLUSH_S = 1.0
RELOAD_DEBOUNCE_S = 0.05
MAX_MEMOISED_TARGETS = 4096


@dataclass(slots=True)
class RoutingCounts:
    """Per-worker counters the metrics flusher drains (``take``)."""

    attempts: dict[tuple[str, str], int]  # (provider, outcome) -> n
    failovers: dict[str, int]  # model -> n
    cooldowns: dict[str, int]  # deployment -> n

    def take(self) -> RoutingCounts:
        taken = RoutingCounts(self.attempts, self.failovers, self.cooldowns)
        self.attempts, self.failovers, self.cooldowns = {}, {}, {}
        return taken


def chain_from_config(config: FallbackChainConfig) -> FallbackChain:
    return FallbackChain(name=config.name, model=config.model, targets=config.targets,
                         context_window_fallback=config.context_window_fallback,
                         retries=config.retries, source="config")


class RoutingRuntime:
    def __init__(self, settings: Settings, catalog: Catalog, client: StoreClient, *,
                 redis_url: str = "", alerter: Alerter | None = None) -> None:
        self._settings = settings
        self._redis_url = redis_url  # for the channel subscription (redis-py pub/sub)
        self.routing: RoutingSettings = settings.routing
        self._catalog = catalog
        self._client = client
        self._store = RouteStore(client)
        self.alerter = alerter
        self.counts = RoutingCounts({}, {}, {})
        self.health = DeploymentHealth(client, self.routing, on_cooldown=self._cooled)
        self.balancer = Balancer(latency_p95=self.health.p95,
                                 exploration=self.routing.latency_exploration,
                                 tag_default=self.routing.tag_default)
        self.budgets = ProviderBudgets(
            client, self.routing.provider_daily_budgets, PeriodClock(settings.budgets.timezone),
            settings.alerts.budget_thresholds, spawn=self.health.spawn,
            on_threshold=self._budget_threshold)
        self.attempt_timeout = self.routing.attempt_timeout or None
        self.config_chains = tuple(chain_from_config(c) for c in self.routing.fallback_chains)
        self._config_groups = config_groups(catalog.configured_entries(), self.routing.strategy,
                                            self.routing.strategy_by_model)
        self.generation = 0  # bumped on every reload (the admit stage caches by it)
        self._revision = -1
        self._groups: dict[str, Group] = {}
        self._chains: dict[str, FallbackChain] = {}
        self._chain_by_model: dict[str, FallbackChain] = {}
        self._by_id: dict[str, Deployment] = {}
        self._simple: dict[str, Target] = {}
        self._memo: dict[str, Group | None] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._reload_pending = False
        self._metrics: RoutingMetrics | None = None
        # Whether a finished call has anything to tell: its cost to a provider's
        # day, or a slow-call alert. Otherwise the exit stage stops at once.
        self.watches_calls = self.budgets.enabled or (alerter is not None and alerter.enabled)
        self._apply({}, {})

    # -- what the route stage asks ---------------------------------------------

    def simple_target(self, model: str) -> Target | None:
        """The target of a model with one deployment and nothing to fail over to."""
        return self._simple.get(model)

    def chain_named(self, name: str) -> FallbackChain | None:
        return self._chains.get(name)

    def plan(self, model: str, chain: FallbackChain | None,
             request: RouteRequest) -> RoutePlan | None:
        """The call's plan; None when the model is unknown and no chain serves it."""
        chain, names, fallback = self._walk(model, chain)
        steps = [group for group in map(self.group_for_target, names) if group is not None]
        if chain is None:
            return RoutePlan(self, steps, request, retries=self.routing.retries,
                             context_fallback=fallback) if steps else None
        if not steps:
            raise GatewayError(503, f"No target of fallback chain {chain.name!r} is a "
                                    f"known model or deployment.",
                               code="no_deployment_available", reason=Reason.INTERNAL)
        retries = chain.retries if chain.retries is not None else self.routing.chain_retries
        return RoutePlan(self, steps, request, chain=chain.name, retries=retries,
                         context_fallback=fallback)

    def _walk(self, model: str, chain: FallbackChain | None
              ) -> tuple[FallbackChain | None, tuple[str, ...], str]:
        """What a call for ``model`` walks: its chain (the one it named, else the
        model's own, else none), the step names, and its larger-context fallback."""
        if chain is None:
            chain = self._chain_by_model.get(model)
        fallback = self.routing.context_window_fallbacks.get(model, "")
        if chain is None:
            return None, (model,), fallback
        return chain, chain.targets, chain.context_window_fallback or fallback

    def group_for_target(self, name: str) -> Group | None:
        """A chain target: a deployment id, a group, or a model the catalog resolves."""
        group = self._groups.get(name)
        if group is not None:
            return group
        deployment = self._by_id.get(name)
        if deployment is not None:
            return Group(deployment.target.public_name, (deployment,), "round_robin")
        if name in self._memo:
            return self._memo[name]
        try:
            target = self._catalog.resolve(name)
        except ModelNotFound:
            found: Group | None = None
        else:
            found = Group(name, (Deployment(f"{target.provider}/{target.model}", target),),
                          "round_robin")
        if len(self._memo) >= MAX_MEMOISED_TARGETS:
            self._memo.clear()
        self._memo[name] = found
        return found

    @property
    def has_chains(self) -> bool:
        return bool(self._chains)

    def possible_targets(self, model: str, chain_name: str | None = None
                         ) -> tuple[Target, ...]:
        """Every deployment a call for ``model`` (through the chain it names, if
        any) might reach: for its worst-case cost."""
        named = self._chains.get(chain_name.strip()) if chain_name else None
        _, names, fallback = self._walk(model, named)
        targets: list[Target] = []
        for name in (*names, fallback) if fallback else names:
            group = self.group_for_target(name)
            if group is not None:
                targets += [d.target for d in group.deployments]
        return tuple(targets)

    def listed_models(self) -> list[tuple[str, str]]:
        """(name, provider) for GET /v1/models: every group, then every model a
        chain serves that is not a group itself, in config order first."""
        listed = {name: group.deployments[0].provider for name, group in self._groups.items()}
        for chain in self._chains.values():
            if chain.model and chain.model not in listed:
                first = self.group_for_target(chain.targets[0]) if chain.targets else None
                listed[chain.model] = first.deployments[0].provider if first else "smartflow"
        return list(listed.items())

    def is_capped(self, provider: str) -> bool:
        return self.budgets.is_capped(provider)

    # -- what happened ---------------------------------------------------------

    def on_attempt_failed(self, deployment: Deployment, error: GatewayError) -> None:
        self.health.report_failure(deployment.id)
        provider = deployment.provider
        key = (provider, "failure")
        self.counts.attempts[key] = self.counts.attempts.get(key, 0) + 1
        self.on_upstream_failure(deployment.id, provider, error)

    def on_upstream_failure(self, subject: str, provider: str, error: GatewayError) -> None:
        """Alerts for any failed upstream call (routed or not): a spike, a hang."""
        if self.alerter is None or not self.alerter.enabled:
            return
        if error.reason is Reason.TIMEOUT:
            self._alert(hanging_call_alert(subject, self.attempt_timeout
                                           or self._settings.proxy.first_byte_timeout))
        if error.may_fail_over:
            self.health.spawn(self._count_spike(provider, error))

    def on_attempt_ok(self, deployment: Deployment, first_byte_s: float,
                      *, observe_latency: bool) -> None:
        self.health.report_success(deployment.id)
        if observe_latency:
            self.health.observe_latency(deployment.id, first_byte_s)
        key = (deployment.provider, "success")
        self.counts.attempts[key] = self.counts.attempts.get(key, 0) + 1

    def on_timeout_latency(self, deployment: Deployment, seconds: float) -> None:
        """A timed-out attempt still says how slow the deployment is."""
        self.health.observe_latency(deployment.id, seconds)

    def on_failover(self, model: str) -> None:
        self.counts.failovers[model] = self.counts.failovers.get(model, 0) + 1

    def on_call_end(self, provider: str, deployment_id: str, cost_usd: float,
                    elapsed_s: float, call_id: str) -> None:
        if cost_usd > 0 and self.budgets.enabled:
            self.budgets.record(provider, cost_usd)
        threshold = self._settings.alerts.slow_call_seconds
        if elapsed_s > threshold:
            self._alert(slow_call_alert(deployment_id or provider, elapsed_s, threshold,
                                        call_id))

    async def status(self) -> dict[str, object]:
        """For ``GET /api/routing/status``: deployments and provider caps."""
        now = time.time()
        deployments = []
        for name in sorted(self._groups):
            group = self._groups[name]
            for deployment in group.deployments:
                until = self.health.cooling_until(deployment.id)
                p95 = self.health.p95(deployment.id)
                deployments.append({
                    "id": deployment.id, "model": name, "provider": deployment.provider,
                    "upstream_model": deployment.target.model, "strategy": group.strategy,
                    "weight": deployment.weight, "priority": deployment.priority,
                    "tags": sorted(deployment.tags),
                    "cooling_down": until is not None,
                    "cooling_until": _iso(until) if until is not None else None,
                    "p95_first_byte_ms": round(p95 * 1000, 1) if p95 is not None else None,
                    "provider_capped": self.is_capped(deployment.provider)})
        spend = await self.budgets.spend_today() if self.budgets.enabled else {}
        caps = self.budgets.caps()
        budgets = [{"provider": provider, "daily_budget_usd": cap,
                    "spend_today_usd": round(spend.get(provider, 0.0), 9),
                    "capped": self.is_capped(provider)} for provider, cap in sorted(caps.items())]
        chains = [{"name": c.name, "model": c.model, "targets": list(c.targets),
                   "source": c.source} for _, c in sorted(self._chains.items())]
        return {"strategy": self.routing.strategy, "deployments": deployments,
                "fallback_chains": chains, "provider_budgets": budgets,
                "checked_at": _iso(now)}

    # -- alerts ----------------------------------------------------------------

    def _alert(self, alert: Alert) -> None:
        if self.alerter is not None:
            self.alerter.alert(alert)

    def _cooled(self, deployment_id: str, until: float) -> None:
        self.counts.cooldowns[deployment_id] = self.counts.cooldowns.get(deployment_id, 0) + 1
        logger.warning("deployment %s is cooling down for %.0f s", deployment_id,
                       max(0.0, until - time.time()))

    def _budget_threshold(self, provider: str, share: float, spent: float, cap: float) -> None:
        self._alert(provider_budget_alert(provider, spent, cap, share))

    async def _count_spike(self, provider: str, error: GatewayError) -> None:
        alerts = self._settings.alerts
        bucket = int(time.time() // alerts.failure_spike_window)
        key = failure_spike(provider, bucket)
        count = int(await self._client.execute("INCR", key, key=key))
        if count == 1:
            await self._client.execute("EXPIRE", key, int(alerts.failure_spike_window * 2) + 1,
                                       key=key)
        if count == alerts.failure_spike_count:  # exactly one worker sees the crossing
            self._alert(failure_spike_alert(provider, count, alerts.failure_spike_window,
                                            f"HTTP {error.status}: {error.message[:200]}"))

    # -- groups and chains -----------------------------------------------------

    def _apply(self, managed_groups: Mapping[str, ManagedGroup],
               managed_chains: Mapping[str, FallbackChain]) -> None:
        routing = self.routing
        groups = dict(self._config_groups)
        for name, managed in managed_groups.items():
            group = self._managed_group(managed)
            if group is not None:
                groups[name] = group
        chains = {chain.name: chain for chain in self.config_chains}
        chains.update(managed_chains)
        by_model: dict[str, FallbackChain] = {}
        for name in sorted(chains):
            chain = chains[name]
            if chain.model:
                by_model.setdefault(chain.model, chain)
        by_id = {d.id: d for group in groups.values() for d in group.deployments}
        simple: dict[str, Target] = {}
        if routing.retries == 0 and not self.budgets.enabled:
            for name, group in groups.items():
                if group.is_single and name not in by_model \
                        and name not in routing.context_window_fallbacks:
                    simple[name] = group.deployments[0].target
        self._groups, self._chains, self._chain_by_model = groups, chains, by_model
        self._by_id, self._simple, self._memo = by_id, simple, {}
        self.generation += 1
        self.health.watch(by_id, latency=any(g.strategy == "latency" for g in groups.values()),
                          least_connections=[n for n, g in groups.items()
                                             if g.strategy == "least_connections"])

    def _managed_group(self, managed: ManagedGroup) -> Group | None:
        deployments = []
        for item in managed.deployments:
            config = ModelConfig(
                name=managed.name, provider=item.provider, model=item.model,
                api_base=item.api_base, api_key=item.api_key, api_version=item.api_version,
                input_price_per_mtok=item.input_price_per_mtok,
                output_price_per_mtok=item.output_price_per_mtok,
                context_window=item.context_window, max_output_tokens=item.max_output_tokens,
                tags=item.tags)
            try:
                target = self._catalog.target_for(config)
            except Exception as exc:  # noqa: BLE001 - one bad record must not stop routing
                logger.warning("model group %s: deployment %s skipped (%s)", managed.name,
                               item.id, exc)
                continue
            deployments.append(Deployment(f"{managed.name}:{item.id}", target, item.weight,
                                          item.priority, frozenset(item.tags)))
        if not deployments:
            return None
        return Group(managed.name, tuple(deployments),
                     managed.strategy or self.routing.strategy_by_model.get(
                         managed.name, self.routing.strategy))

    async def reload(self) -> None:
        snapshot = await self._store.snapshot()
        self._revision = snapshot.revision
        self._apply(snapshot.groups, snapshot.chains)

    # -- life ------------------------------------------------------------------

    def start(self) -> None:
        """Background work on the running loop: the first load of what the admin API
        stored (config groups and chains serve meanwhile), the channel, the checks."""
        self.health.start()
        if self.alerter is not None:
            self.alerter.start()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._first_load()), loop.create_task(self._listen()),
                       loop.create_task(self._watch()), loop.create_task(self._flush_loop())]

    async def _first_load(self) -> None:
        with contextlib.suppress(Exception):  # Redis down at start: the watch loop retries
            await self.reload()
            await self.budgets.sync()

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)
        self._tasks = []
        await self.health.aclose()
        if self.alerter is not None:
            await self.alerter.aclose()
        with contextlib.suppress(Exception):
            self.flush_metrics()

    def on_message(self, text: str) -> None:
        kind, _, rest = text.partition(":")
        if kind == "cool":
            deployment_id, _, until_ms = rest.rpartition(":")
            with contextlib.suppress(ValueError):
                self.health.set_cooldown(deployment_id, int(until_ms) / 1000)
        elif kind == "capped":
            provider, _, day = rest.partition(":")
            self.budgets.mark_capped(provider, day)
        elif kind in ("chain", "group") and not self._reload_pending:
            self._reload_pending = True
            asyncio.get_running_loop().call_later(RELOAD_DEBOUNCE_S, self._schedule_reload)

    def _schedule_reload(self) -> None:
        self._reload_pending = False
        self.health.spawn(self.reload())

    def flush_metrics(self) -> None:
        counts = self.counts.take()
        alerts = self.alerter.take_counts() if self.alerter is not None else {}
        if counts.attempts or counts.failovers or counts.cooldowns or alerts:
            if self._metrics is None:
                from smartflow.telemetry.routing_metrics import RoutingMetrics

                self._metrics = RoutingMetrics()
            self._metrics.apply(counts.attempts, counts.failovers, counts.cooldowns, alerts)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(METRICS_FLUSH_S)
            try:
                self.flush_metrics()
            except Exception as exc:  # noqa: BLE001 - telemetry never stops routing
                logger.debug("routing metrics flush failed: %s", exc)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(REVISION_CHECK_S)
            try:
                if await self._store.revision() != self._revision:
                    await self.reload()
                if self.budgets.enabled:
                    await self.budgets.sync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis blips: next round
                logger.debug("routing revision check failed: %s", exc)

    async def _listen(self) -> None:
        # A lost message is caught up by the revision check in ``_watch``.
        if self._redis_url:
            await listen_forever(self._redis_url, ROUTING_CHANNEL, self.on_message)



def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def hanging_call_alert(subject: str, timeout_s: float) -> Alert:
    return Alert(kind=KIND_SLOW_CALL, subject=subject, severity=SEVERITY_WARNING,
                 title=f"Hanging calls to {subject}",
                 text=f"{subject} sent no response head within {timeout_s:g} s; the call "
                      f"was failed over or answered with a timeout.",
                 fields=(("Subject", subject), ("Timeout", f"{timeout_s:g} s")),
                 dedupe_key=f"{KIND_SLOW_CALL}:hang:{subject}")


def build_routing_runtime(settings: Settings, catalog: Catalog, client: StoreClient, *,
                          redis_url: str, alerter: Alerter | None = None) -> RoutingRuntime:
    return RoutingRuntime(settings, catalog, client, redis_url=redis_url, alerter=alerter)

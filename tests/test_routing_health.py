"""Deployment health shared through Redis (one server and a Redis Cluster):
cooldowns and their probation, least-connections counts across workers, the
latency EMA, provider daily spend. Two ``DeploymentHealth`` objects on one
Redis stand for two workers (or nodes)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable

import pytest

from smartflow.config import RoutingSettings
from smartflow.keys.periods import PeriodClock
from smartflow.routing.health import DeploymentHealth, p95_of
from smartflow.routing.provider_budgets import ProviderBudgets
from smartflow.store.fast_client import StoreClient, create_store_client

SETTINGS = RoutingSettings(cooldown_failures=3, cooldown_window=30.0, cooldown_time=30.0)


@pytest.fixture(params=["single", "cluster"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[StoreClient]:
    cluster = request.param == "cluster"
    url = request.getfixturevalue("redis_cluster_url" if cluster else "redis_url")
    store_client = create_store_client(url, cluster=cluster)
    try:
        yield store_client
    finally:
        await store_client.aclose()


async def _settled(health: DeploymentHealth) -> None:
    """Wait for the fire-and-forget Redis work a health object started."""
    for _ in range(200):
        if not health._tasks:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("background routing work did not finish")


async def _eventually(check: Callable[[], bool]) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not reached")


async def test_failures_in_a_row_cool_a_deployment_for_every_worker(client: StoreClient) -> None:
    deployment = f"dep-{secrets.token_hex(4)}"
    cooled: list[str] = []
    one = DeploymentHealth(client, SETTINGS, on_cooldown=lambda d, until: cooled.append(d))
    two = DeploymentHealth(client, SETTINGS)
    one.watch([deployment], latency=False, least_connections=())
    two.watch([deployment], latency=False, least_connections=())
    one.report_failure(deployment)
    two.report_failure(deployment)
    await _settled(one)
    await _settled(two)
    now = time.time()
    assert one.is_available(deployment, now) and two.is_available(deployment, now)
    one.report_failure(deployment)  # the third failure, from either worker, trips it
    await _settled(one)
    assert cooled == [deployment]
    assert not one.is_available(deployment, time.time())
    # The other worker learns it from Redis (here: its periodic read; in a worker
    # also from the channel message published by the script).
    await two._sync_cooldowns()
    assert not two.is_available(deployment, time.time())
    until = one.cooling_until(deployment)
    assert until is not None and 25 < until - time.time() <= 30.5


async def test_a_success_resets_the_count_and_a_probe_failure_trips_at_once(
        client: StoreClient) -> None:
    deployment = f"dep-{secrets.token_hex(4)}"
    health = DeploymentHealth(client, SETTINGS)
    for _ in range(2):
        health.report_failure(deployment)
    await _settled(health)
    health.report_success(deployment)  # the count starts again
    await _settled(health)
    for _ in range(2):
        health.report_failure(deployment)
    await _settled(health)
    assert health.is_available(deployment, time.time())
    # A cooldown that has run out puts the deployment on probation: the next
    # failure takes it out again on its own.
    health.set_cooldown(deployment, time.time() + 0.05)
    await asyncio.sleep(0.1)
    key = f"sf:{{rt:{deployment}}}:cool"
    await client.execute("DEL", key, key=key)
    assert health.is_available(deployment, time.time())
    health.report_failure(deployment)
    await _settled(health)
    assert not health.is_available(deployment, time.time())


async def test_least_connections_counts_calls_of_every_worker(client: StoreClient) -> None:
    group = f"grp-{secrets.token_hex(4)}"
    one, two = DeploymentHealth(client, SETTINGS), DeploymentHealth(client, SETTINGS)
    picks = [await one.pick_least_loaded(group, ["a", "b"]) for _ in range(3)]
    picks += [await two.pick_least_loaded(group, ["a", "b"]) for _ in range(3)]
    # Six calls in flight over two workers: three each, alternating by load.
    assert sorted(picks) == ["a", "a", "a", "b", "b", "b"]
    one.release(group, "a")
    one.release(group, "a")
    await _settled(one)
    assert await two.pick_least_loaded(group, ["b", "a"]) == "a"
    # A worker that stops reporting stops counting: its calls are forgotten.
    await client.execute("HSET", f"sf:{{lc:{group}}}:seen", one._worker, 0,
                         key=f"sf:{{lc:{group}}}:seen")
    assert await two.pick_least_loaded(group, ["a", "b"]) == "a"  # a: 1 (two's), b: 2


async def test_latency_is_an_ema_shared_by_every_worker(client: StoreClient) -> None:
    deployment = f"dep-{secrets.token_hex(4)}"
    one, two = DeploymentHealth(client, SETTINGS), DeploymentHealth(client, SETTINGS)
    for seconds in (0.1, 0.1, 0.1, 0.5):
        one.observe_latency(deployment, seconds)
    local = one.p95(deployment)
    assert local is not None and local > 0.2  # one slow call shows at once
    await _eventually(lambda: one._latency_flush is None and not one._pending_latency)
    await _settled(one)
    assert two.p95(deployment) is None
    await two._refresh_latency()
    shared = two.p95(deployment)
    assert shared is not None and abs(shared - local) < 1e-6
    assert p95_of(0.1, 0.0) == 0.1


async def test_provider_spend_caps_once_and_alerts_each_threshold_once(
        client: StoreClient) -> None:
    provider = f"provider-{secrets.token_hex(4)}"  # its own key: no other test's spend
    crossed: list[float] = []
    clock = PeriodClock("UTC")
    tasks: set[asyncio.Task[None]] = set()

    def spawn(work: object) -> None:
        task = asyncio.get_running_loop().create_task(work)  # type: ignore[arg-type]
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    key = f"sf:routing:pspend:{provider}:{clock.day_id()}"
    await client.execute("DEL", key, key=key)
    budgets = [ProviderBudgets(client, {provider: 1.0}, clock, (0.8, 1.0), spawn=spawn,
                               on_threshold=lambda p, share, spent, cap: crossed.append(share))
               for _ in range(2)]
    for index in range(12):  # $0.10 a call from two workers: 80% at the 8th, 100% at the 10th
        budgets[index % 2].record(provider, 0.1)
        await asyncio.sleep(0)
    await _eventually(lambda: not tasks)
    assert sorted(crossed) == [0.8, 1.0]
    assert budgets[0].is_capped(provider) or budgets[1].is_capped(provider)
    fresh = ProviderBudgets(client, {provider: 1.0}, clock, (0.8, 1.0), spawn=spawn)
    assert not fresh.is_capped(provider)
    await fresh.sync()  # a worker that starts later learns it from Redis
    assert fresh.is_capped(provider)
    assert (await fresh.spend_today())[provider] == pytest.approx(1.2)
    await client.execute("DEL", key, key=key)

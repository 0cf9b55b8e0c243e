"""The admission script against real Redis servers (single and Cluster): holds,
commits, releases, rate windows, concurrency caps and stale records."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from smartflow.keys.admission import SETTLE_INTERVAL_S, Admission, Grant, Refusal, Scope
from smartflow.keys.money import to_nano
from smartflow.keys.periods import PeriodClock
from smartflow.keys.records import Limits, Team, VirtualKey
from smartflow.keys.store import IdentityStore
from smartflow.store.fast_client import StoreClient, create_store_client
from smartflow.store.keyspace import SCOPE_KEY, SCOPE_TEAM

CLOCK = PeriodClock("UTC")


@pytest.fixture(params=["single", "cluster"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[tuple[StoreClient, bool]]:
    cluster = request.param == "cluster"
    url = request.getfixturevalue("redis_cluster_url" if cluster else "redis_url")
    store_client = create_store_client(url, cluster=cluster)
    try:
        yield store_client, cluster
    finally:
        await store_client.aclose()


async def _key(store: IdentityStore, limits: Limits, team_id: str | None = None
               ) -> VirtualKey:
    key, _plaintext = await store.create_key(VirtualKey(id="", key_hash="", key_hint="",
                                                        team_id=team_id, limits=limits))
    return key


def _scope(key: VirtualKey) -> Scope:
    return Scope.of(SCOPE_KEY, key.id, key.rev, key.limits)


async def _spend(store: IdentityStore, key: VirtualKey) -> dict[str, object]:
    return await store.spend(SCOPE_KEY, key.id, key.limits)


async def test_a_hold_is_committed_at_the_actual_cost_and_the_rest_released(
        client: tuple[StoreClient, bool]) -> None:
    store_client, cluster = client
    store = IdentityStore(store_client, CLOCK)
    admission = Admission(store_client, CLOCK, cluster=cluster, hold_s=60)
    key = await _key(store, Limits(max_budget=1.0))
    grant = await admission.reserve([_scope(key)], to_nano(0.40), 10)
    assert isinstance(grant, Grant)
    assert (await _spend(store, key))["reserved"] == pytest.approx(0.40)
    # 0.40 held: a second worst case of 0.70 no longer fits in 1.00.
    refused = await admission.reserve([_scope(key)], to_nano(0.70), 10)
    assert isinstance(refused, Refusal) and refused.reason == "budget"
    assert refused.remaining == to_nano(0.60)
    admission.settle_later(grant, model="m", cost_usd=0.05, prompt_tokens=3,
                           completion_tokens=4, counts_request=True, elapsed_s=0.1)
    await admission.drain()
    view = await _spend(store, key)
    assert view["spend"] == pytest.approx(0.05)
    assert view["reserved"] == 0.0
    assert view["remaining"] == pytest.approx(0.95)
    rows = await store.ledger(SCOPE_KEY, key.id, [CLOCK.day_id()])
    assert rows == [{"day": CLOCK.day_id(), "model": "m", "spend": 0.05, "requests": 1,
                     "prompt_tokens": 3, "completion_tokens": 4}]


async def test_a_changed_record_is_reported_stale_and_a_deleted_one_gone(
        client: tuple[StoreClient, bool]) -> None:
    store_client, cluster = client
    store = IdentityStore(store_client, CLOCK)
    admission = Admission(store_client, CLOCK, cluster=cluster, hold_s=60)
    key = await _key(store, Limits())
    saved = await store.save_key(key)
    stale = await admission.reserve([_scope(key)], 0, 0)
    assert isinstance(stale, Refusal) and stale.reason == "stale"
    assert isinstance(await admission.reserve([_scope(saved)], 0, 0), Grant)
    from dataclasses import replace

    blocked = await store.save_key(replace(saved, blocked=True))
    scope = _scope(blocked)
    refusal = await admission.reserve([scope], 0, 0, check_blocked=scope)
    assert isinstance(refusal, Refusal) and refusal.reason == "blocked"
    await store.delete_key(blocked)
    gone = await admission.reserve([scope], 0, 0)
    assert isinstance(gone, Refusal) and gone.reason == "gone"


async def test_parallel_requests_are_capped_and_a_release_frees_a_place(
        client: tuple[StoreClient, bool]) -> None:
    store_client, cluster = client
    store = IdentityStore(store_client, CLOCK)
    admission = Admission(store_client, CLOCK, cluster=cluster, hold_s=60)
    key = await _key(store, Limits(max_parallel_requests=2))
    first = await admission.reserve([_scope(key)], 0, 0)
    second = await admission.reserve([_scope(key)], 0, 0)
    assert isinstance(first, Grant) and isinstance(second, Grant)
    third = await admission.reserve([_scope(key)], 0, 0)
    assert isinstance(third, Refusal) and third.reason == "parallel"
    admission.settle_later(first, model="m", cost_usd=0.0, prompt_tokens=0,
                           completion_tokens=0, counts_request=False, elapsed_s=0.0)
    await admission.drain()
    assert isinstance(await admission.reserve([_scope(key)], 0, 0), Grant)


async def test_a_hold_whose_worker_died_expires_by_itself(
        client: tuple[StoreClient, bool]) -> None:
    store_client, cluster = client
    store = IdentityStore(store_client, CLOCK)
    admission = Admission(store_client, CLOCK, cluster=cluster, hold_s=60)
    key = await _key(store, Limits(max_budget=0.01))
    lost = await admission.reserve([_scope(key)], to_nano(0.01), 0)
    assert isinstance(lost, Grant)  # and its worker dies: nobody settles it
    refused = await admission.reserve([_scope(key)], to_nano(0.01), 0)
    assert isinstance(refused, Refusal) and refused.reason == "budget"
    # Age the hold by two hours (holds are filed per admission minute) instead
    # of waiting: past the one-minute reservation TTL, the next admission
    # drops it.
    st = _scope(key).keys.st
    minute, _second = lost.marks[0]
    old = minute - 120
    held = await store_client.execute("HGET", st, f"hb:{minute}", key=st)
    await store_client.execute("HDEL", st, f"hb:{minute}", f"hn:{minute}", key=st)
    await store_client.execute("HSET", st, f"hb:{old}", held, f"hn:{old}", 1, "hmin", old,
                               key=st)
    again = await admission.reserve([_scope(key)], to_nano(0.01), 0)
    assert isinstance(again, Grant)
    view = await _spend(store, key)
    assert view["reserved"] == pytest.approx(0.01) and view["in_flight"] == 1
    # The settlement of a call that outlived the TTL gives nothing back twice.
    from dataclasses import replace as replace_field

    late = replace_field(lost, marks=((old, _second),))
    admission.settle_later(late, model="m", cost_usd=0.0, prompt_tokens=0,
                           completion_tokens=0, counts_request=False, elapsed_s=7200)
    await admission.drain()
    view = await _spend(store, key)
    assert view["reserved"] == pytest.approx(0.01) and view["in_flight"] == 1


async def test_tpm_counts_estimated_then_actual_tokens(
        client: tuple[StoreClient, bool]) -> None:
    store_client, cluster = client
    store = IdentityStore(store_client, CLOCK)
    admission = Admission(store_client, CLOCK, cluster=cluster, hold_s=60)
    key = await _key(store, Limits(tpm_limit=1000))
    grant = await admission.reserve([_scope(key)], 0, 100)
    assert isinstance(grant, Grant)
    assert ("x-ratelimit-limit-tokens", "1000") in grant.headers
    assert ("x-ratelimit-remaining-tokens", "1000") in grant.headers  # before this call
    # The call used 900 more tokens than estimated: the window holds 1000 now.
    admission.settle_later(grant, model="m", cost_usd=0.0, prompt_tokens=100,
                           completion_tokens=900, counts_request=True, elapsed_s=0.5)
    await admission.drain()
    refused = await admission.reserve([_scope(key)], 0, 10)
    assert isinstance(refused, Refusal) and refused.reason == "tpm"
    assert 0 < refused.retry_ms <= 61_000


async def test_a_team_refusal_releases_what_the_key_scope_granted(
        client: tuple[StoreClient, bool]) -> None:
    store_client, cluster = client
    store = IdentityStore(store_client, CLOCK)
    admission = Admission(store_client, CLOCK, cluster=cluster, hold_s=60)
    team = await store.create_team(Team(team_id="tight", limits=Limits(max_budget=0.01)))
    key = await _key(store, Limits(max_budget=5.0), team_id="tight")
    scopes = [_scope(key), Scope.of(SCOPE_TEAM, team.team_id, team.rev, team.limits)]
    assert isinstance(await admission.reserve(scopes, to_nano(0.01), 0), Grant)
    refused = await admission.reserve(scopes, to_nano(0.01), 0)
    assert isinstance(refused, Refusal) and refused.reason == "budget"
    assert refused.scope.kind == SCOPE_TEAM
    # Only call "a" holds anything on the key: "b"'s key hold was given back.
    await admission.drain()
    assert (await _spend(store, key))["reserved"] == pytest.approx(0.01)


async def test_concurrent_reservations_never_overshoot(
        client: tuple[StoreClient, bool]) -> None:
    store_client, cluster = client
    store = IdentityStore(store_client, CLOCK)
    admission = Admission(store_client, CLOCK, cluster=cluster, hold_s=60)
    team = await store.create_team(Team(team_id="shared", limits=Limits(max_budget=0.25)))
    keys = [await _key(store, Limits(max_budget=0.10), team_id="shared") for _ in range(4)]

    async def attempt(index: int) -> bool:
        key = keys[index % 4]
        scopes = [_scope(key), Scope.of(SCOPE_TEAM, team.team_id, team.rev, team.limits)]
        result = await admission.reserve(scopes, to_nano(0.01), 0)
        return isinstance(result, Grant)

    granted = sum(await asyncio.gather(*(attempt(i) for i in range(200))))
    # Each key allows 10, the team 25. A single Redis admits exactly 25; a
    # cluster may refuse a few more under contention, but never admits more.
    if cluster:
        assert 10 <= granted <= 25
    else:
        assert granted == 25


class CountingClient:
    """The store client, counting script calls: how many round trips calls cost."""

    def __init__(self, inner: StoreClient) -> None:
        self.inner = inner
        self.scripts = 0

    async def execute(self, *args: object, key: object = None) -> object:
        return await self.inner.execute(*args, key=key)  # type: ignore[arg-type]

    async def run_script(self, script: object, keys: object, args: object) -> object:
        self.scripts += 1
        return await self.inner.run_script(script, keys, args)  # type: ignore[arg-type]


def _counted(client: tuple[StoreClient, bool], *, leasing: bool
             ) -> tuple[CountingClient, IdentityStore, Admission]:
    """An Admission whose script calls are counted, and the store beside it."""
    store_client, cluster = client
    counting = CountingClient(store_client)
    admission = Admission(counting, CLOCK, cluster=cluster, hold_s=60)  # type: ignore[arg-type]
    admission.set_leasing(leasing)
    return counting, IdentityStore(store_client, CLOCK), admission


async def _wait_for_lease(admission: Admission, scope: Scope) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while scope.ref not in admission._leases:
        assert asyncio.get_running_loop().time() < deadline, "no lease was taken"
        await asyncio.sleep(0.01)


async def test_far_from_its_limits_a_scope_is_served_from_a_lease_and_settles_exactly(
        client: tuple[StoreClient, bool]) -> None:
    store_client, _cluster = client
    counting, store, admission = _counted(client, leasing=True)
    key = await _key(store, Limits(max_budget=1000.0, rpm_limit=100_000, tpm_limit=10**8))
    scope = _scope(key)
    first = await admission.reserve([scope], to_nano(0.01), 20)
    assert isinstance(first, Grant) and not first.leases
    await _wait_for_lease(admission, scope)
    before = counting.scripts
    grants = [await admission.reserve([scope], to_nano(0.01), 20) for _ in range(200)]
    assert all(isinstance(g, Grant) for g in grants)
    assert counting.scripts - before <= 2  # 200 calls, no round trip each
    assert ("x-ratelimit-limit-requests", "100000") in grants[-1].headers
    # What a leased call reports left: what the window has counted (a lease's
    # calls as they are drawn), never more than the limit.
    left = dict(grants[-1].headers)
    requests_used = 100_000 - int(left["x-ratelimit-remaining-requests"])
    tokens_used = 10**8 - int(left["x-ratelimit-remaining-tokens"])
    assert 1 < requests_used and tokens_used == 20 * requests_used
    for grant in [first, *grants]:
        assert isinstance(grant, Grant)
        admission.settle_later(grant, model="m", cost_usd=0.005, prompt_tokens=10,
                               completion_tokens=10, counts_request=True, elapsed_s=0.1)
    await admission.drain()  # also gives back what remains of the lease
    counts = admission.counts.take()  # what /metrics is fed
    assert (counts.by_redis, counts.leased) == (1, 200) and counts.leases >= 1
    view = await _spend(store, key)
    assert view["spend"] == pytest.approx(201 * 0.005)
    assert view["reserved"] == 0.0 and view["in_flight"] == 0
    rpm = scope.keys.rpm
    assert int(await store_client.execute("HGET", rpm, "total", key=rpm)) == 201
    tpm = scope.keys.tpm
    assert int(await store_client.execute("HGET", tpm, "total", key=tpm)) == 201 * 20


async def test_a_busy_scope_renews_its_lease_before_it_runs_out_and_settles_exactly(
        client: tuple[StoreClient, bool]) -> None:
    """3,000 calls in a hurry: after the first, none waits for Redis (the next
    lease is asked for while the current one still has room, and sized to the
    rate), and what was spent, held and counted is exact afterwards."""
    store_client, _cluster = client
    counting, store, admission = _counted(client, leasing=True)
    key = await _key(store, Limits(max_budget=10_000.0, rpm_limit=1_000_000,
                                   tpm_limit=10**9))
    scope = _scope(key)
    first = await admission.reserve([scope], to_nano(0.01), 20)
    assert isinstance(first, Grant) and not first.leases
    await _wait_for_lease(admission, scope)
    before = counting.scripts
    grants = []
    for index in range(3000):
        grant = admission.from_leases([scope], to_nano(0.01), 20)
        assert grant is not None, f"call {index} found no room in a lease"
        grants.append(grant)
        if index % 50 == 49:
            await asyncio.sleep(0.005)  # a renewal's reply lands between calls
    # Without renewal a call would find the lease used up every 256 calls;
    # sized to the rate, far fewer leases serve them all.
    assert counting.scripts - before < 3000 // 256
    for grant in [first, *grants]:
        admission.settle_later(grant, model="m", cost_usd=0.005, prompt_tokens=10,
                               completion_tokens=10, counts_request=True, elapsed_s=0.1)
    await admission.drain()  # gives back what remains of the leases
    view = await _spend(store, key)
    assert view["spend"] == pytest.approx(3001 * 0.005)
    assert view["reserved"] == 0.0 and view["in_flight"] == 0
    rpm, tpm = scope.keys.rpm, scope.keys.tpm
    assert int(await store_client.execute("HGET", rpm, "total", key=rpm)) == 3001
    assert int(await store_client.execute("HGET", tpm, "total", key=tpm)) == 3001 * 20


async def test_settlements_travel_together_at_most_one_script_per_interval(
        client: tuple[StoreClient, bool]) -> None:
    counting, store, admission = _counted(client, leasing=False)
    key = await _key(store, Limits(max_budget=1000.0))
    grants = await asyncio.gather(*(admission.reserve([_scope(key)], to_nano(0.01), 0)
                                    for _ in range(600)))
    assert all(isinstance(g, Grant) for g in grants)
    loop = asyncio.get_running_loop()
    before, started = counting.scripts, loop.time()
    for index, grant in enumerate(grants):
        assert isinstance(grant, Grant)
        admission.settle_later(grant, model="m", cost_usd=0.002, prompt_tokens=1,
                               completion_tokens=1, counts_request=True, elapsed_s=0.01)
        if index % 10 == 9:
            await asyncio.sleep(0.001)  # a settle could go out at any of these
    await admission.drain()
    elapsed = loop.time() - started
    # One settle per SETTLE_INTERVAL_S at most (plus the one drain forces),
    # however many calls end meanwhile; per call it would be 600.
    assert counting.scripts - before <= elapsed / SETTLE_INTERVAL_S + 2
    view = await _spend(store, key)
    assert view["spend"] == pytest.approx(600 * 0.002)
    assert view["reserved"] == 0.0


async def test_a_quiet_worker_settles_each_call_on_its_own(
        client: tuple[StoreClient, bool]) -> None:
    """Calls a few ms apart are not held back for a batch: each one's spend is
    committed by its own settle, so the admin API shows it at once."""
    counting, store, admission = _counted(client, leasing=False)
    key = await _key(store, Limits(max_budget=1000.0))
    for count in range(1, 6):
        grant = await admission.reserve([_scope(key)], to_nano(0.01), 0)
        assert isinstance(grant, Grant)
        before = counting.scripts
        admission.settle_later(grant, model="m", cost_usd=0.001, prompt_tokens=1,
                               completion_tokens=1, counts_request=True, elapsed_s=0.01)
        deadline = asyncio.get_running_loop().time() + 10
        while (await _spend(store, key))["spend"] < count * 0.001 - 1e-9:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.001)
        assert counting.scripts - before == 1  # this call's settle, alone


async def test_near_a_limit_every_call_goes_to_redis(
        client: tuple[StoreClient, bool]) -> None:
    counting, store, admission = _counted(client, leasing=True)
    key = await _key(store, Limits(max_budget=1.0))
    for _ in range(5):
        assert isinstance(await admission.reserve([_scope(key)], to_nano(0.01), 0), Grant)
    assert counting.scripts == 5
    assert not admission._leases


async def test_a_revoked_lease_goes_back_and_the_next_call_asks_redis(
        client: tuple[StoreClient, bool]) -> None:
    counting, store, admission = _counted(client, leasing=True)
    key = await _key(store, Limits(max_budget=1000.0))
    scope = _scope(key)
    assert isinstance(await admission.reserve([scope], to_nano(0.01), 0), Grant)
    await _wait_for_lease(admission, scope)
    admission.revoke(scope.ref)
    before = counting.scripts
    assert isinstance(await admission.reserve([scope], to_nano(0.01), 0), Grant)
    assert counting.scripts > before
    admission.set_leasing(False)
    await admission.drain()
    view = await _spend(store, key)
    assert view["reserved"] == pytest.approx(0.02)  # the two calls, never settled


async def test_a_new_period_starts_at_zero_without_any_reset_job(
        client: tuple[StoreClient, bool]) -> None:
    store_client, cluster = client
    store = IdentityStore(store_client, CLOCK)
    admission = Admission(store_client, CLOCK, cluster=cluster, hold_s=60)
    key = await _key(store, Limits(max_budget=1.0, budget_period="daily"))
    # Yesterday's spend used the whole budget...
    st = _scope(key).keys.st
    await store_client.execute("HSET", st, "pid", "2000-01-01", "spend", to_nano(1.0), key=st)
    # ...and today it counts for nothing: the period id in the state differs.
    grant = await admission.reserve([_scope(key)], to_nano(0.5), 0)
    assert isinstance(grant, Grant)
    admission.settle_later(grant, model="m", cost_usd=0.25, prompt_tokens=1,
                           completion_tokens=1, counts_request=True, elapsed_s=0.1)
    await admission.drain()
    view = await _spend(store, key)
    assert view["spend"] == pytest.approx(0.25)
    assert view["period"] == CLOCK.day_id()

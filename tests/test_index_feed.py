"""Two nodes' shared indexes kept in step through one real Redis stream.

Each "node" is a SharedIndex segment with its own IndexFeed (its own
node_id); both talk to the same redis-server.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import numpy as np
import pytest
import redis.asyncio

from smartflow.embeddings.index_feed import IndexFeed, parse_stream_id
from smartflow.embeddings.shared_index import SharedIndex

DIM = 16
F16_TOLERANCE = 2e-3


def unit_rows(n: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def ids_of(hits: list[tuple[int, float]]) -> list[int]:
    return [entry_id for entry_id, _ in hits]


@pytest.fixture
def make_index() -> Iterator[Callable[[], SharedIndex]]:
    made: list[SharedIndex] = []

    def make() -> SharedIndex:
        index = SharedIndex.create(f"sf-idx-feed-{os.getpid()}-{uuid.uuid4().hex[:8]}",
                                   capacity=5000, dim=DIM)
        made.append(index)
        return index

    yield make
    for index in made:
        index.close()
        index.unlink()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    connection = redis.asyncio.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Poll ``predicate`` (generous deadline: the machine is loaded, the answer is not)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_an_entry_published_on_one_node_is_searchable_on_the_other(
        client: redis.asyncio.Redis, make_index: Callable[[], SharedIndex]) -> None:
    a, b = make_index(), make_index()
    feed_a = IndexFeed(client, a, node_id="node-a")
    feed_b = IndexFeed(client, b, node_id="node-b")
    v = unit_rows(2)

    await feed_a.publish("cache", 7, 1, v[0])

    # On the publishing node at once, before any consumer ran.
    assert ids_of(a.search("cache", v[0], group=7)) == [1]
    assert b.search("cache", v[0]) == []
    assert await feed_b.catch_up() == 1
    [(entry_id, score)] = b.search("cache", v[0], group=7)
    assert entry_id == 1 and score == pytest.approx(1.0, abs=F16_TOLERANCE)
    assert b.search("cache", v[0], group=8) == []
    # Node A's own consumer meets its own entry and adds nothing.
    assert await feed_a.catch_up() == 1
    assert a.stats()["rows"] == 1


async def test_the_running_consumer_applies_other_nodes_writes(
        client: redis.asyncio.Redis, make_index: Callable[[], SharedIndex]) -> None:
    a, b = make_index(), make_index()
    feed_a = IndexFeed(client, a, node_id="node-a")
    consumer = asyncio.create_task(IndexFeed(client, b, node_id="node-b").run(block_ms=100))
    try:
        v = unit_rows(20, seed=1)
        for entry_id in range(20):
            await feed_a.publish("store", 0, entry_id, v[entry_id])
        await wait_for(lambda: b.live_count("store") == 20)
        await feed_a.publish_removal("store", [3, 4])
        await wait_for(lambda: b.live_count("store") == 18)
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)

    assert set(ids_of(b.search("store", v[0], k=50))) == set(range(20)) - {3, 4}
    last_id = (await client.xrevrange("sf:idx:feed", count=1))[0][0]
    assert b.feed_position() == parse_stream_id(last_id)


async def test_removals_propagate(client: redis.asyncio.Redis,
                                  make_index: Callable[[], SharedIndex]) -> None:
    a, b = make_index(), make_index()
    feed_a = IndexFeed(client, a, node_id="node-a")
    feed_b = IndexFeed(client, b, node_id="node-b")
    v = unit_rows(6, seed=2)
    for entry_id in range(3):
        await feed_a.publish("x", 0, entry_id, v[entry_id])
        await feed_b.publish("y", 0, entry_id, v[entry_id + 3])
    await feed_a.catch_up()
    await feed_b.catch_up()
    assert a.live_count() == b.live_count() == 6

    await feed_a.publish_removal("x", [0])
    await feed_b.publish_removal("y", None)

    assert ids_of(a.search("x", v[0], k=5)) != [0] and a.live_count("x") == 2
    assert b.live_count("y") == 0
    await feed_a.catch_up()
    await feed_b.catch_up()
    for node in (a, b):
        assert node.live_count("x") == 2
        assert 0 not in ids_of(node.search("x", v[0], k=5))
        assert node.live_count("y") == 0


async def test_the_last_write_of_a_key_wins_on_every_node(
        client: redis.asyncio.Redis, make_index: Callable[[], SharedIndex]) -> None:
    a, b = make_index(), make_index()
    feed_a = IndexFeed(client, a, node_id="node-a")
    feed_b = IndexFeed(client, b, node_id="node-b")
    first, second = unit_rows(2, seed=3)
    await feed_b.publish("cache", 0, 9, first)
    await feed_a.publish("cache", 0, 9, second)     # later in the stream

    await feed_a.catch_up()
    await feed_b.catch_up()

    for node in (a, b):
        [(entry_id, score)] = node.search("cache", second, k=5)
        assert entry_id == 9 and score == pytest.approx(1.0, abs=F16_TOLERANCE)


async def test_a_fresh_segment_rebuilds_from_the_stream_including_its_own_nodes_entries(
        client: redis.asyncio.Redis, make_index: Callable[[], SharedIndex]) -> None:
    a, b = make_index(), make_index()
    feed_a = IndexFeed(client, a, node_id="node-a")
    feed_b = IndexFeed(client, b, node_id="node-b")
    v = unit_rows(40, seed=4)
    for entry_id in range(20):
        await feed_a.publish("docs", 0, entry_id, v[entry_id])
        await feed_b.publish("docs", 1, 100 + entry_id, v[20 + entry_id])
    await feed_a.publish_removal("docs", [5])

    # Node A restarts: a new supervisor, a new (empty) segment, same node id.
    restarted = make_index()
    assert restarted.feed_position() == (0, 0)
    read = await IndexFeed(client, restarted, node_id="node-a").catch_up()

    assert read == 41
    assert restarted.live_count("docs") == 39
    assert restarted.stats()["rows"] == 40      # one add, then its removal
    assert ids_of(restarted.search("docs", v[7], k=1)) == [7]
    assert ids_of(restarted.search("docs", v[25], k=1, group=1)) == [105]
    assert ids_of(restarted.search("docs", v[5], k=1)) != [5]


async def test_a_restarted_consumer_continues_after_the_recorded_id(
        client: redis.asyncio.Redis, make_index: Callable[[], SharedIndex]) -> None:
    a, b = make_index(), make_index()
    feed_a = IndexFeed(client, a, node_id="node-a")
    v = unit_rows(30, seed=5)
    for entry_id in range(20):
        await feed_a.publish("docs", 0, entry_id, v[entry_id])
    assert await IndexFeed(client, b, node_id="node-b").catch_up() == 20
    recorded = b.feed_position()
    assert recorded != (0, 0)

    # The worker running node B's consumer restarts: it attaches the
    # surviving segment and starts a new consumer.
    for entry_id in range(20, 30):
        await feed_a.publish("docs", 0, entry_id, v[entry_id])
    attached = SharedIndex.attach(b.name)
    try:
        assert attached.feed_position() == recorded
        assert await IndexFeed(client, attached, node_id="node-b").catch_up() == 10
        assert attached.stats()["rows"] == 30
        assert attached.live_count("docs") == 30
    finally:
        attached.close()


async def test_the_consumer_survives_redis_going_away(
        redis_server_factory: Callable[..., Any],
        make_index: Callable[[], SharedIndex]) -> None:
    server = redis_server_factory()
    a, b = make_index(), make_index()
    publisher = redis.asyncio.Redis.from_url(server.url)
    consumer_client = redis.asyncio.Redis.from_url(server.url)
    consumer = asyncio.create_task(
        IndexFeed(consumer_client, b, node_id="node-b").run(block_ms=100))
    try:
        feed_a = IndexFeed(publisher, a, node_id="node-a")
        v = unit_rows(2, seed=6)
        await feed_a.publish("docs", 0, 1, v[0])
        await wait_for(lambda: b.live_count("docs") == 1)

        server.stop()
        await asyncio.sleep(0.5)            # the consumer meets the error and backs off
        assert not consumer.done()
        server.start()

        await feed_a.publish("docs", 0, 2, v[1])
        await wait_for(lambda: b.live_count("docs") == 2)
        assert not consumer.done()
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        await publisher.aclose()
        await consumer_client.aclose()


async def test_a_malformed_entry_is_skipped_not_fatal(
        client: redis.asyncio.Redis, make_index: Callable[[], SharedIndex]) -> None:
    a, b = make_index(), make_index()
    await client.xadd("sf:idx:feed", {"op": "add", "ns": "docs", "g": 0, "id": 1,
                                      "v": b"\x00\x01\x02", "node": "node-x"})
    await client.xadd("sf:idx:feed", {"op": "bogus", "ns": "docs", "node": "node-x"})
    await IndexFeed(client, a, node_id="node-a").publish("docs", 0, 2, unit_rows(1)[0])

    assert await IndexFeed(client, b, node_id="node-b").catch_up() == 3
    assert ids_of(b.search("docs", unit_rows(1)[0], k=5)) == [2]


async def test_a_client_that_decodes_responses_is_refused(
        redis_url: str, make_index: Callable[[], SharedIndex]) -> None:
    text_client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        with pytest.raises(ValueError):
            IndexFeed(text_client, make_index(), node_id="node-a")
    finally:
        await text_client.aclose()

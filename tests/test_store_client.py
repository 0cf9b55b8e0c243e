"""The fast Redis client: the RESP codec alone, then against real servers.

Single-server tests use the session redis-server (`redis_url`) or a private
one when they stop, pause or reconfigure it; cluster tests use a real
three-master cluster (`redis_cluster_url`). Time limits are deadlines far
beyond what a healthy run needs: they tell "fails fast" from "waits for a
timeout", never race the machine.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import shutil
import signal
import string
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop
from harness.loop_guard import LoopExceptionRecorder
from harness.ports import free_port
from harness.redis_cluster import RedisCluster
from harness.redis_server import RedisServer, redis_command
from harness.waiting import wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smartflow.store.fast_client import (
    ClusterRedisClient,
    Script,
    SingleRedisClient,
    StoreClient,
    StoreUnavailable,
    create_store_client,
    key_slot,
)
from smartflow.store.resp import (
    INCOMPLETE,
    ProtocolError,
    ReplyError,
    RespParser,
    encode_command,
    is_ask,
    is_moved,
    is_noscript,
)

# "Fails fast" means well under the client's timeout, which these tests set high.
FAST_S = 5.0
SLOW_TIMEOUT_S = 15.0


def _drain(parser: RespParser) -> list[Any]:
    replies = []
    while (reply := parser.next_reply()) is not INCOMPLETE:
        replies.append(reply)
    return replies


def _normalise(reply: Any) -> Any:
    """Replies with ReplyError instances made comparable (exceptions compare by identity)."""
    if isinstance(reply, ReplyError):
        return ("error", reply.message)
    if isinstance(reply, list):
        return [_normalise(item) for item in reply]
    return reply


def _serialise(reply: Any) -> bytes:
    """The RESP2 bytes for a reply as the parser returns it (test oracle)."""
    if reply is None:
        return b"$-1\r\n"
    if isinstance(reply, tuple):  # ("error", message)
        return b"-" + reply[1].encode() + b"\r\n"
    if isinstance(reply, str):
        return b"+" + reply.encode() + b"\r\n"
    if isinstance(reply, int):
        return b":%d\r\n" % reply
    if isinstance(reply, bytes):
        return b"$%d\r\n%s\r\n" % (len(reply), reply)
    return b"*%d\r\n" % len(reply) + b"".join(_serialise(item) for item in reply)


# A stream with every reply type, nesting, and the awkward cases: CRLF inside
# a bulk string, empty bulk, null bulk and null array, negative integers.
EVERY_TYPE_STREAM = (
    b"+OK\r\n"
    b"-ERR unknown command 'FOO'\r\n"
    b":42\r\n"
    b":-7\r\n"
    b"$5\r\nhello\r\n"
    b"$0\r\n\r\n"
    b"$-1\r\n"
    b"$4\r\na\r\nb\r\n"
    b"*-1\r\n"
    b"*0\r\n"
    b"*3\r\n:1\r\n*2\r\n$1\r\nx\r\n*0\r\n-WRONGTYPE nope\r\n"
    b"*2\r\n*1\r\n*1\r\n$-1\r\n+\r\n"
)
EVERY_TYPE_REPLIES = [
    "OK",
    ("error", "ERR unknown command 'FOO'"),
    42,
    -7,
    b"hello",
    b"",
    None,
    b"a\r\nb",
    None,
    [],
    [1, [b"x", []], ("error", "WRONGTYPE nope")],
    [[[None]], ""],
]


# -- RESP codec ----------------------------------------------------------------------

def test_encode_command_sends_every_argument_as_a_bulk_string() -> None:
    assert encode_command("SET", b"k\x00", "é", 12, -3, 1.5) == (
        b"*6\r\n$3\r\nSET\r\n$2\r\nk\x00\r\n$2\r\n\xc3\xa9\r\n"
        b"$2\r\n12\r\n$2\r\n-3\r\n$3\r\n1.5\r\n"
    )
    assert encode_command() == b"*0\r\n"


@pytest.mark.parametrize("bad", [None, True, [1], {"a": 1}, object()])
def test_encode_command_refuses_other_types(bad: object) -> None:
    with pytest.raises(TypeError):
        encode_command("SET", "k", bad)  # type: ignore[arg-type]


def test_encoded_command_parses_back_to_its_arguments() -> None:
    parser = RespParser()
    args = ["EVALSHA", b"\r\n\x00\xff", "", 0, 10**20, -1.25]
    parser.feed(encode_command(*args))
    assert parser.next_reply() == [b"EVALSHA", b"\r\n\x00\xff", b"", b"0", b"1" + b"0" * 20,
                                   b"-1.25"]
    assert parser.next_reply() is INCOMPLETE


def test_parser_decodes_every_reply_type() -> None:
    parser = RespParser()
    parser.feed(EVERY_TYPE_STREAM)
    replies = _drain(parser)
    assert [_normalise(reply) for reply in replies] == EVERY_TYPE_REPLIES
    errors = [reply for reply in replies if isinstance(reply, ReplyError)]
    assert errors[0].message == "ERR unknown command 'FOO'"
    assert errors[0].kind == "ERR"


def test_parser_gives_the_same_replies_for_every_split_point() -> None:
    stream = EVERY_TYPE_STREAM
    for cut in range(len(stream) + 1):
        parser = RespParser()
        parser.feed(stream[:cut])
        got = _drain(parser)
        parser.feed(stream[cut:])
        got += _drain(parser)
        assert [_normalise(reply) for reply in got] == EVERY_TYPE_REPLIES, f"cut at {cut}"


def test_parser_fed_byte_by_byte_returns_each_reply_once_complete() -> None:
    parser = RespParser()
    got: list[Any] = []
    for index in range(len(EVERY_TYPE_STREAM)):
        parser.feed(EVERY_TYPE_STREAM[index:index + 1])
        got += _drain(parser)
    assert [_normalise(reply) for reply in got] == EVERY_TYPE_REPLIES


def test_partial_bulk_string_and_nested_array_wait_for_their_last_byte() -> None:
    parser = RespParser()
    parser.feed(b"$5\r\nhel")
    assert parser.next_reply() is INCOMPLETE
    parser.feed(b"lo\r")
    assert parser.next_reply() is INCOMPLETE  # body complete, CRLF not yet
    parser.feed(b"\n*2\r\n*2\r\n:1\r\n")
    assert parser.next_reply() == b"hello"
    assert parser.next_reply() is INCOMPLETE
    parser.feed(b":2\r\n")
    assert parser.next_reply() is INCOMPLETE
    parser.feed(b"$1\r\nz\r\n")
    assert parser.next_reply() == [[1, 2], b"z"]
    assert parser.next_reply() is INCOMPLETE


def test_parser_handles_a_large_reply_in_many_small_chunks() -> None:
    items = [b"%d" % i * (i % 7) for i in range(20_000)]
    stream = _serialise(items) + b"+after\r\n"
    parser = RespParser()
    got: list[Any] = []
    for start in range(0, len(stream), 1000):
        parser.feed(stream[start:start + 1000])
        got += _drain(parser)
    assert got == [items, "after"]


def test_parser_rejects_bytes_that_are_not_resp2() -> None:
    parser = RespParser()
    parser.feed(b"%1\r\n")  # a RESP3 map
    with pytest.raises(ProtocolError):
        parser.next_reply()
    parser = RespParser()
    parser.feed(b":12x\r\n")
    with pytest.raises(ProtocolError):
        parser.next_reply()


_reply_trees = st.recursive(
    st.none()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.binary(max_size=40)
    | st.text(alphabet=string.ascii_letters + " :-", max_size=20).map(
        lambda text: ("error", "ERR " + text)
    )
    | st.text(alphabet=string.ascii_letters + " ", max_size=20),
    lambda children: st.lists(children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    replies=st.lists(_reply_trees, min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
)
def test_parser_round_trips_random_replies_at_random_splits(
    replies: list[Any], cuts: list[int]
) -> None:
    stream = b"".join(_serialise(reply) for reply in replies)
    points = sorted({cut % (len(stream) + 1) for cut in cuts} | {0, len(stream)})
    parser = RespParser()
    got: list[Any] = []
    for start, end in itertools.pairwise(points):
        parser.feed(stream[start:end])
        got += _drain(parser)
    assert [_normalise(reply) for reply in got] == replies


def test_redirect_and_noscript_errors_are_recognised() -> None:
    assert is_moved(ReplyError("MOVED 3999 127.0.0.1:6381")) == (3999, "127.0.0.1", 6381)
    assert is_moved(ReplyError("MOVED 12 ::1:7000")) == (12, "::1", 7000)
    assert is_moved(ReplyError("MOVED 12 :7000")) == (12, "", 7000)
    assert is_moved(ReplyError("ASK 3999 127.0.0.1:6381")) is None
    assert is_ask(ReplyError("ASK 3999 127.0.0.1:6381")) == (3999, "127.0.0.1", 6381)
    assert is_ask(ReplyError("ERR ASK me anything")) is None
    assert is_moved(ValueError("MOVED 1 a:1")) is None
    assert is_noscript(ReplyError("NOSCRIPT No matching script. Please use EVAL."))
    assert not is_noscript(ReplyError("ERR NOSCRIPT"))


def test_key_slot_follows_the_hash_tag_rules_of_the_cluster_spec() -> None:
    assert key_slot("123456789") == 0x31C3 % 16384  # the spec's CRC16 check value
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers")
    assert key_slot("{user1000}.following") == key_slot("user1000")
    assert key_slot("foo{}{bar}") == key_slot(b"foo{}{bar}")  # empty tag: whole key
    assert key_slot("foo{{bar}}zap") == key_slot("{bar")
    assert key_slot("foo{bar}{zap}") == key_slot("bar")
    assert key_slot("é") == key_slot("é".encode())


# -- single server -------------------------------------------------------------------

@pytest.fixture
async def single(redis_url: str, loop_guard: LoopExceptionRecorder) -> AsyncIterator[StoreClient]:
    client = create_store_client(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


def _script(body: str) -> Script:
    # A comment unique to the test run: the session server's script cache
    # outlives FLUSHALL, and the first call must really miss it.
    return Script(f"-- {uuid.uuid4()}\n{body}")


async def test_single_basic_commands(single: StoreClient) -> None:
    assert isinstance(single, SingleRedisClient)
    assert await single.execute("SET", "k", "v") == "OK"
    assert await single.execute("GET", "k") == b"v"
    assert await single.execute("GET", "missing") is None
    assert await single.execute("INCRBY", "n", 5) == 5
    assert await single.execute("INCRBYFLOAT", "f", 1.5) == b"1.5"
    assert await single.execute("RPUSH", "l", "a", b"b", 3) == 3
    assert await single.execute("LRANGE", "l", 0, -1) == [b"a", b"b", b"3"]
    assert await single.execute("HGETALL", "nothing") == []
    assert await single.execute("PING", key="ignored") == "PONG"


async def test_single_run_script_falls_back_to_eval_once(single: StoreClient) -> None:
    script = _script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    sent: list[str] = []
    real_execute = single.execute

    async def spy(*args: Any, key: str | bytes | None = None) -> Any:
        sent.append(args[0])
        return await real_execute(*args, key=key)

    single.execute = spy  # type: ignore[method-assign]
    assert await single.run_script(script, ["counter"], [3]) == 3
    assert sent == ["EVALSHA", "EVAL"]
    sent.clear()
    assert await single.run_script(script, ["counter"], [4]) == 7
    assert sent == ["EVALSHA"]
    assert await real_execute("SCRIPT", "EXISTS", script.sha) == [1]


async def test_single_script_errors_are_reply_errors(single: StoreClient) -> None:
    script = _script("return redis.error_reply('BUDGET exceeded')")
    with pytest.raises(ReplyError) as caught:
        await single.run_script(script, ["k"], [])
    assert caught.value.message == "BUDGET exceeded"
    assert await single.execute("PING") == "PONG"


async def test_single_concurrent_commands_share_one_connection(single: StoreClient) -> None:
    ids = await asyncio.gather(*[single.execute("CLIENT", "ID") for _ in range(50)])
    assert len(set(ids)) == 1
    values = await asyncio.gather(*[single.execute("INCR", "counter") for _ in range(2000)])
    assert sorted(values) == list(range(1, 2001))
    assert await single.execute("GET", "counter") == b"2000"


async def test_single_error_reply_does_not_desynchronise_later_commands(
    single: StoreClient,
) -> None:
    await single.execute("SET", "s", "v")
    with pytest.raises(ReplyError) as caught:
        await single.execute("LPUSH", "s", "x")
    assert caught.value.kind == "WRONGTYPE"
    results = await asyncio.gather(
        *[single.execute("LPUSH", "s", "x") if i % 2 else single.execute("GET", "s")
          for i in range(200)],
        return_exceptions=True,
    )
    for i, result in enumerate(results):
        if i % 2:
            assert isinstance(result, ReplyError) and result.kind == "WRONGTYPE"
        else:
            assert result == b"v"


async def _flushed() -> None:
    """Let the client's write callback (scheduled with call_soon) run."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_single_cancelled_caller_does_not_shift_replies(
    redis_url: str, loop_guard: LoopExceptionRecorder
) -> None:
    client = create_store_client(redis_url, timeout_s=SLOW_TIMEOUT_S)
    try:
        # BLPOP holds the connection's next reply back for a second; its
        # caller gives up meanwhile, and that reply must be dropped, not
        # handed to the next caller in line.
        blocked = asyncio.create_task(client.execute("BLPOP", "empty-list", 1))
        await _flushed()
        blocked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocked
        assert await client.execute("SET", "after", "1") == "OK"
        assert await client.execute("GET", "after") == b"1"
    finally:
        await client.aclose()


async def test_single_selects_the_database_in_the_url(
    redis_url: str, loop_guard: LoopExceptionRecorder
) -> None:
    base = redis_url.rsplit("/", 1)[0]
    db3 = create_store_client(f"{base}/3")
    db0 = create_store_client(f"{base}/0")
    try:
        await db3.execute("FLUSHDB")
        assert await db3.execute("SET", "where", "three") == "OK"
        assert await db0.execute("GET", "where") is None
        assert await db3.execute("GET", "where") == b"three"
    finally:
        await db3.execute("FLUSHDB")
        await db3.aclose()
        await db0.aclose()


async def test_single_authenticates_with_the_url_credentials(
    redis_server_factory: Callable[..., RedisServer], loop_guard: LoopExceptionRecorder
) -> None:
    server = redis_server_factory()
    # Set at run time: the harness checks a server is up with an unauthenticated PING.
    assert redis_command(server.port, "ACL", "SETUSER", "app", "on", ">p@ss", "~*", "+@all") \
        == b"+OK"
    assert redis_command(server.port, "CONFIG", "SET", "requirepass", "s3cr:t") == b"+OK"
    address = f"127.0.0.1:{server.port}"
    good = create_store_client(f"redis://:s3cr%3At@{address}/0")
    named = create_store_client(f"redis://app:p%40ss@{address}/2")
    wrong = create_store_client(f"redis://:nope@{address}/0")
    anonymous = create_store_client(f"redis://{address}/0")
    try:
        assert await good.execute("SET", "k", "v") == "OK"
        assert await named.execute("GET", "k") is None  # db 2
        assert await named.execute("ACL", "WHOAMI") == b"app"
        with pytest.raises(StoreUnavailable) as caught:
            await wrong.execute("PING")
        assert address in str(caught.value) and "WRONGPASS" in str(caught.value)
        assert "nope" not in str(caught.value)
        with pytest.raises(ReplyError) as refused:
            await anonymous.execute("GET", "k")
        assert refused.value.kind == "NOAUTH"
    finally:
        for client in (good, named, wrong, anonymous):
            await client.aclose()


async def test_single_connects_over_a_unix_socket(
    redis_server_factory: Callable[..., RedisServer], loop_guard: LoopExceptionRecorder
) -> None:
    # A short dir of our own: unix socket paths are limited to ~107 bytes.
    directory = Path(tempfile.mkdtemp(prefix="sf-sock-"))
    try:
        socket_path = directory / "redis.sock"
        redis_server_factory(
            extra_args=("--unixsocket", str(socket_path), "--unixsocketperm", "700")
        )
        client = create_store_client(f"unix://{socket_path}?db=1")
        try:
            assert await client.execute("SET", "k", "v") == "OK"
            assert await client.execute("CLIENT", "INFO") is not None
            assert await client.execute("GET", "k") == b"v"
        finally:
            await client.aclose()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def test_single_fails_fast_while_the_server_is_down_then_recovers(
    redis_server_factory: Callable[..., RedisServer], loop_guard: LoopExceptionRecorder
) -> None:
    server = redis_server_factory()
    # A long command timeout: a failure that comes fast proves it did not wait for one.
    client = create_store_client(server.url, timeout_s=SLOW_TIMEOUT_S)
    try:
        assert await client.execute("SET", "k", "v") == "OK"
        server.stop()

        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            await client.execute("GET", "k")  # the old connection is dead
        assert f"127.0.0.1:{server.port}" in str(caught.value)
        # Every concurrent caller shares one failed connect attempt and fails.
        results = await asyncio.gather(
            *[client.execute("PING") for _ in range(20)], return_exceptions=True
        )
        assert all(isinstance(result, StoreUnavailable) for result in results), results
        assert f"127.0.0.1:{server.port}" in str(results[0])
        assert time.monotonic() - started < FAST_S

        server.start()
        assert await client.execute("PING") == "PONG"
        assert await client.execute("SET", "k", "again") == "OK"
        assert await client.execute("GET", "k") == b"again"
    finally:
        await client.aclose()


async def test_single_connect_to_a_closed_port_raises_store_unavailable(
    loop_guard: LoopExceptionRecorder,
) -> None:
    port = free_port()
    client = create_store_client(f"redis://127.0.0.1:{port}/0")
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await client.execute("PING")
        assert f"127.0.0.1:{port}" in str(caught.value)
    finally:
        await client.aclose()


async def _until_answers(client: StoreClient, deadline_s: float = 20.0) -> None:
    """Retry PING until it succeeds (the server is pausing or restarting)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            if await client.execute("PING") == "PONG":
                return
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


async def test_single_times_out_while_the_server_is_frozen_then_recovers(
    redis_server_factory: Callable[..., RedisServer], loop_guard: LoopExceptionRecorder
) -> None:
    server = redis_server_factory()
    assert server.pid is not None
    client = create_store_client(server.url, timeout_s=0.3)
    try:
        assert await client.execute("SET", "k", "v") == "OK"
        # A stopped process still has its connections accepted by the
        # kernel but answers nothing, for exactly as long as the test wants
        # (CLIENT PAUSE or DEBUG SLEEP would end on their own clock).
        os.kill(server.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            results = await asyncio.gather(
                *[client.execute("GET", "k") for _ in range(10)], return_exceptions=True
            )
            assert all(isinstance(result, StoreUnavailable) for result in results), results
            assert "did not answer within 0.3 s" in str(results[0])
            assert f"127.0.0.1:{server.port}" in str(results[0])
            # Reconnecting works (the kernel accepts), the command times out again.
            with pytest.raises(StoreUnavailable):
                await client.execute("GET", "k")
            assert time.monotonic() - started < FAST_S
        finally:
            os.kill(server.pid, signal.SIGCONT)

        await _until_answers(client)
        # The late replies went down with the old connections: nothing is shifted.
        assert await client.execute("SET", "k", "after") == "OK"
        assert await client.execute("GET", "k") == b"after"
        assert await asyncio.gather(*[client.execute("INCR", "n") for _ in range(100)]) == list(
            range(1, 101)
        )
    finally:
        await client.aclose()


async def test_single_aclose_fails_pending_and_later_commands(
    redis_url: str, loop_guard: LoopExceptionRecorder
) -> None:
    client = create_store_client(redis_url)
    assert await client.execute("PING") == "PONG"
    pending = asyncio.ensure_future(client.execute("BLPOP", "empty-list", 5))
    await _flushed()
    await client.aclose()
    with pytest.raises(StoreUnavailable):
        await pending
    with pytest.raises(StoreUnavailable):
        await client.execute("PING")


def test_single_client_works_on_uvloop_and_across_loops(redis_url: str) -> None:
    client = create_store_client(redis_url)
    assert isinstance(client, SingleRedisClient)
    script = _script("return redis.call('INCR', KEYS[1])")

    async def work() -> list[Any]:
        values = await asyncio.gather(*[client.execute("INCR", "n") for _ in range(500)])
        return [len(set(values)), await client.run_script(script, ["s"], [])]

    async def let_server_hang_up() -> None:
        # QUIT makes the server close the connection, so the loop that owns
        # it can close without leaving a transport behind.
        assert await client.execute("QUIT") == "OK"
        await wait_until(lambda: not client._has_connection(), what="connection closed")

    # One client, used by one loop and then another: each loop gets its own
    # connection (an asyncio transport cannot move between loops).
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(work()) == [500, 1]
        runner.run(let_server_hang_up())
        assert runner.run(work()) == [500, 2]  # reconnected after the server hung up
        runner.run(let_server_hang_up())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(work()) == [500, 3]
        runner.run(client.aclose())


def test_create_store_client_does_no_io_and_checks_the_url() -> None:
    # Nothing listens there, and nothing needs to: construction is offline.
    port = free_port()
    assert isinstance(create_store_client(f"redis://127.0.0.1:{port}"), SingleRedisClient)
    assert isinstance(
        create_store_client(f"redis://127.0.0.1:{port}", cluster=True), ClusterRedisClient
    )
    assert isinstance(create_store_client(f"rediss://127.0.0.1:{port}/1"), SingleRedisClient)
    with pytest.raises(ValueError):
        create_store_client(f"http://127.0.0.1:{port}")
    with pytest.raises(ValueError):
        create_store_client(f"redis://127.0.0.1:{port}/2", cluster=True)


def test_script_sha_is_computed_locally() -> None:
    script = Script("return 1")
    assert script.source == "return 1"
    assert script.sha == "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"


# -- cluster -------------------------------------------------------------------------

@pytest.fixture
async def cluster(
    redis_cluster_url: str, loop_guard: LoopExceptionRecorder
) -> AsyncIterator[ClusterRedisClient]:
    client = create_store_client(redis_cluster_url, cluster=True)
    assert isinstance(client, ClusterRedisClient)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def node_clients(redis_cluster: RedisCluster) -> AsyncIterator[dict[int, StoreClient]]:
    """A plain single-server client per cluster node, by port, for looking behind the client."""
    clients = {
        port: create_store_client(f"redis://127.0.0.1:{port}") for port in redis_cluster.ports
    }
    try:
        yield clients
    finally:
        for client in clients.values():
            await client.aclose()


def _owner_port(client: ClusterRedisClient, key: str) -> int:
    slots = client._slots
    assert slots is not None
    node = slots[key_slot(key)]
    assert node is not None
    return node.port


async def test_cluster_key_slot_matches_cluster_keyslot(
    node_clients: dict[int, StoreClient],
) -> None:
    rng = random.Random(1234)
    alphabet = string.ascii_letters + string.digits + "{}:._-"
    keys = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20))) for _ in range(300)]
    keys += ["{}", "{", "}", "{}{a}", "a{b}c{d}", "{{}}", "é{ü}", "{é}"]
    node = next(iter(node_clients.values()))
    expected = await asyncio.gather(*[node.execute("CLUSTER", "KEYSLOT", key) for key in keys])
    assert [key_slot(key) for key in keys] == expected


async def test_cluster_scripts_on_many_slots_all_land(
    cluster: ClusterRedisClient, node_clients: dict[int, StoreClient]
) -> None:
    script = _script(
        "redis.call('SET', KEYS[2], ARGV[2]); return redis.call('INCRBY', KEYS[1], ARGV[1])"
    )
    tags = [f"tag{i}" for i in range(200)]
    results = await asyncio.gather(
        *[cluster.run_script(script, [f"{{{tag}}}x", f"{{{tag}}}y"], [7, tag]) for tag in tags]
    )
    assert results == [7] * len(tags)
    assert await asyncio.gather(
        *[cluster.execute("GET", f"{{{tag}}}y", key=f"{{{tag}}}y") for tag in tags]
    ) == [tag.encode() for tag in tags]
    # The keys really are spread over the three masters, each holding its own.
    sizes = await asyncio.gather(*[node.execute("DBSIZE") for node in node_clients.values()])
    assert sum(sizes) == 2 * len(tags)
    assert all(size > 0 for size in sizes), sizes


async def test_cluster_concurrent_increments_across_tagged_keys(
    cluster: ClusterRedisClient,
) -> None:
    keys = [f"{{user{i}}}:hits" for i in range(50)]
    calls = [keys[i % 50] for i in range(2000)]
    values = await asyncio.gather(*[cluster.execute("INCR", key, key=key) for key in calls])
    by_key: dict[str, list[int]] = {}
    for key, value in zip(calls, values, strict=True):
        by_key.setdefault(key, []).append(value)
    assert all(sorted(seen) == list(range(1, 41)) for seen in by_key.values())
    assert await asyncio.gather(*[cluster.execute("GET", key, key=key) for key in keys]) == [
        b"40"
    ] * 50


async def test_cluster_keyless_command_and_errors(cluster: ClusterRedisClient) -> None:
    assert await cluster.execute("PING") == "PONG"
    assert await cluster.execute("SET", "{e}s", "v", key="{e}s") == "OK"
    with pytest.raises(ReplyError) as caught:
        await cluster.execute("LPUSH", "{e}s", "x", key="{e}s")
    assert caught.value.kind == "WRONGTYPE"
    with pytest.raises(ReplyError):  # keys in different slots
        await cluster.run_script(_script("return 1"), ["{a}1", "{b}2"], [])
    assert await cluster.execute("GET", "{e}s", key="{e}s") == b"v"


async def test_cluster_follows_moved_when_its_slot_map_is_stale(
    cluster: ClusterRedisClient,
) -> None:
    key = "{moved}k"
    assert await cluster.execute("SET", key, "v", key=key) == "OK"
    slots = cluster._slots
    assert slots is not None
    slot = key_slot(key)
    right = slots[slot]
    wrong = next(node for node in cluster._masters if node is not right)
    slots[slot] = wrong
    assert await cluster.execute("GET", key, key=key) == b"v"
    assert cluster._slots is not None and cluster._slots[slot] is right
    slots = cluster._slots
    slots[slot] = wrong
    assert await cluster.execute("SET", key, "w", key=key) == "OK"
    assert await cluster.execute("GET", key, key=key) == b"w"


async def test_cluster_retries_after_refreshing_when_a_node_is_unreachable(
    cluster: ClusterRedisClient,
) -> None:
    key = "{gone}k"
    assert await cluster.execute("SET", key, "v", key=key) == "OK"
    slots = cluster._slots
    assert slots is not None
    slots[key_slot(key)] = cluster._node("127.0.0.1", free_port())
    assert await cluster.execute("GET", key, key=key) == b"v"


async def test_cluster_follows_ask_then_moved_during_a_slot_migration(
    cluster: ClusterRedisClient, node_clients: dict[int, StoreClient]
) -> None:
    old_key, new_key = "{migrating}old", "{migrating}new"
    assert await cluster.execute("SET", old_key, "1", key=old_key) == "OK"
    slot = key_slot(old_key)
    source_port = _owner_port(cluster, old_key)
    target_port = next(port for port in node_clients if port != source_port)
    source, target = node_clients[source_port], node_clients[target_port]
    ids = {port: (await node.execute("CLUSTER", "MYID")).decode()
           for port, node in node_clients.items()}
    finished = False
    try:
        assert await target.execute(
            "CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source_port]) == "OK"
        assert await source.execute(
            "CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target_port]) == "OK"

        # A key the source does not hold: the source answers ASK, the client
        # sends ASKING + the command to the target, and the map is unchanged.
        assert await cluster.execute("SET", new_key, "2", key=new_key) == "OK"
        assert await cluster.execute("GET", new_key, key=new_key) == b"2"
        assert await cluster.execute("GET", old_key, key=old_key) == b"1"  # still on source
        assert await target.execute("CLUSTER", "COUNTKEYSINSLOT", slot) == 1
        assert _owner_port(cluster, new_key) == source_port

        # Finish the migration; the source then answers MOVED.
        assert await source.execute(
            "MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", old_key) == "OK"
        # The importing node first, then the source, then the rest (the spec's order).
        others = [port for port in node_clients if port not in (source_port, target_port)]
        for port in (target_port, source_port, *others):
            await node_clients[port].execute("CLUSTER", "SETSLOT", slot, "NODE", ids[target_port])
        finished = True
        assert await cluster.execute("GET", old_key, key=old_key) == b"1"
        assert await cluster.execute("GET", new_key, key=new_key) == b"2"
        assert _owner_port(cluster, old_key) == target_port
    finally:
        if not finished:
            for node in (source, target):
                await node.execute("CLUSTER", "SETSLOT", slot, "STABLE")


async def test_cluster_client_on_a_plain_server_says_why(
    redis_url: str, loop_guard: LoopExceptionRecorder
) -> None:
    client = create_store_client(redis_url.rsplit("/", 1)[0], cluster=True)
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await client.execute("PING")
        assert "cluster support disabled" in str(caught.value)
    finally:
        await client.aclose()

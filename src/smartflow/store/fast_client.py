"""A small pipelining Redis client for the gateway's hot path.

Every proxied request makes one or two Redis calls (virtual-key auth, budget
reservation, rate limits). redis-py's asyncio client spends ~46 µs of CPU
per call, mostly on connection-pool bookkeeping and per-call socket writes;
this client spends ~9 µs: one connection per event loop, every command
issued in the same loop iteration leaves in one `transport.write`, and
replies are matched to callers first in, first out.

Failure model, shared by both clients:

* `ReplyError`: Redis answered with an error; the connection is fine.
* `StoreUnavailable`: no answer. The connection could not be made, dropped,
  or a reply was late (`timeout_s`); a late reply would desynchronise the
  FIFO matching, so the connection is closed and the next command opens a
  new one. A command that was written before the failure may or may not
  have run.

Nothing here does I/O before the first command, so a gateway can build its
client while Redis is still starting.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import ssl
from binascii import crc_hqx
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, cast
from urllib.parse import parse_qs, unquote, urlsplit

from .resp import (
    INCOMPLETE,
    ProtocolError,
    ReplyError,
    RespParser,
    encode_command,
    is_ask,
    is_moved,
    is_noscript,
)

__all__ = [
    "CLUSTER_SLOTS",
    "ClusterRedisClient",
    "ReplyError",
    "Script",
    "SingleRedisClient",
    "StoreClient",
    "StoreUnavailable",
    "create_store_client",
    "key_slot",
]

DEFAULT_TIMEOUT_S: Final = 2.0
DEFAULT_CONNECT_TIMEOUT_S: Final = 1.0
CLUSTER_SLOTS: Final = 16384
MAX_REDIRECTS: Final = 3
DEFAULT_PORT: Final = 6379

# A timer that fires after a stall may run before the loop has read the
# replies that arrived meanwhile (libuv runs timers before polling I/O), so
# an expired deadline gets this much grace, one more turn of the loop, before
# the connection is declared dead.
_TIMEOUT_GRACE_S: Final = 0.005
_TRYAGAIN_PAUSE_S: Final = 0.05
_ASKING: Final = encode_command("ASKING")


class StoreUnavailable(ConnectionError):
    """Redis could not be reached, the connection dropped, or a reply did not come in time."""


class _ConnectFailed(StoreUnavailable):
    """No connection could be made: the command was never sent, so retrying it is safe."""


class Script:
    """A Lua script, run by its SHA1 so the source crosses the wire only once per server."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __repr__(self) -> str:
        return f"Script(sha={self.sha!r})"


def key_slot(key: str | bytes) -> int:
    """The Redis Cluster hash slot of `key` (CRC16/XMODEM of its hash tag, mod 16384).

    Only the part between the first `{` and the first `}` after it is hashed,
    when that part is not empty; this is how the callers put all keys of one
    script in one slot.
    """
    data = key.encode() if isinstance(key, str) else key
    start = data.find(b"{")
    if start != -1:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1:end]
    # binascii.crc_hqx is CRC-16/CCITT with a caller-chosen initial value;
    # from 0 it is exactly the XMODEM variant the cluster uses, in C.
    return crc_hqx(data, 0) & (CLUSTER_SLOTS - 1)


class StoreClient(abc.ABC):
    """What the gateway needs from Redis: commands, scripts, and a clean shutdown."""

    @abc.abstractmethod
    async def execute(self, *args: Any, key: str | bytes | None = None) -> Any:
        """Send one command and return its reply.

        `key` routes the command in cluster mode (ignored by a single
        server). ReplyError for an error reply, StoreUnavailable when Redis
        did not answer.
        """

    async def run_script(
        self, script: Script, keys: Sequence[str | bytes], args: Sequence[Any]
    ) -> Any:
        """EVALSHA `script`; if the server does not have it cached, EVAL it once (caching it).

        All keys must hash to one slot in cluster mode (use hash tags):
        the command is routed by `keys[0]`.
        """
        route = keys[0] if keys else None
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args, key=route)
        except ReplyError as err:
            if not is_noscript(err):
                raise
        return await self.execute("EVAL", script.source, len(keys), *keys, *args, key=route)

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close every connection; pending commands fail with StoreUnavailable."""


@dataclass(frozen=True, slots=True)
class _Endpoint:
    """Where and how to connect; parsed from the URL once, at construction."""

    label: str  # for messages: never contains the password
    host: str = ""
    port: int = DEFAULT_PORT
    path: str | None = None  # a unix socket, instead of host and port
    tls: bool = False
    username: str | None = None
    password: str | None = None
    db: int = 0


def _parse_url(url: str) -> _Endpoint:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = parse_qs(parts.query)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    db_text = query.get("db", [""])[0]
    if scheme == "unix":
        if not parts.path:
            raise ValueError(f"unix Redis URL without a socket path: {url!r}")
        return _Endpoint(
            label=f"unix:{parts.path}",
            path=parts.path,
            username=username,
            password=password,
            db=int(db_text or 0),
        )
    if scheme not in ("redis", "rediss"):
        raise ValueError(f"Redis URL must start with redis://, rediss:// or unix://: {url!r}")
    host = parts.hostname or "localhost"
    port = parts.port or DEFAULT_PORT
    path_db = parts.path.strip("/")
    return _Endpoint(
        label=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        host=host,
        port=port,
        tls=scheme == "rediss",
        username=username,
        password=password,
        db=int(path_db or db_text or 0),
    )


class _Connection(asyncio.Protocol):
    """One pipelined connection: writes batched per loop iteration, replies matched FIFO."""

    __slots__ = (
        "_expired_head",
        "_flush_scheduled",
        "_label",
        "_loop",
        "_out",
        "_parser",
        "_timeout_s",
        "_timer",
        "_transport",
        "_waiters",
        "closed",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, label: str, timeout_s: float) -> None:
        self._loop = loop
        self._label = label
        self._timeout_s = timeout_s
        self._transport: asyncio.Transport | None = None
        self._parser = RespParser()
        # (future, deadline); future None for a reply nobody waits for (ASKING's).
        self._waiters: deque[tuple[asyncio.Future[Any] | None, float]] = deque()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._expired_head: tuple[asyncio.Future[Any] | None, float] | None = None
        self.closed = False

    # -- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc else ""
        self._shutdown(StoreUnavailable(f"connection to Redis at {self._label} lost{reason}"))

    def eof_received(self) -> bool:
        return False  # let the transport close; connection_lost fails what is pending

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        parser.feed(data)
        waiters = self._waiters
        try:
            while True:
                reply = parser.next_reply()
                if reply is INCOMPLETE:
                    return
                if not waiters:
                    raise ProtocolError("a reply arrived with no command waiting for it")
                future = waiters.popleft()[0]
                if future is None or future.done():  # ASKING, or the caller gave up
                    continue
                if type(reply) is ReplyError:
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except ProtocolError as exc:
            self.abort(StoreUnavailable(f"Redis at {self._label} sent a bad reply: {exc}"))

    # -- used by the client -----------------------------------------------

    def send(self, data: bytes, asking: bool = False) -> asyncio.Future[Any]:
        """Queue one command (after ASKING if `asking`); its reply resolves the future."""
        loop = self._loop
        future = loop.create_future()
        if self.closed:
            future.set_exception(StoreUnavailable(f"connection to Redis at {self._label} closed"))
            return future
        deadline = loop.time() + self._timeout_s
        if asking:
            self._out.append(_ASKING)
            self._waiters.append((None, deadline))
        self._out.append(data)
        self._waiters.append((future, deadline))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._check_deadline)
        return future

    def abort(self, reason: StoreUnavailable) -> None:
        """Drop the connection now; everything pending fails with `reason`."""
        transport = self._transport
        self._shutdown(reason)
        if transport is not None:
            transport.abort()

    def close(self, reason: StoreUnavailable) -> None:
        """Close after writing what is buffered; pending replies are not awaited."""
        transport = self._transport
        self._shutdown(reason)
        if transport is not None:
            transport.close()

    # -- internals ----------------------------------------------------------

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if self.closed or self._transport is None or not out:
            out.clear()
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self._transport.write(data)

    def _check_deadline(self) -> None:
        self._timer = None
        waiters = self._waiters
        if self.closed or not waiters:
            self._expired_head = None
            return
        head = waiters[0]
        now = self._loop.time()
        if head[1] > now:
            self._expired_head = None
            self._timer = self._loop.call_at(head[1], self._check_deadline)
        elif self._expired_head is not head:
            self._expired_head = head
            self._timer = self._loop.call_at(now + _TIMEOUT_GRACE_S, self._check_deadline)
        else:
            self.abort(
                StoreUnavailable(
                    f"Redis at {self._label} did not answer within {self._timeout_s:g} s"
                )
            )

    def _shutdown(self, reason: StoreUnavailable) -> None:
        self.closed = True
        self._out.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._expired_head = None
        waiters = self._waiters
        while waiters:
            future = waiters.popleft()[0]
            if future is not None and not future.done():
                future.set_exception(reason)


class _LoopState:
    """A client's connection on one event loop (asyncio objects cannot cross loops)."""

    __slots__ = ("conn", "connecting")

    def __init__(self) -> None:
        self.conn: _Connection | None = None
        self.connecting: asyncio.Task[_Connection] | None = None


class SingleRedisClient(StoreClient):
    """One Redis server, one pipelined connection per event loop, opened on first use."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> None:
        self._init(_parse_url(url), timeout_s, connect_timeout_s)

    @classmethod
    def _for_endpoint(
        cls, endpoint: _Endpoint, timeout_s: float, connect_timeout_s: float
    ) -> SingleRedisClient:
        client = cls.__new__(cls)
        client._init(endpoint, timeout_s, connect_timeout_s)
        return client

    def _init(self, endpoint: _Endpoint, timeout_s: float, connect_timeout_s: float) -> None:
        self._endpoint = endpoint
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._states: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"SingleRedisClient({self._endpoint.label})"

    @property
    def label(self) -> str:
        """host:port (or unix:path) of the server, for messages."""
        return self._endpoint.label

    @property
    def host(self) -> str:
        return self._endpoint.host

    @property
    def port(self) -> int:
        return self._endpoint.port

    async def execute(self, *args: Any, key: str | bytes | None = None) -> Any:
        # _request inlined: one coroutine frame less on the hot path.
        data = encode_command(*args)
        state = self._states.get(asyncio.get_running_loop())
        if state is not None:
            conn = state.conn
            if conn is not None and not conn.closed:
                return await conn.send(data)
        conn = await self._connection()
        return await conn.send(data)

    async def _request(self, data: bytes, asking: bool = False) -> Any:
        """Send an encoded command; _ConnectFailed means it was never sent."""
        state = self._states.get(asyncio.get_running_loop())
        if state is not None:
            conn = state.conn
            if conn is not None and not conn.closed:
                return await conn.send(data, asking)
        conn = await self._connection()
        return await conn.send(data, asking)

    def _has_connection(self) -> bool:
        state = self._states.get(asyncio.get_running_loop())
        return state is not None and state.conn is not None and not state.conn.closed

    async def _connection(self) -> _Connection:
        if self._closed:
            raise _ConnectFailed(f"client for Redis at {self.label} is closed")
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            self._forget_closed_loops()
            state = self._states[loop] = _LoopState()
        if state.conn is not None and not state.conn.closed:
            return state.conn
        task = state.connecting
        if task is None:
            # One attempt shared by every command that arrives while it runs;
            # when it fails they all fail, and the next command tries again.
            task = loop.create_task(self._open(loop))
            task.add_done_callback(partial(self._connected, state))
            state.connecting = task
        try:
            # Shielded: a caller that is cancelled must not cancel the others' connect.
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled() and not _being_cancelled():
                raise _ConnectFailed(f"client for Redis at {self.label} is closed") from None
            raise

    def _connected(self, state: _LoopState, task: asyncio.Task[_Connection]) -> None:
        if state.connecting is task:
            state.connecting = None
        if task.cancelled() or task.exception() is not None:  # marks a failure as retrieved
            return
        conn = task.result()
        if self._closed:
            # aclose() ran after the connect finished but before this callback.
            conn.close(StoreUnavailable(f"client for Redis at {self.label} closed"))
        else:
            state.conn = conn

    def _forget_closed_loops(self) -> None:
        for loop in [loop for loop in self._states if loop.is_closed()]:
            del self._states[loop]

    def _ssl_context(self) -> ssl.SSLContext:
        # Made on first connect: loading the CA store is file I/O.
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        endpoint = self._endpoint
        conn = _Connection(loop, endpoint.label, self._timeout_s)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                if endpoint.path is not None:
                    await loop.create_unix_connection(lambda: conn, endpoint.path)
                elif endpoint.tls:
                    await loop.create_connection(
                        lambda: conn,
                        endpoint.host,
                        endpoint.port,
                        ssl=self._ssl_context(),
                        server_hostname=endpoint.host,
                    )
                else:
                    await loop.create_connection(lambda: conn, endpoint.host, endpoint.port)
                setup = []
                if endpoint.password is not None:
                    user = (endpoint.username,) if endpoint.username else ()
                    setup.append(conn.send(encode_command("AUTH", *user, endpoint.password)))
                if endpoint.db:
                    setup.append(conn.send(encode_command("SELECT", endpoint.db)))
                if setup:
                    await asyncio.gather(*setup)
        except ReplyError as exc:
            conn.abort(StoreUnavailable("connection setup failed"))
            raise _ConnectFailed(
                f"Redis at {endpoint.label} refused the connection setup: {exc.message}"
            ) from exc
        except OSError as exc:  # includes TimeoutError, ssl.SSLError, StoreUnavailable
            conn.abort(StoreUnavailable("connection setup failed"))
            detail = str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError):
                detail = f"no connection within {self._connect_timeout_s:g} s"
            raise _ConnectFailed(f"cannot connect to Redis at {endpoint.label}: {detail}") from exc
        except BaseException:
            conn.abort(StoreUnavailable("connection setup cancelled"))
            raise
        return conn

    async def aclose(self) -> None:
        self._closed = True
        states, self._states = self._states, {}
        current = asyncio.get_running_loop()
        reason = StoreUnavailable(f"client for Redis at {self.label} closed")
        for loop, state in states.items():
            for close in _closers(state, reason):
                if loop is current:
                    close()
                elif not loop.is_closed():
                    loop.call_soon_threadsafe(close)
        # Let the transports deliver connection_lost before the caller moves on
        # (or closes the loop), so nothing is reported as unclosed.
        await asyncio.sleep(0)


def _closers(state: _LoopState, reason: StoreUnavailable) -> list[Callable[[], object]]:
    closers: list[Callable[[], object]] = []
    if state.connecting is not None:
        closers.append(state.connecting.cancel)
    if state.conn is not None:
        closers.append(partial(state.conn.close, reason))
    return closers


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class ClusterRedisClient(StoreClient):
    """A Redis Cluster: commands go to the master of their key's slot.

    The slot map comes from CLUSTER SLOTS, fetched on first use and again
    whenever a node answers MOVED (the command itself is retried on the
    node MOVED names, without waiting for the new map) or cannot be reached.
    Each node gets a SingleRedisClient, so each node connection pipelines.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> None:
        seed = _parse_url(url)
        if seed.path is not None:
            raise ValueError("a Redis Cluster is reached over TCP, not a unix socket")
        if seed.db:
            raise ValueError(f"Redis Cluster only has database 0, the URL asks for {seed.db}")
        self._seed = seed
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._nodes: dict[tuple[str, int], SingleRedisClient] = {}
        # slot -> master; None until the first CLUSTER SLOTS answer.
        self._slots: list[SingleRedisClient | None] | None = None
        self._masters: list[SingleRedisClient] = []
        self._refreshing: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"ClusterRedisClient({self._seed.label})"

    async def execute(self, *args: Any, key: str | bytes | None = None) -> Any:
        return await self._run(encode_command(*args), key)

    async def _run(self, data: bytes, key: str | bytes | None) -> Any:
        node = self._route(key)
        if node is None:
            await self._refresh()
            node = self._route(key)
            if node is None:
                raise StoreUnavailable(self._no_node_message(key))
        asking = False
        redirects = 0
        refreshed = False
        while True:
            try:
                return await node._request(data, asking)
            except ReplyError as err:
                if redirects >= MAX_REDIRECTS:
                    raise
                redirects += 1
                # MOVED and ASK both mean the command did not run: retrying is safe.
                moved = is_moved(err)
                if moved is not None:
                    slot, host, port = moved
                    node = self._node(host or node.host, port)
                    if self._slots is not None:
                        self._slots[slot] = node
                    self._refresh_soon()
                    asking = False
                    continue
                ask = is_ask(err)
                if ask is not None:
                    # The slot is migrating: only this command goes to the
                    # importing node; the map stays as it is.
                    _slot, host, port = ask
                    node = self._node(host or node.host, port)
                    asking = True
                    continue
                if err.message.startswith("TRYAGAIN"):
                    # A multi-key command met a slot half migrated: retry shortly.
                    await asyncio.sleep(_TRYAGAIN_PAUSE_S * redirects)
                    node = self._route(key) or node
                    asking = False
                    continue
                raise
            except _ConnectFailed:
                # Never sent, so safe to retry; the node may have failed over.
                if refreshed:
                    raise
                refreshed = True
                await self._refresh()
                retry = self._route(key)
                if retry is None:
                    raise StoreUnavailable(self._no_node_message(key)) from None
                node = retry
                asking = False

    def _route(self, key: str | bytes | None) -> SingleRedisClient | None:
        slots = self._slots
        if slots is None:
            return None
        if key is None:
            return self._masters[0] if self._masters else None
        return slots[key_slot(key)]

    def _no_node_message(self, key: str | bytes | None) -> str:
        where = "any" if key is None else f"slot {key_slot(key)}"
        return f"no Redis Cluster node serves {where} (cluster at {self._seed.label})"

    def _node(self, host: str, port: int) -> SingleRedisClient:
        node = self._nodes.get((host, port))
        if node is None:
            seed = self._seed
            endpoint = _Endpoint(
                label=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                host=host,
                port=port,
                tls=seed.tls,
                username=seed.username,
                password=seed.password,
            )
            node = SingleRedisClient._for_endpoint(
                endpoint, self._timeout_s, self._connect_timeout_s
            )
            self._nodes[(host, port)] = node
        return node

    async def _refresh(self) -> None:
        """Fetch the slot map; callers arriving while a fetch runs share it."""
        await asyncio.shield(self._refresh_task())

    def _refresh_soon(self) -> None:
        self._refresh_task()

    def _refresh_task(self) -> asyncio.Task[None]:
        if self._closed:
            raise StoreUnavailable(f"client for Redis Cluster at {self._seed.label} is closed")
        loop = asyncio.get_running_loop()
        task = self._refreshing.get(loop)
        if task is None:
            task = loop.create_task(self._load_slots())
            task.add_done_callback(partial(self._refreshed, loop))
            self._refreshing[loop] = task
        return task

    def _refreshed(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[None]) -> None:
        if self._refreshing.get(loop) is task:
            del self._refreshing[loop]
        if not task.cancelled():
            # Retrieved here so a background refresh that fails is not reported
            # as unhandled; callers that awaited it got the error themselves.
            task.exception()

    async def _load_slots(self) -> None:
        # Ask nodes already connected first (cheapest, and alive), then the
        # other known masters, then the node named in the URL.
        candidates: list[SingleRedisClient] = []
        for node in sorted(self._masters, key=lambda n: not n._has_connection()):
            if node not in candidates:
                candidates.append(node)
        seed = self._node(self._seed.host, self._seed.port)
        if seed not in candidates:
            candidates.append(seed)
        errors: list[str] = []
        for node in candidates:
            try:
                reply = await node.execute("CLUSTER", "SLOTS")
                self._apply_slots(reply, node)
                return
            except (StoreUnavailable, ReplyError, ValueError) as exc:
                errors.append(f"{node.label}: {exc}")
        raise StoreUnavailable(
            "could not fetch the Redis Cluster slot map: " + "; ".join(errors)
        )

    def _apply_slots(self, reply: Any, asked: SingleRedisClient) -> None:
        slots: list[SingleRedisClient | None] = [None] * CLUSTER_SLOTS
        masters: list[SingleRedisClient] = []
        try:
            for entry in reply:
                start, end, master = int(entry[0]), int(entry[1]), entry[2]
                raw_host = master[0]
                host = raw_host.decode() if isinstance(raw_host, bytes) else str(raw_host)
                if host in ("", "?"):  # "the address you asked" (no announced endpoint)
                    host = asked.host
                node = self._node(host, int(master[1]))
                if node not in masters:
                    masters.append(node)
                slots[start:end + 1] = [node] * (end - start + 1)
        except (TypeError, IndexError, AttributeError) as exc:
            raise ValueError(f"unexpected CLUSTER SLOTS reply: {exc}") from exc
        if not masters:
            raise ValueError("CLUSTER SLOTS returned no slots (cluster not configured yet?)")
        self._slots = slots
        self._masters = masters

    async def aclose(self) -> None:
        self._closed = True
        refreshing, self._refreshing = self._refreshing, {}
        current = asyncio.get_running_loop()
        for loop, task in refreshing.items():
            if loop is current:
                task.cancel()
            elif not loop.is_closed():
                loop.call_soon_threadsafe(task.cancel)
        for node in list(self._nodes.values()):
            await node.aclose()


def create_store_client(
    url: str,
    *,
    cluster: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
) -> StoreClient:
    """A client for `url` (redis://, rediss://, unix://); no I/O until the first command.

    With `cluster=True`, `url` names any node of a Redis Cluster.
    """
    if cluster:
        return ClusterRedisClient(url, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s)
    return SingleRedisClient(url, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s)

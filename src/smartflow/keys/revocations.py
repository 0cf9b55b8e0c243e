"""Telling every worker of every node that a key, team or user record changed.

The store publishes ``<kind>:<id>`` on one Redis channel after each write or
delete. Each worker listens; a message drops the worker's lease for that
scope and its cached copies of the record, so the next call goes to Redis
and sees the change (a block, a delete, a regenerate, new limits) at once.

Leases (``keys.admission``) skip the per-call revision check, so a worker
leases only while it is subscribed: when the subscription drops (a Redis
blip), every lease goes back first, and calls are checked one by one until
the worker is listening again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from smartflow.store.keyspace import REVOCATIONS_CHANNEL

if TYPE_CHECKING:
    from smartflow.keys.admission import Admission
    from smartflow.keys.key_cache import KeyCache

logger = logging.getLogger("smartflow.keys")

RETRY_S = 1.0
CLOSE_TIMEOUT_S = 1.0


class RevocationListener:
    def __init__(self, redis_url: str, admission: Admission, cache: KeyCache, *,
                 retry_s: float = RETRY_S) -> None:
        self._url = redis_url
        self._admission = admission
        self._cache = cache
        self._retry_s = retry_s
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # redis-py's pub/sub reader can swallow a cancellation (it retries a
            # read it sees interrupted): never let that hold up a worker's exit.
            await asyncio.wait({task}, timeout=CLOSE_TIMEOUT_S)
        self._admission.set_leasing(False)

    def on_message(self, data: bytes | str) -> None:
        text = data.decode() if isinstance(data, bytes) else data
        kind, _, scope_id = text.partition(":")
        if not scope_id:
            return
        self._admission.revoke((kind, scope_id))
        self._cache.forget_scope(kind, scope_id)

    async def _run(self) -> None:
        from redis.asyncio import Redis

        while not self._closing:
            client: Redis = Redis.from_url(self._url, socket_connect_timeout=1.0,
                                           health_check_interval=10)
            try:
                pubsub = client.pubsub()
                await pubsub.subscribe(REVOCATIONS_CHANNEL)
                async for message in pubsub.listen():
                    if self._closing:
                        return
                    kind = message.get("type")
                    if kind == "subscribe":
                        self._admission.set_leasing(True)
                    elif kind == "message":
                        self.on_message(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconnect, leasing off meanwhile
                logger.warning("revocation channel lost (%s: %s); leasing off until it is "
                               "back", type(exc).__name__, exc)
            finally:
                self._admission.set_leasing(False)
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(self._retry_s)


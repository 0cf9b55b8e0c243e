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
from typing import TYPE_CHECKING

from smartflow.store.keyspace import REVOCATIONS_CHANNEL
from smartflow.store.subscription import RETRY_S, listen_forever

if TYPE_CHECKING:
    from smartflow.keys.admission import Admission
    from smartflow.keys.key_cache import KeyCache

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
        await listen_forever(self._url, REVOCATIONS_CHANNEL, self.on_message,
                             on_subscribed=self._leasing_on, on_lost=self._leasing_off,
                             is_closing=self._is_closing, retry_s=self._retry_s)

    def _leasing_on(self) -> None:
        self._admission.set_leasing(True)

    def _leasing_off(self) -> None:
        self._admission.set_leasing(False)

    def _is_closing(self) -> bool:
        return self._closing

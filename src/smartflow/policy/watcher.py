"""A worker's copy of the policies, kept fresh.

``PolicyWatcher.snapshot`` is an immutable ``PolicySnapshot``: the call path
reads it (and its memoised ``resolve``) without any I/O. It is replaced, never
changed, when:

* a message arrives on ``sf:policy:changed`` (every change publishes one),
  so a change on one worker reaches every worker of every node within a
  round trip;
* the subscription is (re)established: changes made while it was down
  (a Redis blip) are picked up at once;
* the revision counter moved, checked every ``check_interval_s`` (2 s): a
  safety net for a message lost any other way.

Until the first load succeeds the snapshot holds the built-ins only
(revision -1). A failed load keeps the last good snapshot and is retried by
the next message or check. Reloads never overlap: a change announced during
one is picked up by one more right after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from smartflow.policy.resolver import CallScope, PolicySnapshot, Resolution
from smartflow.policy.store import POLICY_CHANNEL, PolicyStore

logger = logging.getLogger("smartflow.policy")

CHECK_INTERVAL_S = 2.0


class PolicyWatcher:
    def __init__(self, store: PolicyStore, redis_url: str, *,
                 check_interval_s: float = CHECK_INTERVAL_S) -> None:
        self.store = store
        self.snapshot = PolicySnapshot.builtins()
        self._redis_url = redis_url
        self._check_interval_s = check_interval_s
        self._tasks: list[asyncio.Task[None]] = []
        self._reloading: asyncio.Task[None] | None = None
        self._again = False
        self._closing = False

    def resolve(self, scope: CallScope, default_policy: str | None) -> Resolution:
        return self.snapshot.resolve(scope, default_policy)

    async def start(self) -> None:
        """Load once (a failure leaves the built-ins, retried later), then listen."""
        from smartflow.store.subscription import listen_forever

        try:
            await self.reload()
        except Exception as exc:  # noqa: BLE001 - serve the built-ins until Redis answers
            logger.warning("policy: first load failed (%s: %s); built-ins only until the "
                           "next reload", type(exc).__name__, exc)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(listen_forever(
            self._redis_url, POLICY_CHANNEL, self._on_message,
            on_subscribed=self.request_reload, is_closing=lambda: self._closing)))
        self._tasks.append(loop.create_task(self._check_revision()))

    async def aclose(self) -> None:
        self._closing = True
        tasks = [*self._tasks, *([self._reloading] if self._reloading else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    async def reload(self) -> None:
        """Read everything now; a snapshot never goes back to an older revision."""
        fresh = await self.store.snapshot()
        if fresh.revision >= self.snapshot.revision:
            self.snapshot = fresh

    def request_reload(self) -> None:
        """Reload soon; at most one reload runs, and one more follows if asked meanwhile."""
        if self._closing:
            return
        if self._reloading is not None and not self._reloading.done():
            self._again = True
            return
        self._reloading = asyncio.get_running_loop().create_task(self._reload_until_settled())

    def _on_message(self, _text: str) -> None:
        self.request_reload()

    async def _reload_until_settled(self) -> None:
        while True:
            self._again = False
            try:
                await self.reload()
            except Exception as exc:  # noqa: BLE001 - Redis blips: the check retries
                logger.warning("policy: reload failed (%s: %s); keeping revision %d",
                               type(exc).__name__, exc, self.snapshot.revision)
                return
            if not self._again:
                return

    async def _check_revision(self) -> None:
        while not self._closing:
            await asyncio.sleep(self._check_interval_s)
            try:
                if await self.store.revision() != self.snapshot.revision:
                    self.request_reload()
            except Exception as exc:  # noqa: BLE001 - Redis blips: next round
                logger.debug("policy: revision check failed: %s", exc)

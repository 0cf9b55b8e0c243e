"""The identity pieces a worker builds once and shares between its proxy and admin API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from smartflow.keys.admission import Admission
from smartflow.keys.key_cache import KeyCache
from smartflow.keys.periods import PeriodClock
from smartflow.keys.revocations import RevocationListener
from smartflow.keys.store import IdentityStore

logger = logging.getLogger("smartflow.keys")

METRICS_FLUSH_S = 1.0

if TYPE_CHECKING:
    from smartflow.config import Settings
    from smartflow.keys.vault import Vault
    from smartflow.store.fast_client import StoreClient


@dataclass(slots=True)
class KeysRuntime:
    client: StoreClient
    clock: PeriodClock
    store: IdentityStore
    cache: KeyCache
    admission: Admission
    vault: Vault
    revocations: RevocationListener | None = None
    _metrics_task: asyncio.Task[None] | None = field(default=None, repr=False)

    def start(self) -> None:
        """Start listening for record changes, and exporting admission counts
        (with the worker's loop running)."""
        if self.revocations is not None:
            self.revocations.start()
        self._metrics_task = asyncio.get_running_loop().create_task(self._export_metrics())

    async def _export_metrics(self) -> None:
        metrics: Any = None
        while True:
            await asyncio.sleep(METRICS_FLUSH_S)
            counts = self.admission.counts.take()
            if not (counts.leased or counts.by_redis or counts.leases or counts.refused):
                continue
            try:
                if metrics is None:
                    from smartflow.telemetry.keys_metrics import KeysMetrics

                    metrics = KeysMetrics()
                metrics.apply(counts.leased, counts.by_redis, counts.leases, counts.refused)
            except Exception as exc:  # noqa: BLE001 - telemetry never stops admission
                logger.debug("virtual-key metrics flush failed: %s", exc)

    async def aclose(self) -> None:
        task, self._metrics_task = self._metrics_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.revocations is not None:
            await self.revocations.aclose()
        await self.admission.drain()


def build_keys_runtime(settings: Settings, client: StoreClient,
                       redis_url: str | None = None) -> KeysRuntime:
    """``redis_url``: listen there for record changes, which lets workers
    lease room (no round trip per call far from a limit); None: every call
    is admitted by Redis."""
    from smartflow.keys.vault import Vault

    clock = PeriodClock(settings.budgets.timezone)
    store = IdentityStore(client, clock)
    cache = KeyCache(store, settings.auth.key_cache_ttl)
    admission = Admission(client, clock, cluster=settings.state.redis_cluster,
                          hold_s=settings.budgets.reservation_ttl)
    return KeysRuntime(
        client=client,
        clock=clock,
        store=store,
        cache=cache,
        admission=admission,
        vault=Vault(client, None,
                    secret=settings.vault.encryption_key or settings.auth.master_key),
        revocations=(RevocationListener(redis_url, admission, cache)
                     if redis_url else None),
    )

"""The identity pieces a worker builds once and shares between its proxy and admin API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from smartflow.keys.admission import Admission
from smartflow.keys.key_cache import KeyCache
from smartflow.keys.periods import PeriodClock
from smartflow.keys.revocations import RevocationListener
from smartflow.keys.store import IdentityStore

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

    def start(self) -> None:
        """Start listening for record changes (with the worker's loop running)."""
        if self.revocations is not None:
            self.revocations.start()

    async def aclose(self) -> None:
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

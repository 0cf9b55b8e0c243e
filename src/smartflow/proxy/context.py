"""What the proxy's route handlers share within one worker.

Built once per worker (``build_proxy_context``), after the worker's event
loop exists and before it serves; closed with ``aclose()`` at shutdown, which
closes every pooled upstream connection.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from smartflow.config import Settings
from smartflow.gateway_error import GatewayError, Reason
from smartflow.http.client import UpstreamPool
from smartflow.providers import get_adapter
from smartflow.providers.base import ProviderAdapter
from smartflow.proxy.auth import Authenticator
from smartflow.proxy.catalog import Catalog
from smartflow.proxy.cost import PriceTable, load_price_table

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from smartflow.audit.runtime import AuditRuntime
    from smartflow.cache.metacache import MetaCache
    from smartflow.embeddings.runtime import EmbeddingRuntime
    from smartflow.keys.runtime import KeysRuntime
    from smartflow.policy.runtime import PolicyRuntime
    from smartflow.routing.runtime import RoutingRuntime
    from smartflow.store.fast_client import StoreClient

logger = logging.getLogger("smartflow.proxy")


@dataclass(slots=True)
class ProxyContext:
    settings: Settings
    catalog: Catalog
    pool: UpstreamPool
    authenticator: Authenticator
    prices: PriceTable
    redis: Redis | None = None  # the worker's client for shared state (budgets, cache, audit)
    capture_stream_text: bool = False  # the tap collects streamed text (for caching later)
    keys: KeysRuntime | None = None  # virtual keys, budgets, vault (None: master key only)
    adapters: dict[str, ProviderAdapter] = field(default_factory=dict)  # provider -> adapter
    routing: RoutingRuntime | None = None  # groups, chains, failover (None: first deployment)
    audit: AuditRuntime | None = None  # the VAS record of every call (None: audit off)
    store: StoreClient | None = None  # shared state, cluster-aware (Responses API answers)
    cache: MetaCache | None = None  # the response cache (None: [cache] mode off everywhere)
    embeddings: EmbeddingRuntime | None = None  # the local model and the node's index
    policy: PolicyRuntime | None = None  # guardrails and policies (None: [policy] enabled off)

    def adapter_for(self, provider: str) -> ProviderAdapter:
        """The provider's adapter, imported on first use and kept."""
        adapter = self.adapters.get(provider)
        if adapter is not None:
            return adapter
        try:
            adapter = get_adapter(provider)
        except (KeyError, ImportError):
            raise GatewayError(500, f"No adapter for provider {provider!r}.",
                               reason=Reason.INTERNAL) from None
        self.adapters[provider] = adapter
        return adapter

    async def aclose(self) -> None:
        if self.audit is not None:  # first: the records still buffered go out
            await self.audit.aclose()
        if self.cache is not None:
            await self.cache.aclose()
        if self.policy is not None:
            await self.policy.aclose()
        if self.embeddings is not None:
            await self.embeddings.aclose()
        if self.routing is not None:
            await self.routing.aclose()
        if self.keys is not None:
            await self.keys.aclose()
        await self.pool.aclose()


def build_pool(settings: Settings) -> UpstreamPool:
    proxy = settings.proxy
    return UpstreamPool(
        max_connections_per_origin=proxy.pool_max_connections_per_origin,
        connect_timeout_s=proxy.connect_timeout,
        first_byte_timeout_s=proxy.first_byte_timeout,
        read_idle_timeout_s=proxy.read_idle_timeout,
        pool_idle_timeout_s=proxy.pool_idle_timeout,
    )


def build_proxy_context(
    settings: Settings,
    *,
    provider_environ: Mapping[str, str] | None = None,
    pool: UpstreamPool | None = None,
    redis: Redis | None = None,
    capture_stream_text: bool = False,
    keys: KeysRuntime | None = None,
) -> ProxyContext:
    """The proxy's per-worker state.

    ``provider_environ``: the provider SDK variables (``OPENAI_API_KEY``, ...;
    see ``catalog.provider_env_var_names()``) for models resolved by prefix.
    Only config.py reads the environment, so the caller hands them in.
    """
    prices = load_price_table()
    authenticator = Authenticator(settings.auth.master_key)
    if authenticator.is_development_mode:
        logger.warning("no [auth] master_key is set: the proxy accepts any caller "
                       "(development mode)")
    return ProxyContext(
        settings=settings,
        catalog=Catalog(settings.models, prices, provider_environ),
        pool=pool if pool is not None else build_pool(settings),
        authenticator=authenticator,
        prices=prices,
        redis=redis,
        capture_stream_text=capture_stream_text,
        keys=keys,
    )

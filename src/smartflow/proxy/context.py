"""What the proxy's route handlers share within one worker.

Built once per worker (``build_proxy_context``), after the worker's event
loop exists and before it serves; closed with ``aclose()`` at shutdown, which
closes every pooled upstream connection.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from smartflow.config import Settings
from smartflow.http.client import UpstreamPool
from smartflow.providers.base import ProviderAdapter
from smartflow.proxy.auth import Authenticator
from smartflow.proxy.catalog import Catalog
from smartflow.proxy.cost import PriceTable, load_price_table

logger = logging.getLogger("smartflow.proxy")


@dataclass(slots=True)
class ProxyContext:
    settings: Settings
    catalog: Catalog
    pool: UpstreamPool
    authenticator: Authenticator
    prices: PriceTable
    capture_stream_text: bool = False  # the tap collects streamed text (for caching later)
    adapters: dict[str, ProviderAdapter] = field(default_factory=dict)  # provider -> adapter

    async def aclose(self) -> None:
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
    capture_stream_text: bool = False,
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
        capture_stream_text=capture_stream_text,
    )

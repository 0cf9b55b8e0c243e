"""Provider adapters, one module each; ``get_adapter`` maps a provider name to one."""

from __future__ import annotations

import importlib

from smartflow.provider_registry import PROVIDER_BY_NAME
from smartflow.providers.base import ProviderAdapter


def get_adapter(provider: str) -> ProviderAdapter:
    # Imported lazily: a gateway that only routes to one provider loads one module.
    info = PROVIDER_BY_NAME.get(provider)
    if info is None:
        raise KeyError(provider)
    module = importlib.import_module(f"smartflow.providers.{info.module}")
    return module.ADAPTER  # type: ignore[no-any-return]

"""Provider adapters, one module each; ``get_adapter`` maps a provider name to one."""

from __future__ import annotations

import importlib

from smartflow.providers.base import ProviderAdapter

# provider name -> module under smartflow.providers exposing ``ADAPTER``.
# Imported lazily: a gateway that only routes to one provider loads one module.
ADAPTER_MODULES: dict[str, str] = {
    "openai": "openai",
    "azure": "azure",
    "anthropic": "anthropic",
    "gemini": "gemini",
    "mistral": "mistral",
    "cohere": "cohere",
    "ollama": "ollama",
    "openai_compatible": "openai_compatible",
    "mock": "mock",
}


def get_adapter(provider: str) -> ProviderAdapter:
    module_name = ADAPTER_MODULES.get(provider)
    if module_name is None:
        raise KeyError(provider)
    module = importlib.import_module(f"smartflow.providers.{module_name}")
    return module.ADAPTER  # type: ignore[no-any-return]

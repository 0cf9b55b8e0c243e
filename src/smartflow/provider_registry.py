"""The one list of providers: name, adapter module, key variables, name prefixes.

A top-level module with no imports, so config validation stays light.

Config validation (``config.PROVIDERS``), adapter lookup
(``providers.get_adapter``) and model resolution (``proxy.catalog``) all
read this table, so a provider is added in one place.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    name: str
    module: str  # under smartflow.providers, exposing ``ADAPTER``
    key_env_vars: tuple[str, ...] = ()  # where the provider's own SDK reads its key, in order
    name_prefixes: tuple[str, ...] = ()  # public model names that resolve to it by prefix


PROVIDER_TABLE: tuple[ProviderInfo, ...] = (
    ProviderInfo("openai", "openai", ("OPENAI_API_KEY",), ("gpt-", "o1", "o3", "o4")),
    ProviderInfo("azure", "azure", ("AZURE_OPENAI_API_KEY",)),
    ProviderInfo("anthropic", "anthropic", ("ANTHROPIC_API_KEY",), ("claude-",)),
    ProviderInfo("gemini", "gemini", ("GEMINI_API_KEY", "GOOGLE_API_KEY"), ("gemini-",)),
    ProviderInfo("mistral", "mistral", ("MISTRAL_API_KEY",), ("mistral-", "codestral-")),
    ProviderInfo("cohere", "cohere", ("CO_API_KEY", "COHERE_API_KEY"), ("command-",)),
    ProviderInfo("ollama", "ollama"),
    ProviderInfo("openai_compatible", "openai_compatible"),
    ProviderInfo("mock", "mock"),
)

PROVIDERS: tuple[str, ...] = tuple(info.name for info in PROVIDER_TABLE)
PROVIDER_BY_NAME: dict[str, ProviderInfo] = {info.name: info for info in PROVIDER_TABLE}
# Azure has no public endpoint: without a configured azure model its SDK reads these.
AZURE_ENDPOINT_ENV_VAR = "AZURE_OPENAI_ENDPOINT"
AZURE_API_VERSION_ENV_VAR = "OPENAI_API_VERSION"


def provider_env_var_names() -> tuple[str, ...]:
    """Every environment variable model resolution may look up (config.py collects them)."""
    names = [var for info in PROVIDER_TABLE for var in info.key_env_vars]
    return (*names, AZURE_ENDPOINT_ENV_VAR, AZURE_API_VERSION_ENV_VAR)

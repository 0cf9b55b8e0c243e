"""Model resolution: the public name a caller sends -> a ``Target``.

Order, first match wins:

1. a ``[[models]]`` name from config.toml (several entries may share a name:
   they are deployments of one model; for now the first is used, balancing
   comes later);
2. an explicit ``provider/model`` prefix, where ``provider`` is an adapter
   name (``openai/gpt-4o``, ``ollama/llama3``, ``azure/my-deployment``,
   ``openai_compatible/...``) — it beats the name-prefix rules below, so
   ``openai/claude-x`` goes to OpenAI;
3. a name prefix: ``gpt-*``, ``o1*``, ``o3*``, ``o4*`` -> openai,
   ``claude-*`` -> anthropic, ``gemini-*`` -> gemini, ``mistral-*`` and
   ``codestral-*`` -> mistral, ``command-*`` -> cohere.

A prefix-resolved model borrows ``api_base``/``api_key`` (and TLS files) from
the first configured model of its provider; with none, ``api_base`` stays
empty (the adapter's public endpoint) and the key comes from the provider
SDK's usual environment variable — looked up in a mapping handed in by the
caller, because only config.py reads ``os.environ``.

Resolution is a dict lookup for configured names; prefix results are
memoised (bounded), so the per-request cost is one dict hit either way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from smartflow.config import ModelConfig
from smartflow.provider_registry import (
    AZURE_API_VERSION_ENV_VAR,
    AZURE_ENDPOINT_ENV_VAR,
    PROVIDER_TABLE,
    PROVIDERS,
)
from smartflow.providers.base import Target
from smartflow.proxy.cost import PriceTable, prices_for

# (name prefix, provider), tried in order.
NAME_PREFIX_RULES: tuple[tuple[str, str], ...] = tuple(
    (prefix, info.name) for info in PROVIDER_TABLE for prefix in info.name_prefixes)
PROVIDER_KEY_ENV_VARS: Mapping[str, tuple[str, ...]] = {
    info.name: info.key_env_vars for info in PROVIDER_TABLE if info.key_env_vars}

ANTHROPIC_PUBLIC_API_BASE = "https://api.anthropic.com"
MAX_MEMOISED_NAMES = 4096
MAX_MODEL_NAME_CHARS = 256


class ModelNotFound(LookupError):
    def __init__(self, name: str, reason: str = "") -> None:
        super().__init__(name)
        self.name = name
        self.reason = reason

    @property
    def message(self) -> str:
        shown = self.name if len(self.name) <= 100 else self.name[:100] + "..."
        text = f"The model `{shown}` does not exist or you do not have access to it."
        return f"{text} {self.reason}" if self.reason else text


@dataclass(frozen=True, slots=True)
class ListedModel:
    """One entry of GET /v1/models."""

    name: str
    provider: str


class Catalog:
    """Configured models plus the prefix rules; ``resolve`` is the one entry point."""

    __slots__ = (
        "_configured",
        "_entries",
        "_environ",
        "_first_by_provider",
        "_listed",
        "_memo",
        "_prices",
    )

    def __init__(self, models: tuple[ModelConfig, ...], prices: PriceTable,
                 environ: Mapping[str, str] | None = None) -> None:
        self._prices = prices
        self._environ: Mapping[str, str] = dict(environ or {})
        self._configured: dict[str, tuple[Target, ...]] = {}
        self._first_by_provider: dict[str, ModelConfig] = {}
        listed: dict[str, ListedModel] = {}
        self._entries = tuple((model, self._target_from_config(model)) for model in models)
        for model, target in self._entries:
            self._configured[model.name] = self._configured.get(model.name, ()) + (target,)
            self._first_by_provider.setdefault(model.provider, model)
            listed.setdefault(model.name, ListedModel(model.name, model.provider))
        self._listed = tuple(listed.values())
        self._memo: dict[str, Target] = {}

    # -- queries ----------------------------------------------------------------

    def listed_models(self) -> tuple[ListedModel, ...]:
        return self._listed

    def deployments(self, name: str) -> tuple[Target, ...]:
        """Every configured deployment of a public name (empty when not configured)."""
        return self._configured.get(name, ())

    def configured_entries(self) -> tuple[tuple[ModelConfig, Target], ...]:
        """Every ``[[models]]`` entry with its target, in config order."""
        return self._entries

    def target_for(self, config: ModelConfig) -> Target:
        """The target of a deployment described like a ``[[models]]`` entry."""
        return self._target_from_config(config)

    def first_config_of(self, provider: str) -> ModelConfig | None:
        return self._first_by_provider.get(provider)

    def provider_key(self, provider: str) -> str:
        """The key for ``provider``: its first configured model's, else the env var's."""
        config = self._first_by_provider.get(provider)
        if config is not None and config.api_key:
            return config.api_key
        for var in PROVIDER_KEY_ENV_VARS.get(provider, ()):
            value = self._environ.get(var)
            if value:
                return value
        return ""

    def resolve(self, name: str) -> Target:
        """The target for a public model name; raises ModelNotFound."""
        configured = self._configured.get(name)
        if configured is not None:
            return configured[0]
        found = self._memo.get(name)
        if found is not None:
            return found
        target = self._resolve_by_prefix(name)
        if len(self._memo) >= MAX_MEMOISED_NAMES:
            self._memo.clear()  # callers sending endless fresh names get no unbounded growth
        self._memo[name] = target
        return target

    # -- building targets -------------------------------------------------------

    def _resolve_by_prefix(self, name: str) -> Target:
        if not name or len(name) > MAX_MODEL_NAME_CHARS:
            raise ModelNotFound(name)
        provider, model = provider_for_name(name)
        if provider is None or not model:
            raise ModelNotFound(name)
        template = self._first_by_provider.get(provider)
        api_base = template.api_base if template is not None else ""
        api_version = template.api_version if template is not None else ""
        if provider == "azure" and not api_base:
            api_base = self._environ.get(AZURE_ENDPOINT_ENV_VAR, "")
            api_version = api_version or self._environ.get(AZURE_API_VERSION_ENV_VAR, "")
            if not api_base:
                raise ModelNotFound(name, "No Azure OpenAI endpoint is configured.")
        if provider == "openai_compatible" and not api_base:
            raise ModelNotFound(name, "No openai_compatible api_base is configured.")
        return Target(
            public_name=name,
            provider=provider,
            model=model,
            api_base=api_base,
            api_key=self.provider_key(provider),
            api_version=api_version,
            headers=tuple(template.headers.items()) if template is not None else (),
            prices=prices_for(None, model, self._prices),
            tls_ca_file=template.tls_ca_file if template is not None else "",
            tls_client_cert_file=template.tls_client_cert_file if template is not None else "",
            tls_client_key_file=template.tls_client_key_file if template is not None else "",
        )

    def _target_from_config(self, config: ModelConfig) -> Target:
        upstream_model = config.model or config.name
        return Target(
            public_name=config.name,
            provider=config.provider,
            model=upstream_model,
            api_base=config.api_base,
            api_key=config.api_key or self._env_key(config.provider),
            api_version=config.api_version,
            headers=tuple(config.headers.items()),
            options=config.options,
            prices=prices_for(config, upstream_model, self._prices),
            context_window=config.context_window,
            max_output_tokens=config.max_output_tokens,
            tls_ca_file=config.tls_ca_file,
            tls_client_cert_file=config.tls_client_cert_file,
            tls_client_key_file=config.tls_client_key_file,
        )

    def _env_key(self, provider: str) -> str:
        for var in PROVIDER_KEY_ENV_VARS.get(provider, ()):
            value = self._environ.get(var)
            if value:
                return value
        return ""


def provider_for_name(name: str) -> tuple[str | None, str]:
    """(provider, upstream model id) by the explicit or name-prefix rules; (None, "") if none."""
    head, slash, rest = name.partition("/")
    if slash and head in PROVIDERS:
        return head, rest
    for prefix, provider in NAME_PREFIX_RULES:
        if name.startswith(prefix):
            return provider, name
    return None, ""

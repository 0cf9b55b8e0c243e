"""Typed, frozen settings, built once at start-up and passed down.

Precedence, lowest first: built-in defaults < the TOML file < environment
variables ``SMARTFLOW_<SECTION>__<KEY>`` < command-line flags (``overrides``).

This is the only module that reads ``os.environ``: secrets written as
``env:NAME`` are resolved here, once, so nothing downstream touches the
environment.

Validation is strict because a typo in a gateway config is an outage waiting
for traffic: an unknown key or a wrong type is rejected with the key path in
the message (``server.port: expected int, got str``).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smartflow.provider_registry import PROVIDERS, provider_env_var_names

ENV_PREFIX = "SMARTFLOW_"
PROVIDER_ENV_VARS = provider_env_var_names()


class ConfigError(ValueError):
    """A configuration problem; the message names the key path."""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 0  # 0 = one per core
    data_dir: str = ".smartflow"
    shutdown_timeout: float = 30.0
    header_timeout: float = 10.0
    keepalive_timeout: float = 5.0
    max_header_bytes: int = 65536
    max_body_bytes: int = 32 * 1024 * 1024
    access_log: bool = True
    tls_cert_file: str = ""
    tls_key_file: str = ""
    h2_max_concurrent_streams: int = 128
    bench_routes: bool = False


@dataclass(frozen=True, slots=True)
class SupervisorSettings:
    crash_loop_restarts: int = 5
    crash_loop_window: float = 10.0
    restart_backoff_max: float = 5.0
    worker_timeout: float = 30.0  # seconds without a worker heartbeat; 0 = never kill


@dataclass(frozen=True, slots=True)
class StateSettings:
    redis_url: str = ""  # empty: start an embedded redis-server in data_dir
    redis_server_bin: str = "redis-server"
    redis_cluster: bool = False  # redis_url names any node of a Redis Cluster
    redis_timeout: float = 2.0  # seconds a state command may take before the call fails


@dataclass(frozen=True, slots=True)
class ProxySettings:
    connect_timeout: float = 5.0
    first_byte_timeout: float = 120.0
    read_idle_timeout: float = 120.0
    stream_keepalive_interval: float = 0.0  # off: a stream carries the provider's bytes only
    stream_idle_timeout: float = 300.0
    pool_max_connections_per_origin: int = 256
    pool_idle_timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class AuthSettings:
    master_key: str = ""
    key_cache_ttl: float = 30.0  # seconds a worker keeps a virtual key's record
    jwt_ttl: float = 900.0  # seconds an admin session token is valid
    jwt_key_max_age: float = 86400.0  # seconds before the session signing key rotates


@dataclass(frozen=True, slots=True)
class BudgetSettings:
    timezone: str = "UTC"  # where daily/weekly/monthly periods begin
    reservation_ttl: float = 3600.0  # a reservation no commit ever released expires
    default_max_output_tokens: int = 4096  # worst case when neither request nor model says


@dataclass(frozen=True, slots=True)
class VaultSettings:
    encryption_key: str = ""  # encrypts stored provider keys; empty: derived from master_key
    capture_provider_keys: bool = False  # a provider key sent by a caller becomes a virtual key


@dataclass(frozen=True, slots=True)
class FallbackChainConfig:
    """One ``[[routing.fallback_chains]]`` entry (chains made through the admin API
    live in Redis and override a config chain of the same name)."""

    name: str
    targets: tuple[str, ...]
    model: str = ""  # the public model name the chain serves ("": chosen by header only)
    context_window_fallback: str = ""
    retries: int | None = None  # this chain's per-step retry budget (None: chain_retries)


STRATEGIES = ("round_robin", "weighted", "least_connections", "random", "priority",
              "latency", "cost", "tag")


@dataclass(frozen=True, slots=True)
class RoutingSettings:
    strategy: str = "round_robin"  # SMARTFLOW_ROUTING_STRATEGY overrides
    strategy_by_model: Mapping[str, str] = field(default_factory=dict)
    # Extra attempts, after a backoff, on deployments a step already tried (a model
    # alone is a one-step chain). Moving on to an untried deployment of the group,
    # or to the next target of a chain, needs none: it happens at once.
    retries: int = 0
    chain_retries: int = 1  # the same, for each step of a fallback chain (a chain may set its own)
    retry_backoff: float = 0.1  # seconds before the first retry; doubles, with jitter
    retry_backoff_max: float = 5.0
    max_retry_after: float = 10.0  # a longer Retry-After moves to the next target at once
    max_attempts: int = 8  # upstream calls per request, all steps together
    attempt_timeout: float = 0.0  # first-byte timeout per attempt (0: proxy.first_byte_timeout)
    cooldown_failures: int = 5  # failures within cooldown_window that take a deployment out
    cooldown_window: float = 30.0
    cooldown_time: float = 30.0  # seconds out, then one probe call decides
    latency_exploration: float = 0.05  # share of latency-routed calls sent to another deployment
    tag_default: str = ""  # tag strategy: deployments with this tag take unmatched requests
    context_window_fallbacks: Mapping[str, str] = field(default_factory=dict)
    provider_daily_budgets: Mapping[str, float] = field(default_factory=dict)  # USD per day
    fallback_chains: tuple[FallbackChainConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class AlertSettings:
    slack_webhook_url: str = ""  # also SLACK_WEBHOOK_URL
    teams_webhook_url: str = ""  # also TEAMS_WEBHOOK_URL
    discord_webhook_url: str = ""  # also DISCORD_WEBHOOK_URL
    budget_thresholds: tuple[float, ...] = (0.8, 1.0)  # shares of a provider's daily budget
    failure_spike_count: int = 20  # failures of one provider within failure_spike_window
    failure_spike_window: float = 60.0
    slow_call_seconds: float = 60.0  # a call (or a first byte) slower than this alerts
    dedupe_window: float = 300.0  # one alert per subject per window, across all workers
    max_per_minute: int = 10  # per destination
    timeout: float = 5.0  # per webhook delivery


@dataclass(frozen=True, slots=True)
class AuditSettings:
    # "auto": calls are recorded when a sink (postgres_dsn or mongodb_url) is
    # set; "on": always (the stream alone keeps the last stream_max_len);
    # "off": never.
    mode: str = "auto"
    capture_bodies: bool = True  # the request and the answer, for Q&A replay
    max_body_bytes: int = 32768  # per captured body; longer ones are cut and marked
    postgres_dsn: str = ""  # a libpq URL, or env:NAME
    mongodb_url: str = ""  # mongodb://..., or env:NAME
    mongodb_database: str = "smartflow"
    retention_days: int = 30  # 0 keeps everything
    stream_max_len: int = 200000  # hard cap of the Redis stream (approximate trim)
    batch_size: int = 500  # records per sink write
    claim_idle: float = 30.0  # seconds before a dead shipper's pending records are claimed
    sink_retry_max: float = 30.0  # longest back-off between attempts at a sink that is down
    query_timeout: float = 10.0  # seconds a /api/logs query may take


@dataclass(frozen=True, slots=True)
class ResponsesSettings:
    # How long a Responses API answer is kept for previous_response_id,
    # GET /v1/responses/{id} and its input_items (Redis, shared by every
    # worker and node). OpenAI keeps them 30 days; a gateway holds many
    # tenants' conversations, so a shorter default.
    store_ttl: float = 604800.0
    max_stored_bytes: int = 4194304  # a conversation longer than this is not stored


CACHE_MODES = ("off", "exact", "semantic")
CACHE_PARTITIONS = ("key", "team", "global")


@dataclass(frozen=True, slots=True)
class CacheModelSettings:
    """``[cache.models."<public model name>"]``: what differs for one model."""

    mode: str | None = None
    ttl: float | None = None
    similarity_threshold: float | None = None


@dataclass(frozen=True, slots=True)
class CacheSettings:
    # "off": an answer is never replayed; "exact": the same request (every
    # parameter that changes the answer) is; "semantic": also a paraphrase of
    # the last user turn in the same context, once the verifier agrees.
    mode: str = "off"
    ttl: float = 3600.0  # the base TTL, adjusted by the prompt's volatility and drift
    min_ttl: float = 60.0
    max_ttl: float = 86400.0
    adaptive_ttl: bool = True
    similarity_threshold: float = 0.86  # chosen on the dev pairs: bench/results/cache_quality.txt
    verifier: bool = True  # a candidate must also pass the verifier (numbers, negation, ...)
    # Explicit temperatures above this are not served semantically (exact still is).
    max_semantic_temperature: float = 0.7
    # Who may share entries: "key" (each virtual key its own), "team", "global".
    partition: str = "key"
    l1_max_entries: int = 4096
    l1_max_bytes: int = 67108864
    l1_ttl: float = 300.0  # an L1 entry is also bounded by its own TTL
    max_entry_bytes: int = 1048576  # bigger answers are not cached
    models: Mapping[str, CacheModelSettings] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EmbeddingSettings:
    # Where the ONNX model is built on first use ("": ~/.cache/smartflow/models).
    model_dir: str = ""
    threads: int = 1  # onnxruntime intra-op threads per worker
    quantized: bool = True  # int8 (2.0 ms a short prompt) or float32 (3.3 ms)
    max_batch: int = 32
    # Rows of the node's shared-memory index (cache, vector stores; float16).
    index_capacity: int = 200000
    ivf_threshold: int = 50000  # live rows in a namespace before the IVF partition is built


@dataclass(frozen=True, slots=True)
class VectorStoreSettings:
    enabled: bool = True
    chunk_size: int = 200  # tokens (all-MiniLM-L6-v2 reads 256)
    chunk_overlap: int = 40
    max_file_bytes: int = 20971520


@dataclass(frozen=True, slots=True)
class PolicySettings:
    # Guardrails run on every proxied call that reaches a provider. With no
    # attachment matching a call, ``default_policy`` applies ("" for none): the
    # built-in "default" holds the two built-in guardrails, pii and
    # prompt_injection, both with action "flag".
    enabled: bool = True
    default_policy: str = "default"
    # The model-based checks (names and addresses, the injection and toxicity
    # classifiers, compliance clauses): each request's text is embedded once.
    # Off: the pattern checks alone (emails, cards, keys, injection rules).
    model_checks: bool = True
    # Whether the default policy (calls no attachment matched) runs them too.
    # Off by default: they cost ~10 ms of CPU a call (bench/guardrail_bench.py),
    # which every call would pay; policies you attach get them.
    default_model_checks: bool = False
    check_output: bool = True  # answers too (whole, and streams as they pass)
    # A stream's text is held back at most this many characters, so a finding
    # that straddles two events is caught before either leaves.
    stream_window: int = 128
    max_scan_chars: int = 100000  # of one request's text (the rest is not scanned)
    remember_decisions_s: float = 604800.0  # how long feedback on a call is accepted
    # At most this many calls are remembered for feedback (~1.2 KB each in
    # Redis): the oldest go first, so memory does not grow with traffic.
    remember_max_calls: int = 100000


@dataclass(frozen=True, slots=True)
class ComplianceSettings:
    # The compliance API also answers on every gateway worker (/api/compliance/*).
    # A port here makes the supervisor run it as a process of its own too
    # ("smartflow: compliance", restarted like a worker when it dies), so
    # reports keep answering while workers restart or are saturated.
    port: int = 0  # 0: no compliance process
    host: str = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str
    provider: str
    id: str = ""  # the deployment's id (default: derived from provider, model and api_base)
    weight: float = 1.0
    priority: int = 0  # lower is tried first
    model: str = ""
    api_base: str = ""
    api_key: str = ""
    api_version: str = ""
    input_price_per_mtok: float | None = None
    output_price_per_mtok: float | None = None
    cached_input_price_per_mtok: float | None = None
    price_per_request: float | None = None
    context_window: int = 0
    max_output_tokens: int = 0  # the model's output limit (0: unknown)
    tags: tuple[str, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    tls_ca_file: str = ""
    tls_client_cert_file: str = ""
    tls_client_key_file: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    state: StateSettings = field(default_factory=StateSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    budgets: BudgetSettings = field(default_factory=BudgetSettings)
    vault: VaultSettings = field(default_factory=VaultSettings)
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    responses: ResponsesSettings = field(default_factory=ResponsesSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    embeddings: EmbeddingSettings = field(default_factory=EmbeddingSettings)
    vector_stores: VectorStoreSettings = field(default_factory=VectorStoreSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    compliance: ComplianceSettings = field(default_factory=ComplianceSettings)
    models: tuple[ModelConfig, ...] = ()
    # The provider SDKs' own variables (OPENAI_API_KEY, ...), read here once so
    # a model resolved by name prefix can use them; nothing else reads the env.
    provider_env: Mapping[str, str] = field(default_factory=dict)
    source: str = ""  # the file the settings came from, "" for built-in defaults


AUDIT_MODES = ("auto", "on", "off")

_SECTIONS: dict[str, type] = {
    "server": ServerSettings,
    "supervisor": SupervisorSettings,
    "state": StateSettings,
    "proxy": ProxySettings,
    "auth": AuthSettings,
    "budgets": BudgetSettings,
    "vault": VaultSettings,
    "routing": RoutingSettings,
    "alerts": AlertSettings,
    "audit": AuditSettings,
    "responses": ResponsesSettings,
    "cache": CacheSettings,
    "embeddings": EmbeddingSettings,
    "vector_stores": VectorStoreSettings,
    "policy": PolicySettings,
    "compliance": ComplianceSettings,
}

# Built-in models when no config file names any: the mock provider answers
# out of the box, so a fresh `smartflow serve` is useful with no set-up.
DEFAULT_MODELS: tuple[ModelConfig, ...] = (
    ModelConfig(
        name="mock-gpt",
        provider="mock",
        model="mock-gpt",
        input_price_per_mtok=0.0,
        output_price_per_mtok=0.0,
        price_per_request=0.0,
    ),
)


def _type_name(value: object) -> str:
    return {bool: "bool", int: "int", float: "float", str: "str", list: "array",
            dict: "table"}.get(type(value), type(value).__name__)


def _coerce(path: str, value: object, annotation: Any) -> object:
    """Check ``value`` against a field annotation, converting only the safe cases."""
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _coerce(path, value, args[0])
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected bool, got {_type_name(value)}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected int, got {_type_name(value)}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{path}: expected float, got {_type_name(value)}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected str, got {_type_name(value)}")
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected array, got {_type_name(value)}")
        item_type = typing.get_args(annotation)[0]
        if isinstance(item_type, type) and dataclasses.is_dataclass(item_type):  # tables
            return tuple(_build(item_type, f"{path}[{i}]", v, {}) for i, v in enumerate(value))
        return tuple(_coerce(f"{path}[{i}]", v, item_type) for i, v in enumerate(value))
    if origin in (Mapping, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected table, got {_type_name(value)}")
        _key_type, value_type = typing.get_args(annotation)
        if isinstance(value_type, type) and dataclasses.is_dataclass(value_type):  # tables
            return types.MappingProxyType(
                {k: _build(value_type, f"{path}.{k}", v, {}) for k, v in value.items()})
        if value_type is Any:
            return types.MappingProxyType(dict(value))
        return types.MappingProxyType(
            {k: _coerce(f"{path}.{k}", v, value_type) for k, v in value.items()}
        )
    return value


def _build(cls: type, path: str, table: object, environ: Mapping[str, str]) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: expected table, got {_type_name(table)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - names)
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}: unknown key")
    kwargs: dict[str, object] = {}
    for name, value in table.items():
        value = _coerce(f"{path}.{name}", value, hints[name])
        if isinstance(value, str) and value.startswith("env:"):
            value = _resolve_env_secret(f"{path}.{name}", value, environ)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        missing = [
            f.name for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            and f.name not in kwargs
        ]
        if missing:
            raise ConfigError(f"{path}.{missing[0]}: required key is missing") from exc
        raise ConfigError(f"{path}: {exc}") from exc


def _resolve_env_secret(path: str, value: str, environ: Mapping[str, str]) -> str:
    # An unset variable is not an error at load time: a model whose key is
    # missing fails its own calls with a clear 401, the rest keep working.
    return environ.get(value[4:], "")


def _parse_env_value(raw: str) -> object:
    """Environment values are TOML literals when they parse as one, else strings."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, object]]:
    found: dict[str, dict[str, object]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX):].partition("__")
        section, key = section.lower(), key.lower()
        if section not in _SECTIONS:
            raise ConfigError(f"{name}: unknown section {section!r}")
        found.setdefault(section, {})[key] = _parse_env_value(raw)
    return found


# Variables the product documents name outside the SMARTFLOW_<SECTION>__<KEY> scheme.
WEBHOOK_ENV_VARS = {"SLACK_WEBHOOK_URL": "slack_webhook_url",
                    "TEAMS_WEBHOOK_URL": "teams_webhook_url",
                    "DISCORD_WEBHOOK_URL": "discord_webhook_url"}
ROUTING_STRATEGY_ENV = "SMARTFLOW_ROUTING_STRATEGY"
PROVIDER_BUDGETS_ENV = "SMARTFLOW_PROVIDER_BUDGETS"


def _named_env_overrides(environ: Mapping[str, str], merged: Mapping[str, Any]
                         ) -> dict[str, dict[str, object]]:
    found: dict[str, dict[str, object]] = {}
    strategy = environ.get(ROUTING_STRATEGY_ENV, "").strip()
    if strategy:
        found.setdefault("routing", {})["strategy"] = strategy
    budgets = environ.get(PROVIDER_BUDGETS_ENV, "").strip()
    if budgets:
        # Merged over the file's table: the variable sets the providers it names.
        routing = merged.get("routing")
        table = dict(routing.get("provider_daily_budgets", {})) if isinstance(routing, dict) else {}
        table.update(parse_provider_budgets(budgets))
        found.setdefault("routing", {})["provider_daily_budgets"] = table
    for var, key in WEBHOOK_ENV_VARS.items():
        url = environ.get(var, "").strip()
        if url:
            found.setdefault("alerts", {})[key] = url
    return found


def parse_provider_budgets(text: str) -> dict[str, float]:
    """``openai:100,anthropic:50`` -> {"openai": 100.0, "anthropic": 50.0}."""
    budgets: dict[str, float] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        provider, sep, amount = item.partition(":")
        try:
            if not sep:
                raise ValueError
            value = float(amount)
        except ValueError:
            raise ConfigError(f"{PROVIDER_BUDGETS_ENV}: expected provider:usd[,provider:usd], "
                              f"got {item!r}") from None
        budgets[provider.strip()] = value
    return budgets


def default_config_path() -> str | None:
    """./config.toml when present, else None (built-in defaults)."""
    return "config.toml" if Path("config.toml").is_file() else None


def load_settings(
    path: str | None,
    overrides: Mapping[str, Mapping[str, object]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the one Settings object: defaults < file < environment < overrides."""
    env = os.environ if environ is None else environ
    document: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                document = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: file not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    unknown = sorted(set(document) - set(_SECTIONS) - {"models"})
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section")
    merged: dict[str, dict[str, object]] = {
        name: dict(document.get(name, {})) if isinstance(document.get(name, {}), dict)
        else document[name]
        for name in _SECTIONS
    }
    for layer in (_named_env_overrides(env, merged), _env_overrides(env), overrides or {}):
        for section, values in layer.items():
            if section not in _SECTIONS:
                raise ConfigError(f"{section}: unknown section")
            merged.setdefault(section, {}).update(values)
    sections = {name: _build(cls, name, merged[name], env) for name, cls in _SECTIONS.items()}
    raw_models = document.get("models", [])
    if not isinstance(raw_models, list):
        raise ConfigError(f"models: expected array of tables, got {_type_name(raw_models)}")
    models = tuple(
        _build(ModelConfig, f"models[{i}]", m, env) for i, m in enumerate(raw_models)
    ) or DEFAULT_MODELS
    provider_env = types.MappingProxyType(
        {name: env[name] for name in PROVIDER_ENV_VARS if env.get(name)}
    )
    settings = Settings(models=models, provider_env=provider_env, source=path or "",
                        **sections)
    _check_values(settings)
    return settings


def _check_values(settings: Settings) -> None:
    server = settings.server
    if not 0 <= server.port <= 65535:
        raise ConfigError(f"server.port: must be 0-65535, got {server.port}")
    if server.workers < 0:
        raise ConfigError(f"server.workers: must be >= 0, got {server.workers}")
    for name in ("shutdown_timeout", "header_timeout", "keepalive_timeout"):
        if getattr(server, name) <= 0:
            raise ConfigError(f"server.{name}: must be > 0")
    if server.max_header_bytes < 1024:
        raise ConfigError("server.max_header_bytes: must be >= 1024")
    if server.max_body_bytes < 1:
        raise ConfigError("server.max_body_bytes: must be >= 1")
    if bool(server.tls_cert_file) != bool(server.tls_key_file):
        raise ConfigError("server.tls_cert_file: tls_cert_file and tls_key_file go together")
    proxy = settings.proxy
    for name in ("stream_keepalive_interval", "stream_idle_timeout"):
        if not getattr(proxy, name) >= 0:  # also refuses nan
            raise ConfigError(f"proxy.{name}: must be >= 0 (0 disables)")
    auth = settings.auth
    for name in ("key_cache_ttl", "jwt_ttl", "jwt_key_max_age"):
        if not getattr(auth, name) > 0:
            raise ConfigError(f"auth.{name}: must be > 0")
    budgets = settings.budgets
    _check_timezone(budgets.timezone)
    if not budgets.reservation_ttl > 0:
        raise ConfigError("budgets.reservation_ttl: must be > 0")
    if budgets.default_max_output_tokens < 1:
        raise ConfigError("budgets.default_max_output_tokens: must be >= 1")
    if not settings.state.redis_timeout > 0:
        raise ConfigError("state.redis_timeout: must be > 0")
    _check_routing(settings)
    _check_alerts(settings.alerts)
    _check_audit(settings.audit)
    _check_cache(settings)
    _check_policy(settings.policy)
    if not 0 <= settings.compliance.port <= 65535:
        raise ConfigError("compliance.port: must be 0 (off) to 65535")
    worker_timeout = settings.supervisor.worker_timeout
    if not worker_timeout >= 0:  # also refuses nan
        raise ConfigError(
            f"supervisor.worker_timeout: must be >= 0 (0 disables), got {worker_timeout}"
        )
    # Several entries may share a public name: they are deployments of one
    # model, for balancing and fallback.
    for i, model in enumerate(settings.models):
        if not model.name:
            raise ConfigError(f"models[{i}].name: must not be empty")
        if model.provider not in PROVIDERS:
            raise ConfigError(
                f"models[{i}].provider: unknown provider {model.provider!r} "
                f"(one of: {', '.join(PROVIDERS)})"
            )


def _check_policy(policy: PolicySettings) -> None:
    if policy.stream_window < 16:
        raise ConfigError("policy.stream_window: must be >= 16 (characters)")
    if policy.max_scan_chars < 1000:
        raise ConfigError("policy.max_scan_chars: must be >= 1000")
    if not policy.remember_decisions_s > 0:
        raise ConfigError("policy.remember_decisions_s: must be > 0")
    if policy.remember_max_calls < 1:
        raise ConfigError("policy.remember_max_calls: must be >= 1")


def _check_cache(settings: Settings) -> None:
    cache = settings.cache
    if cache.mode not in CACHE_MODES:
        raise ConfigError(f"cache.mode: unknown mode {cache.mode!r} (one of: {', '.join(CACHE_MODES)})")
    if cache.partition not in CACHE_PARTITIONS:
        raise ConfigError(f"cache.partition: unknown partition {cache.partition!r} "
                          f"(one of: {', '.join(CACHE_PARTITIONS)})")
    if not 0 < cache.min_ttl <= cache.max_ttl:
        raise ConfigError("cache.min_ttl: must be > 0 and <= cache.max_ttl")
    if not cache.ttl > 0:
        raise ConfigError("cache.ttl: must be > 0")
    tables: list[tuple[str, CacheSettings | CacheModelSettings]] = [
        ("", cache), *((f"models.{k}.", v) for k, v in cache.models.items())]
    for name, model in tables:
        threshold = model.similarity_threshold
        if threshold is not None and not 0 < threshold <= 1:
            raise ConfigError(f"cache.{name}similarity_threshold: must be in (0, 1]")
        if isinstance(model, CacheModelSettings):
            if model.mode is not None and model.mode not in CACHE_MODES:
                raise ConfigError(f"cache.{name}mode: unknown mode {model.mode!r} "
                                  f"(one of: {', '.join(CACHE_MODES)})")
            if model.ttl is not None and not model.ttl > 0:
                raise ConfigError(f"cache.{name}ttl: must be > 0")
    for name in ("l1_max_entries", "l1_max_bytes", "max_entry_bytes"):
        if getattr(cache, name) < 0:
            raise ConfigError(f"cache.{name}: must be >= 0")
    embeddings = settings.embeddings
    if embeddings.threads < 1 or embeddings.max_batch < 1:
        raise ConfigError("embeddings.threads and embeddings.max_batch: must be >= 1")
    if embeddings.index_capacity < 1000:
        raise ConfigError("embeddings.index_capacity: must be >= 1000")
    stores = settings.vector_stores
    if not 16 <= stores.chunk_size <= 8192 or not 0 <= stores.chunk_overlap < stores.chunk_size:
        raise ConfigError("vector_stores.chunk_size: 16-8192 tokens, and chunk_overlap below it")


def _check_routing(settings: Settings) -> None:
    routing = settings.routing
    for where, name in [("routing.strategy", routing.strategy)] + [
            (f"routing.strategy_by_model.{model}", strategy)
            for model, strategy in routing.strategy_by_model.items()]:
        if name not in STRATEGIES:
            raise ConfigError(f"{where}: unknown strategy {name!r} (one of: {', '.join(STRATEGIES)})")
    for name in ("retries", "chain_retries"):
        if not 0 <= getattr(routing, name) <= 10:
            raise ConfigError(f"routing.{name}: must be 0-10")
    if routing.max_attempts < 1:
        raise ConfigError("routing.max_attempts: must be >= 1")
    for name in ("retry_backoff", "retry_backoff_max", "max_retry_after", "attempt_timeout",
                 "cooldown_window", "cooldown_time"):
        if not getattr(routing, name) >= 0:
            raise ConfigError(f"routing.{name}: must be >= 0")
    if routing.cooldown_failures < 1:
        raise ConfigError("routing.cooldown_failures: must be >= 1")
    if not 0 <= routing.latency_exploration <= 1:
        raise ConfigError("routing.latency_exploration: must be between 0 and 1")
    for provider, usd in routing.provider_daily_budgets.items():
        if provider not in PROVIDERS:
            raise ConfigError(f"routing.provider_daily_budgets.{provider}: unknown provider")
        if not usd >= 0:
            raise ConfigError(f"routing.provider_daily_budgets.{provider}: must be >= 0")
    names: set[str] = set()
    for i, chain in enumerate(routing.fallback_chains):
        where = f"routing.fallback_chains[{i}]"
        if not chain.name or chain.name in names:
            raise ConfigError(f"{where}.name: must be non-empty and unique")
        names.add(chain.name)
        if not chain.targets or any(not t for t in chain.targets):
            raise ConfigError(f"{where}.targets: must list at least one target")
        if chain.retries is not None and not 0 <= chain.retries <= 10:
            raise ConfigError(f"{where}.retries: must be 0-10")
    ids: set[str] = set()
    for i, model in enumerate(settings.models):
        if not model.weight > 0:
            raise ConfigError(f"models[{i}].weight: must be > 0")
        if model.id:
            if model.id in ids:
                raise ConfigError(f"models[{i}].id: {model.id!r} is used twice")
            ids.add(model.id)


def _check_audit(audit: AuditSettings) -> None:
    if audit.mode not in AUDIT_MODES:
        raise ConfigError(f"audit.mode: expected one of {', '.join(AUDIT_MODES)}, "
                          f"got {audit.mode!r}")
    if audit.max_body_bytes < 0:
        raise ConfigError("audit.max_body_bytes: must be >= 0")
    if audit.retention_days < 0:
        raise ConfigError("audit.retention_days: must be >= 0 (0 keeps everything)")
    if audit.stream_max_len < 1000:
        raise ConfigError("audit.stream_max_len: must be >= 1000")
    if not 1 <= audit.batch_size <= 10000:
        raise ConfigError("audit.batch_size: must be 1-10000")
    for name in ("claim_idle", "sink_retry_max", "query_timeout"):
        if not getattr(audit, name) > 0:
            raise ConfigError(f"audit.{name}: must be > 0")
    if audit.postgres_dsn and not audit.postgres_dsn.startswith(("postgres://", "postgresql://")):
        raise ConfigError("audit.postgres_dsn: expected a postgresql:// URL (or env:NAME)")
    if audit.mongodb_url and not audit.mongodb_url.startswith(("mongodb://", "mongodb+srv://")):
        raise ConfigError("audit.mongodb_url: expected a mongodb:// URL (or env:NAME)")


def audit_enabled(settings: Settings) -> bool:
    """Whether calls are recorded (and a shipper runs)."""
    audit = settings.audit
    if audit.mode == "auto":
        return bool(audit.postgres_dsn or audit.mongodb_url)
    return audit.mode == "on"


def cache_enabled(settings: Settings) -> bool:
    """Whether any model's answers may be cached (the cache stage is installed)."""
    cache = settings.cache
    return cache.mode != "off" or any(m.mode not in (None, "off") for m in cache.models.values())


def semantic_enabled(settings: Settings) -> bool:
    """Whether any model is cached semantically (the embedding model is needed)."""
    cache = settings.cache
    return cache.mode == "semantic" or any(m.mode == "semantic" for m in cache.models.values())


def policy_models_on_every_call(settings: Settings) -> bool:
    """Whether every call's guardrails run the model-based checks (the default
    policy's too): then the models are worth loading before the fork. Else a
    worker loads them when a policy that needs them first runs."""
    policy = settings.policy
    return policy.enabled and policy.model_checks and policy.default_model_checks


def encoder_wanted(settings: Settings) -> bool:
    """Whether workers embed on every call (worth loading before the fork)."""
    return semantic_enabled(settings) or policy_models_on_every_call(settings)


def index_wanted(settings: Settings) -> bool:
    """Whether a node needs the shared embedding index (semantic cache or vector stores)."""
    return semantic_enabled(settings) or settings.vector_stores.enabled


def _check_alerts(alerts: AlertSettings) -> None:
    for threshold in alerts.budget_thresholds:
        if not 0 < threshold <= 10:
            raise ConfigError("alerts.budget_thresholds: shares between 0 and 10 (0.8 = 80%)")
    for name in ("failure_spike_window", "slow_call_seconds", "dedupe_window", "timeout"):
        if not getattr(alerts, name) > 0:
            raise ConfigError(f"alerts.{name}: must be > 0")
    if alerts.failure_spike_count < 1 or alerts.max_per_minute < 1:
        raise ConfigError("alerts: failure_spike_count and max_per_minute must be >= 1")


def _check_timezone(name: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"budgets.timezone: unknown time zone {name!r}") from None


def worker_count(settings: Settings) -> int:
    return settings.server.workers or (os.cpu_count() or 1)

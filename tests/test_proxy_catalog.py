"""Model resolution: configured names, explicit provider prefixes, name prefixes, overrides."""

from __future__ import annotations

import orjson
import pytest

from smartflow.config import ModelConfig, Settings
from smartflow.dialects import openai as openai_dialect
from smartflow.gateway_error import GatewayError, Reason
from smartflow.http.request import Request
from smartflow.provider_registry import provider_env_var_names
from smartflow.providers.base import Target
from smartflow.proxy.call import Call
from smartflow.proxy.catalog import Catalog, ModelNotFound
from smartflow.proxy.context import ProxyContext, build_proxy_context
from smartflow.proxy.cost import load_price_table
from smartflow.proxy.openai_routes import ChatOperation
from smartflow.proxy.stages import RouteStage

PRICES = load_price_table()


def catalog(*models: ModelConfig, environ: dict[str, str] | None = None) -> Catalog:
    return Catalog(tuple(models), PRICES, environ)


@pytest.mark.parametrize(
    ("name", "provider"),
    [
        ("gpt-4o", "openai"),
        ("gpt-4o-mini-2024-07-18", "openai"),
        ("o1", "openai"),
        ("o1-mini", "openai"),
        ("o3-mini", "openai"),
        ("o4-mini", "openai"),
        ("claude-sonnet-4-5", "anthropic"),
        ("gemini-2.5-flash", "gemini"),
        ("mistral-large-latest", "mistral"),
        ("codestral-latest", "mistral"),
        ("command-r-plus", "cohere"),
    ],
)
def test_names_not_configured_resolve_by_their_prefix(name: str, provider: str) -> None:
    target = catalog().resolve(name)
    assert target.provider == provider
    assert target.model == name
    assert target.public_name == name


def test_ollama_and_azure_prefixes_strip_the_provider_from_the_model_id() -> None:
    found = catalog(environ={"AZURE_OPENAI_ENDPOINT": "https://x.openai.azure.com"})
    ollama = found.resolve("ollama/llama3.1:8b")
    assert (ollama.provider, ollama.model) == ("ollama", "llama3.1:8b")
    azure = found.resolve("azure/my-deployment")
    assert (azure.provider, azure.model) == ("azure", "my-deployment")
    assert azure.api_base == "https://x.openai.azure.com"


def test_an_explicit_provider_prefix_beats_the_name_prefix_rules() -> None:
    target = catalog().resolve("openai/claude-lookalike")
    assert (target.provider, target.model) == ("openai", "claude-lookalike")
    target = catalog().resolve("mistral/gpt-oss")
    assert (target.provider, target.model) == ("mistral", "gpt-oss")


def test_configured_names_come_first_and_the_first_of_a_shared_name_is_used() -> None:
    models = (
        ModelConfig(name="gpt-4o", provider="mock", model="mock-a"),
        ModelConfig(name="gpt-4o", provider="openai", model="gpt-4o"),
    )
    target = catalog(*models).resolve("gpt-4o")
    assert (target.provider, target.model) == ("mock", "mock-a")
    assert len(catalog(*models).deployments("gpt-4o")) == 2


def test_a_configured_model_without_an_upstream_id_uses_its_public_name() -> None:
    target = catalog(ModelConfig(name="mock-gpt", provider="mock")).resolve("mock-gpt")
    assert target.model == "mock-gpt"


def test_prefix_resolved_models_borrow_base_and_key_from_the_first_configured_model() -> None:
    models = (
        ModelConfig(name="my-gpt", provider="openai", model="gpt-4o-mini",
                    api_base="http://127.0.0.1:9/v1", api_key="sk-configured",
                    tls_ca_file="/ca.pem"),
    )
    target = catalog(*models, environ={"OPENAI_API_KEY": "sk-env"}).resolve("gpt-4.1")
    assert target.api_base == "http://127.0.0.1:9/v1"
    assert target.api_key == "sk-configured"
    assert target.tls_ca_file == "/ca.pem"


def test_without_a_configured_model_the_key_comes_from_the_sdk_environment_variable() -> None:
    found = catalog(environ={"OPENAI_API_KEY": "sk-env", "ANTHROPIC_API_KEY": "sk-ant-env",
                             "CO_API_KEY": "co-env", "GEMINI_API_KEY": "g-env"})
    assert found.resolve("gpt-4o").api_key == "sk-env"
    assert found.resolve("gpt-4o").api_base == ""  # the adapter's public endpoint
    assert found.resolve("claude-haiku-4-5").api_key == "sk-ant-env"
    assert found.resolve("command-r").api_key == "co-env"
    assert found.resolve("gemini-2.0-flash").api_key == "g-env"
    assert "OPENAI_API_KEY" in provider_env_var_names()


@pytest.mark.parametrize("name", ["llama-3", "", "unknown/model", "ollama/", "x" * 300,
                                  "azure/needs-an-endpoint",
                                  "openai_compatible/needs-a-base"])
def test_unknown_names_are_not_found(name: str) -> None:
    with pytest.raises(ModelNotFound):
        catalog().resolve(name)


def test_prices_come_from_the_table_and_the_config_overrides_them() -> None:
    assert catalog().resolve("gpt-4o-2024-08-06").prices.input_per_mtok == 2.5
    configured = catalog(ModelConfig(name="cheap", provider="openai", model="gpt-4o",
                                     input_price_per_mtok=1.0)).resolve("cheap")
    assert configured.prices.input_per_mtok == 1.0
    assert configured.prices.output_per_mtok == 10.0


def _request(headers: list[tuple[bytes, bytes]]) -> Request:
    return Request("POST", "/v1/chat/completions", b"", headers, None, "1.1")


async def _routed(context: ProxyContext, request: Request, model: str) -> Target:
    """The target the pipeline's route stage picks for ``model``."""
    call = Call(request, openai_dialect.DIALECT, "chat")
    call.raw_body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "x"}]})
    ChatOperation().prepare(call)
    await RouteStage(context.catalog).on_enter(call)
    assert call.target is not None
    return call.target


async def test_the_x_smartflow_model_header_overrides_the_body_model() -> None:
    context = build_proxy_context(Settings(models=(
        ModelConfig(name="a", provider="mock"), ModelConfig(name="b", provider="openai",
                                                            model="gpt-4o"))))
    assert (await _routed(context, _request([]), "a")).public_name == "a"
    override = _request([(b"x-smartflow-model", b"b")])
    assert (await _routed(context, override, "a")).public_name == "b"


async def test_an_unknown_model_is_a_404_with_code_model_not_found() -> None:
    context = build_proxy_context(Settings())
    with pytest.raises(GatewayError) as caught:
        await _routed(context, _request([]), "no-such-model")
    assert caught.value.status == 404
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"
    assert caught.value.reason is Reason.CLIENT

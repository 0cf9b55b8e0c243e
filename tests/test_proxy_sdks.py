"""The official openai and anthropic SDKs, unchanged, against the real gateway process.

One gateway (a real `smartflow serve`) fronts a mock upstream of every
provider, each speaking its provider's real wire format; every adapter is
exercised sync and async, streaming and not, with tools, embeddings and
legacy completions where the provider has them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import anthropic
import openai
import pytest
from harness.gateway import GatewayProcess
from upstreams.anthropic_mock import ProviderMockState, build_anthropic_mock
from upstreams.cohere_mock import build_cohere_mock
from upstreams.gemini_mock import build_gemini_mock
from upstreams.ollama_mock import build_ollama_mock
from upstreams.openai_mock import build_openai_mock
from upstreams.server import UpstreamThread
from upstreams.state import UpstreamState

# public model name -> provider
ADAPTER_MODELS = {
    "gpt-test": "openai",
    "azure-test": "azure",
    "mistral-test": "mistral",
    "compat-test": "openai_compatible",
    "claude-test": "anthropic",
    "gemini-test": "gemini",
    "cohere-test": "cohere",
    "ollama-test": "ollama",
    "mock-test": "mock",
}
EMBEDDING_MODELS = ["gpt-test", "azure-test", "mistral-test", "compat-test", "gemini-test",
                    "cohere-test", "ollama-test", "mock-test"]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


@dataclass
class Stack:
    gateway: GatewayProcess
    openai_state: UpstreamState
    provider_state: ProviderMockState  # anthropic, gemini, cohere share one state class
    anthropic_state: ProviderMockState
    ollama_state: UpstreamState

    @property
    def url(self) -> str:
        return self.gateway.url


def _models(openai_url: str, anthropic_url: str, gemini_url: str, cohere_url: str,
            ollama_url: str) -> list[dict[str, object]]:
    return [
        {"name": "gpt-test", "provider": "openai", "model": "gpt-4o-mini",
         "api_base": openai_url + "/v1", "api_key": "sk-openai-test",
         "input_price_per_mtok": 1.0, "output_price_per_mtok": 2.0},
        {"name": "azure-test", "provider": "azure", "model": "my-deployment",
         "api_base": openai_url, "api_key": "azure-test-key", "api_version": "2024-10-21"},
        {"name": "mistral-test", "provider": "mistral", "model": "mistral-small-latest",
         "api_base": openai_url + "/mistral/v1", "api_key": "mistral-test-key"},
        {"name": "compat-test", "provider": "openai_compatible", "model": "qwen2.5",
         "api_base": openai_url + "/compat/v1"},
        {"name": "claude-test", "provider": "anthropic", "model": "claude-sonnet-4-5",
         "api_base": anthropic_url, "api_key": "sk-ant-test"},
        {"name": "gemini-test", "provider": "gemini", "model": "gemini-2.0-flash",
         "api_base": gemini_url, "api_key": "gemini-test-key"},
        {"name": "cohere-test", "provider": "cohere", "model": "command-r",
         "api_base": cohere_url, "api_key": "cohere-test-key"},
        {"name": "ollama-test", "provider": "ollama", "model": "llama3.1",
         "api_base": ollama_url},
        {"name": "mock-test", "provider": "mock", "model": "mock-gpt"},
    ]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    openai_state = UpstreamState()
    anthropic_state = ProviderMockState()
    provider_state = ProviderMockState()
    ollama_state = UpstreamState()
    threads = [
        UpstreamThread(build_openai_mock(openai_state)),
        UpstreamThread(build_anthropic_mock(anthropic_state)),
        UpstreamThread(build_gemini_mock(provider_state)),
        UpstreamThread(build_cohere_mock(provider_state)),
        UpstreamThread(build_ollama_mock(ollama_state)),
    ]
    try:
        config = {"server": {"access_log": False},
                  "models": _models(*(thread.url for thread in threads))}
        with GatewayProcess(config, workers=1) as gateway:
            yield Stack(gateway, openai_state, provider_state, anthropic_state, ollama_state)
            assert "Traceback" not in gateway.output_text()
    finally:
        for thread in threads:
            thread.stop()


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=stack.url + "/v1", api_key="anything", max_retries=0,
                       timeout=20) as sdk:
        yield sdk


ALL = list(ADAPTER_MODELS)


@pytest.mark.parametrize("model", ALL)
def test_a_sync_chat_completion_works_for_every_adapter(client: openai.OpenAI,
                                                        model: str) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "Say hello"}], max_tokens=50)
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert raw.headers["x-smartflow-provider"] == ADAPTER_MODELS[model]
    assert raw.headers["x-smartflow-cache-hit"] == "false"
    assert float(raw.headers["x-smartflow-response-cost"]) >= 0
    assert raw.headers["x-smartflow-call-id"]
    assert float(raw.headers["x-smartflow-duration-ms"]) >= 0


@pytest.mark.parametrize("model", ALL)
def test_a_sync_stream_with_usage_works_for_every_adapter(client: openai.OpenAI,
                                                          model: str) -> None:
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hello"}], stream=True,
        stream_options={"include_usage": True})
    text = ""
    usage = None
    finish = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text
    assert finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens > 0


@pytest.mark.parametrize("model", ALL)
async def test_async_chat_stream_and_non_stream_work_for_every_adapter(stack: Stack,
                                                                       model: str) -> None:
    async with openai.AsyncOpenAI(base_url=stack.url + "/v1", api_key="x", max_retries=0,
                                  timeout=20) as sdk:
        completion = await sdk.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hi async"}])
        assert completion.choices[0].message.content
        stream = await sdk.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hi async"}], stream=True)
        pieces = [chunk async for chunk in stream]
        assert "".join(c.choices[0].delta.content or "" for c in pieces if c.choices)
        # no usage was asked for: no usage-only chunk reaches the client
        assert all(chunk.usage is None for chunk in pieces)


@pytest.mark.parametrize("model", ALL)
def test_tool_calls_come_back_in_openai_shape_for_every_adapter(client: openai.OpenAI,
                                                                model: str) -> None:
    completion = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL], tool_choice={"type": "function",
                                           "function": {"name": "get_weather"}})
    calls = completion.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather"
    assert completion.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("model", EMBEDDING_MODELS)
def test_embeddings_work_for_every_adapter_that_has_them(client: openai.OpenAI,
                                                         model: str) -> None:
    result = client.embeddings.create(model=model, input=["one", "two"])
    assert len(result.data) == 2
    assert len(result.data[0].embedding) > 0


def test_embeddings_on_a_provider_without_them_is_a_clear_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="claude-test", input="x")
    assert "embeddings" in caught.value.message


@pytest.mark.parametrize("model", ["gpt-test", "compat-test", "mock-test", "claude-test",
                                   "gemini-test", "ollama-test"])
def test_legacy_completions_work_natively_or_translated(client: openai.OpenAI,
                                                        model: str) -> None:
    completion = client.completions.create(model=model, prompt="Once upon a time",
                                           max_tokens=20)
    assert completion.object == "text_completion"
    assert completion.choices[0].text
    stream = client.completions.create(model=model, prompt="Once upon a time", max_tokens=20,
                                       stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream if chunk.choices)


def test_models_list_the_configured_names_and_unknown_ids_are_404(
        client: openai.OpenAI) -> None:
    names = [m.id for m in client.models.list()]
    assert names == list(ADAPTER_MODELS)
    assert client.models.retrieve("gpt-test").owned_by == "openai"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"


def test_upstream_errors_keep_their_status_and_a_429_keeps_retry_after(
        stack: Stack, client: openai.OpenAI) -> None:
    stack.openai_state.fail_next = (429, {"error": {"message": "slow down",
                                                    "type": "requests", "code": None}})
    stack.openai_state.fail_next_headers = [("retry-after", "7")]
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-test",
                                       messages=[{"role": "user", "content": "x"}])
    assert caught.value.response.headers["retry-after"] == "7"
    assert "slow down" in caught.value.message


def test_a_context_length_error_is_recognisable(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="openai/context-overflow",
                                       messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "context_length_exceeded"


# -- the anthropic SDK -------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(("base", "model"), [
    ("/anthropic", "claude-sonnet-4-5"),  # native passthrough
    ("", "claude-test"),  # /v1/messages -> a configured Anthropic model, natively
    ("", "claude-sonnet-4-5"),  # /v1/messages -> Anthropic by name prefix
    ("", "gpt-test"),  # /v1/messages translated to OpenAI
    ("", "gemini-test"),  # ... and to Gemini
])
def test_the_anthropic_sdk_works_against_both_base_urls(stack: Stack, base: str,
                                                        model: str) -> None:
    sdk = anthropic.Anthropic(base_url=stack.url + base, api_key="caller-key", max_retries=0,
                              timeout=20)
    upstream_model = model
    message = sdk.messages.create(model=upstream_model, max_tokens=100,
                                  messages=[{"role": "user", "content": "Hello Claude"}])
    assert message.content[0].type == "text" and message.content[0].text
    assert message.usage.output_tokens > 0
    with sdk.messages.stream(model=upstream_model, max_tokens=100,
                             messages=[{"role": "user", "content": "Hello Claude"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text
    assert final.stop_reason in ("end_turn", "max_tokens")


async def test_the_async_anthropic_sdk_streams_a_translated_model(stack: Stack) -> None:
    async with anthropic.AsyncAnthropic(base_url=stack.url, api_key="k", max_retries=0,
                                        timeout=20) as sdk:
        async with sdk.messages.stream(model="mock-test", max_tokens=50, messages=[
                {"role": "user", "content": "Hi"}]) as stream:
            text = "".join([piece async for piece in stream.text_stream])
        assert text.startswith("Mock response to: Hi")
        count = await sdk.messages.count_tokens(model="mock-test", messages=[
            {"role": "user", "content": "Hi there"}])
        assert count.input_tokens > 0


def test_openai_fields_reach_an_openai_upstream_untouched_but_the_model_id(
        stack: Stack, client: openai.OpenAI) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    completion = client.chat.completions.create(
        model="gpt-test", n=2, temperature=0.2, seed=7,
        response_format={"type": "json_object"},
        messages=[{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                               image]}],
        extra_body={"some_future_field": {"kept": True}})
    assert len(completion.choices) == 2
    sent = stack.openai_state.last.json
    assert sent["model"] == "gpt-4o-mini"
    assert sent["n"] == 2 and sent["seed"] == 7
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["messages"][0]["content"][1] == image
    assert sent["some_future_field"] == {"kept": True}
    assert "stream_options" not in sent  # never added behind the caller's back

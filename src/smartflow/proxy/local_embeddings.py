"""Answer ``POST /v1/embeddings`` for ``smartflow/local-embed`` on this machine.

A ``pre_call`` stage: when the call asks for the local model it runs the
bundled all-MiniLM-L6-v2 (through the worker's ``EmbeddingBatcher``) and
answers exactly as OpenAI's embeddings endpoint would — the same object
shape, ``encoding_format: "base64"`` as little-endian float32, the same
400s for what OpenAI refuses — so any OpenAI client works unchanged. Every
other call passes through untouched. Usage is the untruncated token count;
the cost is zero.
"""

from __future__ import annotations

import base64
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import orjson

from smartflow.embeddings.model_files import ModelUnavailable
from smartflow.gateway_error import GatewayError, Reason
from smartflow.http.response import Response
from smartflow.providers.base import Usage
from smartflow.proxy.cost import Cost
from smartflow.proxy.pipeline import Stage

if TYPE_CHECKING:
    # numpy comes with the model: a worker that never embeds never loads it
    import numpy as np

    from smartflow.embeddings.batcher import EmbeddingBatcher
    from smartflow.proxy.call import Call

LOCAL_EMBED_MODEL = "smartflow/local-embed"
MAX_INPUTS = 2048  # OpenAI's limit per request
DIMENSIONS = 384

BatcherGetter = Callable[[], "EmbeddingBatcher | Awaitable[EmbeddingBatcher]"]


def _invalid(message: str, param: str | None = "input") -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", None, param, reason=Reason.CLIENT)


def parse_inputs(body: dict[str, Any]) -> list[str]:
    """The texts to embed, or the 400 OpenAI gives for this ``input``."""
    value = body.get("input")
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list) and value:
        if not all(isinstance(item, str) for item in value):
            if all(isinstance(item, (int, list)) for item in value):
                raise _invalid(f"{LOCAL_EMBED_MODEL} takes text input only: token-id arrays "
                               f"are not supported; send strings.")
            raise _invalid("'$.input' is invalid: expected a string or an array of strings.")
        texts = value
    elif isinstance(value, list):
        raise _invalid("'$.input' is invalid: the array must not be empty.")
    else:
        raise _invalid("'$.input' is invalid: expected a string or an array of strings.")
    if len(texts) > MAX_INPUTS:
        raise _invalid(f"'$.input' is invalid: at most {MAX_INPUTS} inputs are allowed "
                       f"per request, got {len(texts)}.")
    if any(not text for text in texts):
        raise _invalid("'$.input' is invalid: an input must not be an empty string.")
    return texts


def parse_format(body: dict[str, Any]) -> str:
    encoding = body.get("encoding_format")
    if encoding is None:
        return "float"
    if encoding not in ("float", "base64"):
        raise _invalid(f"encoding_format: {encoding!r} is not one of 'float', 'base64'.",
                       "encoding_format")
    return str(encoding)


def check_dimensions(body: dict[str, Any]) -> None:
    dimensions = body.get("dimensions")
    if dimensions is None:
        return
    if isinstance(dimensions, bool) or not isinstance(dimensions, int):
        raise _invalid("dimensions: expected an integer.", "dimensions")
    if dimensions != DIMENSIONS:
        raise _invalid(f"{LOCAL_EMBED_MODEL} produces {DIMENSIONS} dimensions only; "
                       f"dimensions={dimensions} is not supported.", "dimensions")


def render(vectors: np.ndarray, encoding: str, prompt_tokens: int) -> bytes:
    """OpenAI's ``list`` of ``embedding`` objects, as bytes."""
    rows: list[dict[str, Any]] = []
    if encoding == "base64":
        little = vectors.astype("<f4", copy=False)
        for index in range(little.shape[0]):
            rows.append({"object": "embedding", "index": index,
                         "embedding": base64.b64encode(little[index].tobytes()).decode("ascii")})
    else:
        # orjson writes numpy rows straight from their buffer: no Python floats.
        for index in range(vectors.shape[0]):
            rows.append({"object": "embedding", "index": index, "embedding": vectors[index]})
    return orjson.dumps(
        {"object": "list", "data": rows, "model": LOCAL_EMBED_MODEL,
         "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


class LocalEmbeddingStage(Stage):
    slot = "pre_call"

    def __init__(self, batcher: BatcherGetter) -> None:
        # A getter, not the batcher: the model loads on the first local call.
        # It may return an awaitable (a loader that keeps the loop free).
        self._get_batcher = batcher

    async def _batcher(self) -> EmbeddingBatcher:
        try:
            got = self._get_batcher()
            batcher = await got if inspect.isawaitable(got) else got
        except ModelUnavailable as exc:
            raise GatewayError(503, f"The local embedding model is unavailable: {exc}",
                               code="model_unavailable", reason=Reason.INTERNAL) from exc
        return cast("EmbeddingBatcher", batcher)

    async def on_enter(self, call: Call) -> Response | None:
        if call.operation != "embeddings" or call.model != LOCAL_EMBED_MODEL:
            return None
        body = call.body or {}
        texts = parse_inputs(body)
        encoding = parse_format(body)
        check_dimensions(body)
        batcher = await self._batcher()
        vectors, counts = await _embed(batcher, texts)
        prompt_tokens = sum(counts)
        answer = render(vectors, encoding, prompt_tokens)
        call.usage = Usage(prompt_tokens=prompt_tokens)
        call.cost = Cost(0.0, prompt_tokens, 0)
        call.status = 200
        call.answer_body = answer
        return Response(200, answer)


async def _embed(batcher: EmbeddingBatcher, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
    try:
        counts = await batcher.count_tokens(texts)
        vectors = await batcher.embed(texts)
    except GatewayError:
        raise
    except Exception as exc:
        raise GatewayError(500, f"The local embedding model failed: {type(exc).__name__}.",
                           code="local_embedding_failed", reason=Reason.INTERNAL) from exc
    return vectors, counts

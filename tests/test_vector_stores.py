"""Vector stores: the pure helpers, then the OpenAI API over a real server.

The route tests run a real HTTPServer with the vector store routes on a real
Redis, the real embedding model (all-MiniLM-L6-v2 on onnxruntime), a real
shared-memory index and its Redis-stream feed; the openai SDK is the client
where it has a method for the call, httpx elsewhere.
"""

from __future__ import annotations

import itertools
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import httpx
import numpy as np
import openai
import orjson
import pytest
from harness.redis_server import RedisServer
from openai.types.vector_stores import VectorStoreFile
from redis.asyncio import Redis

from smartflow.config import ServerSettings
from smartflow.embeddings.batcher import EmbeddingBatcher
from smartflow.embeddings.encoder import Encoder
from smartflow.embeddings.index_feed import IndexFeed
from smartflow.embeddings.model_files import ensure_model
from smartflow.embeddings.shared_index import SharedIndex
from smartflow.http.request import Request
from smartflow.http.response import Response, error_response
from smartflow.http.router import Router
from smartflow.http.transport import HTTPServer
from smartflow.proxy.auth import presented_key
from smartflow.proxy.call import Principal
from smartflow.vectorstores.chunking import (
    ChunkingError,
    ChunkingStrategy,
    chunk_text,
    estimate_tokens,
    fit_to_model,
    parse_strategy,
    piece_counter,
)
from smartflow.vectorstores.filters import FilterError, compile_filter, validate_attributes
from smartflow.vectorstores.multipart import UploadError, parse_form, upload_text
from smartflow.vectorstores.routes import register_vector_store_routes
from smartflow.vectorstores.service import VectorStoreService
from smartflow.vectorstores.store import PREFIX, namespace_of

# -- filters ------------------------------------------------------------------------

DOCS = [
    {"lang": "en", "year": 2021, "public": True, "team": "ops"},
    {"lang": "fr", "year": 2023, "public": False},
    {"lang": "de", "year": 2024.5, "public": True, "team": "eng"},
    {},
]


def _matching(spec: object) -> list[int]:
    check = compile_filter(spec)
    return [i for i, doc in enumerate(DOCS) if check(doc)]


def test_comparison_filters_select_the_right_files() -> None:
    assert _matching({"type": "eq", "key": "lang", "value": "fr"}) == [1]
    assert _matching({"type": "gt", "key": "year", "value": 2021}) == [1, 2]
    assert _matching({"type": "gte", "key": "year", "value": 2021}) == [0, 1, 2]
    assert _matching({"type": "lt", "key": "year", "value": 2024}) == [0, 1]
    assert _matching({"type": "lte", "key": "lang", "value": "en"}) == [0, 2]
    assert _matching({"type": "in", "key": "lang", "value": ["en", "de"]}) == [0, 2]
    assert _matching({"type": "eq", "key": "public", "value": True}) == [0, 2]


def test_a_missing_key_fails_comparisons_but_passes_ne_and_nin() -> None:
    assert _matching({"type": "ne", "key": "team", "value": "ops"}) == [1, 2, 3]
    assert _matching({"type": "nin", "key": "lang", "value": ["en"]}) == [1, 2, 3]
    assert _matching({"type": "eq", "key": "team", "value": "ops"}) == [0]


def test_values_compare_only_within_their_kind() -> None:
    # Python says True == 1; an attribute filter must not.
    assert _matching({"type": "eq", "key": "public", "value": 1}) == []
    assert _matching({"type": "in", "key": "public", "value": [1]}) == []
    assert _matching({"type": "gt", "key": "lang", "value": 5}) == []


def test_compound_filters_nest() -> None:
    spec = {"type": "or", "filters": [
        {"type": "and", "filters": [{"type": "eq", "key": "public", "value": True},
                                    {"type": "gt", "key": "year", "value": 2022}]},
        {"type": "eq", "key": "lang", "value": "fr"}]}
    assert _matching(spec) == [1, 2]


@pytest.mark.parametrize(("spec", "param"), [
    ({"type": "like", "key": "a", "value": 1}, "filters.type"),
    ({"type": "eq", "value": 1}, "filters.key"),
    ({"type": "eq", "key": "a"}, "filters.value"),
    ({"type": "eq", "key": "a", "value": {"x": 1}}, "filters.value"),
    ({"type": "gt", "key": "a", "value": True}, "filters.value"),
    ({"type": "in", "key": "a", "value": []}, "filters.value"),
    ({"type": "in", "key": "a", "value": ["x", None]}, "filters.value[1]"),
    ({"type": "and", "filters": []}, "filters.filters"),
    ({"type": "or", "filters": [{"type": "eq", "key": "a", "value": 1}, "x"]},
     "filters.filters[1]"),
    ("eq", "filters"),
])
def test_a_malformed_filter_names_the_bad_field(spec: object, param: str) -> None:
    with pytest.raises(FilterError) as caught:
        compile_filter(spec)
    assert caught.value.param == param


def test_attribute_limits_follow_openai() -> None:
    assert validate_attributes({"a": "x", "n": 2.5, "b": False}) == {"a": "x", "n": 2.5,
                                                                     "b": False}
    assert validate_attributes(None) == {}
    for bad in ({"a": [1]}, {"a": None}, {"": 1}, {"k" * 65: 1}, {"a": "x" * 513},
                {str(i): i for i in range(17)}, ["a"], {"a": float("nan")}):
        with pytest.raises(FilterError):
            validate_attributes(bad)


# -- chunking -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder(ensure_model())


PARAGRAPH = (
    "The quarterly report covers revenue, churn and hiring. Revenue grew by eleven percent "
    "while churn stayed flat. Hiring slowed in the second half because of budget limits. "
)


def test_chunks_fit_the_model_and_overlap(encoder: Encoder) -> None:
    text = "\n\n".join(f"Section {i}. " + PARAGRAPH * 3 for i in range(12))
    strategy = ChunkingStrategy(120, 30)
    chunks = chunk_text(text, strategy, piece_counter(encoder.count_tokens))
    assert len(chunks) > 5
    real = encoder.count_tokens([chunk.text for chunk in chunks])
    assert max(real) <= 120
    assert min(real[:-1]) >= 60  # a sentence cut keeps at least half a window
    for before, after in itertools.pairwise(chunks):
        assert after.start < before.end  # each chunk repeats the end of the one before
        assert after.start > before.start
    # Every word of the text is in some chunk.
    covered = set()
    for chunk in chunks:
        covered.update(range(chunk.start, chunk.end))
    assert all(i in covered for i, char in enumerate(text) if not char.isspace())


def test_chunks_end_at_sentence_ends_when_they_can(encoder: Encoder) -> None:
    chunks = chunk_text(PARAGRAPH * 20, ChunkingStrategy(100, 20),
                        piece_counter(encoder.count_tokens))
    assert all(chunk.text.endswith(".") for chunk in chunks)


def test_unbroken_text_still_splits() -> None:
    blob = "A" * 20000  # base64, minified JSON: no whitespace at all
    chunks = chunk_text(blob, ChunkingStrategy(100, 0))
    assert len(chunks) > 1
    assert "".join(chunk.text for chunk in chunks) == blob
    assert max(chunk.tokens for chunk in chunks) <= 100


def test_the_estimate_errs_high(encoder: Encoder) -> None:
    text = PARAGRAPH * 4 + " naïve café 東京 {\"k\": [1, 2]} x-ray e.g."
    pieces = text.split()
    estimated = estimate_tokens(pieces)
    real = encoder.count_tokens(pieces)
    assert sum(estimated) >= sum(real)


def test_empty_text_has_no_chunks() -> None:
    assert chunk_text("  \n\t ", ChunkingStrategy()) == []


def test_strategy_parsing_and_the_model_window() -> None:
    default = ChunkingStrategy()
    assert parse_strategy(None, default) is default
    assert parse_strategy({"type": "auto"}, default) is default
    parsed = parse_strategy({"type": "static", "static": {"max_chunk_size_tokens": 800,
                                                          "chunk_overlap_tokens": 400}}, default)
    assert parsed == ChunkingStrategy(800, 400)
    fitted = fit_to_model(parsed)
    assert fitted.max_chunk_size_tokens == 254 and fitted.chunk_overlap_tokens == 127
    for bad in ({"type": "static", "static": {"max_chunk_size_tokens": 50,
                                              "chunk_overlap_tokens": 0}},
                {"type": "static", "static": {"max_chunk_size_tokens": 200,
                                              "chunk_overlap_tokens": 150}},
                {"type": "static"}, {"type": "other"}, "auto"):
        with pytest.raises(ChunkingError):
            parse_strategy(bad, default)


# -- uploads ------------------------------------------------------------------------

def _form(*parts: tuple[str, str | None, str | None, bytes]) -> tuple[bytes, str]:
    boundary = "----smartflowtest7MA4YWxkTrZu0gW"
    out = b""
    for name, filename, content_type, data in parts:
        out += f"--{boundary}\r\n".encode()
        disposition = f'Content-Disposition: form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += disposition.encode() + b"\r\n"
        if content_type:
            out += f"Content-Type: {content_type}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


def test_a_form_is_parsed_by_field_name() -> None:
    body, content_type = _form(("file", "notes.md", "text/markdown", b"# Title\r\nbody\r\n"),
                               ("attributes", None, None, b'{"a": 1}'))
    form = parse_form(body, content_type)
    assert form["file"].filename == "notes.md"
    assert form["file"].data == b"# Title\r\nbody\r\n"
    assert form["attributes"].data == b'{"a": 1}'


@pytest.mark.parametrize("body", [b"", b"garbage", b"--b\r\nno headers"])
def test_a_broken_form_is_an_upload_error(body: bytes) -> None:
    with pytest.raises(UploadError):
        parse_form(body, "multipart/form-data; boundary=b")


def test_text_is_taken_from_text_like_files() -> None:
    html = b"<html><head><style>p{}</style></head><body><h1>Refunds</h1><p>Within 30 days" \
           b" &amp; with receipt.</p><script>x()</script></body></html>"
    assert upload_text(html, "page.html", "text/html") == "Refunds\n\nWithin 30 days & with " \
                                                          "receipt."
    assert upload_text(b'{"a":{"b":[1,2]}}', "x.json", None).count("\n") >= 4
    assert upload_text("café".encode("cp1252"), "x.txt", None) == "café"
    assert upload_text("\ufeffhello".encode(), "x.txt", None) == "hello"
    assert upload_text(b"a,b\r\n1,2\r\n", "x.csv", "text/csv") == "a,b\n1,2\n"


@pytest.mark.parametrize(("data", "filename"), [
    (b"%PDF-1.7\n...", "report.pdf"),
    (b"\x89PNG\r\n\x1a\n....", "a.png"),
    (b"PK\x03\x04....", "doc.docx"),
    (b"abc\x00\x01\x02def", "x.bin2"),
])
def test_binary_files_are_refused_with_a_way_out(data: bytes, filename: str) -> None:
    with pytest.raises(UploadError) as caught:
        upload_text(data, filename, None)
    assert "text" in caught.value.message


# -- the API over a real server ------------------------------------------------------

FEED_STREAM = "sf:test:vs:feed"
KEYS = {
    "sk-master": Principal(kind="master", is_admin=True),
    "sk-alice": Principal(kind="virtual_key", key_id="k-alice", team_id="team-a"),
    "sk-alice-2": Principal(kind="virtual_key", key_id="k-alice-2", team_id="team-a"),
    "sk-bob": Principal(kind="virtual_key", key_id="k-bob", user_id="bob"),
}

HANDBOOK = {
    "refunds": "Refund policy. Customers may return any product within thirty days of "
               "delivery for a full refund. The item must be unused and in its original "
               "packaging, and the receipt is required.",
    "shipping": "Shipping times. Orders leave our warehouse within two business days. "
                "Standard delivery takes five to seven days; express delivery arrives the "
                "next day for an extra fee.",
    "passwords": "Account security. To reset a forgotten password, open the sign-in page, "
                 "choose 'Forgot password' and follow the link we email you. Links expire "
                 "after one hour.",
    "warranty": "Warranty. Electronics carry a two-year manufacturer warranty covering "
                "defects in materials and workmanship, but not accidental damage or water.",
}


async def authenticate(request: Request) -> Principal | Response:
    principal = KEYS.get(presented_key(request) or "")
    if principal is None:
        return error_response(401, "Incorrect API key provided.", "authentication_error",
                              code="invalid_api_key")
    return principal


@contextmanager
def shared_index_segment() -> Iterator[str]:
    """A fresh segment with a name no other test uses; unlinked after."""
    name = f"sf-test-vs-{os.getpid()}-{secrets.token_hex(4)}"
    index = SharedIndex.create(name, capacity=4096, dim=384)
    try:
        yield name
    finally:
        index.close()
        index.unlink()


@pytest.fixture(scope="module")
def index_name() -> Iterator[str]:
    with shared_index_segment() as name:
        yield name


@dataclass
class Node:
    url: str
    service: VectorStoreService
    index: SharedIndex
    feed: IndexFeed
    redis: Redis
    server: HTTPServer

    def client(self, key: str = "sk-alice") -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(api_key=key, base_url=self.url + "/v1", max_retries=0)

    def http(self, key: str = "sk-alice") -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=60,
                                 headers={"authorization": f"Bearer {key}"})


async def start_node(redis_url: str, index: SharedIndex, encoder: Encoder, node_id: str,
                     **service_kwargs: int) -> Node:
    redis = Redis.from_url(redis_url)
    batcher = EmbeddingBatcher(encoder)
    feed = IndexFeed(redis, index, stream_key=FEED_STREAM, node_id=node_id, maxlen=10000)
    service = VectorStoreService(redis, lambda: batcher, feed, index, **service_kwargs)
    router = Router()
    register_vector_store_routes(router, service, authenticate)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = HTTPServer(router, ServerSettings(port=0, access_log=False))
    await server.start(sock)
    return Node(f"http://127.0.0.1:{sock.getsockname()[1]}", service, index, feed, redis,
                server)


async def stop_node(node: Node) -> None:
    await node.server.drain(2.0)
    batcher = await node.service._batcher()
    await batcher.aclose()
    await node.redis.aclose()


@asynccontextmanager
async def running_node(redis_url: str, index_name: str, encoder: Encoder
                       ) -> AsyncIterator[Node]:
    index = SharedIndex.attach(index_name)
    started = await start_node(redis_url, index, encoder, "node-a",
                               max_file_bytes=256 * 1024)
    try:
        yield started
    finally:
        await stop_node(started)
        index.close()


@pytest.fixture
async def node(redis_url: str, index_name: str, encoder: Encoder) -> AsyncIterator[Node]:
    async with running_node(redis_url, index_name, encoder) as started:
        yield started


async def add_text(http: httpx.AsyncClient, store_id: str, text: str,
                   **fields: object) -> dict[str, object]:
    answer = await http.post(f"/v1/vector_stores/{store_id}/files",
                             json={"text": text, **fields})
    assert answer.status_code == 200, answer.text
    return answer.json()


async def handbook_store(node: Node, key: str = "sk-alice") -> tuple[str, dict[str, str]]:
    """A store holding one file per handbook section; (store id, section -> file id)."""
    store = await node.client(key).vector_stores.create(name="handbook")
    file_ids = {}
    years = {"refunds": 2021, "shipping": 2022, "passwords": 2023, "warranty": 2024}
    async with node.http(key) as http:
        for section, text in HANDBOOK.items():
            made = await add_text(http, store.id, text, filename=f"{section}.md",
                                  attributes={"section": section, "year": years[section],
                                              "public": section != "passwords"})
            file_ids[section] = str(made["id"])
    return store.id, file_ids


def error_of(answer: httpx.Response) -> dict[str, object]:
    body = answer.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


async def test_the_sdk_creates_gets_modifies_lists_and_deletes(node: Node) -> None:
    client = node.client()
    made = await client.vector_stores.create(name="docs", metadata={"team": "a"},
                                             expires_after={"anchor": "last_active_at",
                                                            "days": 7})
    assert made.id.startswith("vs_") and made.object == "vector_store"
    assert made.status == "completed" and made.file_counts.total == 0
    assert made.expires_at == made.last_active_at + 7 * 86400
    got = await client.vector_stores.retrieve(made.id)
    assert got.name == "docs" and got.metadata == {"team": "a"}
    changed = await client.vector_stores.update(made.id, name="renamed",
                                                metadata={"team": "b"})
    assert changed.name == "renamed" and changed.metadata == {"team": "b"}
    others = [await client.vector_stores.create(name=f"s{i}") for i in range(3)]
    listed = await client.vector_stores.list(limit=2, order="asc")
    assert [s.id for s in listed.data] == [made.id, others[0].id]
    assert listed.has_more
    everything = [s.id async for s in client.vector_stores.list(limit=2, order="asc")]
    assert everything == [made.id] + [s.id for s in others]
    newest_first = await client.vector_stores.list(order="desc")
    assert [s.id for s in newest_first.data] == everything[::-1]
    earlier = await client.vector_stores.list(order="asc", before=others[1].id, limit=1)
    assert [s.id for s in earlier.data] == [others[0].id] and earlier.has_more
    deleted = await client.vector_stores.delete(made.id)
    assert deleted.deleted and deleted.id == made.id
    with pytest.raises(openai.NotFoundError):
        await client.vector_stores.retrieve(made.id)


async def test_ingested_text_is_found_by_a_paraphrased_question(node: Node) -> None:
    store_id, file_ids = await handbook_store(node)
    client = node.client()
    page = await client.vector_stores.search(
        store_id, query="How can I get my money back for something I bought?")
    results = page.data
    assert results[0].file_id == file_ids["refunds"]
    assert results[0].filename == "refunds.md"
    assert results[0].content[0].text.startswith("Refund policy.")
    assert results[0].attributes == {"section": "refunds", "year": 2021, "public": True}
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True) and len(results) == 4
    page = await client.vector_stores.search(store_id, query="I can't log in, what do I do?",
                                             max_num_results=1)
    assert [r.file_id for r in page.data] == [file_ids["passwords"]]
    stored = await client.vector_stores.retrieve(store_id)
    assert stored.file_counts.completed == 4 and stored.usage_bytes > 0


async def test_filters_narrow_the_search(node: Node) -> None:
    store_id, file_ids = await handbook_store(node)
    client = node.client()
    question = "How can I get my money back for something I bought?"

    async def found(filters: dict[str, object]) -> list[str]:
        page = await client.vector_stores.search(store_id, query=question, filters=filters)
        return [r.file_id for r in page.data]

    assert await found({"type": "eq", "key": "section", "value": "warranty"}) == \
        [file_ids["warranty"]]
    assert set(await found({"type": "in", "key": "section",
                            "value": ["shipping", "passwords"]})) == \
        {file_ids["shipping"], file_ids["passwords"]}
    assert set(await found({"type": "gt", "key": "year", "value": 2022})) == \
        {file_ids["passwords"], file_ids["warranty"]}
    assert await found({"type": "and", "filters": [
        {"type": "eq", "key": "public", "value": True},
        {"type": "gte", "key": "year", "value": 2022},
        {"type": "lt", "key": "year", "value": 2024}]}) == [file_ids["shipping"]]
    either = await found({"type": "or", "filters": [
        {"type": "eq", "key": "section", "value": "refunds"},
        {"type": "eq", "key": "year", "value": 2024}]})
    assert either[0] == file_ids["refunds"] and set(either) == {file_ids["refunds"],
                                                                file_ids["warranty"]}
    assert await found({"type": "eq", "key": "section", "value": "nothing"}) == []


async def test_a_filter_that_passes_few_files_still_gets_k_results(node: Node) -> None:
    """The filtered-in file is the least similar to the query, and the store
    holds many better chunks: the top k must still come from it alone."""
    client = node.client()
    store = await client.vector_stores.create(name="crowded")
    async with node.http() as http:
        filler = " ".join(f"Refunds are paid within {n} days of a return." for n in range(60))
        await add_text(http, store.id, filler, attributes={"kind": "refunds"},
                       chunking_strategy={"type": "static", "static": {
                           "max_chunk_size_tokens": 100, "chunk_overlap_tokens": 0}})
        rare = " ".join(f"Volcanoes erupt when magma chamber {n} overflows." for n in range(30))
        made = await add_text(http, store.id, rare, attributes={"kind": "geology"},
                              chunking_strategy={"type": "static", "static": {
                                  "max_chunk_size_tokens": 100, "chunk_overlap_tokens": 0}})
    assert int(made["chunk_count"]) >= 3
    page = await client.vector_stores.search(
        store.id, query="How long do refunds take?", max_num_results=3,
        filters={"type": "eq", "key": "kind", "value": "geology"})
    assert len(page.data) == 3
    assert {r.file_id for r in page.data} == {made["id"]}


async def test_score_threshold_and_several_queries(node: Node) -> None:
    store_id, file_ids = await handbook_store(node)
    client = node.client()
    page = await client.vector_stores.search(
        store_id, query="how do I reset my password",
        ranking_options={"score_threshold": 0.45})
    assert [r.file_id for r in page.data] == [file_ids["passwords"]]
    page = await client.vector_stores.search(
        store_id, query=["when will my parcel arrive", "Is a defective laptop repaired for free?"],
        max_num_results=2)
    assert {r.file_id for r in page.data} == {file_ids["shipping"], file_ids["warranty"]}


async def test_an_upload_is_ingested(node: Node) -> None:
    store = await node.client().vector_stores.create(name="uploads")
    html = (b"<html><body><h1>Opening hours</h1><p>The Berlin office is open from nine to "
            b"five on weekdays and closed on public holidays.</p></body></html>")
    async with node.http() as http:
        answer = await http.post(
            f"/v1/vector_stores/{store.id}/files",
            files={"file": ("hours.html", html, "text/html")},
            data={"attributes": orjson.dumps({"city": "Berlin"}).decode()})
        assert answer.status_code == 200, answer.text
        made = answer.json()
        assert made["object"] == "vector_store.file" and made["status"] == "completed"
        assert made["attributes"] == {"city": "Berlin"}
        assert made["vector_store_id"] == store.id and made["last_error"] is None
        content = await http.get(f"/v1/vector_stores/{store.id}/files/{made['id']}/content")
        assert "<" not in content.json()["data"][0]["text"]
        pdf = await http.post(f"/v1/vector_stores/{store.id}/files",
                              files={"file": ("scan.pdf", b"%PDF-1.4 ...", "application/pdf")})
        assert pdf.status_code == 400 and "PDF" in str(error_of(pdf)["message"])
    page = await node.client().vector_stores.search(store.id, query="When is the office open?")
    assert page.data[0].file_id == made["id"]
    assert page.data[0].filename == "hours.html"


async def test_files_are_listed_fetched_updated_and_deleted(node: Node) -> None:
    store_id, file_ids = await handbook_store(node)
    client = node.client()
    listed = await client.vector_stores.files.list(store_id, order="asc", limit=3)
    assert [f.id for f in listed.data] == list(file_ids.values())[:3] and listed.has_more
    one = await client.vector_stores.files.retrieve(file_ids["warranty"],
                                                    vector_store_id=store_id)
    assert one.status == "completed" and one.attributes["section"] == "warranty"
    assert one.chunking_strategy.type == "static"
    updated = await client.vector_stores.files.update(
        file_ids["warranty"], vector_store_id=store_id, attributes={"section": "guarantee"})
    assert updated.attributes == {"section": "guarantee"}
    page = await client.vector_stores.search(
        store_id, query="is water damage covered",
        filters={"type": "eq", "key": "section", "value": "guarantee"})
    assert [r.file_id for r in page.data] == [file_ids["warranty"]]
    gone = await client.vector_stores.files.delete(file_ids["refunds"],
                                                   vector_store_id=store_id)
    assert gone.deleted
    page = await client.vector_stores.search(store_id, query="refund within thirty days")
    assert file_ids["refunds"] not in {r.file_id for r in page.data}
    assert not node.index.search(namespace_of(store_id), np.ones(384, dtype=np.float32),
                                 k=50, where=lambda ids: ids >> 20 == 1)
    stored = await client.vector_stores.retrieve(store_id)
    assert stored.file_counts.total == 3


async def test_a_deleted_store_leaves_nothing_behind(node: Node) -> None:
    store_id, _ = await handbook_store(node)
    namespace = namespace_of(store_id)
    assert node.index.live_count(namespace) == 4
    await node.client().vector_stores.delete(store_id)
    assert node.index.live_count(namespace) == 0
    left = [key async for key in node.redis.scan_iter(match=f"{PREFIX}*")]
    assert left == []
    with pytest.raises(openai.NotFoundError):
        await node.client().vector_stores.search(store_id, query="refund")


async def test_stores_are_private_to_their_owner(node: Node) -> None:
    store_id, file_ids = await handbook_store(node, "sk-alice")
    bob = node.client("sk-bob")
    await bob.vector_stores.create(name="bob's")
    with pytest.raises(openai.NotFoundError) as caught:
        await bob.vector_stores.retrieve(store_id)
    assert "vs_" in caught.value.message
    with pytest.raises(openai.NotFoundError):
        await bob.vector_stores.search(store_id, query="refund")
    with pytest.raises(openai.NotFoundError):
        await bob.vector_stores.delete(store_id)
    async with node.http("sk-bob") as http:
        answer = await http.post(f"/v1/vector_stores/{store_id}/files", json={"text": "x"})
        assert answer.status_code == 404
        answer = await http.get(f"/v1/vector_stores/{store_id}/files/{file_ids['refunds']}")
        assert answer.status_code == 404
    assert [s.name for s in (await bob.vector_stores.list()).data] == ["bob's"]
    # Another key of the same team shares the team's stores; the master key sees all.
    teammate = await node.client("sk-alice-2").vector_stores.list()
    assert [s.id for s in teammate.data] == [store_id]
    everyone = await node.client("sk-master").vector_stores.list()
    assert len(everyone.data) == 2
    async with node.http("sk-nobody") as http:
        answer = await http.get("/v1/vector_stores")
        assert answer.status_code == 401 and error_of(answer)["code"] == "invalid_api_key"


async def test_a_second_node_finds_what_the_first_ingested(
        node: Node, redis_url: str, encoder: Encoder) -> None:
    other_name = f"sf-test-vs-b-{os.getpid()}"
    other_index = SharedIndex.create(other_name, capacity=4096, dim=384)
    other = await start_node(redis_url, other_index, encoder, "node-b")
    try:
        store_id, file_ids = await handbook_store(node)
        namespace = namespace_of(store_id)
        assert other_index.live_count(namespace) == 0
        assert await other.feed.catch_up() >= 4
        assert other_index.live_count(namespace) == 4
        page = await other.client().vector_stores.search(
            store_id, query="When will my order be delivered?", max_num_results=1)
        assert [r.file_id for r in page.data] == [file_ids["shipping"]]
    finally:
        await stop_node(other)
        other_index.close()
        other_index.unlink()


async def test_a_node_whose_index_lacks_a_store_loads_it_from_redis(
        node: Node, redis_url: str, encoder: Encoder) -> None:
    store_id, file_ids = await handbook_store(node)
    late_name = f"sf-test-vs-late-{os.getpid()}"
    late_index = SharedIndex.create(late_name, capacity=4096, dim=384)
    late = await start_node(redis_url, late_index, encoder, "node-late")
    try:
        page = await late.client().vector_stores.search(
            store_id, query="Is accidental damage covered by the guarantee?",
            max_num_results=1)
        assert [r.file_id for r in page.data] == [file_ids["warranty"]]
        assert late_index.live_count(namespace_of(store_id)) == 4
    finally:
        await stop_node(late)
        late_index.close()
        late_index.unlink()


# -- bad input ----------------------------------------------------------------------

BAD_SEARCHES: list[tuple[object, str | None]] = [
    ({}, "query"),
    ({"query": ""}, "query"),
    ({"query": 5}, "query"),
    ({"query": ["ok", ""]}, "query"),
    ({"query": "x", "max_num_results": 0}, "max_num_results"),
    ({"query": "x", "max_num_results": 51}, "max_num_results"),
    ({"query": "x", "max_num_results": "3"}, "max_num_results"),
    ({"query": "x", "filters": {"type": "eq", "key": "a"}}, "filters.value"),
    ({"query": "x", "filters": {"type": "and", "filters": "no"}}, "filters.filters"),
    ({"query": "x", "ranking_options": {"score_threshold": 2}},
     "ranking_options.score_threshold"),
    ({"query": "x", "rewrite_query": "yes"}, "rewrite_query"),
    ([1, 2], None),
]


async def test_bad_input_is_a_400_in_openai_shape(node: Node) -> None:
    store = await node.client().vector_stores.create(name="strict")
    async with node.http() as http:
        for body, param in BAD_SEARCHES:
            answer = await http.post(f"/v1/vector_stores/{store.id}/search", json=body)
            assert answer.status_code == 400, (body, answer.text)
            error = error_of(answer)
            assert error["type"] == "invalid_request_error" and error["param"] == param, body
        answer = await http.post(f"/v1/vector_stores/{store.id}/search", content=b"{nope",
                                 headers={"content-type": "application/json"})
        assert answer.status_code == 400
        for body, param in [
            ({"name": 5}, "name"),
            ({"metadata": {"a": 1}}, "metadata.a"),
            ({"expires_after": {"anchor": "created_at", "days": 1}}, "expires_after"),
            ({"file_ids": ["file-abc"]}, "file_ids"),
        ]:
            answer = await http.post("/v1/vector_stores", json=body)
            assert answer.status_code == 400 and error_of(answer)["param"] == param, body
        files = f"/v1/vector_stores/{store.id}/files"
        answer = await http.post(files, json={"file_id": "file-abc"})
        assert answer.status_code == 400
        assert "text" in str(error_of(answer)["message"])
        for body, param in [
            ({"text": ["a"]}, "text"),
            ({"text": "   "}, "text"),
            ({"text": "x", "attributes": {"a": {"b": 1}}}, "attributes.a"),
            ({"text": "x", "chunking_strategy": {"type": "static", "static": {
                "max_chunk_size_tokens": 10, "chunk_overlap_tokens": 0}}},
             "chunking_strategy.static.max_chunk_size_tokens"),
        ]:
            answer = await http.post(files, json=body)
            assert answer.status_code == 400 and error_of(answer)["param"] == param, body
        answer = await http.post(files, json={"text": "word " * 60000})
        assert answer.status_code == 413 and error_of(answer)["type"] == \
            "invalid_request_error"
        for path in ("/v1/vector_stores/vs_nope", "/v1/vector_stores/vs_0123456789abcdef01234567",
                     f"/v1/vector_stores/{store.id}/files/file-nope"):
            answer = await http.get(path)
            assert answer.status_code == 404 and error_of(answer)["type"] == "not_found_error"
        answer = await http.get("/v1/vector_stores", params={"limit": 1000})
        assert answer.status_code == 400 and error_of(answer)["param"] == "limit"
        answer = await http.get("/v1/vector_stores", params={"after": "vs_unknown"})
        assert answer.status_code == 400 and error_of(answer)["param"] == "after"


async def test_a_body_over_the_limit_is_a_413(node: Node) -> None:
    store = await node.client().vector_stores.create(name="limits")
    async with node.http() as http:
        answer = await http.post(f"/v1/vector_stores/{store.id}/files",
                                 content=b"x" * (1024 * 1024),
                                 headers={"content-type": "text/plain"})
        assert answer.status_code == 413 and error_of(answer)["code"] == "request_too_large"
        answer = await http.post(f"/v1/vector_stores/{store.id}/search",
                                 json={"query": "q" * (2 * 1024 * 1024)})
        assert answer.status_code == 413


async def test_redis_going_away_is_a_503_not_a_crash(
        redis_server_factory: Callable[..., RedisServer], index_name: str,
        encoder: Encoder) -> None:
    private = redis_server_factory()
    async with running_node(private.url, index_name, encoder) as lonely:
        store = await lonely.client().vector_stores.create(name="fragile")
        private.stop()
        async with lonely.http() as http:
            for answer in (await http.get(f"/v1/vector_stores/{store.id}"),
                           await http.post(f"/v1/vector_stores/{store.id}/search",
                                           json={"query": "anything"})):
                assert answer.status_code == 503
                assert error_of(answer)["code"] == "state_unavailable"


async def test_the_sdk_adds_text_through_its_generic_post(node: Node) -> None:
    client = node.client()
    store = await client.vector_stores.create(name="sdk")
    made = await client.post(f"/vector_stores/{store.id}/files", cast_to=VectorStoreFile,
                             body={"text": HANDBOOK["shipping"], "filename": "shipping.md"})
    assert isinstance(made, VectorStoreFile) and made.status == "completed"
    plain = await client.post(f"/vector_stores/{store.id}/files", cast_to=object,
                              body={"text": HANDBOOK["refunds"]})
    assert isinstance(plain, dict) and str(plain["filename"]).endswith(".txt")
    page = await client.vector_stores.search(store.id, query="express next-day delivery")
    assert page.data[0].file_id == made.id

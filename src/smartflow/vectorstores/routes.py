"""The OpenAI vector store API and the RAG endpoints, over HTTP.

* ``/v1/vector_stores`` (create, list), ``/v1/vector_stores/{id}`` (get,
  modify, delete), ``.../files`` (add, list), ``.../files/{file_id}`` (get,
  update attributes, delete), ``.../files/{file_id}/content``,
  ``.../search``: OpenAI's shapes, so an unchanged SDK works.
* A file is added from text, not from an OpenAI file id (the gateway keeps
  no Files API): JSON ``{"text": ...}`` or a ``multipart/form-data`` upload
  with a ``file`` part. A ``file_id`` is a 400 that says so.
* ``/v1/rag/ingest`` and ``/v1/rag/query``: documents in, a prompt-ready
  context with numbered sources out.

Every body is checked here, field by field, before the service runs: a bad
one is a 400 in OpenAI's error shape naming the field, a body over the limit
a 413, a store that is not the caller's a 404. Failures of Redis or the
model are 503s; nothing escapes as a traceback.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson
from redis.exceptions import RedisError

from smartflow.dialects.openai import DIALECT
from smartflow.embeddings.model_files import ModelUnavailable
from smartflow.gateway_error import GatewayError, Reason
from smartflow.http.errors import HTTPError
from smartflow.http.request import Request
from smartflow.http.response import Response, error_response
from smartflow.http.router import Router
from smartflow.proxy.call import Principal
from smartflow.vectorstores.chunking import ChunkingError, ChunkingStrategy, parse_strategy
from smartflow.vectorstores.filters import (
    MAX_ATTRIBUTE_STRING_CHARS,
    MAX_ATTRIBUTES,
    FilterError,
    Predicate,
    compile_filter,
    validate_attributes,
)
from smartflow.vectorstores.multipart import UploadError, is_multipart, parse_form, upload_text
from smartflow.vectorstores.search import Hit, assemble_context
from smartflow.vectorstores.service import VectorStoreService, invalid
from smartflow.vectorstores.store import FileRecord, StoreConflict, StoreRecord

logger = logging.getLogger("smartflow.vectorstores")

Authenticate = Callable[[Request], Awaitable["Principal | Response"]]
Handler = Callable[[Request, Principal], Awaitable[Response]]

MAX_JSON_BODY_BYTES = 1024 * 1024  # everything but ingest
MAX_NAME_CHARS = 256
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
MAX_EXPIRY_DAYS = 365
DEFAULT_LIST_LIMIT = 20
MAX_LIST_LIMIT = 100
DEFAULT_SEARCH_RESULTS = 10
MAX_SEARCH_RESULTS = 50
MAX_QUERIES = 10
MAX_QUERY_CHARS = 32 * 1024
DEFAULT_RAG_TOP_K = 5
MAX_RAG_DOCUMENTS = 256
MAX_STORES_PER_QUERY = 10
MAX_FILENAME_CHARS = 512
# A multipart body carries headers and boundaries around the file.
UPLOAD_OVERHEAD_BYTES = 64 * 1024

FILE_IDS_UNSUPPORTED = (
    "This gateway does not keep OpenAI file objects, so a vector store file cannot be added "
    "by file_id. Send the text instead: JSON {\"text\": \"...\", \"filename\": \"...\"} or a "
    "multipart/form-data upload with a 'file' part.")


# -- reading and checking bodies ----------------------------------------------


async def _read_body(request: Request, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise GatewayError(413, f"The request body is larger than {limit} bytes.",
                               "invalid_request_error", "request_too_large",
                               reason=Reason.CLIENT)
        parts.append(chunk)
    return b"".join(parts)


def _json_object(raw: bytes, *, allow_empty: bool = False) -> dict[str, Any]:
    if not raw.strip():
        if allow_empty:
            return {}
        raise invalid("The request body is empty; expected a JSON object.", None, "invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"We could not parse the JSON body of your request: {exc}", None,
                      "invalid_json") from None
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.", None, "invalid_json")
    return body


async def _json_body(request: Request, limit: int = MAX_JSON_BODY_BYTES, *,
                     allow_empty: bool = False) -> dict[str, Any]:
    return _json_object(await _read_body(request, limit), allow_empty=allow_empty)


def _optional_string(body: dict[str, Any], name: str, max_chars: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(f"{name}: expected a string, got {type(value).__name__}.", name,
                      "invalid_type")
    if len(value) > max_chars:
        raise invalid(f"{name}: at most {max_chars} characters.", name)
    return value


def _int_field(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(f"{name}: expected an integer from {low} to {high}, got {value!r}.",
                      name)
    return value


def _positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise invalid(f"{name}: expected a positive integer, got {value!r}.", name)
    return value


def _score_threshold(value: object, param: str) -> float:
    if value is None:
        return -1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise invalid(f"{param}: expected a number from 0 to 1, got {value!r}.", param)
    return float(value)


def _metadata(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid("metadata: expected an object of string keys to string values.",
                      "metadata", "invalid_type")
    if len(value) > MAX_METADATA_PAIRS:
        raise invalid(f"metadata: at most {MAX_METADATA_PAIRS} keys.", "metadata")
    for key, item in value.items():
        if not key or len(key) > MAX_METADATA_KEY_CHARS:
            raise invalid(f"metadata: keys must be 1 to {MAX_METADATA_KEY_CHARS} characters.",
                          "metadata")
        if not isinstance(item, str) or len(item) > MAX_METADATA_VALUE_CHARS:
            raise invalid(f"metadata.{key}: expected a string of at most "
                          f"{MAX_METADATA_VALUE_CHARS} characters.", f"metadata.{key}")
    return dict(value)


def _expires_after(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("anchor") != "last_active_at":
        raise invalid("expires_after: expected {\"anchor\": \"last_active_at\", \"days\": N}.",
                      "expires_after")
    days = value.get("days")
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_EXPIRY_DAYS:
        raise invalid(f"expires_after.days: expected an integer from 1 to {MAX_EXPIRY_DAYS}.",
                      "expires_after.days")
    return {"anchor": "last_active_at", "days": days}


def _attributes(value: object, param: str = "attributes") -> dict[str, Any]:
    try:
        return validate_attributes(value, param)
    except FilterError as exc:
        raise invalid(exc.message, exc.param) from None


def _filter(value: object, param: str = "filters") -> Predicate | None:
    if value is None:
        return None
    try:
        return compile_filter(value, param)
    except FilterError as exc:
        raise invalid(exc.message, exc.param) from None


def _strategy(value: object, default: ChunkingStrategy) -> ChunkingStrategy:
    try:
        return parse_strategy(value, default)
    except ChunkingError as exc:
        raise invalid(exc.message, exc.param) from None


def _queries(value: object, param: str = "query") -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items or len(items) > MAX_QUERIES:
        raise invalid(f"{param}: expected a string or an array of 1 to {MAX_QUERIES} strings.",
                      param)
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise invalid(f"{param}: expected a non-empty string or an array of them.", param)
        if len(item) > MAX_QUERY_CHARS:
            raise invalid(f"{param}: at most {MAX_QUERY_CHARS} characters.", param)
    return cast("list[str]", items)


def _list_params(request: Request) -> tuple[int, bool, str | None, str | None]:
    query = request.query
    raw_limit = (query.get("limit") or [str(DEFAULT_LIST_LIMIT)])[0]
    try:
        limit = int(raw_limit)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise invalid(f"limit: expected an integer from 1 to {MAX_LIST_LIMIT}, got "
                      f"{raw_limit!r}.", "limit")
    order = (query.get("order") or ["desc"])[0]
    if order not in ("asc", "desc"):
        raise invalid(f"order: expected 'asc' or 'desc', got {order!r}.", "order")
    afters, befores = query.get("after"), query.get("before")
    after = (afters[0] if afters else None) or None
    before = (befores[0] if befores else None) or None
    return limit, order == "desc", after, before


# -- rendering -----------------------------------------------------------------


def store_object(record: StoreRecord, now_s: int) -> dict[str, Any]:
    files = record.file_count
    return {
        "id": record.id, "object": "vector_store", "created_at": record.created_at,
        "name": record.name, "usage_bytes": record.usage_bytes,
        "file_counts": {"in_progress": 0, "completed": files, "failed": 0, "cancelled": 0,
                        "total": files},
        "status": "expired" if record.is_expired(now_s) else "completed",
        "last_active_at": record.last_active_at, "metadata": record.metadata,
        "expires_after": record.expires_after, "expires_at": record.expires_at()}


def file_object(store_id: str, record: FileRecord) -> dict[str, Any]:
    return {
        "id": record.id, "object": "vector_store.file", "usage_bytes": record.usage_bytes,
        "created_at": record.created_at, "vector_store_id": store_id, "status": "completed",
        "last_error": None, "chunking_strategy": record.chunking_strategy,
        "attributes": record.attributes, "filename": record.filename,
        "chunk_count": record.chunk_count}


def _score(hit: Hit) -> float:
    return round(max(0.0, hit.score), 6)


def search_result(hit: Hit) -> dict[str, Any]:
    return {"file_id": hit.file.id, "filename": hit.file.filename, "score": _score(hit),
            "attributes": hit.file.attributes,
            "content": [{"type": "text", "text": hit.text}]}


def _page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}


def _ok(obj: Any) -> Response:
    return Response(200, orjson.dumps(obj))


def _error(exc: GatewayError) -> Response:
    return Response(exc.status, DIALECT.error_body(exc))


# -- the routes ----------------------------------------------------------------


def _guarded(authenticate: Authenticate, handler: Handler
             ) -> Callable[[Request], Awaitable[Response]]:
    """Authenticates, runs ``handler``, and turns every failure into an
    OpenAI-shaped answer."""

    async def run(request: Request) -> Response:
        try:
            principal = await authenticate(request)
            if not isinstance(principal, Principal):
                return principal
            return await handler(request, principal)
        except GatewayError as exc:
            return _error(exc)
        except HTTPError as exc:
            return error_response(exc.status, exc.message, exc.type, exc.param, exc.code,
                                  exc.headers)
        except StoreConflict:
            return error_response(409, "The vector store changed under this request too many "
                                       "times; try again.", "invalid_request_error",
                                  code="conflict")
        except RedisError as exc:
            logger.warning("vector store request failed on Redis: %s: %s",
                           type(exc).__name__, exc)
            return error_response(503, "The gateway's state store is not answering; vector "
                                       "stores cannot be read or written right now.",
                                  "server_error", code="state_unavailable")
        except ModelUnavailable as exc:
            return error_response(503, f"The embedding model is not available: {exc}",
                                  "server_error", code="embeddings_unavailable")

    return run


def register_vector_store_routes(router: Router, service: VectorStoreService,
                                 authenticate: Authenticate) -> None:
    """The vector store and RAG routes; ``authenticate`` answers a request
    with its caller, or with the refusal to send back."""
    routes = _Routes(service)

    def add(method: str, path: str, handler: Handler) -> None:
        router.add(method, path, _guarded(authenticate, handler))

    add("POST", "/v1/vector_stores", routes.create_store)
    add("GET", "/v1/vector_stores", routes.list_stores)
    add("GET", "/v1/vector_stores/{vector_store_id}", routes.get_store)
    add("POST", "/v1/vector_stores/{vector_store_id}", routes.modify_store)
    add("DELETE", "/v1/vector_stores/{vector_store_id}", routes.delete_store)
    add("POST", "/v1/vector_stores/{vector_store_id}/files", routes.add_file)
    add("GET", "/v1/vector_stores/{vector_store_id}/files", routes.list_files)
    add("GET", "/v1/vector_stores/{vector_store_id}/files/{file_id}", routes.get_file)
    add("POST", "/v1/vector_stores/{vector_store_id}/files/{file_id}", routes.update_file)
    add("DELETE", "/v1/vector_stores/{vector_store_id}/files/{file_id}", routes.delete_file)
    add("GET", "/v1/vector_stores/{vector_store_id}/files/{file_id}/content",
        routes.file_content)
    add("POST", "/v1/vector_stores/{vector_store_id}/search", routes.search)
    add("POST", "/v1/rag/ingest", routes.rag_ingest)
    add("POST", "/v1/rag/query", routes.rag_query)


class _Routes:
    def __init__(self, service: VectorStoreService) -> None:
        self._service = service

    @property
    def _upload_limit(self) -> int:
        # JSON escapes can double a text's bytes (\u00e9 for é).
        return 2 * self._service.max_file_bytes + UPLOAD_OVERHEAD_BYTES

    # -- stores ---------------------------------------------------------------

    async def create_store(self, request: Request, principal: Principal) -> Response:
        body = await _json_body(request, allow_empty=True)
        name = _optional_string(body, "name", MAX_NAME_CHARS) or ""
        metadata = _metadata(body.get("metadata"))
        expires_after = _expires_after(body.get("expires_after"))
        _strategy(body.get("chunking_strategy"), self._service.default_strategy)
        _optional_string(body, "description", MAX_METADATA_VALUE_CHARS)
        file_ids = body.get("file_ids")
        if file_ids is not None and not isinstance(file_ids, list):
            raise invalid("file_ids: expected an array of strings.", "file_ids", "invalid_type")
        if file_ids:
            raise invalid(FILE_IDS_UNSUPPORTED, "file_ids", "file_ids_not_supported")
        record = await self._service.create_store(principal, name=name, metadata=metadata,
                                                  expires_after=expires_after)
        return _ok(store_object(record, record.created_at))

    async def list_stores(self, request: Request, principal: Principal) -> Response:
        limit, descending, after, before = _list_params(request)
        records, has_more = await self._service.list_stores(
            principal, limit=limit, descending=descending, after=after, before=before)
        now = _now()
        return _ok(_page([store_object(record, now) for record in records], has_more))

    async def get_store(self, request: Request, principal: Principal) -> Response:
        record = await self._service.get_store(principal, _store_id(request))
        return _ok(store_object(record, _now()))

    async def modify_store(self, request: Request, principal: Principal) -> Response:
        body = await _json_body(request, allow_empty=True)
        changes: dict[str, Any] = {}
        if "name" in body:
            changes["name"] = _optional_string(body, "name", MAX_NAME_CHARS) or ""
        if "metadata" in body:
            changes["metadata"] = _metadata(body["metadata"])
        if "expires_after" in body:
            changes["expires_after"] = _expires_after(body["expires_after"])
        record = await self._service.modify_store(principal, _store_id(request),
                                                  changes=changes)
        return _ok(store_object(record, _now()))

    async def delete_store(self, request: Request, principal: Principal) -> Response:
        store_id = _store_id(request)
        await self._service.delete_store(principal, store_id)
        return _ok({"id": store_id, "object": "vector_store.deleted", "deleted": True})

    # -- files ----------------------------------------------------------------

    async def add_file(self, request: Request, principal: Principal) -> Response:
        store_id = _store_id(request)
        # Ownership first: an upload to someone else's store is refused
        # before its body is read.
        await self._service.get_store(principal, store_id)
        raw = await _read_body(request, self._upload_limit)
        if is_multipart(request.header("content-type")):
            text, filename, attributes, strategy = self._upload(raw, request)
        else:
            text, filename, attributes, strategy = self._json_file(_json_object(raw))
        record = await self._service.add_text(principal, store_id, text, filename=filename,
                                              attributes=attributes, strategy=strategy)
        return _ok(file_object(store_id, record))

    def _json_file(self, body: dict[str, Any]
                   ) -> tuple[str, str | None, dict[str, Any], ChunkingStrategy]:
        text = body.get("text")
        if text is None:
            if body.get("file_id") is not None:
                raise invalid(FILE_IDS_UNSUPPORTED, "file_id", "file_ids_not_supported")
            raise invalid("text: required (the file's content as a string), or upload the "
                          "file as multipart/form-data.", "text", "missing_required_parameter")
        if not isinstance(text, str):
            raise invalid(f"text: expected a string, got {type(text).__name__}.", "text",
                          "invalid_type")
        filename = _optional_string(body, "filename", MAX_FILENAME_CHARS)
        attributes = _attributes(body.get("attributes"))
        strategy = _strategy(body.get("chunking_strategy"), self._service.default_strategy)
        return text, filename, attributes, strategy

    def _upload(self, raw: bytes, request: Request
                ) -> tuple[str, str | None, dict[str, Any], ChunkingStrategy]:
        try:
            form = parse_form(raw, request.header("content-type") or "")
            part = form.get("file")
            if part is None:
                if "text" in form:
                    text = form["text"].data.decode("utf-8", "replace")
                    filename = None
                else:
                    raise UploadError("The form has no 'file' part.")
            else:
                if len(part.data) > self._service.max_file_bytes:
                    raise GatewayError(413, f"The file is larger than this gateway's limit of "
                                            f"{self._service.max_file_bytes} bytes.",
                                       "invalid_request_error", "file_too_large", "file",
                                       reason=Reason.CLIENT)
                text = upload_text(part.data, part.filename, part.content_type)
                filename = part.filename
        except UploadError as exc:
            raise invalid(exc.message, exc.param, "invalid_file") from None
        fields: dict[str, Any] = {}
        for name in ("attributes", "chunking_strategy"):
            if name in form:
                fields[name] = _json_field(form[name].data, name)
        if "filename" in form:
            filename = form["filename"].data.decode("utf-8", "replace")[:MAX_FILENAME_CHARS]
        attributes = _attributes(fields.get("attributes"))
        strategy = _strategy(fields.get("chunking_strategy"), self._service.default_strategy)
        return text, filename, attributes, strategy

    async def list_files(self, request: Request, principal: Principal) -> Response:
        limit, descending, after, before = _list_params(request)
        store_id = _store_id(request)
        filters = request.query.get("filter")
        wanted = filters[0] if filters else None
        if wanted not in (None, "completed", "in_progress", "failed", "cancelled"):
            raise invalid("filter: expected one of in_progress, completed, failed, "
                          "cancelled.", "filter")
        records, has_more = await self._service.list_files(
            principal, store_id, limit=limit, descending=descending, after=after,
            before=before)
        if wanted not in (None, "completed"):
            records, has_more = [], False  # every file here is completed
        return _ok(_page([file_object(store_id, record) for record in records], has_more))

    async def get_file(self, request: Request, principal: Principal) -> Response:
        store_id = _store_id(request)
        record = await self._service.get_file(principal, store_id, _file_id(request))
        return _ok(file_object(store_id, record))

    async def update_file(self, request: Request, principal: Principal) -> Response:
        store_id = _store_id(request)
        body = await _json_body(request)
        if "attributes" not in body:
            raise invalid("attributes: required.", "attributes", "missing_required_parameter")
        attributes = _attributes(body["attributes"])
        record = await self._service.update_file_attributes(principal, store_id,
                                                            _file_id(request), attributes)
        return _ok(file_object(store_id, record))

    async def delete_file(self, request: Request, principal: Principal) -> Response:
        file_id = _file_id(request)
        await self._service.delete_file(principal, _store_id(request), file_id)
        return _ok({"id": file_id, "object": "vector_store.file.deleted", "deleted": True})

    async def file_content(self, request: Request, principal: Principal) -> Response:
        texts = await self._service.file_chunks(principal, _store_id(request),
                                                _file_id(request))
        return _ok({"object": "vector_store.file_content.page",
                    "data": [{"type": "text", "text": text} for text in texts],
                    "has_more": False, "next_page": None})

    # -- search ---------------------------------------------------------------

    async def search(self, request: Request, principal: Principal) -> Response:
        body = await _json_body(request)
        if "query" not in body:
            raise invalid("query: required.", "query", "missing_required_parameter")
        queries = _queries(body["query"])
        k = _int_field(body, "max_num_results", DEFAULT_SEARCH_RESULTS, 1, MAX_SEARCH_RESULTS)
        predicate = _filter(body.get("filters"))
        ranking = body.get("ranking_options")
        if ranking is not None and not isinstance(ranking, dict):
            raise invalid("ranking_options: expected an object.", "ranking_options")
        threshold = _score_threshold((ranking or {}).get("score_threshold"),
                                     "ranking_options.score_threshold")
        rewrite = body.get("rewrite_query")
        if rewrite is not None and not isinstance(rewrite, bool):
            raise invalid("rewrite_query: expected a boolean.", "rewrite_query",
                          "invalid_type")
        hits = await self._service.search(principal, [_store_id(request)], queries, k=k,
                                          predicate=predicate, min_score=threshold)
        return _ok({"object": "vector_store.search_results.page",
                    "search_query": body["query"],
                    "data": [search_result(hit) for hit in hits],
                    "has_more": False, "next_page": None})

    # -- RAG ------------------------------------------------------------------

    async def rag_ingest(self, request: Request, principal: Principal) -> Response:
        service = self._service
        body = await _json_body(request, self._upload_limit)
        documents = _documents(body)
        strategy = _strategy(body.get("chunking_strategy"), service.default_strategy)
        store_id = body.get("vector_store_id")
        if store_id is not None:
            if not isinstance(store_id, str):
                raise invalid("vector_store_id: expected a string.", "vector_store_id",
                              "invalid_type")
            await service.get_store(principal, store_id)
        else:
            name = _optional_string(body, "name", MAX_NAME_CHARS) or "rag"
            store_id = (await service.create_store(principal, name=name, metadata={},
                                                   expires_after=None)).id
        file_ids: list[str] = []
        chunks = 0
        for text, source, attributes in documents:
            record = await service.add_text(principal, store_id, text, filename=source,
                                            attributes=attributes, strategy=strategy)
            file_ids.append(record.id)
            chunks += record.chunk_count
        return _ok({"object": "rag.ingest", "vector_store_id": store_id,
                    "file_ids": file_ids, "chunks": chunks})

    async def rag_query(self, request: Request, principal: Principal) -> Response:
        service = self._service
        body = await _json_body(request)
        store_ids = _store_ids(body)
        query = body.get("query")
        if not isinstance(query, str) or not query.strip():
            raise invalid("query: expected a non-empty string.", "query")
        if len(query) > MAX_QUERY_CHARS:
            raise invalid(f"query: at most {MAX_QUERY_CHARS} characters.", "query")
        top_k = _int_field(body, "top_k", DEFAULT_RAG_TOP_K, 1, MAX_SEARCH_RESULTS)
        predicate = _filter(body.get("filters"))
        threshold = _score_threshold(body.get("score_threshold"), "score_threshold")
        max_tokens = _positive_int(body, "max_context_tokens")
        max_chars = _positive_int(body, "max_context_chars")
        hits = await service.search(principal, store_ids, [query], k=top_k,
                                    predicate=predicate, min_score=threshold)
        counts = await service.count_tokens([hit.text for hit in hits]) \
            if max_tokens is not None and hits else None
        context, parts = assemble_context(hits, max_chars=max_chars, max_tokens=max_tokens,
                                          token_counts=counts)
        return _ok({
            "object": "rag.context", "query": query, "context": context,
            "chunks": [{"index": part.index, "text": part.text, "score": _score(part.hit),
                        "source": part.source, "file_id": part.hit.file.id,
                        "vector_store_id": part.hit.store_id,
                        "attributes": part.hit.file.attributes} for part in parts],
            "sources": [{"index": part.index, "source": part.source,
                         "file_id": part.hit.file.id} for part in parts]})


def _now() -> int:
    return int(time.time())


def _store_id(request: Request) -> str:
    return request.path_params["vector_store_id"]


def _file_id(request: Request) -> str:
    return request.path_params["file_id"]


def _json_field(raw: bytes, name: str) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise invalid(f"{name}: the form field must hold JSON.", name) from None


def _store_ids(body: dict[str, Any]) -> list[str]:
    single, many = body.get("vector_store_id"), body.get("vector_store_ids")
    if single is not None and many is not None:
        raise invalid("Send vector_store_id or vector_store_ids, not both.", "vector_store_ids")
    if single is not None:
        many = [single]
    if not isinstance(many, list) or not many:
        raise invalid("vector_store_id: required (or vector_store_ids, an array of ids).",
                      "vector_store_id", "missing_required_parameter")
    is_valid = all(isinstance(item, str) and item for item in many)
    if not is_valid or len(many) > MAX_STORES_PER_QUERY:
        raise invalid(f"vector_store_ids: expected 1 to {MAX_STORES_PER_QUERY} vector store "
                      f"ids.", "vector_store_ids")
    return list(dict.fromkeys(many))


def _documents(body: dict[str, Any]) -> list[tuple[str, str | None, dict[str, Any]]]:
    """(text, source, attributes) per document; the source is also kept as
    the ``source`` attribute so a query can filter on it."""
    documents = body.get("documents")
    if documents is None:
        if "text" not in body:
            raise invalid("documents: required (an array of {text, source?, metadata?}), or "
                          "send text.", "documents", "missing_required_parameter")
        documents = [{"text": body.get("text"), "source": body.get("source"),
                      "metadata": body.get("metadata")}]
        prefix = ""
    else:
        prefix = "documents"
    if not isinstance(documents, list) or not documents or len(documents) > MAX_RAG_DOCUMENTS:
        raise invalid(f"documents: expected an array of 1 to {MAX_RAG_DOCUMENTS} documents.",
                      "documents")
    out = []
    for i, document in enumerate(documents):
        where = f"{prefix}[{i}]" if prefix else ""
        if not isinstance(document, dict):
            raise invalid(f"{where}: expected an object {{text, source?, metadata?}}.", where)
        text = document.get("text")
        if not isinstance(text, str) or not text.strip():
            raise invalid(f"{where + '.' if where else ''}text: expected a non-empty string.",
                          f"{where + '.' if where else ''}text")
        source = _optional_string(document, "source", MAX_FILENAME_CHARS)
        attributes = _attributes(document.get("metadata"),
                                 f"{where + '.' if where else ''}metadata")
        if source and "source" not in attributes and len(attributes) < MAX_ATTRIBUTES:
            attributes["source"] = source[:MAX_ATTRIBUTE_STRING_CHARS]
        out.append((text, source, attributes))
    return out

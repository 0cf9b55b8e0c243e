"""The learning engine's admin API: policy documents and reviewers' feedback.

* ``POST /api/policy/documents``: JSON ``{"name", "text", "policy"?}``, a raw
  ``text/plain`` or ``text/markdown`` body with ``?name=`` (and ``?policy=``),
  or ``multipart/form-data`` with a ``file`` part (``name`` and ``policy``
  form fields or query parameters; the name defaults to the file name).
  201 with the document's metadata (``clauses``: how many it was split into).
* ``GET /api/policy/documents``, ``GET /api/policy/documents/{id}`` (with its
  clauses), ``DELETE /api/policy/documents/{id}``.
* ``POST /api/policy/decisions/{call_id}/feedback``: ``{"outcome",
  "guardrail"?, "policy"?, "note"?}``, outcome one of ``correct_block``,
  ``false_positive``, ``missed_violation`` or ``correct_allow`` (a reviewer
  confirming an allowed call; an extension to the contract); 200 with what
  changed.
* ``GET /api/policy/learning``: every policy's model (threshold, samples).

Writes are for proxy admins; reads for the roles that read everything.
"""

from __future__ import annotations

from typing import Any

from smartflow.admin.context import AdminContext, forbidden, json_answer, not_found
from smartflow.http.errors import HTTPError
from smartflow.http.request import Request
from smartflow.http.response import Response
from smartflow.http.router import Router
from smartflow.policy.learning import (
    OUTCOME_LABELS,
    FeedbackError,
    LearningRuntime,
    UnknownCall,
)
from smartflow.vectorstores.multipart import UploadError, is_multipart, parse_form, upload_text

DOCUMENTS_PATH = "/api/policy/documents"
DOCUMENT_PATH = "/api/policy/documents/{doc_id}"
FEEDBACK_PATH = "/api/policy/decisions/{call_id}/feedback"
LEARNING_PATH = "/api/policy/learning"
MAX_UPLOAD_BYTES = 2 * 1024 * 1024
_RAW_TEXT_TYPES = ("text/plain", "text/markdown", "text/x-markdown")


def _bad(message: str, param: str | None, code: str = "invalid_value") -> HTTPError:
    return HTTPError(400, message, "invalid_request_error", param=param, code=code)


def _query(request: Request, name: str) -> str | None:
    values = request.query.get(name)
    return values[0] if values else None


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise _bad(f"{name}: expected a string, got {type(value).__name__}.", name,
                   "invalid_type")
    return value


async def _read_body(request: Request) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_UPLOAD_BYTES:
            raise HTTPError(413, f"The request body is larger than {MAX_UPLOAD_BYTES} bytes.",
                            "invalid_request_error", code="request_too_large")
        parts.append(chunk)
    return b"".join(parts)


def _document_input(request: Request, raw: bytes) -> tuple[str | None, str, str | None]:
    """(name, text, policy) from any of the three body shapes."""
    import orjson

    content_type = request.header("content-type") or ""
    media_type = content_type.split(";", 1)[0].strip().lower()
    try:
        if is_multipart(content_type):
            form = parse_form(raw, content_type)
            part = form.get("file")
            if part is None:
                raise UploadError("The form has no 'file' part.")
            text = upload_text(part.data, part.filename, part.content_type)
            name_part, policy_part = form.get("name"), form.get("policy")
            name: str | None = (name_part.data.decode("utf-8", "replace").strip() if name_part
                    else _query(request, "name") or part.filename)
            policy = (policy_part.data.decode("utf-8", "replace").strip() if policy_part
                      else _query(request, "policy"))
            return name, text, policy or None
        if media_type in _RAW_TEXT_TYPES:
            name = _query(request, "name")
            if not name:
                raise _bad("name: required as a query parameter (?name=...) for a raw "
                           "text upload.", "name", "missing_required_parameter")
            return name, upload_text(raw, None, content_type), _query(request, "policy")
    except UploadError as exc:
        raise _bad(exc.message, exc.param) from None
    if not raw.strip():
        raise _bad("The request body is empty; send JSON {\"name\", \"text\"}, a text/plain "
                   "body with ?name=, or a multipart/form-data 'file'.", None, "invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _bad("The request body is not valid JSON.", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.", None, "invalid_json")
    document = body.get("text")
    if not isinstance(document, str):
        raise _bad("text: required, the document as a string.", "text",
                   "missing_required_parameter" if document is None else "invalid_type")
    return _optional_str(body, "name"), document, _optional_str(body, "policy")


def register_learning_routes(router: Router, admin: AdminContext,
                             learning: LearningRuntime) -> None:
    async def writer(request: Request) -> None:
        if not (await admin.principal(request)).writes_everything:
            raise forbidden("Only a proxy admin may change policy documents or give feedback.")

    async def reader(request: Request) -> None:
        if not (await admin.principal(request)).reads_everything:
            raise forbidden("Your role may not read the policy documents.")

    async def add_document(request: Request) -> Response:
        await writer(request)
        name, text, policy = _document_input(request, await _read_body(request))
        if not name:
            raise _bad("name: required.", "name", "missing_required_parameter")
        try:
            meta = await learning.add_document(name, text, policy)
        except FeedbackError as exc:
            raise _bad(exc.message, exc.param, exc.code) from None
        return json_answer(meta.to_json(), 201)

    async def list_documents(request: Request) -> Response:
        await reader(request)
        documents = await learning.documents.list_all()
        return json_answer({"data": [doc.to_json() for doc in documents]})

    async def get_document(request: Request) -> Response:
        await reader(request)
        doc_id = request.path_params["doc_id"]
        meta = await learning.documents.get(doc_id)
        if meta is None:
            raise not_found(f"Policy document {doc_id[:100]!r}")
        return json_answer({**meta.to_json(),
                            "clause_list": await learning.documents.clauses(doc_id)})

    async def delete_document(request: Request) -> Response:
        await writer(request)
        doc_id = request.path_params["doc_id"]
        if not await learning.delete_document(doc_id):
            raise not_found(f"Policy document {doc_id[:100]!r}")
        return json_answer({"id": doc_id, "deleted": True})

    async def feedback(request: Request) -> Response:
        await writer(request)
        from smartflow.admin.context import read_json_object

        body = await read_json_object(request)
        outcome = body.get("outcome")
        if not isinstance(outcome, str):
            raise _bad(f"outcome: required, one of {', '.join(OUTCOME_LABELS)}.", "outcome",
                       "missing_required_parameter")
        call_id = request.path_params["call_id"]
        try:
            answer = await learning.feedback(
                call_id, outcome, guardrail=_optional_str(body, "guardrail"),
                policy=_optional_str(body, "policy"), note=_optional_str(body, "note"))
        except UnknownCall:
            # not_found appends "not found.": the reasons go in parentheses before it.
            raise not_found(f"Call {call_id[:100]!r} (unknown, older or fewer than the "
                            f"decision log keeps, or judged by the pattern checks alone, "
                            f"with no request embedding to learn from)") from None
        except FeedbackError as exc:
            raise _bad(exc.message, exc.param, exc.code) from None
        return json_answer(answer)

    async def state(request: Request) -> Response:
        await reader(request)
        return json_answer(learning.summary())

    router.add("POST", DOCUMENTS_PATH, add_document)
    router.add("GET", DOCUMENTS_PATH, list_documents)
    router.add("GET", DOCUMENT_PATH, get_document)
    router.add("DELETE", DOCUMENT_PATH, delete_document)
    router.add("POST", FEEDBACK_PATH, feedback)
    router.add("GET", LEARNING_PATH, state)

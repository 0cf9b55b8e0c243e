"""The MongoDB audit sink: one document per call in ``vas_log``, written by motor.

Document shape (one per ``AuditEntry``)::

    _id         the call id (what makes writes idempotent)
    call_id     the call id again, so readers can use the column's name
    ts          a BSON date (UTC, millisecond precision)
    <column>    every key of ``entry.record``, as given (lists, sub-documents)
    request     the request body: a sub-document (or array) when it is a
                JSON object (or array), else the text as sent; null if none
    response    the same for the whole (non-streamed) response body
    question    the last user turn's text, or null
    answer      the answer's text, or null

Idempotence: ``insert_many(ordered=False)``, ignoring duplicate-key errors
(11000). Audit entries never change once written, so "insert unless there"
is all an upsert would do, and a plain insert is cheaper (no lookup per
document). MongoDB has no transaction on a standalone server; instead a
batch that failed half-way is sent again whole, and the documents that made
it the first time are skipped as duplicates.

A body that parses as JSON but that the server will not store (a ``$ref`` or
``$defs`` key of a tool's JSON schema on MongoDB before 5.0) or BSON cannot
hold (an integer beyond 64 bits) is written as text instead: one odd request
must not block the stream behind it.

Retention is MongoDB's own: a TTL index on ``ts`` (``retention_days`` * 86400
seconds; none when ``retention_days`` is 0). ``open()`` creates the indexes
and migrates the TTL when ``retention_days`` changed; ``maintain()`` puts back
an index someone dropped.

motor, pymongo and bson are imported where used, never at module level: the
gateway workers import the audit package and must not pay for them.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from .entry import BODY_COLUMNS, AuditEntry, SinkUnavailable

if TYPE_CHECKING:
    from bson.raw_bson import RawBSONDocument
    from motor.motor_asyncio import AsyncIOMotorClient, AsyncIOMotorCollection

log = logging.getLogger("smartflow.audit")

_DUPLICATE_KEY = 11000
# Write errors that refuse a document for what it holds rather than for the
# server's state: BadValue, DollarPrefixedFieldName, InvalidDBRef,
# EmptyFieldName, DottedFieldName.
_CONTENT_REJECTED = frozenset({2, 52, 55, 56, 57})
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_SECONDS_PER_DAY = 86400
_TS_INDEX = "ts_1"
# (field, direction) lists; pymongo names them "user_id_1_ts_-1" and so on.
# The secondary indexes end in ts so "this user's calls, newest first" is one
# index scan, and they still serve a lookup by user_id or key_alias alone.
_SECONDARY_INDEXES: tuple[list[tuple[str, int]], ...] = (
    [("user_id", 1), ("ts", -1)],
    [("key_alias", 1), ("ts", -1)],
)
# A large batch may take longer to send than a connection takes to open.
_SOCKET_TIMEOUT_FACTOR = 4
_MAX_REASON_CHARS = 400
_CREDENTIALS = re.compile(r"//[^@/]*@")


class MongoSink:
    """Writes audit entries to a MongoDB collection; see the module docstring."""

    name = "mongodb"

    def __init__(
        self,
        url: str,
        *,
        database: str = "smartflow",
        collection: str = "vas_log",
        retention_days: int = 30,
        timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.database = database
        self.collection = collection
        self.retention_days = retention_days
        self.timeout = timeout
        self._client: AsyncIOMotorClient[dict[str, Any]] | None = None

    @property
    def target(self) -> str:
        """Where this sink writes, without credentials: for messages and logs."""
        return f"{_redact(self.url)} {self.database}.{self.collection}"

    # -- the Sink protocol ----------------------------------------------------------

    async def open(self) -> None:
        """Connect (once; the client reconnects by itself), ping, create the indexes."""
        if self._client is None:
            self._client = await self._new_client()
        collection = self._coll()
        try:
            await self._client.admin.command("ping")
            await self._ensure_indexes(collection)
        except Exception as exc:  # the Sink contract: SinkUnavailable, nothing else
            raise self._unavailable("open", exc) from exc

    async def write(self, entries: Sequence[AuditEntry]) -> None:
        """Insert every entry not already there; see the module docstring."""
        if not entries:
            return
        collection = self._coll()
        rejected = await self._insert(collection, self._encode_all(entries))
        if not rejected:
            return
        retry = self._encode_all([entries[index] for index in rejected], parse_bodies=False)
        refused = await self._insert(collection, retry)
        if refused:
            first = entries[rejected[refused[0]]].call_id
            raise SinkUnavailable(
                f"mongodb: {self.target} refused {len(refused)} document(s) even with "
                f"text bodies (first: call {first})"
            )

    async def maintain(self, now: datetime) -> None:
        """Put back any index that went missing. Retention is the TTL index's job."""
        collection = self._coll()
        try:
            await self._ensure_indexes(collection)
        except Exception as exc:
            raise self._unavailable("maintain", exc) from exc

    async def aclose(self) -> None:
        """Close the client. Never raises."""
        client, self._client = self._client, None
        if client is None:
            return
        try:
            # close() ends the server sessions first, which waits for server
            # selection when the server is down: off the event loop.
            await asyncio.to_thread(client.close)
        except Exception:
            log.warning("mongodb: closing the client for %s failed", self.target, exc_info=True)

    # -- connection -----------------------------------------------------------------

    async def _new_client(self) -> AsyncIOMotorClient[dict[str, Any]]:
        try:
            from motor.motor_asyncio import AsyncIOMotorClient
        except ImportError as exc:
            raise SinkUnavailable("mongodb: the motor package is not installed") from exc
        timeout_ms = max(1, int(self.timeout * 1000))
        options: dict[str, Any] = {
            # Fail fast when the server is down: the shipper retries with back-off.
            "serverSelectionTimeoutMS": timeout_ms,
            "connectTimeoutMS": timeout_ms,
            "socketTimeoutMS": timeout_ms * _SOCKET_TIMEOUT_FACTOR,
            "appname": "smartflow-audit",
            "tz_aware": True,
        }
        try:
            # A mongodb+srv:// URL is resolved (DNS) in the constructor: off the loop.
            client: AsyncIOMotorClient[dict[str, Any]] = await asyncio.to_thread(
                AsyncIOMotorClient, self.url, **options
            )
        except Exception as exc:
            raise self._unavailable("connect", exc) from exc
        return client

    def _coll(self) -> AsyncIOMotorCollection[dict[str, Any]]:
        if self._client is None:
            raise SinkUnavailable(f"mongodb: {self.target} is not open")
        return self._client[self.database][self.collection]

    def _unavailable(self, action: str, exc: BaseException) -> SinkUnavailable:
        reason = str(exc) or type(exc).__name__
        if len(reason) > _MAX_REASON_CHARS:
            reason = reason[:_MAX_REASON_CHARS] + "..."
        return SinkUnavailable(f"mongodb: {action} {self.target} failed: {reason}")

    # -- writes ---------------------------------------------------------------------

    def _encode_all(
        self, entries: Sequence[AuditEntry], *, parse_bodies: bool = True
    ) -> list[RawBSONDocument]:
        try:
            return [_encode(entry, parse_bodies=parse_bodies) for entry in entries]
        except Exception as exc:  # _encode falls back to text: this would be a bug
            raise self._unavailable("encoding documents for", exc) from exc

    async def _insert(
        self,
        collection: AsyncIOMotorCollection[dict[str, Any]],
        documents: list[RawBSONDocument],
    ) -> list[int]:
        """Insert; the indices of the documents refused for their content.

        Duplicates are success (written before); any other failure raises.
        """
        from pymongo.errors import BulkWriteError

        try:
            await collection.insert_many(documents, ordered=False)
        except BulkWriteError as exc:
            return self._content_rejections(exc.details)
        except Exception as exc:
            raise self._unavailable("insert into", exc) from exc
        return []

    def _content_rejections(self, details: Mapping[str, Any]) -> list[int]:
        if details.get("writeConcernErrors"):
            # Written, maybe, but not as durably as the server is configured to:
            # send it again (the duplicates are skipped).
            raise SinkUnavailable(
                f"mongodb: {self.target} write concern failed: {details['writeConcernErrors'][0]}"
            )
        rejected: list[int] = []
        for error in details.get("writeErrors", ()):
            code = error.get("code")
            if code == _DUPLICATE_KEY:
                continue
            if code not in _CONTENT_REJECTED:
                raise SinkUnavailable(
                    f"mongodb: insert into {self.target} failed: "
                    f"code {code}: {error.get('errmsg', '')}"[:_MAX_REASON_CHARS]
                )
            rejected.append(int(error["index"]))
        return sorted(rejected)

    # -- indexes --------------------------------------------------------------------

    async def _ensure_indexes(self, collection: AsyncIOMotorCollection[dict[str, Any]]) -> None:
        existing = await collection.index_information()
        await self._ensure_ts_index(collection, existing.get(_TS_INDEX))
        from pymongo import IndexModel

        missing = [
            IndexModel(keys) for keys in _SECONDARY_INDEXES if _index_name(keys) not in existing
        ]
        if missing:
            await collection.create_indexes(missing)

    async def _ensure_ts_index(
        self,
        collection: AsyncIOMotorCollection[dict[str, Any]],
        current: Mapping[str, Any] | None,
    ) -> None:
        """One index on ts, TTL when retention_days > 0 (MongoDB allows one per key)."""
        wanted = self.retention_days * _SECONDS_PER_DAY if self.retention_days > 0 else None
        if current is not None:
            have = _ttl_seconds(current)
            if have == wanted:
                return
            if have is not None and wanted is not None:
                # Retention changed: collMod changes the TTL without a rebuild.
                await collection.database.command(
                    "collMod",
                    collection.name,
                    index={"name": _TS_INDEX, "expireAfterSeconds": wanted},
                )
                log.info("mongodb: %s retention is now %s s", self.target, wanted)
                return
            # A TTL index cannot become a plain one (nor the reverse) in place.
            await collection.drop_index(_TS_INDEX)
        options: dict[str, Any] = {} if wanted is None else {"expireAfterSeconds": wanted}
        await collection.create_index([("ts", 1)], name=_TS_INDEX, **options)


# -- documents ------------------------------------------------------------------------

_OWN_FIELDS = frozenset({"_id", "call_id", "ts", "request", "response", "question", "answer"})


def build_document(entry: AuditEntry, *, parse_bodies: bool = True) -> dict[str, Any]:
    """The document stored for `entry` (see the module docstring)."""
    document: dict[str, Any] = {"_id": entry.call_id, "call_id": entry.call_id, "ts": entry.ts}
    for key, value in entry.record.items():
        if key not in _OWN_FIELDS and key not in BODY_COLUMNS:
            document[key] = value
    document["request"] = _body(entry.request_body, parse_bodies)
    document["response"] = _body(entry.response_body, parse_bodies)
    document["question"] = entry.question
    document["answer"] = entry.answer
    return document


def _body(text: str | None, parse: bool) -> Any:
    """A JSON object or array as a sub-document or array, anything else as the text.

    JSON scalars stay text: parsing '"hi"' or '42' would only change the
    type of what the caller sent, with nothing gained for queries.
    """
    if text is None or not parse or not text.lstrip().startswith(("{", "[")):
        return text
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text  # not JSON after all (or cut short by max_body_bytes)


def _encode(entry: AuditEntry, *, parse_bodies: bool = True) -> RawBSONDocument:
    """The entry's document as BSON, encoded once here rather than by insert_many,
    so that a document BSON cannot hold is caught per entry."""
    import bson
    from bson.errors import InvalidDocument
    from bson.raw_bson import RawBSONDocument

    document = build_document(entry, parse_bodies=parse_bodies)
    try:
        return RawBSONDocument(bson.encode(document))
    except (InvalidDocument, OverflowError, TypeError):
        pass
    if parse_bodies:
        return _encode(entry, parse_bodies=False)
    return RawBSONDocument(bson.encode(_bson_safe(document)))


def _bson_safe(value: Any) -> Any:
    """`value` with whatever BSON cannot hold turned into text (last resort)."""
    if value is None or isinstance(value, (bool, str, float, datetime)):
        return value
    if isinstance(value, int):
        return value if _INT64_MIN <= value <= _INT64_MAX else str(value)
    if isinstance(value, Mapping):
        return {str(key).replace("\x00", ""): _bson_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_bson_safe(item) for item in value]
    return str(value)


def _ttl_seconds(index: Mapping[str, Any]) -> int | None:
    ttl = index.get("expireAfterSeconds")
    return None if ttl is None else int(ttl)


def _index_name(keys: list[tuple[str, int]]) -> str:
    """The name MongoDB drivers give an index on `keys` by default."""
    return "_".join(f"{field}_{direction}" for field, direction in keys)


def _redact(url: str) -> str:
    return _CREDENTIALS.sub("//***@", url)

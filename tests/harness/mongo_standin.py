"""A stand-in MongoDB server for tests, speaking enough of the wire protocol
for motor and pymongo. It is NOT MongoDB: no MongoDB server can be installed
where these tests run, so the audit sink is tested against this instead.

It answers as a standalone server (no replica set) reporting wire version 17
(MongoDB 6.0), on 127.0.0.1 and a free port, from an asyncio loop in its own
thread (so it keeps answering while the test's loop waits on the driver).

Implemented:
  - framing: OP_MSG (2013) with body sections (kind 0) and document sequences
    (kind 1, how pymongo sends an insert's documents); the checksum flag (the
    CRC is skipped, not checked) and moreToCome (no reply: w=0 writes). The
    legacy OP_QUERY (2004) for hello / isMaster / ismaster on "<db>.$cmd",
    answered with OP_REPLY (1); any other OP_QUERY gets error 352, as MongoDB
    6.0 answers. Other opcodes (OP_COMPRESSED...) close the connection.
  - commands: hello, isMaster, ismaster, ping, buildInfo, endSessions;
    insert (ordered or not; a duplicate _id is a writeError with code 11000,
    the other documents of an unordered insert are still stored); find
    (equality on top-level or dotted fields, a scalar matching an array
    element, $eq, $in, $exists; skip and limit; everything in the first
    batch, cursor id 0); count; createIndexes (with MongoDB's conflict errors
    85 / 86), listIndexes, dropIndexes, collMod (an index's
    expireAfterSeconds only), drop, dropDatabase. Anything else: ok 0 with
    code 59 CommandNotFound.
  - data in memory per database and collection, kept across stop() and
    start(): a restart on the same port looks like a server outage.
  - `strict_field_names=True` refuses $-prefixed field names at any depth
    (code 52), as MongoDB before 5.0 does; `inject_error()` makes a command
    fail with a given code.

Not implemented: authentication, TLS, compression, sessions and transactions
(lsid is accepted and ignored), getMore (no cursor stays open, so a find's
result must fit in one 48 MB reply), update, delete, aggregate (so no
count_documents()), sort and projection, unique indexes other than _id, TTL
expiry (TTL indexes are recorded; nothing expires), write concerns, replica
sets. Numbers come back as BSON picks them (an int64 that fits becomes int32).
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import struct
import threading
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import bson
from bson.codec_options import CodecOptions
from bson.errors import BSONError
from bson.int64 import Int64
from bson.objectid import ObjectId

from .lifecycle import ManagedService
from .ports import LOOPBACK_HOST, free_port

_T = TypeVar("_T")

OP_REPLY = 1
OP_QUERY = 2004
OP_MSG = 2013
_HEADER = struct.Struct("<iiii")  # messageLength, requestID, responseTo, opCode
_MSG_CHECKSUM_PRESENT = 1 << 0
_MSG_MORE_TO_COME = 1 << 1

WIRE_VERSION = 17  # MongoDB 6.0: inside what pymongo 4.x accepts
MAX_BSON_OBJECT_SIZE = 16 * 1024 * 1024
MAX_MESSAGE_SIZE = 48_000_000
MAX_WRITE_BATCH_SIZE = 100_000
_CONTROL_TIMEOUT_S = 10.0
_DECODE: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True, tzinfo=UTC)
_HANDSHAKES = frozenset({"hello", "isMaster", "ismaster"})


class _ProtocolError(Exception):
    """The peer sent something this stand-in cannot read: close the connection."""


class CommandError(Exception):
    """A command failed: answered as {ok: 0, errmsg, code, codeName}."""

    def __init__(self, code: int, code_name: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.code_name = code_name

    def reply(self) -> dict[str, Any]:
        return {"ok": 0.0, "errmsg": str(self), "code": self.code, "codeName": self.code_name}


@dataclass(slots=True)
class _Request:
    db: str
    name: str
    body: dict[str, Any]
    sequences: dict[str, list[dict[str, Any]]]
    connection_id: int


@dataclass(slots=True)
class _Collection:
    # Keyed by the BSON of _id: exact, hashable, whatever the _id's type.
    documents: dict[bytes, dict[str, Any]] = field(default_factory=dict)
    indexes: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"_id_": {"v": 2, "key": {"_id": 1}, "name": "_id_"}}
    )


# -- the commands (no I/O; run under the stand-in's lock) ----------------------------


class _Engine:
    """The databases and the commands over them."""

    def __init__(self) -> None:
        self.databases: dict[str, dict[str, _Collection]] = {}
        self.strict_field_names = False
        self.injected: dict[str, list[CommandError]] = {}
        self._handlers: dict[str, Callable[[_Request], dict[str, Any]]] = {
            "hello": self._hello,
            "isMaster": self._hello,
            "ismaster": self._hello,
            "ping": _ok,
            "endSessions": _ok,
            "buildInfo": _build_info,
            "buildinfo": _build_info,
            "insert": self._insert,
            "find": self._find,
            "count": self._count,
            "createIndexes": self._create_indexes,
            "listIndexes": self._list_indexes,
            "dropIndexes": self._drop_indexes,
            "collMod": self._coll_mod,
            "drop": self._drop,
            "dropDatabase": self._drop_database,
        }

    def run(self, request: _Request) -> dict[str, Any]:
        try:
            pending = self.injected.get(request.name)
            if pending:
                raise pending.pop(0)
            handler = self._handlers.get(request.name)
            if handler is None:
                raise CommandError(59, "CommandNotFound", f"no such command: '{request.name}'")
            return handler(request)
        except CommandError as exc:
            return exc.reply()
        except Exception as exc:  # noqa: BLE001 - a stand-in bug: tell the driver, not hang it
            return CommandError(1, "InternalError", f"stand-in: {exc!r}").reply()

    # -- storage helpers

    def collection(self, db: str, name: str, *, create: bool = False) -> _Collection | None:
        collections = self.databases.get(db)
        if collections is None or name not in collections:
            if not create:
                return None
            collections = self.databases.setdefault(db, {})
            collections[name] = _Collection()
        return collections[name]

    def _existing(self, request: _Request) -> _Collection:
        found = self.collection(request.db, _collection_name(request))
        if found is None:
            ns = f"{request.db}.{_collection_name(request)}"
            raise CommandError(26, "NamespaceNotFound", f"ns does not exist: {ns}")
        return found

    # -- handshake

    def _hello(self, request: _Request) -> dict[str, Any]:
        primary_field = "isWritablePrimary" if request.name == "hello" else "ismaster"
        return {
            primary_field: True,
            "helloOk": True,
            "maxBsonObjectSize": MAX_BSON_OBJECT_SIZE,
            "maxMessageSizeBytes": MAX_MESSAGE_SIZE,
            "maxWriteBatchSize": MAX_WRITE_BATCH_SIZE,
            "localTime": datetime.now(UTC),
            "logicalSessionTimeoutMinutes": 30,
            "connectionId": request.connection_id,
            "minWireVersion": 0,
            "maxWireVersion": WIRE_VERSION,
            "readOnly": False,
            "ok": 1.0,
        }

    # -- writes

    def _insert(self, request: _Request) -> dict[str, Any]:
        documents = request.sequences.get("documents", request.body.get("documents", []))
        ordered = request.body.get("ordered", True)
        name = _collection_name(request)
        target = self.collection(request.db, name, create=True)
        assert target is not None
        inserted, errors = 0, []
        for index, document in enumerate(documents):
            error = self._insert_one(target, f"{request.db}.{name}", document)
            if error is None:
                inserted += 1
                continue
            errors.append({"index": index, **error})
            if ordered:
                break
        reply: dict[str, Any] = {"n": inserted, "ok": 1.0}
        if errors:
            reply["writeErrors"] = errors
        return reply

    def _insert_one(
        self, target: _Collection, ns: str, document: dict[str, Any]
    ) -> dict[str, Any] | None:
        if "_id" not in document:
            document = {"_id": ObjectId(), **document}
        if self.strict_field_names:
            refused = _dollar_field(document, "")
            if refused is not None:
                field_name, path = refused
                return {
                    "code": 52,
                    "errmsg": f"The dollar ($) prefixed field '{field_name}' in '{path}' "
                    "is not valid for storage.",
                }
        key = _id_key(document["_id"])
        if key in target.documents:
            return {
                "code": 11000,
                "errmsg": f"E11000 duplicate key error collection: {ns} index: _id_ "
                f"dup key: {{ _id: {document['_id']!r} }}",
                "keyPattern": {"_id": 1},
                "keyValue": {"_id": document["_id"]},
            }
        target.documents[key] = document
        return None

    # -- reads

    def _find(self, request: _Request) -> dict[str, Any]:
        found = self._matching(request, request.body.get("filter") or {})
        skip = int(request.body.get("skip") or 0)
        limit = abs(int(request.body.get("limit") or 0))
        found = found[skip:]
        if limit:
            found = found[:limit]
        return _cursor(f"{request.db}.{_collection_name(request)}", found)

    def _count(self, request: _Request) -> dict[str, Any]:
        return {"n": len(self._matching(request, request.body.get("query") or {})), "ok": 1.0}

    def _matching(self, request: _Request, query: Mapping[str, Any]) -> list[dict[str, Any]]:
        target = self.collection(request.db, _collection_name(request))
        if target is None:
            return []
        return [doc for doc in target.documents.values() if _matches(doc, query)]

    # -- indexes

    def _create_indexes(self, request: _Request) -> dict[str, Any]:
        name = _collection_name(request)
        created = self.collection(request.db, name) is None
        target = self.collection(request.db, name, create=True)
        assert target is not None
        before = len(target.indexes)
        for spec in request.body.get("indexes", []):
            _add_index(target, spec)
        reply: dict[str, Any] = {
            "numIndexesBefore": before,
            "numIndexesAfter": len(target.indexes),
            "createdCollectionAutomatically": created,
            "ok": 1.0,
        }
        if before == len(target.indexes):
            reply["note"] = "all indexes already exist"
        return reply

    def _list_indexes(self, request: _Request) -> dict[str, Any]:
        target = self._existing(request)
        ns = f"{request.db}.{_collection_name(request)}"
        return _cursor(ns, list(target.indexes.values()))

    def _drop_indexes(self, request: _Request) -> dict[str, Any]:
        target = self._existing(request)
        was = len(target.indexes)
        for name in _index_names(target, request.body.get("index")):
            if name == "_id_":
                raise CommandError(72, "InvalidOptions", "cannot drop _id index")
            del target.indexes[name]
        return {"nIndexesWas": was, "ok": 1.0}

    def _coll_mod(self, request: _Request) -> dict[str, Any]:
        target = self._existing(request)
        change = request.body.get("index")
        if not isinstance(change, dict) or "expireAfterSeconds" not in change:
            raise CommandError(72, "InvalidOptions", "stand-in: collMod supports only "
                               "index: {name|keyPattern, expireAfterSeconds}")
        selector = change.get("name", change.get("keyPattern"))
        (name,) = _index_names(target, selector)
        spec = target.indexes[name]
        if "expireAfterSeconds" not in spec:
            raise CommandError(72, "InvalidOptions", "no expireAfterSeconds field to update")
        old, spec["expireAfterSeconds"] = spec["expireAfterSeconds"], change["expireAfterSeconds"]
        return {
            "expireAfterSeconds_old": old,
            "expireAfterSeconds_new": change["expireAfterSeconds"],
            "ok": 1.0,
        }

    # -- dropping

    def _drop(self, request: _Request) -> dict[str, Any]:
        target = self._existing(request)
        del self.databases[request.db][_collection_name(request)]
        return {"ns": f"{request.db}.{_collection_name(request)}",
                "nIndexesWas": len(target.indexes), "ok": 1.0}

    def _drop_database(self, request: _Request) -> dict[str, Any]:
        self.databases.pop(request.db, None)
        return {"dropped": request.db, "ok": 1.0}


def _ok(_request: _Request) -> dict[str, Any]:
    return {"ok": 1.0}


def _build_info(_request: _Request) -> dict[str, Any]:
    return {
        "version": "6.0.0-standin",
        "versionArray": [6, 0, 0, 0],
        "gitVersion": "standin",
        "bits": 64,
        "maxBsonObjectSize": MAX_BSON_OBJECT_SIZE,
        "ok": 1.0,
    }


def _collection_name(request: _Request) -> str:
    name = request.body[request.name]
    if not isinstance(name, str) or not name:
        raise CommandError(73, "InvalidNamespace", f"invalid collection name: {name!r}")
    return name


def _cursor(ns: str, batch: list[dict[str, Any]]) -> dict[str, Any]:
    return {"cursor": {"firstBatch": batch, "id": Int64(0), "ns": ns}, "ok": 1.0}


def _id_key(value: Any) -> bytes:
    return bson.encode({"_id": value})


def _dollar_field(value: Any, path: str) -> tuple[str, str] | None:
    """The first $-prefixed field name in `value` and its dotted path, if any."""
    if isinstance(value, dict):
        items: Iterable[tuple[str, Any]] = ((str(key), item) for key, item in value.items())
    elif isinstance(value, list):
        items = ((str(index), item) for index, item in enumerate(value))
    else:
        return None
    for key, item in items:
        where = f"{path}.{key}" if path else key
        if key.startswith("$") and isinstance(value, dict):
            return key, where
        found = _dollar_field(item, where)
        if found is not None:
            return found
    return None


# -- queries ---------------------------------------------------------------------------

_MISSING = object()


def _matches(document: Mapping[str, Any], query: Mapping[str, Any]) -> bool:
    for path, condition in query.items():
        if path.startswith("$"):
            raise CommandError(2, "BadValue", f"stand-in: unsupported query operator {path}")
        if not _field_matches(_lookup(document, path), condition):
            return False
    return True


def _lookup(document: Mapping[str, Any], path: str) -> Any:
    value: Any = document
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _field_matches(value: Any, condition: Any) -> bool:
    if isinstance(condition, Mapping) and condition and all(
        str(key).startswith("$") for key in condition
    ):
        return all(_operator_matches(value, op, arg) for op, arg in condition.items())
    return _equals(value, condition)


def _operator_matches(value: Any, operator: str, argument: Any) -> bool:
    if operator == "$eq":
        return _equals(value, argument)
    if operator == "$in":
        return any(_equals(value, candidate) for candidate in argument)
    if operator == "$exists":
        return (value is not _MISSING) == bool(argument)
    raise CommandError(2, "BadValue", f"stand-in: unsupported query operator {operator}")


def _equals(value: Any, wanted: Any) -> bool:
    if wanted is None:
        return value is _MISSING or value is None  # as MongoDB: null matches a missing field
    if value is _MISSING:
        return False
    if isinstance(value, list) and not isinstance(wanted, list):
        return any(_equals(item, wanted) for item in value)
    return bool(value == wanted)


# -- indexes ---------------------------------------------------------------------------

_NOT_OPTIONS = frozenset({"v", "name", "key", "background"})


def _add_index(target: _Collection, spec: Mapping[str, Any]) -> None:
    name, key = spec.get("name"), spec.get("key")
    if not isinstance(name, str) or not isinstance(key, Mapping) or not key:
        raise CommandError(9, "FailedToParse", f"bad index specification: {dict(spec)!r}")
    options = _options(spec)
    same_name = target.indexes.get(name)
    if same_name is not None:
        if list(same_name["key"].items()) != list(key.items()):
            raise CommandError(86, "IndexKeySpecsConflict",
                               f"An existing index has the same name as the requested "
                               f"index but different keys: {name}")
        if _options(same_name) != options:
            raise CommandError(85, "IndexOptionsConflict",
                               f"An existing index has the same name as the requested "
                               f"index but different options: {name}")
        return
    for existing in target.indexes.values():
        if list(existing["key"].items()) == list(key.items()):
            raise CommandError(85, "IndexOptionsConflict",
                               f"Index already exists with a different name: {existing['name']}")
    target.indexes[name] = {"v": 2, "key": dict(key), "name": name, **options}


def _options(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in spec.items() if key not in _NOT_OPTIONS}


def _index_names(target: _Collection, selector: Any) -> list[str]:
    """The names `selector` (a name, "*", a list of names, or a key pattern) picks."""
    if selector == "*":
        return [name for name in target.indexes if name != "_id_"]
    if isinstance(selector, str):
        names = [selector]
    elif isinstance(selector, list):
        names = [str(name) for name in selector]
    elif isinstance(selector, Mapping):
        names = [name for name, spec in target.indexes.items()
                 if list(spec["key"].items()) == list(selector.items())]
        if not names:
            raise CommandError(27, "IndexNotFound", f"can't find index with key: {selector!r}")
    else:
        raise CommandError(2, "BadValue", f"bad index selector: {selector!r}")
    for name in names:
        if name not in target.indexes:
            raise CommandError(27, "IndexNotFound", f"index not found with name [{name}]")
    return names


# -- the wire protocol -----------------------------------------------------------------


def _parse_op_msg(payload: bytes) -> tuple[int, dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """(flags, body, document sequences by identifier) of an OP_MSG."""
    (flags,) = struct.unpack_from("<I", payload, 0)
    end = len(payload) - (4 if flags & _MSG_CHECKSUM_PRESENT else 0)
    position = 4
    body: dict[str, Any] | None = None
    sequences: dict[str, list[dict[str, Any]]] = {}
    while position < end:
        kind = payload[position]
        (size,) = struct.unpack_from("<i", payload, position + 1)
        section = payload[position + 1 : position + 1 + size]
        if kind == 0:
            body = bson.decode(section, codec_options=_DECODE)
        elif kind == 1:
            name_end = section.index(b"\x00", 4)
            identifier = section[4:name_end].decode()
            docs = bson.decode_all(section[name_end + 1 :], codec_options=_DECODE)
            sequences.setdefault(identifier, []).extend(docs)
        else:
            raise _ProtocolError(f"OP_MSG section kind {kind}")
        position += 1 + size
    if body is None:
        raise _ProtocolError("OP_MSG without a body section")
    return flags, body, sequences


def _parse_op_query(payload: bytes) -> tuple[str, dict[str, Any]]:
    """(full collection name, query document) of an OP_QUERY."""
    name_end = payload.index(b"\x00", 4)
    full_name = payload[4:name_end].decode()
    query_start = name_end + 1 + 8  # numberToSkip, numberToReturn
    (size,) = struct.unpack_from("<i", payload, query_start)
    query = bson.decode(payload[query_start : query_start + size], codec_options=_DECODE)
    if "$query" in query:  # a read preference wraps the command
        query = dict(query["$query"])
    return full_name, query


def _op_msg_reply(reply: Mapping[str, Any]) -> bytes:
    return struct.pack("<IB", 0, 0) + bson.encode(reply)


def _op_reply(reply: Mapping[str, Any]) -> bytes:
    # responseFlags, cursorID, startingFrom, numberReturned
    return struct.pack("<iqii", 0, 0, 0, 1) + bson.encode(reply)


class MongoStandIn(ManagedService):
    """A stand-in MongoDB server; see the module docstring.

    `start()` listens (again, on the same port, after `stop()`); `stop()`
    drops every connection and stops listening but keeps the data; `close()`
    also ends the server's thread. `documents(db, coll)` and `indexes(db,
    coll)` read what is stored; `commands` counts the commands answered.
    """

    def __init__(self, *, port: int | None = None, strict_field_names: bool = False) -> None:
        self.host = LOOPBACK_HOST
        self.port = port if port is not None else free_port()
        self.commands: Counter[str] = Counter()
        self.opcodes: Counter[int] = Counter()
        self._engine = _Engine()
        self._engine.strict_field_names = strict_field_names
        self._lock = threading.Lock()  # the engine's data: the test's thread reads it too
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._request_ids = itertools.count(1)
        self._connection_ids = itertools.count(1)

    @property
    def url(self) -> str:
        return f"mongodb://{self.host}:{self.port}/"

    @property
    def is_running(self) -> bool:
        return self._server is not None

    @property
    def strict_field_names(self) -> bool:
        return self._engine.strict_field_names

    @strict_field_names.setter
    def strict_field_names(self, value: bool) -> None:
        with self._lock:
            self._engine.strict_field_names = value

    # -- control, from the test's thread ------------------------------------------------

    def start(self) -> None:
        """Listen on `port` (starting the server's thread the first time)."""
        if self._loop is None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._thread = threading.Thread(
                target=loop.run_forever, name=f"mongo-standin:{self.port}", daemon=True
            )
            self._thread.start()
        self._call(self._listen())

    def stop(self) -> None:
        """Drop every connection and stop listening; the data stays."""
        if self._loop is not None:
            self._call(self._shut())

    def close(self) -> None:
        """stop(), and end the server's thread. Safe to call twice."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self.stop()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=_CONTROL_TIMEOUT_S)
            loop.close()
            self._loop = self._thread = None

    def documents(self, db: str, coll: str) -> list[dict[str, Any]]:
        """Copies of the collection's documents, in insertion order ([] if none)."""
        with self._lock:
            target = self._engine.collection(db, coll)
            return copy.deepcopy(list(target.documents.values())) if target else []

    def indexes(self, db: str, coll: str) -> dict[str, dict[str, Any]]:
        """The collection's index specifications by name ({} if no collection)."""
        with self._lock:
            target = self._engine.collection(db, coll)
            return copy.deepcopy(target.indexes) if target else {}

    def inject_error(self, command: str, code: int, *, times: int = 1,
                     code_name: str = "InjectedError") -> None:
        """Make the next `times` runs of `command` fail with `code` (ok 0)."""
        error = CommandError(code, code_name, f"stand-in: injected error {code}")
        with self._lock:
            self._engine.injected.setdefault(command, []).extend([error] * times)

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        assert self._loop is not None
        future: Future[_T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=_CONTROL_TIMEOUT_S)

    # -- the server's loop ------------------------------------------------------------

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._serve, self.host, self.port, reuse_address=True
            )

    async def _shut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if server is not None:
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection_id = next(self._connection_ids)
        self._writers.add(writer)
        try:
            while True:
                header = await reader.readexactly(_HEADER.size)
                length, request_id, _, opcode = _HEADER.unpack(header)
                if not _HEADER.size < length <= MAX_MESSAGE_SIZE:
                    return
                payload = await reader.readexactly(length - _HEADER.size)
                answer = self._answer(opcode, payload, connection_id)
                if answer is None:
                    continue
                reply_opcode, body = answer
                response_id = next(self._request_ids)
                writer.write(
                    _HEADER.pack(_HEADER.size + len(body), response_id, request_id, reply_opcode)
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, _ProtocolError):
            pass  # the client went away, or spoke something else: drop it
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    def _answer(self, opcode: int, payload: bytes, connection_id: int) -> tuple[int, bytes] | None:
        """(reply opcode, reply payload), or None when no reply is due."""
        self.opcodes[opcode] += 1
        try:
            if opcode == OP_MSG:
                return self._answer_op_msg(payload, connection_id)
            if opcode == OP_QUERY:
                return OP_REPLY, _op_reply(self._answer_op_query(payload, connection_id))
        except (struct.error, ValueError, BSONError) as exc:
            raise _ProtocolError(str(exc)) from exc
        raise _ProtocolError(f"unsupported opcode {opcode}")

    def _answer_op_msg(self, payload: bytes, connection_id: int) -> tuple[int, bytes] | None:
        flags, body, sequences = _parse_op_msg(payload)
        name = next(iter(body), "")
        db = str(body.get("$db", "admin"))
        reply = self._run(_Request(db, name, body, sequences, connection_id))
        if flags & _MSG_MORE_TO_COME:
            return None  # an unacknowledged write: the client reads no reply
        return OP_MSG, _op_msg_reply(reply)

    def _answer_op_query(self, payload: bytes, connection_id: int) -> dict[str, Any]:
        full_name, query = _parse_op_query(payload)
        name = next(iter(query), "")
        db, _, rest = full_name.partition(".")
        if rest != "$cmd" or name not in _HANDSHAKES:
            return CommandError(352, "UnsupportedOpQueryCommand",
                                f"Unsupported OP_QUERY command: {name}").reply()
        return self._run(_Request(db, name, query, {}, connection_id))

    def _run(self, request: _Request) -> dict[str, Any]:
        with self._lock:
            self.commands[request.name] += 1
            return self._engine.run(request)

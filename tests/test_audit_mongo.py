"""The MongoDB audit sink, against the stand-in MongoDB server.

No MongoDB server can run here, so `harness.mongo_standin` speaks the wire
protocol instead; the first tests show that motor itself is happy with it.
Time limits are deadlines far beyond what a healthy run needs: they tell
"fails fast" from "hangs until a 30 s driver default", never race the machine.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
import pytest
from harness.mongo_standin import OP_MSG, OP_QUERY, OP_REPLY, WIRE_VERSION, MongoStandIn
from harness.ports import free_port
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo.errors import BulkWriteError, OperationFailure

from smartflow.audit.entry import AuditEntry, SinkUnavailable
from smartflow.audit.mongo_sink import MongoSink

DB = "smartflow"
COLL = "vas_log"
FAIL_FAST_S = 10.0  # a down server must fail well before the driver's 30 s default
HANG_GUARD_S = 60.0
BASE_TS = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)  # whole milliseconds: BSON keeps no more

MakeSink = Callable[..., MongoSink]


@pytest.fixture
def mongo() -> Iterator[MongoStandIn]:
    with MongoStandIn() as server:
        yield server


@pytest.fixture
async def make_sink(mongo: MongoStandIn) -> AsyncIterator[MakeSink]:
    sinks: list[MongoSink] = []

    def make(**options: Any) -> MongoSink:
        options.setdefault("timeout", 2.0)
        sink = MongoSink(mongo.url, database=DB, collection=COLL, **options)
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        await sink.aclose()


def make_entries(start: int, count: int) -> list[AuditEntry]:
    return [_entry(number) for number in range(start, start + count)]


def _entry(number: int) -> AuditEntry:
    request = {"model": "gpt-x", "messages": [{"role": "user", "content": f"question {number}"}]}
    json_response = number % 3 == 0
    return AuditEntry(
        call_id=f"call-{number:05d}",
        ts=BASE_TS + timedelta(milliseconds=number),
        record={
            "kind": "llm",
            "method": "POST",
            "route": "/v1/chat/completions",
            "user_id": f"user-{number % 7}",
            "key_alias": f"key-{number % 5}",
            "status": 200,
            "stream": number % 2 == 0,
            "prompt_tokens": number,
            "cost_usd": number / 1000,
            "policies": ["pii", "budget"],
            "guardrails": [{"name": "pii", "action": "allow"}],
        },
        request_body=None if number % 10 == 9 else json.dumps(request),
        response_body=json.dumps({"id": number}) if json_response else f"plain text {number}",
        question=f"question {number}",
        answer=f"answer {number}",
    )


def stored_by_id(mongo: MongoStandIn) -> dict[str, dict[str, Any]]:
    return {doc["_id"]: doc for doc in mongo.documents(DB, COLL)}


# -- the stand-in speaks the protocol ---------------------------------------------------


async def test_motor_client_inserts_and_finds_through_the_standin(mongo: MongoStandIn) -> None:
    client: AsyncIOMotorClient[dict[str, Any]] = AsyncIOMotorClient(
        mongo.url, serverSelectionTimeoutMS=10000
    )
    try:
        coll = client["db1"]["things"]
        await coll.insert_one({"_id": "a", "colour": "red", "tags": ["x", "y"]})
        await coll.insert_many([{"_id": "b", "colour": "blue"}, {"colour": "red"}])
        with pytest.raises(BulkWriteError) as caught:
            await coll.insert_many([{"_id": "a"}, {"_id": "c", "colour": "green"}], ordered=False)
        errors = caught.value.details["writeErrors"]
        assert [(e["index"], e["code"]) for e in errors] == [(0, 11000)]

        assert await coll.find_one({"_id": "c"}) == {"_id": "c", "colour": "green"}
        reds = await coll.find({"colour": "red"}).to_list(None)
        assert len(reds) == 2 and reds[0]["_id"] == "a"
        assert [d["_id"] for d in await coll.find({"tags": "y"}).to_list(None)] == ["a"]
        assert await coll.estimated_document_count() == 4
        assert await coll.create_index([("colour", 1)]) == "colour_1"
        assert "colour_1" in await coll.index_information()
        with pytest.raises(OperationFailure) as unknown:
            await client["db1"].command("frobnicate")
        assert unknown.value.code == 59
    finally:
        await asyncio.to_thread(client.close)
    # pymongo 4.20 sends only OP_MSG; older 4.x releases open with an OP_QUERY hello.
    assert mongo.opcodes[OP_MSG] > 0 and mongo.opcodes.keys() <= {OP_MSG, OP_QUERY}
    assert [doc["_id"] for doc in mongo.documents("db1", "things")][:2] == ["a", "b"]


def _op_query(request_id: int, namespace: str, query: dict[str, Any]) -> bytes:
    payload = (
        struct.pack("<i", 0) + namespace.encode() + b"\x00" + struct.pack("<ii", 0, -1)
        + bson.encode(query)
    )
    return struct.pack("<iiii", 16 + len(payload), request_id, 0, OP_QUERY) + payload


def _read_op_reply(sock: socket.socket) -> tuple[int, int, dict[str, Any]]:
    header = _read_exactly(sock, 16)
    length, _, response_to, opcode = struct.unpack("<iiii", header)
    body = _read_exactly(sock, length - 16)
    (returned,) = struct.unpack_from("<i", body, 16)
    assert returned == 1
    return opcode, response_to, bson.decode(body[20:])


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "the stand-in closed the connection"
        data += chunk
    return data


def test_legacy_op_query_handshake(mongo: MongoStandIn) -> None:
    with socket.create_connection((mongo.host, mongo.port), timeout=10) as sock:
        sock.sendall(_op_query(7, "admin.$cmd", {"isMaster": 1, "helloOk": True}))
        opcode, response_to, reply = _read_op_reply(sock)
        assert (opcode, response_to) == (OP_REPLY, 7)
        assert reply["ok"] == 1 and reply["ismaster"] is True
        assert reply["maxWireVersion"] == WIRE_VERSION and reply["helloOk"] is True

        sock.sendall(_op_query(8, "admin.$cmd", {"$query": {"hello": 1}}))
        _, _, wrapped = _read_op_reply(sock)
        assert wrapped["isWritablePrimary"] is True

        sock.sendall(_op_query(9, "db1.$cmd", {"insert": "things", "documents": [{}]}))
        _, _, refused = _read_op_reply(sock)
        assert refused["ok"] == 0 and refused["code"] == 352
    assert mongo.documents("db1", "things") == []


# -- opening and indexes ----------------------------------------------------------------


async def test_open_creates_indexes_with_a_ttl(mongo: MongoStandIn, make_sink: MakeSink) -> None:
    await make_sink(retention_days=30).open()
    indexes = mongo.indexes(DB, COLL)
    assert indexes["ts_1"]["key"] == {"ts": 1}
    assert indexes["ts_1"]["expireAfterSeconds"] == 30 * 86400
    assert indexes["user_id_1_ts_-1"]["key"] == {"user_id": 1, "ts": -1}
    assert indexes["key_alias_1_ts_-1"]["key"] == {"key_alias": 1, "ts": -1}


async def test_retention_changes_migrate_the_ttl(mongo: MongoStandIn, make_sink: MakeSink) -> None:
    def ttl() -> Any:
        return mongo.indexes(DB, COLL)["ts_1"].get("expireAfterSeconds")

    await make_sink(retention_days=0).open()
    assert "ts_1" in mongo.indexes(DB, COLL) and ttl() is None
    await make_sink(retention_days=30).open()
    assert ttl() == 30 * 86400
    await make_sink(retention_days=7).open()
    assert ttl() == 7 * 86400 and mongo.commands["collMod"] == 1
    await make_sink(retention_days=7).open()  # nothing to change
    assert mongo.commands["collMod"] == 1 and mongo.commands["dropIndexes"] == 1
    await make_sink(retention_days=0).open()
    assert ttl() is None


async def test_maintain_puts_back_a_dropped_index(mongo: MongoStandIn, make_sink: MakeSink) -> None:
    sink = make_sink()
    await sink.open()
    await sink.write(make_entries(0, 3))
    client: AsyncIOMotorClient[dict[str, Any]] = AsyncIOMotorClient(mongo.url)
    try:
        await client[DB][COLL].drop_index("ts_1")
    finally:
        await asyncio.to_thread(client.close)
    await sink.maintain(datetime.now(UTC))
    assert mongo.indexes(DB, COLL)["ts_1"]["expireAfterSeconds"] == 30 * 86400


# -- writing ----------------------------------------------------------------------------


async def test_write_500_entries_lands_full_documents(
    mongo: MongoStandIn, make_sink: MakeSink
) -> None:
    sink = make_sink()
    await sink.open()
    entries = make_entries(0, 500)
    await sink.write(entries)

    stored = stored_by_id(mongo)
    assert len(stored) == 500
    for entry in entries:
        doc = stored[entry.call_id]
        assert doc["call_id"] == entry.call_id
        assert doc["ts"] == entry.ts
        for column, value in entry.record.items():
            assert doc[column] == value, column
        expected_request = None if entry.request_body is None else json.loads(entry.request_body)
        assert doc["request"] == expected_request
        assert entry.response_body is not None
        if entry.response_body.startswith("{"):
            assert doc["response"] == json.loads(entry.response_body)
        else:
            assert doc["response"] == entry.response_body
        assert (doc["question"], doc["answer"]) == (entry.question, entry.answer)
    assert stored["call-00003"]["response"] == {"id": 3}
    assert stored["call-00001"]["response"] == "plain text 1"


async def test_writing_again_duplicates_nothing(mongo: MongoStandIn, make_sink: MakeSink) -> None:
    sink = make_sink()
    await sink.open()
    await sink.write(make_entries(0, 500))
    await sink.write(make_entries(0, 500))  # a batch the shipper could not acknowledge
    assert len(mongo.documents(DB, COLL)) == 500
    await sink.write(make_entries(250, 500))  # overlapping: 250 old, 250 new
    ids = [doc["_id"] for doc in mongo.documents(DB, COLL)]
    assert len(ids) == len(set(ids)) == 750
    assert set(ids) == {f"call-{n:05d}" for n in range(750)}


async def test_bodies_the_server_or_bson_refuses_are_kept_as_text(
    mongo: MongoStandIn, make_sink: MakeSink
) -> None:
    mongo.strict_field_names = True  # as MongoDB before 5.0: no "$defs" in a document
    sink = make_sink()
    await sink.open()
    schema_body = json.dumps({"tools": [{"parameters": {"$defs": {"a": {}}, "type": "object"}}]})
    huge_body = '{"seed": 18446744073709551615}'  # valid JSON, beyond BSON's int64
    plain, schema, huge = make_entries(0, 3)
    schema.request_body, huge.request_body = schema_body, huge_body
    await sink.write([plain, schema, huge])
    assert mongo.commands["insert"] == 2  # the batch, then the refused document as text

    stored = stored_by_id(mongo)
    assert stored[schema.call_id]["request"] == schema_body
    assert stored[huge.call_id]["request"] == huge_body
    assert isinstance(stored[plain.call_id]["request"], dict)
    assert stored[schema.call_id]["user_id"] == schema.record["user_id"]


async def test_a_refused_write_raises_sink_unavailable(
    mongo: MongoStandIn, make_sink: MakeSink
) -> None:
    sink = make_sink()
    await sink.open()
    mongo.inject_error("insert", 13, code_name="Unauthorized")
    with pytest.raises(SinkUnavailable, match="Unauthorized|13"):
        await sink.write(make_entries(0, 5))
    await sink.write(make_entries(0, 5))  # the next attempt goes through
    assert len(mongo.documents(DB, COLL)) == 5


async def test_write_before_open_raises_sink_unavailable(make_sink: MakeSink) -> None:
    with pytest.raises(SinkUnavailable, match="not open"):
        await make_sink().write(make_entries(0, 1))


# -- outages ----------------------------------------------------------------------------


async def _timed(coro: Any) -> float:
    """Seconds `coro` took; it must raise SinkUnavailable (never hang, never another type)."""
    started = time.monotonic()
    with pytest.raises(SinkUnavailable):
        await asyncio.wait_for(coro, HANG_GUARD_S)
    return time.monotonic() - started


async def test_server_down_fails_fast_and_recovers(
    mongo: MongoStandIn, make_sink: MakeSink
) -> None:
    sink = make_sink(timeout=1.0)
    await sink.open()
    await sink.write(make_entries(0, 10))

    mongo.stop()
    assert await _timed(sink.write(make_entries(10, 10))) < FAIL_FAST_S
    assert await _timed(sink.write(make_entries(10, 10))) < FAIL_FAST_S  # still down
    assert await _timed(sink.open()) < FAIL_FAST_S
    assert await _timed(sink.maintain(datetime.now(UTC))) < FAIL_FAST_S

    mongo.start()
    await asyncio.wait_for(sink.open(), HANG_GUARD_S)
    await asyncio.wait_for(sink.write(make_entries(10, 10)), HANG_GUARD_S)
    assert sorted(stored_by_id(mongo)) == [f"call-{n:05d}" for n in range(20)]


async def test_open_against_nothing_fails_fast_without_credentials_in_the_message() -> None:
    sink = MongoSink(f"mongodb://audit:s3cret@127.0.0.1:{free_port()}/", timeout=1.0)
    started = time.monotonic()
    with pytest.raises(SinkUnavailable) as caught:
        await asyncio.wait_for(sink.open(), HANG_GUARD_S)
    assert time.monotonic() - started < FAIL_FAST_S
    assert "mongodb" in str(caught.value) and "s3cret" not in str(caught.value)
    await sink.aclose()


async def test_a_bad_url_raises_sink_unavailable() -> None:
    sink = MongoSink("http://not-mongo.invalid/")
    with pytest.raises(SinkUnavailable):
        await sink.open()
    await sink.aclose()


async def test_aclose_never_raises(mongo: MongoStandIn) -> None:
    sink = MongoSink(mongo.url, timeout=1.0)
    await sink.aclose()  # never opened
    await sink.open()
    mongo.close()  # and the server gone for good
    await asyncio.wait_for(sink.aclose(), HANG_GUARD_S)
    await sink.aclose()


def test_importing_the_sink_does_not_import_motor() -> None:
    code = (
        "import sys, smartflow.audit.mongo_sink\n"
        "loaded = [m for m in ('motor', 'pymongo', 'bson') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

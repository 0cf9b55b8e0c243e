"""The sans-IO HTTP/1.1 layer: bytes in, events out, no sockets."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from smartflow.http.events import BadRequest, Body, EndBody, Event, RequestReceived
from smartflow.http.h1 import (
    H1Connection,
    HeaderError,
    encode_chunk,
    encode_response_head,
)

CORPUS_DIR = Path(__file__).parent / "requests" / "invalid"


def _corpus() -> list[tuple[str, bytes, int]]:
    cases = []
    for line in (CORPUS_DIR / "expected_status.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, status = line.split()
        raw = (CORPUS_DIR / f"{name}.http").read_bytes()
        cases.append((name, codecs.escape_decode(raw)[0], int(status)))
    return cases


CORPUS = _corpus()


def new_connection(**overrides: int) -> H1Connection:
    limits = {"max_header_bytes": 8192, "max_body_bytes": 1024}
    limits.update(overrides)
    return H1Connection(**limits)


def feed_all(connection: H1Connection, data: bytes, *, byte_by_byte: bool = False) -> list[Event]:
    """Feed data, starting the next request whenever one is complete."""
    events: list[Event] = []
    pieces = [data[i : i + 1] for i in range(len(data))] if byte_by_byte else [data]
    for piece in pieces:
        new = connection.receive_data(piece)
        while True:
            events.extend(new)
            if new and isinstance(new[-1], EndBody):
                new = connection.start_next_request()
                continue
            break
    return events


def test_every_invalid_request_in_the_corpus_has_an_expected_status() -> None:
    files = {path.stem for path in CORPUS_DIR.glob("*.http")}
    assert files == {name for name, _data, _status in CORPUS}
    assert len(CORPUS) >= 25


@pytest.mark.parametrize("byte_by_byte", [False, True], ids=["whole", "byte-by-byte"])
@pytest.mark.parametrize(("name", "data", "status"), CORPUS, ids=[c[0] for c in CORPUS])
def test_invalid_request_gives_one_bad_request_with_the_expected_status(
    name: str, data: bytes, status: int, byte_by_byte: bool
) -> None:
    events = feed_all(new_connection(), data, byte_by_byte=byte_by_byte)
    errors = [event for event in events if isinstance(event, BadRequest)]
    assert len(errors) == 1, events
    assert errors[0].status == status
    assert events[-1] is errors[0]
    assert not any(isinstance(event, EndBody) for event in events)
    # Nothing more is parsed after a fault.
    assert new_connection().receive_data(b"") is not None


def test_a_simple_get_gives_request_then_end_of_body() -> None:
    events = feed_all(new_connection(), b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nUser-Agent: t\r\n\r\n")
    assert len(events) == 2
    request, end = events
    assert isinstance(request, RequestReceived)
    assert request.method == b"GET" and request.target == b"/a?b=1"
    assert (b"user-agent", b"t") in request.headers
    assert request.keep_alive and not request.has_body
    assert isinstance(end, EndBody)


@pytest.mark.parametrize("byte_by_byte", [False, True], ids=["whole", "byte-by-byte"])
def test_pipelined_requests_come_out_in_order_with_their_bodies(byte_by_byte: bool) -> None:
    data = (
        b"POST /one HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"POST /two HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        b"GET /three HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    events = feed_all(new_connection(), data, byte_by_byte=byte_by_byte)
    targets = [e.target for e in events if isinstance(e, RequestReceived)]
    assert targets == [b"/one", b"/two", b"/three"]
    bodies: list[bytes] = []
    current = b""
    for event in events:
        if isinstance(event, Body):
            current += event.data
        elif isinstance(event, EndBody):
            bodies.append(current)
            current = b""
    assert bodies == [b"hello", b"abcde", b""]


def test_a_pipelined_request_waits_until_the_previous_response_is_done() -> None:
    connection = new_connection()
    events = connection.receive_data(
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert [type(e) for e in events] == [RequestReceived, EndBody]
    assert connection.buffered_bytes > 0
    next_events = connection.start_next_request()
    assert isinstance(next_events[0], RequestReceived) and next_events[0].target == b"/2"


def test_http_1_0_request_is_not_kept_alive() -> None:
    events = feed_all(new_connection(), b"GET / HTTP/1.0\r\n\r\n")
    assert isinstance(events[0], RequestReceived)
    assert events[0].http_version == "1.0" and not events[0].keep_alive


def test_connection_close_turns_keep_alive_off() -> None:
    events = feed_all(new_connection(), b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Close\r\n\r\n")
    assert isinstance(events[0], RequestReceived) and not events[0].keep_alive


def test_expect_100_continue_is_reported_for_a_request_with_a_body() -> None:
    events = new_connection().receive_data(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
    )
    assert isinstance(events[0], RequestReceived) and events[0].expects_continue


def test_head_larger_than_max_header_bytes_is_431() -> None:
    connection = new_connection(max_header_bytes=1024)
    events = connection.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000)
    assert events == [BadRequest(1, 431, "Request header fields too large")]


def test_complete_head_larger_than_max_header_bytes_is_431() -> None:
    connection = new_connection(max_header_bytes=1024)
    events = connection.receive_data(
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n"
    )
    assert [(type(e), getattr(e, "status", None)) for e in events] == [(BadRequest, 431)]


def test_chunked_body_past_max_body_bytes_is_413_as_it_streams() -> None:
    connection = new_connection(max_body_bytes=10)
    events = connection.receive_data(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert isinstance(events[0], RequestReceived)
    events = connection.receive_data(b"8\r\n12345678\r\n")
    assert [type(e) for e in events] == [Body]
    events = connection.receive_data(b"8\r\n12345678\r\n")
    assert isinstance(events[-1], BadRequest) and events[-1].status == 413


def test_leading_empty_lines_before_a_request_are_ignored() -> None:
    events = feed_all(new_connection(), b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(events[0], RequestReceived)


def test_end_of_stream_before_a_request_is_connection_closed() -> None:
    from smartflow.http.events import ConnectionClosed

    assert new_connection().receive_data(b"") == [ConnectionClosed(1)]


def test_header_timeout_gives_408() -> None:
    connection = new_connection()
    connection.receive_data(b"GET / HT")
    assert connection.has_partial_head
    assert connection.timeout_event().status == 408


def test_response_head_is_framed_with_content_length() -> None:
    head = encode_response_head(
        200, [("x-a", "1")], "application/json", 2, keep_alive=True, chunked=False, date_line=b""
    )
    assert (
        head
        == b"HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n"
    )


def test_response_head_for_streaming_is_chunked_and_may_close() -> None:
    head = encode_response_head(
        201, [], "text/event-stream", None, keep_alive=False, chunked=True, date_line=b"date: d\r\n"
    )
    assert head.startswith(b"HTTP/1.1 201 Created\r\ndate: d\r\n")
    assert b"transfer-encoding: chunked\r\n" in head and b"connection: close\r\n" in head
    assert encode_chunk(b"abc") == b"3\r\nabc\r\n"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-a", "1\r\nset-cookie: x"),
        ("x-a", "a\nb"),
        ("x-a", "a\x00b"),
        ("bad name", "v"),
        ("x:y", "v"),
        ("", "v"),
        ("x-smartflow-provider", "openai\r\nset-cookie: x"),  # a name the encoder knows
        ("x-ratelimit-remaining-tokens", "1\r"),
        ("x-smartflow-call-id", "a\x00"),
        ("content-type\r\nx-evil", "v"),
    ],
)
def test_response_header_with_cr_lf_nul_or_bad_name_is_refused(name: str, value: str) -> None:
    headers = [("x-smartflow-call-id", "c1"), (name, value), ("x-b", "2")]
    with pytest.raises(HeaderError):
        encode_response_head(
            200, headers, None, 0, keep_alive=True, chunked=False, date_line=b""
        )


def test_a_content_type_with_a_line_break_is_refused() -> None:
    with pytest.raises(HeaderError):
        encode_response_head(
            200, [], "text/plain\r\nx: y", 0, keep_alive=True, chunked=False, date_line=b""
        )


def test_many_headers_keep_their_order_and_known_and_unknown_names_pass() -> None:
    headers = [(f"x-h{i}", f"v{i}") for i in range(10)] + [("x-smartflow-attempts", "1")]
    head = encode_response_head(
        404, headers, "application/json", None, keep_alive=False, chunked=True, date_line=b""
    )
    assert head == (
        b"HTTP/1.1 404 Not Found\r\n"
        + b"".join(b"x-h%d: v%d\r\n" % (i, i) for i in range(10))
        + b"x-smartflow-attempts: 1\r\ncontent-type: application/json\r\n"
        b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )


def test_a_repeated_head_gives_the_same_request_with_its_own_header_list() -> None:
    connection = new_connection()
    head = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n"
    first = feed_all(connection, head + b"abc")
    first_request = first[0]
    assert isinstance(first_request, RequestReceived)
    first_request.headers.append((b"x-added", b"by a handler"))
    second = feed_all(connection, head + b"def")
    assert isinstance(second[0], RequestReceived)
    assert second[0].headers == [(b"host", b"x"), (b"content-length", b"3")]
    assert [e.data for e in second if isinstance(e, Body)] == [b"def"]


def test_a_repeated_bad_head_is_still_refused() -> None:
    bad = b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n"
    good = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    connection = new_connection()
    assert isinstance(feed_all(connection, good)[0], RequestReceived)
    events = feed_all(connection, bad)
    assert isinstance(events[-1], BadRequest) and events[-1].status == 400

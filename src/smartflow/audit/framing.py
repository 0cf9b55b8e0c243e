"""How records travel in one stream entry: each record is three byte strings
(the record JSON, the captured request, the captured answer), each prefixed
by its length (4 bytes, little-endian). Packing a whole flush into one value
makes the append one XADD of one argument, whatever the number of calls."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

_LENGTHS = struct.Struct("<III")

Record = tuple[bytes, bytes, bytes]


def pack(records: Iterable[Record]) -> bytes:
    parts: list[bytes] = []
    for record, request, answer in records:
        parts += (_LENGTHS.pack(len(record), len(request), len(answer)), record, request, answer)
    return b"".join(parts)


def unpack(blob: bytes) -> Iterator[Record]:
    """The records of one entry; ValueError when the framing is broken."""
    view = memoryview(blob)
    pos, end = 0, len(blob)
    size = _LENGTHS.size
    while pos < end:
        if pos + size > end:
            raise ValueError("a record's lengths are cut")
        lengths = _LENGTHS.unpack_from(view, pos)
        pos += size
        stop = pos + sum(lengths)
        if stop > end:
            raise ValueError("a record is cut")
        record = bytes(view[pos:pos + lengths[0]])
        request = bytes(view[pos + lengths[0]:pos + lengths[0] + lengths[1]])
        answer = bytes(view[stop - lengths[2]:stop])
        pos = stop
        yield record, request, answer

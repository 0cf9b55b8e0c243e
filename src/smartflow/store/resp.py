"""RESP2, the Redis wire protocol, with no I/O: bytes in, replies out.

Kept apart from the socket code so it can be tested byte by byte and reused
by any transport. Only what a client needs: it encodes commands (always an
array of bulk strings) and decodes the five RESP2 reply types. RESP3 is never
negotiated (no HELLO 3), so its types are a protocol error here.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = [
    "INCOMPLETE",
    "ProtocolError",
    "ReplyError",
    "RespParser",
    "encode_command",
    "is_ask",
    "is_moved",
    "is_noscript",
]


class _Incomplete:
    """Type of INCOMPLETE; a class of its own so `is` checks cannot collide with a reply."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "INCOMPLETE"


INCOMPLETE: Final = _Incomplete()

# Compact the buffer once this much consumed data sits in front of it; below
# that, moving the unread tail costs more than the memory it frees.
_COMPACT_AT = 64 * 1024

_CRLF = b"\r\n"
_BULK = 36  # $
_SIMPLE = 43  # +
_INT = 58  # :
_ERROR = 45  # -
_ARRAY = 42  # *


class ReplyError(Exception):
    """An error reply (`-ERR ...`) from Redis.

    The parser returns it as a value rather than raising it, because the
    reply belongs to whichever caller sent the matching command.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def kind(self) -> str:
        """The error's first word by Redis convention: "ERR", "WRONGTYPE", "MOVED"..."""
        return self.message.split(" ", 1)[0]


class ProtocolError(Exception):
    """The byte stream is not RESP2: the connection cannot be trusted any more."""


def encode_command(*args: bytes | str | float) -> bytes:
    """One command as a RESP array of bulk strings.

    str is sent as UTF-8, int and float as their decimal text (as redis-py
    does). bool is refused: Redis has no booleans and True would silently
    become "1" or "True" depending on who wrote the client.
    """
    items: tuple[Any, ...] = args  # narrowed by hand below, by exact type first (fast)
    parts = [b"*%d\r\n" % len(items)]
    append = parts.append
    data: bytes
    for arg in items:
        kind = type(arg)
        if kind is bytes:
            data = arg
        elif kind is str:
            data = arg.encode()
        elif kind is int:
            data = b"%d" % arg
        elif kind is float:
            data = repr(arg).encode()
        elif isinstance(arg, (bytes, bytearray, memoryview)):
            data = bytes(arg)
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int) and not isinstance(arg, bool):
            data = b"%d" % arg
        elif isinstance(arg, float):
            data = repr(float(arg)).encode()
        else:
            raise TypeError(
                f"Redis command arguments must be bytes, str, int or float, "
                f"not {type(arg).__name__}"
            )
        append(b"$%d\r\n" % len(data))
        append(data)
        append(_CRLF)
    return b"".join(parts)


class RespParser:
    """Incremental RESP2 decoder: `feed()` bytes as they arrive, then drain `next_reply()`.

    A reply split across feeds is returned only once complete. Elements of a
    large array that are already complete are kept on a stack instead of
    being parsed again on every feed, so a reply arriving in many chunks
    costs linear time; a partial bulk string is not consumed at all until
    its last byte is there.
    """

    __slots__ = ("_buf", "_pos", "_stack")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        # One [elements, still_missing] per array being assembled, outermost first.
        self._stack: list[list[Any]] = []

    def feed(self, data: bytes) -> None:
        pos = self._pos
        if pos:
            buf = self._buf
            if pos == len(buf):
                buf.clear()
                self._pos = 0
            elif pos >= _COMPACT_AT:
                del buf[:pos]
                self._pos = 0
        self._buf += data

    def next_reply(self) -> Any:
        """The next complete reply, or INCOMPLETE if more bytes are needed.

        ProtocolError for bytes that are not RESP2; the parser is unusable
        after that (so is the connection).
        """
        buf = self._buf
        pos = self._pos
        end = len(buf)
        stack = self._stack
        find = buf.find
        value: Any
        while True:
            if pos >= end:
                break
            eol = find(_CRLF, pos)
            if eol < 0:
                break
            kind = buf[pos]
            if kind == _BULK:
                length = self._int(buf, pos, eol)
                if length < 0:
                    value = None
                    pos = eol + 2
                else:
                    body_end = eol + 2 + length
                    if body_end + 2 > end:
                        break
                    value = bytes(buf[eol + 2:body_end])
                    pos = body_end + 2
            elif kind == _SIMPLE:
                value = buf[pos + 1:eol].decode("utf-8", "replace")
                pos = eol + 2
            elif kind == _INT:
                value = self._int(buf, pos, eol)
                pos = eol + 2
            elif kind == _ERROR:
                value = ReplyError(buf[pos + 1:eol].decode("utf-8", "replace"))
                pos = eol + 2
            elif kind == _ARRAY:
                count = self._int(buf, pos, eol)
                pos = eol + 2
                if count < 0:
                    value = None
                elif count == 0:
                    value = []
                else:
                    stack.append([[], count])
                    self._pos = pos
                    continue
            else:
                raise ProtocolError(f"unexpected RESP type byte {bytes([kind])!r}")
            # A complete value: it either finishes a top-level reply or fills
            # a slot of the innermost array (which may complete it in turn).
            while stack:
                top = stack[-1]
                top[0].append(value)
                top[1] -= 1
                if top[1]:
                    break
                value = stack.pop()[0]
            else:
                self._pos = pos
                return value
            self._pos = pos
        return INCOMPLETE

    @staticmethod
    def _int(buf: bytearray, pos: int, eol: int) -> int:
        try:
            return int(buf[pos + 1:eol])
        except ValueError:
            raise ProtocolError(f"bad RESP integer {bytes(buf[pos:eol])!r}") from None


def _redirect(err: BaseException, kind: str) -> tuple[int, str, int] | None:
    if not isinstance(err, ReplyError):
        return None
    parts = err.message.split(" ")
    if len(parts) != 3 or parts[0] != kind:
        return None
    # rpartition: the host may be an IPv6 address full of colons. An empty
    # host means "the endpoint you are already talking to" (Redis 7).
    host, _sep, port = parts[2].rpartition(":")
    try:
        return int(parts[1]), host, int(port)
    except ValueError:
        return None


def is_moved(err: BaseException) -> tuple[int, str, int] | None:
    """(slot, host, port) of a `MOVED slot host:port` error, else None. host may be ""."""
    return _redirect(err, "MOVED")


def is_ask(err: BaseException) -> tuple[int, str, int] | None:
    """(slot, host, port) of an `ASK slot host:port` error, else None. host may be ""."""
    return _redirect(err, "ASK")


def is_noscript(err: BaseException) -> bool:
    """True for the reply to EVALSHA of a script the server has not cached."""
    return isinstance(err, ReplyError) and err.message.startswith("NOSCRIPT")

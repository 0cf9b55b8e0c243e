"""What every dialect's replay shares: the codec shape, text pieces, item ids.

A cached answer is stored whole; a streaming caller still expects a stream
that looks like a model's. The text is cut into a few pieces (not one event,
which some clients render as a frozen screen then a jump, and not one event
per character, which costs bytes for nothing).
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from smartflow.providers.sse import SSEError, SSEEvent, SSEParser

STREAM_PIECES = 4
_ID_ALPHABET = string.ascii_letters + string.digits


class StreamAssembler(Protocol):
    """SSE bytes of one answer in (split anywhere), the whole answer out."""

    def feed(self, data: bytes) -> None: ...

    def result(self) -> dict[str, Any] | None:
        """The whole answer; None unless the stream ended cleanly on its terminal event."""
        ...


class Refresh(Protocol):
    def __call__(self, answer: dict[str, Any], *, new_id: str,
                 created: int) -> dict[str, Any]: ...


class StreamEvents(Protocol):
    def __call__(self, answer: dict[str, Any], *, include_usage: bool) -> list[bytes]: ...


@dataclass(frozen=True, slots=True)
class ReplayCodec:
    """One dialect's replay: ``refresh`` gives a stored answer its new identity,
    ``stream_events`` renders an (already refreshed) answer as that dialect's
    stream, ``new_assembler`` reads such a stream back into a whole answer."""

    answer_prefix: str
    call_prefix: str
    refresh: Refresh
    stream_events: StreamEvents
    new_assembler: Callable[[], StreamAssembler]


def pieces(text: str, parts: int = STREAM_PIECES) -> list[str]:
    """``text`` in at most ``parts`` non-empty pieces whose concatenation is ``text``."""
    if not text:
        return []
    size = -(-len(text) // parts)  # ceiling: never more than ``parts`` pieces
    cuts = [0]
    for target in range(size, len(text), size):
        # Cut before a space when one is near, as a model's tokens mostly are.
        space = text.find(" ", target, target + size)
        cut = space if space > cuts[-1] else target
        if cut > cuts[-1]:
            cuts.append(cut)
    cuts.append(len(text))
    return [text[start:end] for start, end in itertools.pairwise(cuts) if end > start]


def derived_id(new_id: str, prefix: str, index: int) -> str:
    """A fresh id for the ``index``-th item of the answer called ``new_id``.

    Derived, not random, so the whole replay and the stream replay of one hit
    name the same items alike (and a stream assembled back equals the whole).
    """
    digest = hashlib.blake2b(f"{new_id}/{index}".encode(), digest_size=24).hexdigest()
    return f"{prefix}_{digest}"


def random_id(prefix: str, length: int) -> str:
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


class SSEAssembler:
    """The SSE half of every dialect's assembler: bytes in, split anywhere;
    each whole event to ``_on_event``. A malformed stream marks it broken
    (its answer is then never kept)."""

    __slots__ = ("_is_broken", "_is_closed", "_parser")

    def __init__(self) -> None:
        self._parser = SSEParser()
        self._is_broken = False
        self._is_closed = False

    def feed(self, data: bytes) -> None:
        if self._is_broken or self._is_closed:
            return
        try:
            events = self._parser.feed(data)
        except SSEError:
            self._is_broken = True
            return
        for event in events:
            self._on_event(event)

    def _close(self) -> None:
        """Once, at the end: the last event, if it came without its blank line."""
        if self._is_closed:
            return
        self._is_closed = True
        if not self._is_broken:
            try:
                for event in self._parser.close():
                    self._on_event(event)
            except SSEError:
                self._is_broken = True

    def _on_event(self, event: SSEEvent) -> None:
        raise NotImplementedError

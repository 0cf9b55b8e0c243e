"""Server-sent events in tests: read as a client would, and cut as a network would."""

from __future__ import annotations

import random
from typing import Any

import orjson


def named_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name or "", JSON data) per event, read by hand (not by the gateway's parser)."""
    events = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        name, data = "", None
        for line in block.split(b"\n"):
            if line.startswith(b"event: "):
                name = line[7:].decode()
            elif line.startswith(b"data: "):
                data = orjson.loads(line[6:])
        if data is not None:
            events.append((name, data))
    return events


def random_splits(data: bytes, rng: random.Random, cuts: int) -> list[bytes]:
    """``data`` in pieces, cut at up to ``cuts`` distinct places chosen by ``rng``."""
    points = sorted(rng.sample(range(1, len(data)), min(cuts, len(data) - 1)))
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]

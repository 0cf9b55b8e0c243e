"""How the translation tests cut an encoded stream, as a network would."""

from __future__ import annotations

import random


def random_splits(data: bytes, rng: random.Random, cuts: int) -> list[bytes]:
    """``data`` in pieces, cut at up to ``cuts`` distinct places chosen by ``rng``."""
    points = sorted(rng.sample(range(1, len(data)), min(cuts, len(data) - 1)))
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]

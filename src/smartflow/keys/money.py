"""Money in Redis counters: integer nano-USD, so sums are exact.

Floats drift when thousands of small costs are added; 1e-9 USD units keep
every sum exact and fit a Redis 64-bit integer up to $9.2 billion.
"""

from __future__ import annotations

NANO_PER_USD = 1_000_000_000


def to_nano(usd: float) -> int:
    return round(usd * NANO_PER_USD)


def to_usd(nano: int) -> float:
    return round(nano / NANO_PER_USD, 9)

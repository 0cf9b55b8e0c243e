"""Frozen snapshots of pool occupancy, for metrics and tests."""

from __future__ import annotations

from dataclasses import dataclass

from .tls import TLSConfig


@dataclass(frozen=True, slots=True)
class OriginStatistics:
    """One origin's connections at the moment of the snapshot.

    open = idle + in_use + connecting; waiting counts requests queued for a
    connection because `open` reached max_connections_per_origin.
    """

    origin: str  # "scheme://host:port"
    tls: TLSConfig | None
    open: int
    idle: int
    in_use: int
    connecting: int
    waiting: int


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    origins: tuple[OriginStatistics, ...]

    @property
    def open(self) -> int:
        return sum(o.open for o in self.origins)

    @property
    def idle(self) -> int:
        return sum(o.idle for o in self.origins)

    @property
    def in_use(self) -> int:
        return sum(o.in_use for o in self.origins)

    @property
    def connecting(self) -> int:
        return sum(o.connecting for o in self.origins)

    @property
    def waiting(self) -> int:
        return sum(o.waiting for o in self.origins)

    def for_origin(self, origin: str) -> OriginStatistics | None:
        """Totals for "scheme://host:port" summed over its TLS configs, or None if unknown."""
        matches = [o for o in self.origins if o.origin == origin]
        if not matches:
            return None
        return OriginStatistics(
            origin=origin,
            tls=matches[0].tls,
            open=sum(o.open for o in matches),
            idle=sum(o.idle for o in matches),
            in_use=sum(o.in_use for o in matches),
            connecting=sum(o.connecting for o in matches),
            waiting=sum(o.waiting for o in matches),
        )

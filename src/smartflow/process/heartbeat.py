"""A worker's heartbeat: proof that its event loop is still turning."""

from __future__ import annotations

import mmap
import struct
import time

HEARTBEAT_INTERVAL_S = 1.0
_STAMP = struct.Struct("d")


class Heartbeat:
    """When a worker's event loop last turned (`time.monotonic()`, which is
    system-wide on Linux), in a page of anonymous shared memory mapped before
    the fork: the worker stamps it and the supervisor reads it with plain
    memory accesses, no syscalls and no files, however many workers there are.
    """

    __slots__ = ("_memory",)

    def __init__(self) -> None:
        self._memory = mmap.mmap(-1, _STAMP.size)  # MAP_SHARED: survives fork
        self.beat()

    def beat(self) -> None:
        _STAMP.pack_into(self._memory, 0, time.monotonic())

    def last_beat(self) -> float:
        stamp: float = _STAMP.unpack_from(self._memory, 0)[0]
        return stamp

    def close(self) -> None:
        self._memory.close()

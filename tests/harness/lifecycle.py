"""What every harness service shares: `with Service() as s` starts it and closes it."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Self

LOG_TAIL_CHARS = 4000


class ManagedService:
    """A context manager over `start()` and `close()`, which subclasses define."""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def read_log_tail(path: Path) -> str:
    """The end of a server's log, for error messages."""
    try:
        return path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
    except OSError:
        return "(no log)"

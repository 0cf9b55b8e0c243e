"""Fail a test when its event loop's exception handler was ever called.

asyncio reports what nobody awaited through `loop.call_exception_handler`:
"Task exception was never retrieved", exceptions in callbacks and protocol
methods, unclosed transports. By default these are only logged, so a test
can pass while the server under it is broken. The guard swaps in a handler
that records every call, and the test fails if any call was recorded.
"""

from __future__ import annotations

import asyncio
import gc
from dataclasses import dataclass, field
from typing import Any


class LoopExceptionsRecorded(AssertionError):
    """The loop's exception handler was called during the test."""


def _describe(context: dict[str, Any]) -> str:
    message = str(context.get("message", "(no message)"))
    exception = context.get("exception")
    if exception is not None:
        message += f": {type(exception).__name__}: {exception}"
    for key in ("task", "future", "handle", "protocol", "transport"):
        if key in context:
            message += f"\n    {key}: {context[key]!r}"
    return message


@dataclass(slots=True)
class LoopExceptionRecorder:
    """Records every `call_exception_handler` context on one loop."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _previous_handler: Any = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(self._record)

    def uninstall(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.set_exception_handler(self._previous_handler)
        self._loop = None

    def _record(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.calls.append(context)

    def collect_garbage(self) -> None:
        """Run the GC so unretrieved task exceptions are reported now, not later."""
        gc.collect()

    def assert_clean(self) -> None:
        """Raise LoopExceptionsRecorded listing every recorded call, if any."""
        if self.calls:
            described = "\n  - ".join(_describe(context) for context in self.calls)
            raise LoopExceptionsRecorded(
                f"event loop exception handler was called {len(self.calls)} time(s):\n  - {described}"
            )

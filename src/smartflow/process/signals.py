"""Signals, the self-pipe way: a handler only wakes the loop.

`signal.set_wakeup_fd` makes the C-level handler write each signal number
into a non-blocking pipe; the Python-level handlers do nothing. The
arbiter's loop waits on the pipe's read end and reads the numbers in the
order they came, so every decision happens in the loop, none in a handler.
"""

from __future__ import annotations

import contextlib
import os
import signal

HANDLED_SIGNALS = (signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def _ignore_signal(signum: int, frame: object) -> None:
    return None


class SignalPipe:
    """The wake-up pipe for HANDLED_SIGNALS (installed by `install()`)."""

    def __init__(self) -> None:
        self.read_fd = -1
        self._write_fd = -1

    def install(self) -> None:
        self.read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, _ignore_signal)

    def read_pending(self) -> tuple[int, ...]:
        """The signal numbers received since the last call, oldest first."""
        if self.read_fd < 0:
            return ()
        received: list[int] = []
        while True:
            try:
                data = os.read(self.read_fd, 256)
            except BlockingIOError:
                break
            if not data:
                break
            received.extend(data)
        return tuple(received)

    def close(self) -> None:
        """Stop listening; in a forked child, also drop the inherited pipe."""
        if self.read_fd < 0:
            return
        signal.set_wakeup_fd(-1)
        for fd in (self.read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.read_fd = self._write_fd = -1


def restore_default_signals() -> None:
    """In a forked child: the default dispositions, except that Ctrl-C and a
    terminal hang-up are ignored (they reach the whole foreground group; the
    supervisor turns them into an orderly SIGTERM to each child)."""
    for sig in HANDLED_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

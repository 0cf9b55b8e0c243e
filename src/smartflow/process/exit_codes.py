"""Exit statuses are a contract between the supervisor, its workers and
whoever runs `smartflow serve`: a worker exiting with EXIT_BIND_FAILED halts
the gateway with the same status and is never respawned; a crash loop halts
with EXIT_CRASH_LOOP."""

from __future__ import annotations

import os
import signal

EXIT_OK = 0
EXIT_STARTUP_FAILED = 1
EXIT_CONFIG_ERROR = 2
EXIT_BIND_FAILED = 3
EXIT_CRASH_LOOP = 4


class StartupError(Exception):
    """The gateway cannot start; carries the exit status to use."""

    def __init__(self, message: str, exit_code: int = EXIT_STARTUP_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def describe_wait_status(status: int) -> tuple[int | None, str]:
    """(exit code, or None when killed by a signal; a human description) of a
    `os.waitpid` status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return None, f"killed by {name}"
    code = os.waitstatus_to_exitcode(status)
    return code, f"exit status {code}"

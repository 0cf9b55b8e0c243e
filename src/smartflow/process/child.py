"""The first moments of a forked process, up to its role's entry point."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

from smartflow.process.exit_codes import EXIT_OK, EXIT_STARTUP_FAILED
from smartflow.process.json_log import log_event
from smartflow.process.signals import restore_default_signals
from smartflow.process.title import set_process_title
from smartflow.process.worker_context import WorkerContext, WorkerEntry

_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int) -> None:
    """Have the kernel send `sig` to this process when its parent dies, so a
    supervisor killed with SIGKILL leaves no orphan serving stale config."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def run_child(
    entry: WorkerEntry,
    context: WorkerContext,
    *,
    title: str,
    release_inherited: Callable[[], None],
) -> NoReturn:
    """Run `entry(context)` in this freshly forked process, then exit with its
    status. `release_inherited` closes what the child got from the
    supervisor but must not hold (the signal pipe, siblings' pipes...)."""
    exit_code = EXIT_STARTUP_FAILED
    try:
        restore_default_signals()
        set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != context.supervisor_pid:
            os._exit(EXIT_OK)  # the supervisor died before the line above
        release_inherited()
        set_process_title(title)
        exit_code = entry(context)
    except SystemExit as exc:
        exit_code = exc.code if isinstance(exc.code, int) else EXIT_STARTUP_FAILED
    except BaseException as exc:  # noqa: BLE001 - report, then exit the child
        log_event("error", "worker_crashed", message=f"{type(exc).__name__}: {exc}",
                  traceback=traceback.format_exc())
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(exit_code)

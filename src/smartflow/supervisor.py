"""The supervisor's old import path, kept as a thin facade.

The supervisor lives in `smartflow.process` now, one module per job (see
that package's docstring); import from there in new code. Nothing in
`smartflow` or `workers` imports this module.
"""

from __future__ import annotations

from smartflow.process.arbiter import Arbiter, serve
from smartflow.process.backoff import RestartBackoff
from smartflow.process.binding import bind_listener, resolve_listen_address
from smartflow.process.exit_codes import (
    EXIT_BIND_FAILED,
    EXIT_CONFIG_ERROR,
    EXIT_CRASH_LOOP,
    EXIT_OK,
    EXIT_STARTUP_FAILED,
    StartupError,
)
from smartflow.process.heartbeat import HEARTBEAT_INTERVAL_S as WORKER_HEARTBEAT_INTERVAL_S
from smartflow.process.heartbeat import Heartbeat
from smartflow.process.json_log import JsonLinesHandler, install_json_logging, log_event
from smartflow.process.roles import GATEWAY_ROLE, load_role_entry
from smartflow.process.tls import build_server_ssl_context
from smartflow.process.worker_context import WorkerContext, WorkerEntry

Supervisor = Arbiter


def load_gateway_entry() -> WorkerEntry:
    """`workers.gateway.run`, imported (and preloaded) now."""
    return load_role_entry(GATEWAY_ROLE)


__all__ = [
    "EXIT_BIND_FAILED", "EXIT_CONFIG_ERROR", "EXIT_CRASH_LOOP", "EXIT_OK",
    "EXIT_STARTUP_FAILED", "WORKER_HEARTBEAT_INTERVAL_S", "Heartbeat", "JsonLinesHandler",
    "RestartBackoff", "StartupError", "Supervisor", "WorkerContext", "bind_listener",
    "build_server_ssl_context", "install_json_logging", "load_gateway_entry", "log_event",
    "resolve_listen_address", "serve",
]

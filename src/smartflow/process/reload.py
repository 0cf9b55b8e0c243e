"""Merging a re-read config into the running one (on SIGHUP)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from smartflow.config import Settings


def merge_reloaded(running: Settings, fresh: Settings) -> tuple[Settings, list[str]]:
    """`fresh`, except what only a restart can change; and the keys of that
    kind that `fresh` tried to change.

    The listening address, the data dir and Redis are held by the
    supervisor itself (the port holder, the embedded redis-server), so they
    keep their running values.
    """
    old = running.server
    pinned: dict[str, Any] = {"host": old.host, "port": old.port, "data_dir": old.data_dir}
    wanted = {"host": fresh.server.host, "port": fresh.server.port or old.port,
              "data_dir": str(Path(fresh.server.data_dir).resolve())}
    changed = sorted(key for key, value in pinned.items() if wanted[key] != value)
    if fresh.state != running.state:
        changed.append("state")
    merged = dataclasses.replace(
        fresh, server=dataclasses.replace(fresh.server, **pinned), state=running.state
    )
    return merged, changed

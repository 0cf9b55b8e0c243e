"""Process titles, so `ps` and `top` say which process is which."""

from __future__ import annotations

SUPERVISOR_TITLE = "smartflow: supervisor"


def set_process_title(title: str) -> None:
    """Rewrite this process's argv as `ps` shows it (and its comm name)."""
    # Imported here: the C extension is only needed once a process runs.
    import setproctitle

    setproctitle.setproctitle(title)

"""The kinds of process the supervisor runs.

A role names its entry-point module under `workers/` as a string: the
arbiter imports it at start-up (before forking, so every child shares the
imported code), and nothing in `smartflow` imports `workers` statically, so
`workers.gateway -> smartflow.app -> ...` never loops back.

Adding a kind of process (the audit shipper, the compliance API) is one more RoleSpec in
`default_roles()`; the arbiter runs whatever roles it is given.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from smartflow.config import Settings, audit_enabled, worker_count
from smartflow.process.exit_codes import StartupError
from smartflow.process.worker_context import WorkerEntry


@dataclass(frozen=True, slots=True)
class RoleSpec:
    """One kind of process: what it is called, how many, what it runs."""

    name: str
    # Module with `run(WorkerContext) -> int` and, optionally, `preload()`,
    # which the supervisor calls once before the first fork.
    entry_module: str
    # `{slot}` is replaced by the process's slot number, 1..count.
    title_template: str
    count: Callable[[Settings], int]

    def title(self, slot: int) -> str:
        return self.title_template.format(slot=slot)


GATEWAY_ROLE = RoleSpec(
    name="gateway",
    entry_module="workers.gateway",
    title_template="smartflow: worker {slot}",
    count=worker_count,
)


def shipper_count(settings: Settings) -> int:
    """One audit shipper per node, when calls are recorded into a sink."""
    audit = settings.audit
    return 1 if audit_enabled(settings) and (audit.postgres_dsn or audit.mongodb_url) else 0


SHIPPER_ROLE = RoleSpec(
    name="shipper",
    entry_module="workers.shipper",
    title_template="smartflow: shipper",
    count=shipper_count,
)


def compliance_count(settings: Settings) -> int:
    """One compliance API process per node, when it is given a port."""
    return 1 if settings.compliance.port else 0


COMPLIANCE_ROLE = RoleSpec(
    name="compliance",
    entry_module="workers.compliance",
    title_template="smartflow: compliance",
    count=compliance_count,
)


def default_roles() -> tuple[RoleSpec, ...]:
    """The roles `smartflow serve` runs."""
    return (GATEWAY_ROLE, SHIPPER_ROLE, COMPLIANCE_ROLE)


def load_role_entry(role: RoleSpec) -> WorkerEntry:
    """Import the role's entry module now, run its `preload()`, return its `run`."""
    try:
        module = importlib.import_module(role.entry_module)
    except ModuleNotFoundError as exc:
        parts = role.entry_module.split(".")
        own_names = {".".join(parts[: i + 1]) for i in range(len(parts))}
        if exc.name not in own_names:
            raise  # the entry module exists; something it imports does not
        raise StartupError(
            f"{role.name} entry point {role.entry_module!r} is not installed"
        ) from None
    preload = getattr(module, "preload", None)
    if preload is not None:
        preload()
    entry: WorkerEntry = module.run
    return entry

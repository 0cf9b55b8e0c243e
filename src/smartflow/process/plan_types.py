"""The arbiter's inputs and outputs, as plain frozen values.

`SupervisorState` is a snapshot the arbiter gathers once per loop pass:
the live children, what happened since the last pass (children reaped,
signals received), and the little the supervisor remembers (generation,
stopping, crash history). `plan(state, now)` turns it into a list of
`Action`s; the arbiter carries them out in order. Nothing here does I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from smartflow.process.backoff import RestartBackoff

# A worker that has not reported ready this long after its fork is killed.
WORKER_BOOT_TIMEOUT_S = 30.0
# Retiring workers get shutdown_timeout to drain, plus this much to exit.
KILL_GRACE_S = 2.0
# The loop wakes at least this often even when nothing is due.
IDLE_WAKEUP_S = 1.0


# -- state ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class WorkerState:
    """One live (not yet reaped) child process."""

    pid: int
    role: str
    slot: int
    generation: int
    started_at: float                # monotonic, at the fork
    ready_at: float | None = None    # when it reported ready; None before
    last_beat: float = 0.0           # its heartbeat stamp (monotonic)
    is_retiring: bool = False        # sent SIGTERM: draining, then exiting
    kill_at: float | None = None     # when a retiring worker is SIGKILLed
    is_killed: bool = False          # sent SIGKILL; waiting for the reap

    @property
    def is_ready(self) -> bool:
        return self.ready_at is not None

    def last_sign_of_life(self) -> float:
        # The ready time covers a worker whose first beat is not stamped yet.
        return max(self.last_beat, self.ready_at or 0.0)


@dataclass(frozen=True, slots=True)
class ChildExit:
    """A child reaped since the last pass."""

    pid: int
    role: str
    slot: int
    generation: int
    exit_code: int | None            # None: killed by a signal
    description: str                 # "exit status 3", "killed by SIGKILL"
    was_ready: bool = False
    was_retiring: bool = False


@dataclass(frozen=True, slots=True)
class RoleState:
    """One role: how many processes are wanted, and its crash history."""

    name: str
    wanted: int
    backoff: RestartBackoff


@dataclass(frozen=True, slots=True)
class Timeouts:
    worker_timeout_s: float          # heartbeat silence that means wedged; 0 = never
    shutdown_timeout_s: float        # a retiring worker's drain time
    boot_timeout_s: float = WORKER_BOOT_TIMEOUT_S
    kill_grace_s: float = KILL_GRACE_S
    idle_wakeup_s: float = IDLE_WAKEUP_S


@dataclass(frozen=True, slots=True)
class SupervisorState:
    generation: int                  # workers of older generations are rolled out
    roles: tuple[RoleState, ...]
    workers: tuple[WorkerState, ...]
    timeouts: Timeouts
    exits: tuple[ChildExit, ...] = ()
    signals: tuple[int, ...] = ()    # signal numbers, in the order received
    is_stopping: bool = False
    exit_code: int | None = None     # what the supervisor will exit with once stopped
    has_reported_serving: bool = False
    is_redis_down: bool = False      # the embedded redis-server has exited
    redis_failure: str | None = None  # restarting it failed: why


# -- actions ----------------------------------------------------------------------

class KillReason(enum.StrEnum):
    HUNG = "hung"                    # heartbeat older than worker_timeout
    DRAIN_OVERDUE = "drain_overdue"  # retiring, still alive past its kill_at
    BOOT_TIMEOUT = "boot_timeout"    # never reported ready
    STOP_FORCED = "stop_forced"      # a second stop signal while draining


class HaltCause(enum.StrEnum):
    BIND_FAILED = "bind_failed"
    CRASH_LOOP = "crash_loop"
    REDIS_FAILED = "redis_failed"


@dataclass(frozen=True, slots=True)
class Spawn:
    """Fork a process of `role` into `slot` of `generation`."""

    role: str
    slot: int
    generation: int


@dataclass(frozen=True, slots=True)
class Kill:
    """Send `signal` to `pid` now (no drain)."""

    pid: int
    signal: int
    reason: KillReason
    silent_s: float | None = None    # HUNG: seconds since its last sign of life


@dataclass(frozen=True, slots=True)
class Retire:
    """SIGTERM `pid`: it drains and exits; SIGKILL it if still alive at `kill_at`."""

    pid: int
    kill_at: float


@dataclass(frozen=True, slots=True)
class RecordCrash:
    """A child died unexpectedly: remember it (the role's backoff becomes `backoff`)."""

    child: ChildExit
    backoff: RestartBackoff


@dataclass(frozen=True, slots=True)
class NoteExit:
    """A child the supervisor was retiring (or stopping) has exited, as expected."""

    child: ChildExit


@dataclass(frozen=True, slots=True)
class Stop:
    """An operator's stop signal: drain everything, then exit 0."""

    signal: int


@dataclass(frozen=True, slots=True)
class Halt:
    """Something is wrong that restarting will not fix: drain, then exit `exit_code`."""

    exit_code: int
    cause: HaltCause
    worker_pid: int | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Reload:
    """Re-read the config; on success, start a new generation."""


@dataclass(frozen=True, slots=True)
class RestartRedis:
    """Start the embedded redis-server again."""


@dataclass(frozen=True, slots=True)
class ReportServing:
    """Every role has its wanted processes up and ready (said once)."""

    pids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Wait:
    """Sleep until a signal, a readiness report, or `timeout_s`."""

    timeout_s: float


@dataclass(frozen=True, slots=True)
class Exit:
    """Everything is down: the supervisor exits with `exit_code`."""

    exit_code: int


Action = (
    Spawn | Kill | Retire | RecordCrash | NoteExit | Stop | Halt | Reload | RestartRedis
    | ReportServing | Wait | Exit
)

"""Wait for a condition with a generous deadline instead of sleeping a fixed time.

A fixed sleep followed by an assertion bets that the machine keeps up; on a
loaded CI runner it sometimes does not. These helpers poll until the
condition holds and fail only at a deadline far beyond any normal wait, so a
test still fails when the behaviour is wrong (the condition never comes) but
not when the machine is merely slow. The predicate is checked once more at
the deadline, so a stall that swallows the whole budget is not a failure by
itself. Clocks are monotonic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

_T = TypeVar("_T")

DEFAULT_TIMEOUT_S = 10.0


def wait_until_sync(
    predicate: Callable[[], bool],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    interval_s: float = 0.02,
    what: str = "the condition",
) -> None:
    """Block until `predicate()` is true; AssertionError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            if predicate():
                return
            raise AssertionError(f"{what}: not reached within {timeout_s:g} s")
        time.sleep(interval_s)


async def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    interval_s: float = 0.01,
    what: str = "the condition",
) -> None:
    """Poll `predicate()` on the running loop until it is true (see the module docstring)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            if predicate():
                return
            raise AssertionError(f"{what}: not reached within {timeout_s:g} s")
        await asyncio.sleep(interval_s)


async def wait_until_steady(
    read: Callable[[], _T],
    *,
    polls: int = 10,
    interval_s: float = 0.05,
    timeout_s: float = 20.0,
    what: str = "the value",
) -> _T:
    """Poll `read()` until it returned the same value `polls` times in a row; that value.

    For "the producer has stopped" checks: instead of guessing how long a
    busy machine needs to fill the buffers, wait until the count stops
    moving. Counting polls (each one a turn of the event loop) as well as
    time means a process that was simply not scheduled for a while does not
    look steady. AssertionError if it still moves at the deadline: a
    producer that never stops is the bug such tests look for.
    """
    deadline = time.monotonic() + timeout_s
    value = read()
    unchanged = 0
    while unchanged < polls:
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"{what}: still changing after {timeout_s:g} s (last {value!r})"
            )
        await asyncio.sleep(interval_s)
        current = read()
        if current == value:
            unchanged += 1
        else:
            value, unchanged = current, 0
    return value

"""The call pipeline: one ordered list of stages that every proxied call runs.

    authenticate -> admit -> pre_call -> cache_lookup -> route
        -> send -> relay -> post_call -> record

A ``Stage`` is a small object with one job that sits in one of these slots
and overrides any of three hooks:

* ``on_enter(call)`` — on the way in, in slot order. It may fill in the
  Call (identity, reservation, target), answer the call itself by returning a
  response (a cache hit), or refuse it by raising ``GatewayError``.
* ``wrap_stream(call, transform)`` — for a streamed answer: returns the
  transform to use (a guardrail or a cache fill wraps the one it is given;
  the audit wraps nothing, it has the relay keep the events sent in
  ``Call.answer_chunks``). Unwrapped, the upstream bytes go out untouched
  and uncopied.
* ``on_exit(call)`` — once the call is over (the whole answer sent, the
  stream ended, or the call failed), in slot order. Usage and cost are on
  the Call by then: commit spend, release a reservation, fill a cache,
  append the record.

Hooks a stage does not override are not called at all, so a stage that has
nothing to do costs nothing. Between the way in and the way out, the
exchange (``proxy.exchange``) does ``send`` and ``relay``: it is the same
for every route; what differs per route (how the upstream request is built,
how the answer is translated) is the route's ``Operation``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from smartflow.http.response import Response, StreamingResponse

if TYPE_CHECKING:
    from smartflow.proxy.call import Call
    from smartflow.proxy.relay import StreamTransform

SLOTS: tuple[str, ...] = (
    "authenticate", "admit", "pre_call", "cache_lookup", "route",
    "send", "relay", "post_call", "record",
)
_SLOT_INDEX = {name: index for index, name in enumerate(SLOTS)}

Reply = Response | StreamingResponse


class Stage:
    """Base class: set ``slot`` and override the hooks the stage needs."""

    slot: str = ""

    @property
    def name(self) -> str:
        return type(self).__name__

    async def on_enter(self, call: Call) -> Reply | None:
        return None

    def wrap_stream(self, call: Call, transform: StreamTransform) -> StreamTransform:
        return transform

    async def on_exit(self, call: Call) -> None:
        return None


def _overrides(stage: Stage, hook: str) -> bool:
    return getattr(type(stage), hook) is not getattr(Stage, hook)


class Pipeline:
    """The stages in slot order, split by hook. Built once per worker."""

    __slots__ = ("_authenticate", "_enter", "_exit", "_stream", "stages")

    def __init__(self, stages: Iterable[Stage]) -> None:
        ordered = list(stages)
        for stage in ordered:
            if stage.slot not in _SLOT_INDEX:
                raise ValueError(f"{stage.name}: unknown slot {stage.slot!r} "
                                 f"(one of: {', '.join(SLOTS)})")
        # sorted() is stable: stages of one slot keep the order they were given in.
        ordered.sort(key=lambda stage: _SLOT_INDEX[stage.slot])
        self.stages: tuple[Stage, ...] = tuple(ordered)
        # The request is parsed between the authenticate slot and the rest, so
        # an unauthenticated caller learns nothing about its request's shape.
        self._authenticate: tuple[Callable[[Call], Awaitable[Reply | None]], ...] = tuple(
            stage.on_enter for stage in ordered
            if stage.slot == "authenticate" and _overrides(stage, "on_enter"))
        self._enter: tuple[Callable[[Call], Awaitable[Reply | None]], ...] = tuple(
            stage.on_enter for stage in ordered
            if stage.slot != "authenticate" and _overrides(stage, "on_enter"))
        self._stream: tuple[Stage, ...] = tuple(
            stage for stage in ordered if _overrides(stage, "wrap_stream"))
        self._exit: tuple[Callable[[Call], Awaitable[None]], ...] = tuple(
            stage.on_exit for stage in ordered if _overrides(stage, "on_exit"))

    async def authenticate(self, call: Call) -> None:
        """The authenticate slot's hooks (they answer nothing; they refuse by raising)."""
        for on_enter in self._authenticate:
            await on_enter(call)

    async def enter(self, call: Call) -> Reply | None:
        """Every later slot's ``on_enter``; the first reply answers the call."""
        for on_enter in self._enter:
            reply = await on_enter(call)
            if reply is not None:
                return reply
        return None

    def wrap_stream(self, call: Call, transform: StreamTransform) -> StreamTransform:
        for stage in self._stream:
            transform = stage.wrap_stream(call, transform)
        return transform

    async def exit(self, call: Call) -> None:
        """Every exit hook runs, even when an earlier one failed; the first
        failure is raised after the others ran."""
        failure: BaseException | None = None
        for on_exit in self._exit:
            try:
                await on_exit(call)
            except Exception as exc:  # noqa: BLE001 - the others must still run
                if failure is None:
                    failure = exc
        if failure is not None:
            raise failure

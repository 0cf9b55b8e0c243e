"""The one error model of a proxied call.

Every failure a caller can see is a ``GatewayError``: the HTTP status it is
answered with, a message, and two facts the rest of the gateway decides on:

* ``phase`` — how far the call got: ``before_send`` (nothing left the
  gateway), ``before_first_byte`` (the upstream was asked, the caller has
  received nothing yet) or ``mid_stream`` (the caller already has bytes).
  Only a failure before the first byte may still fail over or be retried.
* ``reason`` — why: the caller's request (``client``), its credentials
  (``auth``), a limit or budget (``limit``), the upstream's own error status
  (``upstream_status``), a ``timeout``, a ``connection`` failure, or the
  gateway itself (``internal``).

The error carries no wire format. Each dialect (``smartflow.dialects``)
renders it as its provider would, from its own status-to-type table; a
``type`` set here is the upstream's own OpenAI-style type, kept only where
the caller speaks that same dialect.
"""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    BEFORE_SEND = "before_send"
    BEFORE_FIRST_BYTE = "before_first_byte"
    MID_STREAM = "mid_stream"


class Reason(StrEnum):
    CLIENT = "client"
    AUTH = "auth"
    LIMIT = "limit"
    UPSTREAM_STATUS = "upstream_status"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    INTERNAL = "internal"


_RETRYABLE_UPSTREAM_STATUSES = frozenset({408, 409, 425, 429})


def reason_for_status(status: int) -> Reason:
    """The reason a gateway-made refusal of ``status`` stands for."""
    if status in (401, 403):
        return Reason.AUTH
    if status == 429:
        return Reason.LIMIT
    if status in (408, 504):
        return Reason.TIMEOUT
    if status >= 500:
        return Reason.INTERNAL
    return Reason.CLIENT


class GatewayError(Exception):
    """A failed call, as the caller will see it. See the module docstring."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        retry_after: str | None = None,
        *,
        reason: Reason | None = None,
        phase: Phase = Phase.BEFORE_SEND,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.retry_after = retry_after
        self.reason = reason if reason is not None else reason_for_status(status)
        self.phase = phase

    def at(self, phase: Phase) -> GatewayError:
        """This error, noted as having happened in ``phase`` (returns self)."""
        self.phase = phase
        return self

    @property
    def may_fail_over(self) -> bool:
        """True when another deployment may still be tried: nothing has reached
        the caller yet, and the failure is the upstream's, not the request's."""
        if self.phase is Phase.MID_STREAM:
            return False
        if self.reason in (Reason.TIMEOUT, Reason.CONNECTION):
            return True
        return self.reason is Reason.UPSTREAM_STATUS and (
            self.status >= 500 or self.status in _RETRYABLE_UPSTREAM_STATUSES)

    def __repr__(self) -> str:
        return (f"GatewayError({self.status}, {self.message!r}, reason={self.reason.value}, "
                f"phase={self.phase.value})")

"""The ``Call``: everything the gateway knows about one proxied request.

Built by a route from the incoming request, handed through the pipeline's
stages (``proxy.pipeline``) and filled in as it goes: who is calling
(``identity``), what was asked (``body``, ``model``), where it may go
(``candidates``) and went (``target``), what it reserved, how it ended
(``status``, ``error``, ``usage``, ``cost``) and when. Stages read and write
the Call; nothing about a call lives in a global.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

from smartflow.dialects.base import Dialect
from smartflow.gateway_error import GatewayError
from smartflow.http.request import Request
from smartflow.providers.base import Target, Usage
from smartflow.proxy.cost import Cost

TRACEPARENT_HEADER = "traceparent"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a call is made for. ``kind``: ``master`` (the admin key),
    ``anonymous`` (development mode, no key configured) or ``virtual_key``
    (``entry`` then holds the key's, its team's and its user's records)."""

    kind: str
    is_admin: bool = False
    key_id: str | None = None
    key_alias: str | None = None
    user_id: str | None = None
    team_id: str | None = None
    entry: Any = None  # keys.key_cache.KeyEntry for a virtual key


def new_call_id() -> str:
    return f"{random.getrandbits(128):032x}"


def trace_id_of(request: Request) -> str | None:
    """The W3C ``traceparent`` trace id the caller sent, if a valid one."""
    header = request.header(TRACEPARENT_HEADER)
    if header is not None:
        parts = header.strip().split("-")
        if len(parts) >= 4 and len(parts[1]) == 32:
            trace_id = parts[1].lower()
            if trace_id != "0" * 32 and all(c in "0123456789abcdef" for c in trace_id):
                return trace_id
    return None


@dataclass(slots=True, eq=False)
class Call:
    request: Request
    dialect: Dialect
    operation: str  # chat, completions, embeddings, messages, count_tokens, passthrough
    call_id: str = field(default_factory=new_call_id)
    trace_id: str = ""
    started_s: float = field(default_factory=time.perf_counter)
    # what was asked
    raw_body: bytes = b""
    body: dict[str, Any] | None = None
    model: str = ""  # as requested (after the x-smartflow-model override)
    is_stream: bool = False
    wants_usage: bool = False
    # who asks, and what it holds
    identity: Principal | None = None
    reservation: Any = None
    # where it goes
    candidates: tuple[Target, ...] = ()
    target: Target | None = None
    fallback_target: Target | None = None  # where a model the catalog does not know goes
    route_plan: Any = None  # routing.planner.RoutePlan when the call may fail over
    deployment_id: str = ""
    attempts: int = 0
    cache_outcome: str = "off"  # off, skip, miss, hit_l1, hit_exact, hit_semantic
    cache_state: Any = None  # the cache stage's, from lookup to fill
    # how it ended
    first_byte_s: float | None = None
    ended_s: float | None = None
    status: int = 0
    error: GatewayError | None = None
    usage: Usage | None = None
    cost: Cost | None = None
    finish_reason: str | None = None
    completion_chars: int = 0  # for estimating output tokens when no usage came
    # the answer as sent, for the audit record: a whole body, or (for a stream,
    # when bodies are captured) its chunks up to the capture cap
    answer_body: bytes | None = None
    answer_chunks: list[bytes] | None = None
    answer_chunks_cap: int = 0  # bytes of a relayed stream kept in answer_chunks
    # or a stream's text, when a stage reads it as it passes anyway (the
    # output guard, holding nothing back): then no chunk is kept
    answer_text: list[str] | None = None
    # what the policy engine decided (names of matched policies, guardrail
    # decisions, the compliance verdict): recorded with the call
    policies: tuple[str, ...] = ()
    guardrails: tuple[dict[str, Any], ...] = ()
    verdict: str | None = None
    policy_state: Any = None  # the guardrail stage's, from the input check to the output's
    # The latest user text's embedding, when a stage already computed it (the
    # guardrails): (text, vector), so a later stage (the semantic cache)
    # reuses it instead of running the model again on the same text.
    text_embedding: tuple[str, Any] | None = None
    # Responses API: the earlier turns ``previous_response_id`` names (loaded by
    # a stage; None when it names none the gateway stored) and the response
    # object this call produced, kept for the next turn
    history: list[dict[str, Any]] | None = None
    response_object: dict[str, Any] | None = None
    # headers stages add to the answer (rate-limit and budget state)
    response_headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def provider(self) -> str:
        return self.target.provider if self.target is not None else ""

    def elapsed_ms(self) -> float:
        end = self.ended_s if self.ended_s is not None else time.perf_counter()
        return (end - self.started_s) * 1000.0

    def ttfb_ms(self) -> float | None:
        if self.first_byte_s is None:
            return None
        return (self.first_byte_s - self.started_s) * 1000.0

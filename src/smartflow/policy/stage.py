"""The guardrail stage: policies resolved per call, input judged before the
provider is asked, output judged as it leaves.

It sits in the ``pre_call`` slot: after authenticate and admit (so a
refused caller costs no model run) and before the cache (so a cached answer
is never served to a request a guardrail blocks, and a masked request is
cached under its masked text). Its exit hook runs before the cache keeps an
answer and before the record is written, so neither sees an answer the
output guardrails blocked or masked.

Headers on every answer it judged: ``x-smartflow-policies`` (the matched
policies, comma-separated; ``none``) and ``x-smartflow-guardrails``
(``<guardrail>=<outcome>`` for each input decision; on a whole answer also
``<guardrail>/output=<outcome>``). A blocked call is refused with an error
in the caller's dialect that names the policy, the guardrail and the
finding types, never the text that triggered it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from smartflow.gateway_error import GatewayError, Phase, Reason
from smartflow.policy.call_text import checks_calls_of, input_pieces, output_pieces
from smartflow.policy.engine import Decision, GuardrailEngine, verdict_of
from smartflow.policy.masking import Masker
from smartflow.policy.stream_guard import OutputGuard
from smartflow.proxy.headers import TAGS_HEADER
from smartflow.proxy.pipeline import Reply, Stage

if TYPE_CHECKING:
    import numpy as np

    from smartflow.policy.resolver import Resolution
    from smartflow.policy.runtime import PolicyRuntime
    from smartflow.proxy.call import Call
    from smartflow.proxy.relay import StreamTransform

logger = logging.getLogger(__name__)

POLICIES_HEADER = "x-smartflow-policies"
GUARDRAILS_HEADER = "x-smartflow-guardrails"
BLOCKED_CODE = "guardrail_blocked"
MAX_HEADER_TAGS = 32
# Prompt injection is a threat in what reaches the model; an answer that
# discusses one is not an attack on the gateway.
INPUT_ONLY_TYPES = frozenset({"prompt_injection"})


@dataclass(frozen=True, slots=True)
class Plan:
    """What a resolution means for a call, worked out once per resolution
    (resolutions are memoised, so every call of a scope shares one)."""

    policies: tuple[str, ...]
    policies_header: str
    guardrails: tuple[Any, ...]
    output_guardrails: tuple[Any, ...]
    engine: GuardrailEngine
    # The input guardrails split by whether they read the text's embedding.
    with_embedding: tuple[Any, ...]
    without_embedding: tuple[Any, ...]


# Plans are kept per resolution object; a new policy snapshot brings new
# resolutions, so old plans only wait for the next clear.
MAX_PLANS = 1024


@dataclass(slots=True)
class PolicyState:
    policies: tuple[str, ...]
    output_guardrails: tuple[Any, ...]
    decisions: list[Decision] = field(default_factory=list)
    _masker: Masker | None = None
    embedding: np.ndarray | None = None  # the latest user text's, for feedback
    digest: str = ""
    guard: OutputGuard | None = None
    engine: GuardrailEngine | None = None

    @property
    def masker(self) -> Masker:
        # One per call (placeholders stay consistent within it), made only
        # when something is masked.
        if self._masker is None:
            self._masker = Masker()
        return self._masker


def blocked_error(decision: Decision, *, answer: bool = False) -> GatewayError:
    what = "answer" if answer else "request"
    types = ", ".join(decision.finding_types()) or decision.type
    policy = f"policy '{decision.policy}'" if decision.policy else "a policy"
    return GatewayError(
        400, f"The {what} was blocked by {policy}: guardrail '{decision.guardrail}' "
             f"found {types}.", code=BLOCKED_CODE, reason=Reason.CLIENT,
        phase=Phase.BEFORE_FIRST_BYTE if answer else Phase.BEFORE_SEND)


def _tags_of(call: Call) -> tuple[str, ...]:
    tags: list[str] = []
    identity = call.identity
    entry = identity.entry if identity is not None else None
    if entry is not None:
        tags.extend(entry.key.tags)
        if entry.team is not None:
            tags.extend(getattr(entry.team, "tags", ()) or ())
    header = call.request.header(TAGS_HEADER)
    if header:
        # A caller's own tags can only attach more policies, never fewer.
        tags.extend(t.strip() for t in header.split(",")[:MAX_HEADER_TAGS] if t.strip())
    return tuple(dict.fromkeys(tags))


def _header_value(decisions: list[Decision]) -> str:
    parts = []
    for decision in decisions:
        name = decision.guardrail if decision.phase == "input" else f"{decision.guardrail}/output"
        parts.append(f"{name}={decision.outcome}")
    return ", ".join(parts)


class GuardrailStage(Stage):
    slot = "pre_call"

    def __init__(self, runtime: PolicyRuntime, *, keep_answer_text: int = 0) -> None:
        """``keep_answer_text``: how many characters of a streamed answer's
        text the output guard keeps on the call (``Call.answer_text``) when
        it holds nothing back; 0 keeps none."""
        self._runtime = runtime
        self._keep_answer_text = keep_answer_text
        self._engine = runtime.engine
        self._default_engine = runtime.default_engine
        settings = runtime.settings
        self._window = settings.stream_window
        self._max_chars = settings.max_scan_chars
        self._check_output = settings.check_output
        self._plans: dict[int, tuple[Resolution, Plan]] = {}

    def _plan(self, resolution: Resolution) -> Plan:
        known = self._plans.get(id(resolution))
        if known is not None and known[0] is resolution:
            return known[1]
        guardrails = tuple(resolution.guardrails)
        # Only the default policy applies (no attachment matched): its
        # engine, the pattern checks alone unless configured otherwise.
        engine = self._default_engine if resolution.by_default else self._engine
        with_embedding: list[Any] = []
        without: list[Any] = []
        for guardrail in guardrails:
            (with_embedding if engine.needs_embedding(guardrail) else without).append(guardrail)
        plan = Plan(
            policies=tuple(resolution.policies),
            policies_header=",".join(resolution.policies) or "none",
            guardrails=guardrails,
            output_guardrails=tuple(g for g in guardrails if g.type not in INPUT_ONLY_TYPES)
            if self._check_output else (),
            engine=engine, with_embedding=tuple(with_embedding),
            without_embedding=tuple(without))
        if len(self._plans) >= MAX_PLANS:
            self._plans.clear()
        self._plans[id(resolution)] = (resolution, plan)
        return plan

    async def on_enter(self, call: Call) -> Reply | None:
        dialect = call.dialect.name
        if not checks_calls_of(dialect, call.operation):
            return None
        identity = call.identity
        plan = self._plan(self._runtime.resolve(
            identity.team_id if identity is not None else None,
            identity.key_alias if identity is not None else None,
            call.model, _tags_of(call)))
        state = PolicyState(plan.policies, plan.output_guardrails)
        call.policy_state = state
        call.policies = plan.policies
        headers = call.response_headers
        headers.append((POLICIES_HEADER, plan.policies_header))
        guardrails = plan.guardrails
        if not guardrails:
            return None
        pieces = input_pieces(dialect, call.operation, call.body)
        texts: list[str] = []
        budget = self._max_chars
        for piece in pieces:
            text = piece.text[:budget]
            budget -= len(text)
            texts.append(text)
        state.engine = plan.engine
        embeddings, decisions = await self._judge_input(plan, texts)
        state.decisions = decisions
        if texts:
            # The user's own words are what a reviewer's feedback is about.
            last_user = max((i for i, p in enumerate(pieces) if p.source != "tool"), default=0)
            state.embedding = embeddings[last_user]
            if state.embedding is not None:
                call.text_embedding = (texts[last_user], state.embedding)
                # Only a call with an embedding is remembered for feedback.
                state.digest = hashlib.sha256(texts[last_user].encode()).hexdigest()
        call.guardrails = tuple(d.record() for d in decisions)
        call.verdict = verdict_of(decisions)
        headers.append((GUARDRAILS_HEADER, _header_value(decisions)))
        for decision in decisions:
            if decision.outcome == "blocked":
                raise blocked_error(decision)
        masks: dict[int, list[Any]] = {}
        for decision in decisions:
            if decision.outcome == "masked":
                for index, finding in decision.findings:
                    masks.setdefault(index, []).append(finding)
        if masks:
            for index, findings in masks.items():
                setter = pieces[index].set_text
                if setter is not None:
                    # Only the scanned prefix is masked; an unscanned tail stays as it came.
                    original = pieces[index].text
                    scanned = texts[index]
                    setter(state.masker.mask(scanned, findings) + original[len(scanned):])
            call.raw_body = orjson.dumps(call.body)
        return None

    @staticmethod
    async def _judge_input(plan: Plan, texts: list[str]
                           ) -> tuple[list[np.ndarray | None], list[Decision]]:
        """Every guardrail over the texts, in the guardrails' order. The
        embedding runs on the model's thread while the guardrails that do not
        read it (the patterns, the NER model) run here, so a call waits for
        the longer of the two rather than their sum."""
        engine, guardrails = plan.engine, plan.guardrails
        with_embedding, without = plan.with_embedding, plan.without_embedding
        if not with_embedding:
            return [None] * len(texts), engine.run(guardrails, texts, [None] * len(texts),
                                                   "input")
        pending = asyncio.ensure_future(engine.embeddings_for(with_embedding, texts))
        try:
            early = engine.run(without, texts, [None] * len(texts), "input")
            embeddings = await pending
        finally:
            if not pending.done():
                pending.cancel()
        late = engine.run(with_embedding, texts, embeddings, "input")
        by_guardrail = {id(g): d for g, d in zip(without, early, strict=True)}
        by_guardrail.update((id(g), d) for g, d in zip(with_embedding, late, strict=True))
        return embeddings, [by_guardrail[id(g)] for g in guardrails]

    def wrap_stream(self, call: Call, transform: StreamTransform) -> StreamTransform:
        state = call.policy_state
        if state is None or not state.output_guardrails:
            return transform
        guard = OutputGuard(transform, state.engine or self._engine, state.output_guardrails,
                            call.dialect.name, operation=call.operation,
                            window=self._window, masker=state.masker,
                            block_error=lambda d: blocked_error(d, answer=True),
                            keep_text=self._keep_answer_text)
        state.guard = guard
        call.answer_text = guard.text
        return guard

    async def on_exit(self, call: Call) -> None:
        state = call.policy_state
        if state is None:
            return
        output: list[Decision] = []
        if state.guard is not None:
            output = state.guard.decisions
        elif (state.output_guardrails and call.status == 200 and call.answer_body
              and not call.is_stream and not call.cache_outcome.startswith("hit")):
            output = self._judge_answer(call, state)
        if output:
            state.decisions.extend(output)
            # The input decisions' records are made already; only the output's are new.
            call.guardrails += tuple(d.record() for d in output)
            call.verdict = verdict_of(state.decisions)
        log = self._runtime.decision_log
        # Feedback learns from the request's embedding: a call judged by the
        # pattern checks alone has none and is not remembered.
        if log is not None and state.decisions and state.embedding is not None:
            log.remember_soon(call.call_id, state.embedding, list(call.guardrails),
                              list(state.policies), state.digest)

    def _judge_answer(self, call: Call, state: PolicyState) -> list[Decision]:
        """A whole answer: judged before it is sent; a block replaces it with
        the error, a mask rewrites its text."""
        try:
            answer = orjson.loads(call.answer_body or b"")
        except orjson.JSONDecodeError:
            return []
        if not isinstance(answer, dict):
            return []
        pieces = output_pieces(call.dialect.name, answer)
        if not pieces:
            return []
        texts = [p.text[:self._max_chars] for p in pieces]
        decisions = (state.engine or self._engine).run(state.output_guardrails, texts, [None] * len(texts),
                                     "output")
        for decision in decisions:
            if decision.outcome == "blocked":
                error = blocked_error(decision, answer=True)
                call.error = error
                call.status = error.status
                call.answer_body = call.dialect.error_body(error)
                self._replace_header(call, decisions)
                return decisions
        by_piece: dict[int, list[Any]] = {}
        for decision in decisions:
            if decision.outcome == "masked":
                for index, finding in decision.findings:
                    by_piece.setdefault(index, []).append(finding)
        if by_piece:
            for index, findings in by_piece.items():
                setter = pieces[index].set_text
                if setter is not None:
                    setter(state.masker.mask(texts[index], findings)
                           + pieces[index].text[len(texts[index]):])
            call.answer_body = orjson.dumps(answer)
        self._replace_header(call, decisions)
        return decisions

    @staticmethod
    def _replace_header(call: Call, output: list[Decision]) -> None:
        value = _header_value(output)
        if not value:
            return
        headers = call.response_headers
        for i, (name, existing) in enumerate(headers):
            if name == GUARDRAILS_HEADER:
                headers[i] = (name, f"{existing}, {value}" if existing else value)
                return
        headers.append((GUARDRAILS_HEADER, value))

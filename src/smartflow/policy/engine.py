"""Guardrails, run: a guardrail's definition becomes a detector, texts become decisions.

A detector is built once per guardrail version and kept (the regexes
compiled, the examples embedded once). The models behind them (the NER
model, the embedding model, the learning engine's clauses) are shared by
every guardrail of a worker.

A decision's outcome follows from its findings and the guardrail's action:
no finding is ``pass``; otherwise ``blocked``, ``masked``, ``flagged`` or
``logged``. The call's verdict is the strictest outcome of all of them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import orjson

from smartflow.policy.findings import Embed, Finding, TextDetector

logger = logging.getLogger(__name__)

GUARDRAIL_TYPES = ("pii", "prompt_injection", "toxicity", "compliance", "custom")
ACTIONS = ("block", "mask", "flag", "log")
OUTCOME_OF_ACTION = {"block": "blocked", "mask": "masked", "flag": "flagged", "log": "logged"}
# The call's verdict: the strictest outcome ("logged" is recorded, not a verdict).
_VERDICT_RANK = {"blocked": 3, "masked": 2, "flagged": 1}
# Types whose detectors read the text's sentence embedding.
EMBEDDING_TYPES = frozenset({"prompt_injection", "toxicity", "compliance"})
MAX_DETECTORS = 1024

AsyncEmbed = Callable[[Sequence[str]], Awaitable[np.ndarray]]


class GuardrailLike(Protocol):
    """A guardrail definition (policy.model.GuardrailSpec or ResolvedGuardrail)."""

    @property
    def name(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def config(self) -> Mapping[str, Any]: ...


@dataclass(slots=True)
class DetectorServices:
    """What detectors are built from; one per worker."""

    model_checks: bool = True
    embed: Embed | None = None  # synchronous: for a detector's own windows
    embed_async: AsyncEmbed | None = None  # the request's one embedding per text
    load_ner: Callable[[], Any] | None = None  # the NER model (loaded once, on first use)
    learning: Any = None  # policy.learning.LearningRuntime, for compliance guardrails
    _ner: Any = field(default=None)
    _ner_tried: bool = False

    def ner(self) -> Any:
        if not self.model_checks or self.load_ner is None:
            return None
        if not self._ner_tried:
            self._ner_tried = True
            try:
                self._ner = self.load_ner()
            except Exception as exc:  # noqa: BLE001 - names and addresses off, the rest works
                logger.warning("PII names and addresses are not detected: the NER model "
                               "did not load (%s)", exc)
        return self._ner


@dataclass(slots=True)
class Decision:
    """One guardrail's decision over one phase of a call."""

    guardrail: str
    type: str
    policy: str
    phase: str  # "input" or "output"
    action: str
    findings: list[tuple[int, Finding]] = field(default_factory=list)  # (text index, finding)
    # A compliance guardrail's: which policy's learned classifier judged it
    # (reviewers' feedback on the call trains that one).
    learning_policy: str | None = None

    @property
    def outcome(self) -> str:
        return OUTCOME_OF_ACTION[self.action] if self.findings else "pass"

    def finding_types(self) -> list[str]:
        return sorted({finding.type for _, finding in self.findings})

    def record(self) -> dict[str, Any]:
        """For the audit record: types and scores, never offsets into or text of the call."""
        out: dict[str, Any] = {
            "guardrail": self.guardrail, "type": self.type, "policy": self.policy,
            "phase": self.phase, "action": self.action, "outcome": self.outcome,
            "findings": [{"type": f.type, "score": round(float(f.score), 4)}
                         for _, f in self.findings]}
        if self.learning_policy is not None:
            out["learning_policy"] = self.learning_policy
        return out


def verdict_of(decisions: Sequence[Decision]) -> str | None:
    """The call's compliance verdict; None when no guardrail ran."""
    if not decisions:
        return None
    best = "pass"
    rank = 0
    for decision in decisions:
        outcome = decision.outcome
        if _VERDICT_RANK.get(outcome, 0) > rank:
            best, rank = outcome, _VERDICT_RANK[outcome]
    return best


def _detector_key(guardrail: GuardrailLike) -> tuple[str, str, bytes]:
    return (guardrail.name, guardrail.type,
            orjson.dumps(dict(guardrail.config), option=orjson.OPT_SORT_KEYS))


class GuardrailEngine:
    """Builds and caches detectors; runs guardrails over texts."""

    def __init__(self, services: DetectorServices) -> None:
        self._services = services
        self._detectors: dict[tuple[str, str, bytes], TextDetector] = {}
        # The same guardrail object comes back on every call a resolution is
        # memoised for: found by identity, its config is not serialised per
        # call. The object is held, so its id is not reused while here.
        self._by_object: dict[int, tuple[GuardrailLike, TextDetector]] = {}

    @property
    def services(self) -> DetectorServices:
        return self._services

    def _build(self, guardrail: GuardrailLike) -> TextDetector:
        services = self._services
        config = guardrail.config
        embed = services.embed if services.model_checks else None
        kind = guardrail.type
        if kind == "pii":
            from smartflow.policy.pii import pii_detector_from_config

            return pii_detector_from_config(config, services.ner())
        if kind == "prompt_injection":
            from smartflow.policy.injection import injection_detector_from_config

            return injection_detector_from_config(config, embed)
        if kind == "toxicity":
            from smartflow.policy.toxicity import toxicity_detector_from_config

            return toxicity_detector_from_config(config, embed)
        if kind == "compliance":
            from smartflow.policy.compliance_check import compliance_detector_from_config

            if services.learning is None:
                raise ValueError("compliance guardrails need the policy documents' store "
                                 "(Redis) and the embedding model")
            return compliance_detector_from_config(config, services.learning, embed=embed)
        if kind == "custom":
            from smartflow.policy.custom_check import custom_detector_from_config

            return custom_detector_from_config(config, embed)
        raise ValueError(f"type: unknown guardrail type {kind!r} "
                         f"(one of: {', '.join(GUARDRAIL_TYPES)})")

    def detector(self, guardrail: GuardrailLike) -> TextDetector:
        known = self._by_object.get(id(guardrail))
        if known is not None and known[0] is guardrail:
            return known[1]
        key = _detector_key(guardrail)
        detector = self._detectors.get(key)
        if detector is None:
            detector = self._build(guardrail)
            if len(self._detectors) >= MAX_DETECTORS:
                self._detectors.clear()  # old versions; rebuilt on demand
            self._detectors[key] = detector
        if len(self._by_object) >= MAX_DETECTORS:
            self._by_object.clear()
        self._by_object[id(guardrail)] = (guardrail, detector)
        return detector

    def validate(self, guardrail: GuardrailLike) -> None:
        """Raises ValueError naming what is wrong with the guardrail's config."""
        if guardrail.action not in ACTIONS:
            raise ValueError(f"action: unknown action {guardrail.action!r} "
                             f"(one of: {', '.join(ACTIONS)})")
        self._build(guardrail)

    def needs_embedding(self, guardrail: GuardrailLike) -> bool:
        if not self._services.model_checks or self._services.embed_async is None:
            return False
        if guardrail.type in EMBEDDING_TYPES:
            return True
        if guardrail.type == "custom":
            return bool(getattr(self.detector(guardrail), "needs_embedding", False))
        return False

    async def embeddings_for(self, guardrails: Sequence[GuardrailLike],
                             texts: Sequence[str]) -> list[np.ndarray | None]:
        """One embedding per text when any guardrail reads them (one model batch)."""
        embed_async = self._services.embed_async
        if embed_async is None or not texts or not any(
                self.needs_embedding(g) for g in guardrails):
            return [None] * len(texts)
        try:
            matrix = await embed_async(list(texts))
        except Exception:
            logger.exception("embedding the call's text for its guardrails failed")
            return [None] * len(texts)
        return [matrix[i] for i in range(len(texts))]

    def run(self, guardrails: Sequence[Any], texts: Sequence[str],
            embeddings: Sequence[np.ndarray | None], phase: str) -> list[Decision]:
        """Every guardrail over every text. A guardrail that fails to build or
        run is recorded as having found nothing and logged, never failing the call."""
        decisions: list[Decision] = []
        for guardrail in guardrails:
            decision = Decision(guardrail.name, guardrail.type,
                                getattr(guardrail, "policy", ""), phase, guardrail.action)
            try:
                detector = self.detector(guardrail)
                decision.learning_policy = getattr(detector, "learning_policy", None)
                for index, text in enumerate(texts):
                    if text:
                        for finding in detector.detect(text, embeddings[index]):
                            decision.findings.append((index, finding))
            except Exception:
                logger.exception("guardrail %r failed", guardrail.name)
            decisions.append(decision)
        return decisions

    async def check(self, guardrail: GuardrailLike, text: str) -> dict[str, Any]:
        """``POST /api/guardrails/{name}/check``: one guardrail over one text."""
        from smartflow.policy.masking import Masker

        embeddings = await self.embeddings_for([guardrail], [text])
        decision = self.run([guardrail], [text], embeddings, "input")[0]
        findings = [finding for _, finding in decision.findings]
        masked = text
        if findings and guardrail.action == "mask":
            masked = Masker().mask(text, findings)
        return {"guardrail": guardrail.name,
                "action": guardrail.action if findings else "allow",
                "findings": [finding.to_json() for finding in findings],
                "text": masked}

"""The detector behind guardrails of type ``compliance``: does this text break a
rule in the organisation's policy documents?

Config (all optional): ``{"documents": [ids or names], "policy": "<name>",
"threshold": 0.55}``. ``documents`` narrows the clauses matched to those
documents; otherwise the clauses of the documents uploaded for ``policy``,
or every document when there are none. ``policy`` also names the learned
model (``learning.DEFAULT_POLICY`` when absent): the gateway should put it
in the decision it records as ``"learning_policy"`` (``learning_policy``
below), so feedback on the call trains the same model.

How it decides (see ``learning`` for the model): while the policy has no
feedback, the best clause similarity alone, against ``threshold`` (default
``learning.CLAUSE_THRESHOLD``); once it has feedback, the model's
probability against the policy's learned threshold (the configured
threshold no longer applies: reviewers' outcomes have replaced it). Cost per
text: one matrix-vector product over the clauses in this worker's snapshot
(about 40 µs for 1,000 clauses) and one 385-term dot product.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from smartflow.policy.findings import COMPLIANCE, Embed, Finding
from smartflow.policy.learning import CLAUSE_THRESHOLD, DEFAULT_POLICY, LearningRuntime

CONFIG_KEYS = frozenset({"documents", "policy", "threshold"})
MAX_DOCUMENTS = 100


class ComplianceDetector:
    def __init__(self, learning: LearningRuntime, *, documents: tuple[str, ...] = (),
                 policy: str | None = None, threshold: float | None = None,
                 embed: Embed | None = None) -> None:
        self._learning = learning
        self.documents = documents
        self.policy = policy
        self.clause_threshold = CLAUSE_THRESHOLD if threshold is None else threshold
        self._embed = embed

    @property
    def learning_policy(self) -> str:
        return self.policy or DEFAULT_POLICY

    def score(self, embedding: np.ndarray) -> tuple[float, float, str]:
        """(score, threshold it is compared with, "clause:<doc id>:<n>" or "")."""
        snapshot = self._learning.snapshot
        rows = snapshot.rows_for(self.documents, self.policy)
        similarity, clause = snapshot.best_clause(embedding, rows)
        detail = f"clause:{clause.doc_id}:{clause.n}" if clause is not None else ""
        model = snapshot.model(self.learning_policy)
        if model is None or model.samples == 0:
            return similarity, self.clause_threshold, detail
        return model.probability(embedding, similarity), model.threshold, detail

    def detect(self, text: str, embedding: np.ndarray | None = None) -> list[Finding]:
        if not text.strip():
            return []
        if embedding is None:
            if self._embed is None:
                return []  # no embedding and no way to make one: nothing to judge with
            embedding = self._embed([text])[0]
        score, threshold, detail = self.score(np.asarray(embedding, dtype=np.float32))
        if not detail or score < threshold:
            return []
        return [Finding(COMPLIANCE, 0, len(text), score, detail)]


def compliance_detector_from_config(config: Mapping[str, Any] | None,
                                    learning: LearningRuntime, *,
                                    embed: Embed | None = None) -> ComplianceDetector:
    """ValueError with a message naming the bad field."""
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        raise ValueError("config: must be an object")  # noqa: TRY004 - the contract: ValueError
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise ValueError(f"config: unknown field(s) {', '.join(unknown)}; a compliance "
                         f"guardrail takes documents, policy and threshold")
    documents = config.get("documents")
    names: tuple[str, ...] = ()
    if documents is not None:
        if not isinstance(documents, list) or len(documents) > MAX_DOCUMENTS or not all(
                isinstance(d, str) and d.strip() for d in documents):
            raise ValueError(f"config.documents: a list of at most {MAX_DOCUMENTS} document "
                             f"ids or names")
        names = tuple(d.strip() for d in documents)
    policy = config.get("policy")
    if policy is not None and (not isinstance(policy, str) or not policy.strip()
                               or len(policy) > 200):
        raise ValueError("config.policy: a non-empty name of at most 200 characters")
    threshold = config.get("threshold")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
                or not 0.0 < float(threshold) <= 1.0:
            raise ValueError("config.threshold: a number in (0, 1]")
        threshold = float(threshold)
    return ComplianceDetector(learning, documents=names,
                              policy=policy.strip() if isinstance(policy, str) else None,
                              threshold=threshold, embed=embed)

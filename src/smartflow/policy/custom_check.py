"""Guardrails of type ``custom``: the operator's own regexes, keywords and examples.

Config keys (all optional, at least one of the three lists):

* ``patterns``: regular expressions (Python syntax); a match is a finding.
* ``keywords``: words or phrases, matched case-insensitively as whole words,
  so "kill" does not match "skill".
* ``examples``: texts the operator wants caught by meaning; a text whose
  embedding is at least ``threshold`` (cosine, default 0.75) similar to one
  of them is a finding spanning the whole text.
* ``finding_type``: the finding's type (default ``CUSTOM``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from smartflow.policy.findings import CUSTOM, Embed, Finding

MAX_PATTERNS = 200
MAX_EXAMPLES = 500
_TYPE_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,39}$")
_KNOWN_KEYS = {"patterns", "keywords", "examples", "threshold", "finding_type"}


def _strings(config: Mapping[str, Any], key: str) -> list[str]:
    value = config.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"config.{key}: must be a list of non-empty strings")
    if len(value) > (MAX_EXAMPLES if key == "examples" else MAX_PATTERNS):
        raise ValueError(f"config.{key}: too many entries")
    return list(value)


class CustomDetector:
    def __init__(self, patterns: Sequence[str] = (), keywords: Sequence[str] = (),
                 examples: Sequence[str] = (), *, threshold: float = 0.75,
                 finding_type: str = CUSTOM, embed: Embed | None = None) -> None:
        self._patterns: list[re.Pattern[str]] = []
        for index, pattern in enumerate(patterns):
            try:
                self._patterns.append(re.compile(pattern))
            except re.error as exc:
                raise ValueError(f"config.patterns[{index}]: not a valid regex ({exc})") from None
        self._keywords = (re.compile(
            r"(?<!\w)(?:" + "|".join(re.escape(k) for k in sorted(keywords, key=len, reverse=True))
            + r")(?!\w)", re.IGNORECASE) if keywords else None)
        self._examples = list(examples)
        self._threshold = threshold
        self._type = finding_type
        self._embed = embed
        self._example_matrix: np.ndarray | None = None

    @property
    def needs_embedding(self) -> bool:
        return bool(self._examples) and self._embed is not None

    def detect(self, text: str, embedding: np.ndarray | None = None) -> list[Finding]:
        findings: list[Finding] = []
        for index, pattern in enumerate(self._patterns):
            for match in pattern.finditer(text):
                if match.end() > match.start():
                    findings.append(Finding(self._type, match.start(), match.end(), 1.0,
                                            f"pattern:{index}"))
        if self._keywords is not None:
            for match in self._keywords.finditer(text):
                findings.append(Finding(self._type, match.start(), match.end(), 1.0, "keyword"))
        if self._examples and self._embed is not None and text.strip():
            if self._example_matrix is None:
                # Embedded on first use, once per worker: building a guardrail
                # must not cost a model run per example on the admin path.
                self._example_matrix = np.asarray(self._embed(self._examples), dtype=np.float32)
            vector = embedding if embedding is not None else self._embed([text])[0]
            similarities = self._example_matrix @ np.asarray(vector, dtype=np.float32)
            best = int(np.argmax(similarities))
            score = float(similarities[best])
            if score >= self._threshold:
                findings.append(Finding(self._type, 0, len(text), score, f"example:{best}"))
        findings.sort(key=lambda f: (f.start, -f.end))
        return findings


def custom_detector_from_config(config: Mapping[str, Any], embed: Embed | None) -> CustomDetector:
    unknown = set(config) - _KNOWN_KEYS
    if unknown:
        raise ValueError(f"config: unknown key(s) {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(sorted(_KNOWN_KEYS))})")
    patterns = _strings(config, "patterns")
    keywords = _strings(config, "keywords")
    examples = _strings(config, "examples")
    if not (patterns or keywords or examples):
        raise ValueError("config: a custom guardrail needs patterns, keywords or examples")
    threshold = config.get("threshold", 0.75)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not (
            0 < threshold <= 1):
        raise ValueError("config.threshold: must be a number in (0, 1]")
    finding_type = config.get("finding_type", CUSTOM)
    if not isinstance(finding_type, str) or not _TYPE_NAME.match(finding_type):
        raise ValueError("config.finding_type: upper-case letters, digits and _ (e.g. PROJECT_NAME)")
    return CustomDetector(patterns, keywords, examples, threshold=float(threshold),
                          finding_type=finding_type, embed=embed)

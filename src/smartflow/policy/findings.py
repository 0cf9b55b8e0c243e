"""What a guardrail reports, and the one shape every detector returns.

A ``Finding`` spans code-point offsets into the text that was checked
(``start`` inclusive, ``end`` exclusive), so a caller can mask or highlight
exactly what triggered it. It never carries the matched text itself: a
finding goes into headers, the audit record and logs, where the sensitive
content must not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

# PII types (a contract: tests and callers match on these names).
PERSON = "PERSON"
EMAIL = "EMAIL"
PHONE = "PHONE"
ADDRESS = "ADDRESS"
CREDIT_CARD = "CREDIT_CARD"
IBAN = "IBAN"
US_SSN = "US_SSN"
IP_ADDRESS = "IP_ADDRESS"
API_KEY = "API_KEY"
PII_TYPES: tuple[str, ...] = (PERSON, EMAIL, PHONE, ADDRESS, CREDIT_CARD, IBAN, US_SSN,
                              IP_ADDRESS, API_KEY)
# The other guardrail types' findings.
PROMPT_INJECTION = "PROMPT_INJECTION"
TOXICITY = "TOXICITY"
COMPLIANCE = "COMPLIANCE"
CUSTOM = "CUSTOM"


@dataclass(frozen=True, slots=True)
class Finding:
    type: str
    start: int
    end: int
    score: float
    # Which rule, clause or category fired (e.g. "luhn", "override",
    # "clause:hipaa-3"); never the matched text.
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "start": self.start, "end": self.end,
                               "score": round(float(self.score), 4)}
        if self.detail:
            out["detail"] = self.detail
        return out


class TextDetector(Protocol):
    """One detector over one text.

    ``embedding`` is the text's sentence embedding (the local model's, L2
    normalised, float32, shape ``(dim,)``) when the caller already has one,
    so a request is embedded once however many model-based checks run; a
    detector that needs one and gets ``None`` may compute its own through
    the ``embed`` function it was built with, or skip its model part.
    """

    def detect(self, text: str, embedding: np.ndarray | None = None) -> list[Finding]: ...


# A synchronous batch embedder: texts in, float32 (n, dim) L2-normalised rows out.
class Embed(Protocol):
    def __call__(self, texts: Sequence[str]) -> np.ndarray: ...

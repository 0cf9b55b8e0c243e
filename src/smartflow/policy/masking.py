"""Replace findings with numbered placeholders, consistently within a request.

One ``Masker`` per request: the same value of the same type gets the same
placeholder in every text of that request (``[EMAIL_1]`` in the system
prompt and the last turn alike), so the model still sees that two mentions
are one person or one address. Values are compared after collapsing
whitespace and case, so "Jane  Doe" and "jane doe" share ``[PERSON_1]``.
"""

from __future__ import annotations

from collections.abc import Sequence

from smartflow.policy.findings import Finding


class Masker:
    def __init__(self) -> None:
        self._placeholders: dict[tuple[str, str], str] = {}
        self._counts: dict[str, int] = {}

    def placeholder(self, kind: str, value: str) -> str:
        key = (kind, " ".join(value.split()).casefold())
        found = self._placeholders.get(key)
        if found is None:
            n = self._counts.get(kind, 0) + 1
            self._counts[kind] = n
            found = self._placeholders[key] = f"[{kind}_{n}]"
        return found

    def mask(self, text: str, findings: Sequence[Finding]) -> str:
        # Number placeholders in reading order, then splice; overlapping
        # findings (a caller's merged lists) keep the first that starts.
        spans: list[Finding] = []
        for f in sorted(findings, key=lambda f: (f.start, -f.end)):
            if not 0 <= f.start < f.end <= len(text):
                raise ValueError(f"finding {f.type} [{f.start}, {f.end}) is outside the text "
                                 f"(length {len(text)})")
            if spans and f.start < spans[-1].end:
                continue
            spans.append(f)
        parts: list[str] = []
        pos = 0
        for f in spans:
            parts.append(text[pos:f.start])
            parts.append(self.placeholder(f.type, text[f.start:f.end]))
            pos = f.end
        parts.append(text[pos:])
        return "".join(parts)

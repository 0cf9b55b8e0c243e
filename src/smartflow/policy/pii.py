"""The PII detector: pattern and checksum recognisers plus the NER model.

Structured types (EMAIL, PHONE, CREDIT_CARD, IBAN, US_SSN, IP_ADDRESS,
API_KEY) come from ``pii_patterns``. PERSON comes from the NER model,
scored up or down by context (a title, "my name is", a greeting, a
signature line raise it; a lone capitalised word with no such support, a
token that looks like code, fall below the threshold), plus the context
rules alone for the clear cases the model misses. ADDRESS is structural
(``pii_address``) with the model's place names confirming city parts.

Without the model (``ner=None``) PERSON falls back to the context rules and
ADDRESS to structure alone; every other type is unaffected.

Findings are sorted by start and never overlap: where two overlap, the
higher score wins, then the longer span.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from smartflow.policy.findings import ADDRESS, PERSON, PII_TYPES, Finding
from smartflow.policy.ner import NerModel
from smartflow.policy.pii_address import find_addresses
from smartflow.policy.pii_patterns import (
    RECOGNISERS,
    digit_runs,
    finditer_at,
    finditer_in_windows,
)

_NAME_WORD = r"[A-ZÀ-ÞĀ-Ž][a-zß-ÿā-ž'’]+(?:-[A-ZÀ-ÞĀ-Ž][a-zß-ÿā-ž'’]+)?"
# Words, particles ("van", "bin") and middle initials ("Catherine E. Montgomery").
_NAME = _NAME_WORD + r"(?:\s(?:(?:van|von|de|da|del|der|la|le|di|bin|al|ibn|dos)\s|[A-Z]\.\s)?" \
    + _NAME_WORD + r"){0,3}"
# The same, within one line (a name never runs across a line break).
_NAME_SP = _NAME.replace(r"\s", r"[ \t]")
_TITLE_WORDS = (r"(?:Mr|Mrs|Ms|Mx|Miss|Dr|Prof|Professor|Sir|Dame|Madam|Mme|Mlle|Herr|Frau|Sr|"
                r"Sra|Rev|Capt|Col|Lt|Sgt|Judge|Senator|Rep)")
_TITLE = _TITLE_WORDS + r"\.?"
# Context that says the next capitalised words are a person's name.
_PERSON_RULES = tuple((name, re.compile(p)) for name, p in (
    ("title", r"\b" + _TITLE + r"\s(" + _NAME + r")"),
    ("name-is", r"(?i:\b(?:my name is|my name's|i am|i'm|this is|call me|name:|"
                r"signed,?|attn:?|attention:?)\s)(" + _NAME + r")"),
    ("role", r"\b(?i:customer|client|user|employee|applicant|account holder|holder|colleague|"
             r"patient|tenant|owner|candidate|contact|recipient|new hire|to|from|by|with|for)\s("
             + _NAME + r")(?=\s*[,.;:)\n]|\s(?:called|said|asked|wrote|will|and|is|was|has|from|"
             r"at)\b)"),
    # A noun for a person before the name and a verb after: "our new hire A B starts".
    ("role-verb", r"\b(?i:customer|client|employee|applicant|colleague|patient|tenant|"
                  r"candidate|recipient|new hire|intern|contractor)\s(" + _NAME_SP
                  + r")(?=\s(?:starts|started|joins|joined|left|leaves|prefers|needs|wants)\b)"),
    # A form field or list label: "Dependent: Mason Reed", "Attendees: A B, C D".
    ("label", r"(?m)(?:^|[.;]\s)(?i:name|full name|patient|dependent|beneficiary|employee|guest|"
              r"passenger|traveller|traveler|attendees?|participants?|present|applicant|"
              r"emergency contact|next of kin|spouse|child|driver|insured|account holder|"
              r"deliver to|ship to|bill to|send to|sold to)"
              r"[ \t]*:[ \t]*(" + _NAME_SP + r")(?=[ \t]*(?:[,;(\n]|$))"),
    # "call Nadia Iyer back", "email Jo Bloggs about": a verb of contact and
    # a full name (two words or more: "ask Jenkins to" is a build server).
    ("contact", r"\b(?i:call|ring|phone|email|e-mail|ask|tell|remind|thank)[ \t]("
                + _NAME_WORD + r"(?:[ \t]" + _NAME_WORD + r"){1,2})"
                r"(?=[ \t](?:back|about|to|if|when|that|for)\b|[ \t]*[,.?!])"),
    ("greeting", r"(?m)^(?i:hi|hello|hey|dear|thanks|thank you|cc)\s(" + _NAME + r")\s*[,!:\n]"),
    ("sign-off", r"(?m)(?:^|[.!]\s)(?i:thanks|thank you|cheers|hi|hello|hey),?[ \t]("
                 + _NAME_SP + r")\s*(?:[.!,]|$)"),
    ("assigned", r"(?i:assigned to|signed by|countersigned by|co-signed by|reported by|raised by|opened by|created by|approved by|"
                 r"reviewed by|submitted by|requested by|owned by|escalated to|handed to|"
                 r"assignee:?|reporter:?|reviewer:?|owner:?|cc:)\s@?(" + _NAME_SP
                 + r")\b(?!\s[A-Z])"),
    ("mention", r"(?<![\w.])@(" + _NAME_WORD + r"(?:[ \t]" + _NAME_WORD + r")?)\b(?!\.\w)"),
    ("signature", r"(?i:regards|best|cheers|thanks|thank you|sincerely|warmly|best wishes|"
                  r"kind regards|cordialement|grüße|saludos),?[ \t]*\n(?:[ \t]*\n)?[ \t]*(?:[-–—][ \t]*)?("
                  + _NAME + r")[ \t]*(?:\n|$)"),
))
# Cues a rule's match must contain, so a text without any skips that rule's
# scan. Upper-case needles are matched as written (the cue is case
# sensitive); lower-case ones in the lower-cased text, exact only for an
# ASCII text (re's IGNORECASE also folds e.g. "\u017f" to "s"), so another
# text runs the rule. tests/test_pii.py checks every match holds a needle.
_RULE_NEEDLES: dict[str, tuple[tuple[str, ...], bool]] = {
    # (needles, case-insensitive)
    "name-is": (("my name", "i am", "i'm", "this is", "call me", "name:", "signed", "attn",
                 "attention"), True),
    "role-verb": (("start", "join", "left", "leaves", "prefers", "needs", "wants"), False),
    "label": ((":",), False),
    "contact": (("call", "ring", "phone", "mail", "ask", "tell", "remind", "thank"), True),
    "assigned": (("assigned to", "signed by", "reported by", "raised by", "opened by",
                  "created by", "approved by", "reviewed by", "submitted by", "requested by",
                  "owned by", "escalated to", "handed to", "assignee", "reporter", "reviewer",
                  "owner", "cc:"), True),
    "mention": (("@",), False),
    "signature": (("regards", "best", "cheers", "thank", "sincerely", "warmly", "cordialement",
                   "grüße", "saludos"), True),
}

# Gates on one character, cheaper than any anchor scan.
_CHEAP_GATES = frozenset(rule for rule, (needles, _) in _RULE_NEEDLES.items()
                         if all(len(n) == 1 for n in needles))


# Where each rule can match, found by a scan that skips ahead in C.
#
# Most rules open with "\b(?i:word|word|...)" and re tries that at every
# position of the text. But every rule's name (group 1) starts with a
# capital of _NAME_WORD's first class, and the cue sits right before it.
# So an anchor pattern that opens with that capital (or with a rarer
# literal: "@", ":", a newline) and checks the cue's last characters in a
# look-behind finds the few places a rule can match; the rule itself then
# runs with .match() at each position of a short window before the anchor.
# The anchors are loose (any superset of the rule's match starts will do)
# and .match(text, pos) keeps "\b", "^" and look-behinds exact.
_CAP = r"[A-ZÀ-ÞĀ-Ž]"


# Tails grouped by their first letter ("n[:degkt]"): a look-behind then
# tries a dozen branches instead of forty.
def _tails_by_first_letter(tails: Collection[str]) -> str:
    seconds: dict[str, list[str]] = {}
    for tail in sorted(tails):
        seconds.setdefault(tail[0], []).append(re.escape(tail[1]))
    return "|".join(re.escape(first) + (rest[0] if len(rest) == 1 else "[" + "".join(rest) + "]")
                    for first, rest in seconds.items())


def _cap_after(tails: str, *seps: str) -> re.Pattern[str]:
    """A capital preceded by one of ``seps`` and, before that, one of ``tails``."""
    grouped = _tails_by_first_letter(tails.split("|"))
    behind = "|".join(r"(?<=(?i:" + grouped + r")" + sep + r".)" for sep in seps)
    return re.compile(_CAP + r"(?:" + behind + r")")


_CUE_TAILS: dict[str, tuple[str, tuple[str, ...]]] = {
    # rule: (its cues' last two letters, what may stand between cue and name)
    "name-is": (r"is|'s|am|'m|me|e:|ed|d,|tn|n:|on", (r"\s",)),
    "role": (r"er|nt|ee|ue|te|ct|re|to|om|by|th|or", (r"\s",)),
    "role-verb": (r"er|nt|ee|ue|te|re|rn|or", (r"\s",)),
    "contact": (r"ll|ng|ne|il|sk|nd|nk", (r"[ \t]",)),
    "greeting": (r"hi|lo|ey|ar|ks|ou|cc", (r"\s",)),
    "sign-off": (r"ks|ou|rs|hi|lo|ey", (r"[ \t]", r",[ \t]")),
    "assigned": (r"to|by|ee|e:|er|r:|c:", (r"\s", r"\s@")),
}


def _cue_anchor(rule: str) -> re.Pattern[str]:
    tails, seps = _CUE_TAILS[rule]
    return _cap_after(tails, *seps)


# Any of those, in one scan shared by the seven rules: every tail, and
# separators that cover theirs ("\s" holds "[ \t]"); a cheap first test
# that a blank or "@" comes before the capital spares the tails' test at
# most capitals.
# The rarer separators are checked before the tails they follow.
_ANY_CUE_TAIL = _tails_by_first_letter(
    {t for tails, _ in _CUE_TAILS.values() for t in tails.split("|")})
_ANY_CUE_CAPITAL = re.compile(
    _CAP + r"(?<=[\s@].)(?:(?<=(?i:" + _ANY_CUE_TAIL + r")\s.)"
    + r"|(?<=,[ \t].)(?<=(?i:" + _ANY_CUE_TAIL + r"),[ \t].)"
    + r"|(?<=@.)(?<=(?i:" + _ANY_CUE_TAIL + r")\s@.))")

# rule: (anchor, characters before the anchor where a match may start,
# characters from the anchor on, how to step back over a blank run first)
_RULE_ANCHORS: dict[str, tuple[re.Pattern[str], int, int, str]] = {
    "title": (re.compile(_TITLE_WORDS + r"(?=\.?\s" + _CAP + r")"), 0, 1, ""),
    "name-is": (_cue_anchor("name-is"), 11, 0, ""),
    "role": (_cue_anchor("role"), 15, 0, ""),
    "role-verb": (_cue_anchor("role-verb"), 11, 0, ""),
    # "Name :  Ana": the blanks around the colon have no bound.
    "label": (re.compile(r":(?=[ \t]*" + _CAP + r")"), 19, 0, " \t"),
    "contact": (_cue_anchor("contact"), 7, 0, ""),
    "greeting": (_cue_anchor("greeting"), 10, 0, ""),
    "sign-off": (_cue_anchor("sign-off"), 13, 0, ""),
    "assigned": (_cue_anchor("assigned"), 18, 0, ""),
    "mention": (re.compile(r"@(?=" + _CAP + r")"), 0, 1, ""),
    # The first line break after the cue: "Best regards ,\n\n- Ana".
    "signature": (re.compile(r"\n(?<=(?i:[stuye,\t ])\n)"), 12, 0, " \t,"),
}


# (separator, a cue's last two letters lower-cased): the rules whose anchor
# that pair before a capital satisfies.
def _rules_by_tail() -> dict[tuple[str, str], tuple[str, ...]]:
    table: dict[tuple[str, str], tuple[str, ...]] = {}
    for rule, (tails, seps) in _CUE_TAILS.items():
        for sep in seps:
            for tail in tails.split("|"):
                table[sep, tail] = (*table.get((sep, tail), ()), rule)
    return table


_RULES_BY_TAIL = _rules_by_tail()


def _cue_anchors(text: str, cue_capitals: Sequence[int]) -> dict[str, list[int]] | None:
    """Per rule of _CUE_TAILS, the cue capitals its anchor matches, by
    looking the two letters before each up in a table instead of running
    seven anchors at each. None for a non-ASCII text: IGNORECASE folds
    some of its letters ("ſ", "K") that str.lower() leaves alone."""
    if not text.isascii():
        return None
    out: dict[str, list[int]] = {rule: [] for rule in _CUE_TAILS}
    table = _RULES_BY_TAIL
    for a in cue_capitals:
        before = text[a - 1]
        rules: tuple[str, ...] = ()
        if before.isspace():
            if a >= 3:
                tail = text[a - 3:a - 1].lower()
                rules = table.get((r"\s", tail), ())
                if before in " \t":
                    rules += table.get((r"[ \t]", tail), ())
            if before in " \t" and a >= 4 and text[a - 2] == ",":
                rules += table.get((r",[ \t]", text[a - 4:a - 2].lower()), ())
        elif before == "@" and a >= 4 and text[a - 2].isspace():
            rules = table.get((r"\s@", text[a - 4:a - 2].lower()), ())
        for rule in rules:
            positions = out[rule]
            if not positions or positions[-1] != a:
                positions.append(a)
    return out


def _anchor_positions(rule: str, text: str, cue_capitals: Sequence[int] | None) -> list[int]:
    """Where the rule's anchor matches; ``cue_capitals``: where _ANY_CUE_CAPITAL does."""
    anchor = _RULE_ANCHORS[rule][0]
    if rule in _CUE_TAILS and cue_capitals is not None:
        # A subset of the few shared hits: cheaper than another scan.
        return [a for a in cue_capitals if anchor.match(text, a)]
    return [m.start() for m in anchor.finditer(text)]


def _rule_windows(rule: str, text: str, cue_capitals: Sequence[int] | None = None,
                  anchors: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """Sorted, merged [lo, hi) ranges holding every position the rule can match at;
    ``anchors``: where its anchor matches, if known."""
    _, back, ahead, blanks = _RULE_ANCHORS[rule]
    windows: list[tuple[int, int]] = []
    if anchors is None:
        anchors = _anchor_positions(rule, text, cue_capitals)
    for a in anchors:
        lo = a
        if blanks:
            lo = _skip_back(text, a, blanks)
        lo = max(0, lo - back)
        hi = min(len(text), a + ahead)
        if windows and lo <= windows[-1][1]:
            windows[-1] = (min(lo, windows[-1][0]), max(hi, windows[-1][1]))
        else:
            windows.append((lo, hi))
    if blanks:  # stepping back over blanks can reorder windows
        windows = _merged(sorted(windows))
    return windows


# Where in a window a rule's match can start: a rule that opens with
# "\b(?i:word|...)" starts at a word's start, a "(?m)(?:^|[.!]\s)" one at a
# line start or a full stop, one with bare cue words at one of their first
# letters. .match() is tried only there instead of at each window position;
# these patterns run with an end position, which is exact for them (no
# look-ahead, nothing past the position reported).
_WORD_START = re.compile(r"\b\w")
_RULE_STARTS: dict[str, re.Pattern[str]] = {
    "name-is": _WORD_START,
    "role": _WORD_START,
    "role-verb": _WORD_START,
    "contact": _WORD_START,
    "label": re.compile(r"(?m)^|[.;]"),
    "greeting": re.compile(r"(?m)^"),
    "sign-off": re.compile(r"(?m)^|[.!]"),
    "assigned": re.compile(r"(?i:[acehors])"),
    "signature": re.compile(r"(?i:[bcgkrstw])"),
}


def _matches_in_windows(rule: str, rx: re.Pattern[str], text: str,
                        windows: Sequence[tuple[int, int]]) -> Iterator[re.Match[str]]:
    """What finditer_in_windows(rx, text, windows) finds, trying fewer positions."""
    starts = _RULE_STARTS.get(rule)
    if starts is None:
        return finditer_in_windows(rx, text, windows)
    return finditer_at(rx, text, [m.start() for lo, hi in windows
                                  for m in starts.finditer(text, lo, hi)])


def _skip_back(text: str, pos: int, blanks: str) -> int:
    # " \t," for a signature: blanks, and before them one optional comma.
    while pos > 0 and text[pos - 1] in " \t":
        pos -= 1
    if "," in blanks and pos > 0 and text[pos - 1] == ",":
        pos -= 1
    return pos


def _merged(windows: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in windows:
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(hi, out[-1][1]))
        else:
            out.append((lo, hi))
    return out


def _rule_may_match(rule: str, text: str, lower: str | None) -> bool:
    gate = _RULE_NEEDLES.get(rule)
    if gate is None:
        return True
    needles, folded = gate
    if not folded:
        return any(map(text.__contains__, needles))
    return lower is None or any(map(lower.__contains__, needles))


# "A B" — a two-word name (with an optional particle), ending at a word end
# that is not followed by another capitalised word.
_PAIR = (_NAME_WORD + r"[ \t](?:(?:van|von|de|da|del|der|la|le|di|bin|al|ibn|dos)[ \t])?"
         + _NAME_WORD + r"(?![\w'’-]|[ \t][A-Z])")
# A coordination or list of pairs: "A B and C D", "A B, C D and E F".
# "(?<![\w'’-])" sits after the leading capital, one character wider, so
# re skips ahead between capitals instead of testing it at every position.
_PAIR_LIST = re.compile(_CAP + r"(?<![\w'’-](?s:.))" + _PAIR.removeprefix(_CAP)
                        + r"(?:(?:,[ \t]|,?[ \t](?:and|&|or)[ \t])" + _PAIR + r")+")
_PAIR_ONE = re.compile(_PAIR)
_TITLE_BEFORE = re.compile(_TITLE + r"\s$")
# Words that name a role, a day or a greeting rather than a person, found by
# the rules' capitalised-word patterns at the start of a sentence.
_NOT_NAMES = frozenset(["I", "Im", "Team", "All", "Everyone", "Folks", "Guys", "There", "Support", "Sales", "Admin", "Customer", "Service", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "Sir", "Madam", "Hi", "Hello", "Thanks", "Regards", "The", "This", "That", "Please", "Sorry", "Yes", "No", "Ok", "Okay", "Happy", "Good", "Going", "Here", "Back", "Not", "Sure", "Just", "Also", "Looking", "Trying", "Working", "Writing", "Available", "Interested", "New", "Glad", "Still"])
# "Jackson 2.17", "Upgrade Jackson to 2.17": a version after the name makes it software.
_VERSION_AFTER = re.compile(r"[ \t]+(?:to[ \t]+|from[ \t]+|v)?\d+\.\d+")
_CODE_CHARS = frozenset("_/\\@=<>{}[]()#$%^*|`0123456789")


def _in_backticks(text: str, start: int, end: int) -> bool:
    line_start = text.rfind("\n", 0, start) + 1
    return text.count("`", line_start, start) % 2 == 1


def _name_like(words: Sequence[str]) -> bool:
    return not any(w in _NOT_NAMES for w in words)


# Rules whose cue names a person outright, strong enough to stand in for a
# second model tag in a coordination ("signed by A B and C D").
_STRONG_RULES = frozenset({"title", "name-is", "assigned", "signature", "label", "greeting"})


def _cued_structures(text: str, model_people: Sequence[tuple[int, int]],
                     strong: Sequence[tuple[int, int]] = ()) -> list[tuple[int, int, str]]:
    """Names found by structure, each needing the model to agree.

    In "A B, C D and E F" two sides the model calls people (or a strong
    context rule names) make the whole list people. One model tag alone is
    not enough ("Visual Studio and Android Studio": the model calls the
    second a person).
    """
    out: list[tuple[int, int, str]] = []
    for m in _PAIR_LIST.finditer(text):
        pairs = [(p.start() + m.start(), p.end() + m.start(), p.group(0).split())
                 for p in _PAIR_ONE.finditer(m.group(0))]
        if not all(_name_like(words) for _, _, words in pairs):
            continue
        tagged = sum(any(ms < e and s < me for ms, me in model_people) for s, e, _ in pairs)
        tagged += sum(any(ms <= s and e <= me for ms, me in strong) for s, e, _ in pairs)
        if tagged >= 2:
            out.extend((s, e, "rule:coordination") for s, e, _ in pairs)
    return out


def _person_findings(text: str, ner_ents: Sequence[tuple[str, int, int, float]]
                     ) -> list[Finding]:
    out: list[Finding] = []
    supported: list[tuple[int, int, str]] = []
    cue_capitals = [m.start() for m in _ANY_CUE_CAPITAL.finditer(text)]
    # The needle gates search the whole text for each of a rule's words: in
    # a prose-sized text, testing the few cue capitals against the rule's
    # anchor costs less. Many capitals (a long text) tip it the other way.
    gated = _CHEAP_GATES if len(cue_capitals) * 32 < len(text) else _RULE_NEEDLES.keys()
    lower = text.lower() if gated is not _CHEAP_GATES and text.isascii() else None
    anchors_of = _cue_anchors(text, cue_capitals) if cue_capitals else None
    for rule, rx in _PERSON_RULES:
        if rule in _CUE_TAILS and not cue_capitals:
            continue
        anchors = anchors_of.get(rule) if anchors_of is not None else None
        if anchors == []:
            continue
        if rule in gated and not _rule_may_match(rule, text, lower):
            continue
        windows = _rule_windows(rule, text, cue_capitals, anchors)
        for m in _matches_in_windows(rule, rx, text, windows):
            s, e = m.start(1), m.end(1)
            if text[s:e].split()[0] in _NOT_NAMES:
                continue
            supported.append((s, e, rule))
    model_people = [(s, e) for label, s, e, _ in ner_ents if label == PERSON]
    strong = [(s, e) for s, e, rule in supported if rule in _STRONG_RULES]
    # A coordination needs two tagged sides: with no tags there is none.
    structured = _cued_structures(text, model_people, strong) if model_people or strong else []
    for label, s, e, score in ner_ents:
        if label != PERSON:
            continue
        value = text[s:e]
        if "\n" in value:  # the model ran on across a line break (a signature)
            e = s + value.index("\n")
            value = text[s:e]
        # Trim a possessive and surrounding punctuation the tokeniser kept.
        for tail in ("'s", "’s"):
            if value.endswith(tail):
                e -= len(tail)
                value = value[: -len(tail)]
        if not value or any(ch in _CODE_CHARS for ch in value) or not value[0].isupper():
            continue
        if value.isupper() and len(value) > 3:  # SHOUTED words and acronyms
            continue
        if _in_backticks(text, s, e):
            continue
        words = value.split()
        context = [r for (rs, re_, r) in supported if rs < e and s < re_]
        if context or _TITLE_BEFORE.search(text, max(0, s - 6), s):
            score = 0.95
        elif len(words) >= 2 and all(w[0].isupper() for w in words):
            score = 0.85
        else:
            # One capitalised word, no context: as often a product or a
            # project as a person.
            score = 0.45
        out.append(Finding(PERSON, s, e, score, "ner"))
    for s, e, rule in supported:
        if not any(f.start < e and s < f.end for f in out):
            out.append(Finding(PERSON, s, e, 0.7, "rule:" + rule))
    for s, e, detail in structured:
        if _in_backticks(text, s, e):
            continue
        # Where the model found part of the name, the structure's full span wins.
        out = [f for f in out if not (s <= f.start and f.end <= e and (f.start, f.end) != (s, e))]
        if not any(f.start < e and s < f.end for f in out):
            out.append(Finding(PERSON, s, e, 0.8, detail))
    orgs = [(s, e) for label, s, e, _ in ner_ents if label == "ORG"]
    out = [f for f in out if not _not_a_person(text, f, orgs)]
    return out + _repeats(text, out) if out else out


def _not_a_person(text: str, f: Finding, orgs: Sequence[tuple[int, int]]) -> bool:
    if _VERSION_AFTER.match(text, f.end):
        return True
    # One word after a title that the model calls a brand: "Dr Pepper".
    # Only after a title: the model calls too many real names after other
    # cues organisations for its ORG tag to veto them.
    return f.detail == "rule:title" and " " not in text[f.start:f.end] and any(
        s <= f.start and f.end <= e for s, e in orgs)


def _repeats(text: str, found: Sequence[Finding]) -> list[Finding]:
    """Other mentions of a full name already found: a name is a name throughout."""
    out: list[Finding] = []
    names = {text[f.start:f.end] for f in found if f.score >= 0.7 and " " in text[f.start:f.end]}
    for name in names:
        # The name's literal leads so re can jump between its occurrences;
        # the look-behind, one character wider than the name, then checks
        # the character before it, as "(?<![\w'’-])" in front would.
        behind = r"(?<![\w'’-](?s:.){" + str(len(name)) + "})"
        for m in re.finditer(re.escape(name) + behind + r"(?![\w-])", text):
            if not any(f.start < m.end() and m.start() < f.end for f in (*found, *out)):
                out.append(Finding(PERSON, m.start(), m.end(), 0.8, "repeat"))
    return out


class PiiDetector:
    """Finds PII in one text; see the module docstring for how."""

    def __init__(self, entities: Collection[str] | None = None, *, ner: NerModel | None = None,
                 min_score: float = 0.5, allow: Sequence[re.Pattern[str]] = ()) -> None:
        chosen = tuple(PII_TYPES) if entities is None else tuple(entities)
        unknown = [t for t in chosen if t not in PII_TYPES]
        if unknown:
            raise ValueError(f"unknown PII type(s) {unknown}; known: {list(PII_TYPES)}")
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must be between 0 and 1, got {min_score}")
        self.entities = frozenset(chosen)
        self.ner = ner
        self.min_score = min_score
        self.allow = tuple(allow)

    def detect(self, text: str, embedding: np.ndarray | None = None) -> list[Finding]:
        # The embedding is accepted for the TextDetector contract; the model
        # here reads tokens, not sentence vectors.
        del embedding
        found: list[Finding] = []
        runs = digit_runs(text)  # once: every numeric recogniser and the addresses read them
        for kind, recognise in RECOGNISERS.items():
            if kind in self.entities:
                found.extend(recognise(text, runs))
        if PERSON in self.entities or ADDRESS in self.entities:
            ents = self.ner.entities(text) if self.ner is not None else []
            people = _person_findings(text, ents) if PERSON in self.entities else []
            if ADDRESS in self.entities:
                places = [(s, e) for label, s, e, _ in ents if label == ADDRESS]
                detail = "street+ner" if self.ner is not None else "street"
                addresses = find_addresses(text, places, runs)
                people, addresses = _towns_taken_for_people(text, people, addresses)
                found.extend(Finding(ADDRESS, s, e, 0.9, detail) for s, e in addresses)
            found.extend(people)
        found = [f for f in found if f.score >= self.min_score]
        if self.allow and found:
            allowed = [(m.start(), m.end()) for rx in self.allow for m in rx.finditer(text)]
            found = [f for f in found
                     if not any(s <= f.start and f.end <= e for s, e in allowed)]
        return _resolve_overlaps(found)


_TOWN_AFTER_ADDRESS = re.compile(r",[ \t]")
_TOWN_END = re.compile(r"[ \t]*(?:[.;!?\n]|$)")


def _towns_taken_for_people(text: str, people: list[Finding],
                            addresses: list[tuple[int, int]]
                            ) -> tuple[list[Finding], list[tuple[int, int]]]:
    """A "person" that closes an address ("Lange Voorhout 9, Den Haag.") is its town."""
    if not people or not addresses:
        return people, addresses
    out_addresses = []
    for s, e in addresses:
        sep = _TOWN_AFTER_ADDRESS.match(text, e)
        town = next((p for p in people if sep and p.start == sep.end()
                     and _TOWN_END.match(text, p.end)), None) if sep else None
        if town is not None:
            people = [p for p in people if p is not town]
            e = town.end
        out_addresses.append((s, e))
    return people, out_addresses


def _resolve_overlaps(found: list[Finding]) -> list[Finding]:
    kept: list[Finding] = []
    for f in sorted(found, key=lambda f: (-f.score, -(f.end - f.start), f.start)):
        if all(f.end <= k.start or k.end <= f.start for k in kept):
            kept.append(f)
    kept.sort(key=lambda f: f.start)
    return kept


def pii_detector_from_config(config: Mapping[str, Any], ner: NerModel | None) -> PiiDetector:
    """Build a detector from a guardrail's ``config``; ValueError names what is wrong."""
    if not isinstance(config, Mapping):
        raise ValueError(  # noqa: TRY004 - the contract: bad config is a ValueError
            f"pii config must be an object, got {type(config).__name__}")
    known = {"entities", "min_score", "allow"}
    extra = sorted(set(config) - known)
    if extra:
        raise ValueError(f"pii config: unknown key(s) {extra}; allowed: {sorted(known)}")
    entities = config.get("entities")
    if entities is not None:
        if not isinstance(entities, list) or not all(isinstance(t, str) for t in entities):
            raise ValueError("pii config: 'entities' must be a list of type names")
        unknown = [t for t in entities if t not in PII_TYPES]
        if unknown:
            raise ValueError(f"pii config: 'entities' has unknown type(s) {unknown}; "
                             f"known: {list(PII_TYPES)}")
    min_score = config.get("min_score", 0.5)
    if isinstance(min_score, bool) or not isinstance(min_score, (int, float)):
        raise ValueError(  # noqa: TRY004 - the contract: bad config is a ValueError
            "pii config: 'min_score' must be a number between 0 and 1")
    if not 0.0 <= float(min_score) <= 1.0:
        raise ValueError(f"pii config: 'min_score' must be between 0 and 1, got {min_score}")
    allow_raw = config.get("allow", [])
    if not isinstance(allow_raw, list) or not all(isinstance(p, str) for p in allow_raw):
        raise ValueError("pii config: 'allow' must be a list of regular expressions (strings)")
    allow: list[re.Pattern[str]] = []
    for pattern in allow_raw:
        try:
            allow.append(re.compile(pattern))
        except re.error as exc:
            raise ValueError(f"pii config: 'allow' has a bad regex {pattern!r}: {exc}") from exc
    return PiiDetector(entities, ner=ner, min_score=float(min_score), allow=allow)

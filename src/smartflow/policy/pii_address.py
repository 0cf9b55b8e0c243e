"""Postal addresses: the street line by structure, the rest by the model.

A street line has a shape no list of places can give: a house number, a
street name and a street-type word (US/UK "4821 Oakridge Lane", German and
Dutch "Hauptstraße 12", Romance "Calle Mayor 5", "12 rue de la Paix"), or a
PO box. After it an address runs on through comma- or line-separated parts:
a unit, a city, a state and ZIP, a postcode, a country. A part that is only
capitalised words counts when the NER model calls it a place or when a
postcode or state follows it; so "Springfield, IL 62704" extends the
address while "Lane. Thanks" does not. A city alone is never an address.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from smartflow.policy.pii_patterns import Runs, digit_runs, finditer_at, has_decimal_digit

_SUFFIX = (
    r"(?:Street|St|Avenue|Ave|Av|Road|Rd|Lane|Ln|Boulevard|Blvd|Drive|Dr|Court|Ct|Way|Place|Pl|"
    r"Terrace|Ter|Circle|Cir|Parkway|Pkwy|Highway|Hwy|Square|Sq|Crescent|Close|Gardens|Grove|"
    r"Mews|Row|Hill|Trail|Trl|Path|Walk|Loop|Pike|Alley|Plaza|Broadway|Esplanade|Green|Parade|"
    r"Pde|Quay|Wharf|Rise|View|Vale|Gate|Embankment|Promenade|Crossing|Heights|Highway)"
)
_CAPWORD = r"(?:[A-Z][A-Za-z'’.-]{0,24}|\d{1,3}(?:st|nd|rd|th)|of|the|de|la)"
_UNIT_WORD = r"(?:Flat|Apt\.?|Apartment|Unit|Suite|Ste\.?|Level|Floor|Shop|Room)"
_UNIT_PREFIX = r"(?:" + _UNIT_WORD + r"\s+\w{1,5},?\s+)?"
# Australian and NZ "8/14 Bondi Road": unit 8 of number 14.
_HOUSE_NUMBER = r"(?:\d{1,4}[A-Za-z]?/)?\d{1,6}[A-Za-z]?(?:-\d{1,4})?"

# "(?<![\w-])" moved one character later, after a capital or digit that
# leads: the same matches, but re skips ahead to candidates in C instead
# of trying the look-behind at every position.
_NOT_AFTER_WORD = r"(?<![\w-](?s:.))"

_STREET_LINES = tuple(re.compile(p) for p in (
    # 4821 Oakridge Lane / 221B Baker Street / 1600 Pennsylvania Avenue NW
    _UNIT_PREFIX + r"(?<![\w.,/-])" + _HOUSE_NUMBER + r"\s+(?:" + _CAPWORD + r"\s+){1,4}"
    + _SUFFIX + r"\b\.?(?:\s+(?:NW|NE|SW|SE|N|S|E|W|North|South|East|West)\b)?",
    # Hauptstraße 12 / Prinsengracht 263 / Storgatan 5
    (r"[A-ZÄÖÜÅØÆ]" + _NOT_AFTER_WORD + r"[\wäöüßåøæé-]{1,30}(?:straße|strasse|str\.|weg|gasse|platz|allee|"
    r"ring|damm|ufer|gracht|laan|straat|plein|dijk|kade|vej|gatan|gata|gate|gade|vägen|väg|"
    r"veien|vei|vegen|torget|torg|katu)"
    r"\s+\d{1,4}[a-z]?\b"),
    # Calle Mayor 5 / Via Roma 10 / Rua Augusta 274
    (r"(?<![\w-])(?:Calle|Avenida|Plaza|Paseo|Carrer|Via|Viale|Piazza|Corso|Rua|Travessa|"
    r"ul\.|Ulica|Aleja)\s+(?:[\w'’.]{1,20}\s+){0,4}?\d{1,4}[A-Za-z]?\b"),
    # 12 rue de la Paix / 8 avenue des Champs-Élysées
    (r"\d(?<![\w.,-](?s:.))\d{0,3}(?:\s?(?:bis|ter))?,?\s+(?:rue|avenue|boulevard|bd|place|chemin|allée|"
    r"quai|impasse|route|cours)\s+[^\n,.;:()]{2,50}"),
    # Karl Johans gate 22 / Drottning väg 5: Nordic street words written apart
    (r"[A-ZÄÖÜÅØÆ]" + _NOT_AFTER_WORD + r"[\wäöüßåøæé'’-]{1,30}(?:\s[A-ZÄÖÜÅØÆ][\wäöüßåøæé'’-]{1,30})?"
     r"\s(?:gate|gata|gatan|vei|veien|vej|väg|vägen|tie|katu)\s+\d{1,4}[a-zA-Z]?\b"),
    # PO Box 1234 / GPO Box 12 / Postfach 10 02 45 / Postbus 2020 / BP 123 / Apartado 45
    (r"(?<![\w-])(?:(?:G\.?P\.?O\.?|P\.?\s?O\.?)\s*Box|Post\s?Box|Postfach|Postbus|Postboks|"
     r"B\.P\.|Boîte postale|Apartado(?: de correos)?|Apdo\.?|Casilla|Caixa Postal|"
     r"Casella postale)\s+\d{1,6}(?:\s\d{2}){0,2}\b"),
))
# Street lines too weak to stand alone: they count only when a postal part
# (postcode, state, city known to the model) follows.
_WEAK_LINES = tuple(re.compile(p) for p in (
    # Unit 7, Riverside Business Park, ... / Level 5, ...
    r"(?<![\w-])" + _UNIT_WORD + r"\s+\w{1,5}(?=,)",
    # German "Am Sandtorkai 73" / "An der Alster 4" / "Im Mediapark 8"
    (r"(?<![\w-])(?:Am|An der|An den|Auf der|Auf dem|Im|In der|In den|Zum|Zur|Unter den|"
     r"Hinter der|Alte|Neue|Große|Kleine) [A-ZÄÖÜ][\wäöüß-]{2,30} \d{1,4}[a-z]?\b"),
    # Dutch and others with no street word: "Lange Voorhout 9, Den Haag"
    # (three digits at most: "Windows Server 2019, ..." is a year)
    r"[A-Z]" + _NOT_AFTER_WORD + r"[a-zà-ÿ]{2,20} [A-Z][a-zà-ÿ]{2,20} \d{1,3}[a-z]?(?=,)",
    # Short box words that are also ordinary words: "BP 123, 75001 Paris", "Box 12, ..."
    r"(?<![\w-])(?:Box|BP|CP)\s\d{1,6}(?=,)",
))
# Literals (case as written) every match of the line pattern at the same
# index contains, or a pattern every match contains a match of, so a text
# holding none skips that scan. tests/test_pii.py checks every match holds one.
_Gate = tuple[str, ...] | re.Pattern[str]
_STREET_NEEDLES: tuple[_Gate, ...] = (
    re.compile(_SUFFIX + r"\b"),  # the first line's pattern ends in exactly this
    ("straße", "strasse", "str.", "weg", "gasse", "platz", "allee", "ring", "damm", "ufer",
     "gracht", "laan", "straat", "plein", "dijk", "kade", "vej", "gat", "gade", "väg", "vei",
     "vegen", "torg", "katu"),
    ("Calle", "Avenida", "Plaza", "Paseo", "Carrer", "Via", "Piazza", "Corso", "Rua",
     "Travessa", "ul.", "Ulica", "Aleja"),
    ("rue", "avenue", "boulevard", "bd", "place", "chemin", "allée", "quai", "impasse",
     "route", "cours"),
    ("gat", "vei", "vej", "väg", "tie", "katu"),
    ("Box", "Postfach", "Postbus", "Postboks", "B.P.", "Boîte postale", "Apartado", "Apdo",
     "Casilla", "Caixa Postal", "Casella postale"),
)
_WEAK_NEEDLES: tuple[_Gate, ...] = (
    ("Flat", "Apt", "Apartment", "Unit", "Suite", "Ste", "Level", "Floor", "Shop", "Room"),
    ("Am ", "An de", "Auf de", "Im ", "In de", "Zum ", "Zur ", "Unter den ", "Hinter der ",
     "Alte ", "Neue ", "Große ", "Kleine "),
    (",",),
    ("Box", "BP", "CP"),
)

_CA_PROVINCES = "AB|BC|MB|NB|NL|NS|NT|NU|ON|PE|QC|SK|YT"
_AU_STATES = "NSW|VIC|QLD|WA|SA|TAS|ACT|NT"
_US_STATES = ["AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "FL", "GA", "HI", "ID", "IL", "IN", "IA", "KS", "KY", "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH", "NJ", "NM", "NY", "NC", "ND", "OH", "OK", "OR", "PA", "RI", "SC", "SD", "TN", "TX", "UT", "VT", "VA", "WA", "WV", "WI", "WY", "DC"]
_SEP = re.compile(r"(?:,[ \t]*|[ \t]*\n[ \t]*|[ \t]+(?=[A-Z]{2,3}\s+\d{4,5}\b))")
_STATE_ZIP = re.compile(r"(?:" + "|".join(_US_STATES) + r")\.?\s+\d{5}(?:-\d{4})?\b")
_UK_POSTCODE = r"[A-Z]{1,2}\d[A-Z\d]?\s?\d[A-Z]{2}\b"
_CA_POSTAL = r"(?:" + _CA_PROVINCES + r")\.?\s+[A-Z]\d[A-Z]\s?\d[A-Z]\d\b"
_AU_POSTAL = r"(?:" + _AU_STATES + r")\s+\d{4}\b"
# A US state named alone at the end ("Hanover, NH"): not followed by more words of a name.
_STATE_ALONE = r"(?:" + "|".join(_US_STATES) + r"|" + _CA_PROVINCES + r")\b(?![\w'’-]|[ \t]?[A-Z\d])"
_US_STATE_NAMES = ("Alabama|Alaska|Arizona|Arkansas|California|Colorado|Connecticut|Delaware|"
                   "Florida|Georgia|Hawaii|Idaho|Illinois|Indiana|Iowa|Kansas|Kentucky|Louisiana|"
                   "Maine|Maryland|Massachusetts|Michigan|Minnesota|Mississippi|Missouri|Montana|"
                   "Nebraska|Nevada|New Hampshire|New Jersey|New Mexico|New York|North Carolina|"
                   "North Dakota|Ohio|Oklahoma|Oregon|Pennsylvania|Rhode Island|South Carolina|"
                   "South Dakota|Tennessee|Texas|Utah|Vermont|Virginia|Washington|West Virginia|"
                   "Wisconsin|Wyoming")
_PLACE = r"[A-Z][A-Za-zÀ-ÿ'’-]{1,24}(?:[ -][A-Z][A-Za-zÀ-ÿ'’-]{1,24}){0,3}"
_UNIT = re.compile(r"(?:Apt\.?|Apartment|Suite|Ste\.?|Unit|Flat|Floor|Fl\.?|Room|Rm\.?|#)\s*"
                   r"[A-Za-z0-9-]{1,6}\b")
_POSTAL_PARTS = tuple(re.compile(p) for p in (
    r"(?:" + _PLACE + r"\s+)?" + _STATE_ZIP.pattern,        # Springfield IL 62704 / IL 62704
    r"(?:" + _PLACE + r"\s+)?" + _CA_POSTAL,               # Toronto, ON M5H 2S6
    r"(?:" + _PLACE + r"\s+)?" + _AU_POSTAL,               # Sydney NSW 2000
    r"(?:" + _US_STATE_NAMES + r")\s+\d{5}(?:-\d{4})?\b",   # California 93035
    r"(?:" + _PLACE + r"\s+)?" + _UK_POSTCODE,             # London SW1A 2AA
    r"(?:[A-Z]{1,2}-)?\d{4,5}(?:\s?[A-Z]{2})?\s+" + _PLACE  # 75002 Paris / 1015 CJ Amsterdam
    + r"(?:\s(?:am|an der|im|sur|en|upon|on)\s" + _PLACE + r")?",  # Frankfurt am Main
    _STATE_ALONE,                                          # Hanover, NH
))
_PLAIN_PLACE = re.compile(_PLACE + r"\b")
_MAX_PARTS = 5


def _match_part(text: str, pos: int, places: Sequence[tuple[int, int]]) -> tuple[int, bool]:
    """End of an address part starting at pos, or -1; and whether it is postal."""
    m = _UNIT.match(text, pos)
    if m:
        return m.end(), False
    for rx in _POSTAL_PARTS:
        m = rx.match(text, pos)
        if m:
            return m.end(), True
    m = _PLAIN_PLACE.match(text, pos)
    if m:
        end = m.end()
        if any(s <= pos and end <= e for s, e in places):
            return end, True
        return end, False
    return -1, False


# Digit gates: nearly every line pattern holds a number right after a
# blank, with a telling word before the blank ("Hauptstraße 12", "PO Box
# 4", "Am Sandtorkai 73"); others hold a house number followed by a blank.
# Those few places in a text, found from its digit runs, rule a pattern out
# far cheaper than a needle search over the whole text. Each gate is a
# necessary condition for its pattern; the needle gate then runs as well.
_STREET_WORD_ENDS = ("straße", "strasse", "str.", "weg", "gasse", "platz", "allee", "ring",
                     "damm", "ufer", "gracht", "laan", "straat", "plein", "dijk", "kade", "vej",
                     "gatan", "gata", "gate", "gade", "vägen", "väg", "veien", "vei", "vegen",
                     "torget", "torg", "katu")
_NORDIC_WORDS = ("gate", "gata", "gatan", "vei", "veien", "vej", "väg", "vägen", "tie", "katu")
_BOX_ENDS = ("Box", "Postfach", "Postbus", "Postboks", "B.P.", "postale", "Postal", "Apartado",
             "correos", "Apdo", "Apdo.", "Casilla")
_WEAK_BOX_WORDS = ("Box", "BP", "CP")
_PREPOSITIONS = ("Am", "An der", "An den", "Auf der", "Auf dem", "Im", "In der", "In den", "Zum",
                 "Zur", "Unter den", "Hinter der", "Alte", "Neue", "Große", "Kleine")
# What a US/UK street line holds after its house number: the street's words
# and its type word. The house number ends at a digit run's end or one letter on.
_AFTER_HOUSE_NUMBER = re.compile(r"\s+(?:" + _CAPWORD + r"\s+){1,4}" + _SUFFIX + r"\b")
_SHORT_NUMBER_COMMA = re.compile(r"\d{1,3}[a-z]?,")
_BOX_NUMBER_COMMA = re.compile(r"\d{1,6},")


def _blank_numbers(text: str, runs: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """(run start, where the blanks before it begin) for runs right after a blank."""
    out = []
    for start, _ in runs:
        if start and text[start - 1].isspace():
            q = start - 1
            while q and text[q - 1].isspace():
                q -= 1
            out.append((start, q))
    return out


def _digit_gated_lines(text: str, runs: Sequence[tuple[int, int]]) -> list[int]:
    """Indexes into _LINES, in order, of the patterns the text's digit runs
    leave possible (the "Unit 7," line, which needs no digit, always)."""
    if len(runs) * 12 > len(text):  # mostly numbers: leave it to the needle gates
        return list(range(len(_LINES)))
    # "12 rue ..." is tried at the digit runs themselves.
    out = [_FRENCH, _UNIT_LINE]
    if _house_number_then_street(text, runs):
        out.append(0)
    after_blank = _blank_numbers(text, runs)
    if after_blank:
        out.append(_CALLE)
        ends = text.endswith
        if any(ends(_ANY_WORD_BEFORE_NUMBER, 0, q) for _, q in after_blank):
            out.extend(i for i, words in _WORD_BEFORE_NUMBER
                       if any(ends(words, 0, q) for _, q in after_blank))
        # "Am Sandtorkai 73", "Box 12,", "Lange Voorhout 9,": one space before the number.
        for p, q in after_blank:
            if q != p - 1 or text[q] != " ":
                continue
            b = text.rfind(" ", 0, q)
            if b > 0 and ends(_PREPOSITIONS, 0, b):
                out.append(_AM_STRASSE)
            if _SHORT_NUMBER_COMMA.match(text, p):
                out.append(_TWO_WORDS_NUMBER)
            if ends(_WEAK_BOX_WORDS, 0, q) and _BOX_NUMBER_COMMA.match(text, p):
                out.append(_WEAK_BOX)
    return sorted(set(out))


def _house_number_then_street(text: str, runs: Sequence[tuple[int, int]]) -> bool:
    for _, e in runs:
        after = text[e:e + 2]
        if after[:1].isspace():
            if _AFTER_HOUSE_NUMBER.match(text, e):
                return True
        elif (after[1:].isspace() and after[0].isascii() and after[0].isalpha()
              and _AFTER_HOUSE_NUMBER.match(text, e + 1)):
            return True
    return False


_LINES = (*_STREET_LINES, *_WEAK_LINES)
_LINE_NEEDLES = (*_STREET_NEEDLES, *_WEAK_NEEDLES)
# Indexes into _LINES.
_CALLE, _FRENCH, _UNIT_LINE = 2, 3, len(_STREET_LINES)
_AM_STRASSE, _TWO_WORDS_NUMBER, _WEAK_BOX = _UNIT_LINE + 1, _UNIT_LINE + 2, _UNIT_LINE + 3
_WORD_BEFORE_NUMBER = ((1, _STREET_WORD_ENDS), (4, _NORDIC_WORDS), (5, _BOX_ENDS))
_ANY_WORD_BEFORE_NUMBER = tuple(w for _, words in _WORD_BEFORE_NUMBER for w in words)


def _literal_needles(i: int) -> tuple[str, ...]:
    gate = _LINE_NEEDLES[i]
    assert not isinstance(gate, re.Pattern)
    return gate


# The needles of the two gates most texts reach ("Calle Mayor 5" after any
# blank and a number; "Unit 7," with no number at all), found in one scan:
# each opens with a capital and has no other, so none can hide inside
# another's match and findall misses none.
_CAPITALISED = {i: frozenset(n for n in _literal_needles(i) if n[0].isupper())
                for i in (_CALLE, _UNIT_LINE)}
_UNCAPITALISED = {i: tuple(n for n in _literal_needles(i) if not n[0].isupper())
                  for i in (_CALLE, _UNIT_LINE)}
_CAPITALISED_NEEDLES = re.compile("|".join(
    re.escape(n) for n in sorted(frozenset().union(*_CAPITALISED.values()), key=len, reverse=True)))


def _may_match(gate: _Gate, text: str) -> bool:
    if isinstance(gate, re.Pattern):
        return gate.search(text) is not None
    return any(n in text for n in gate)


def _has_digit(text: str) -> bool:
    # str.isdigit also takes "²" and "①", which "\d" does not; only a
    # non-ASCII text can hold those, so only it needs the per-character walk.
    if has_decimal_digit(text):
        return True
    return not text.isascii() and any(ch.isdigit() for ch in text)


def find_addresses(text: str, places: Sequence[tuple[int, int]] = (),
                   runs: Runs | None = None) -> list[tuple[int, int]]:
    """Address spans; ``places`` are the model's place-name spans (may be
    empty), ``runs`` the text's digit runs (found here when None)."""
    if runs is None:
        runs = digit_runs(text)
    if not runs and not _has_digit(text):
        return []
    found: set[str] | None = None
    lines: list[tuple[int, int, bool]] = []
    for i in _digit_gated_lines(text, runs):
        rx = _LINES[i]
        if i == _FRENCH:
            # It starts at a digit run: one .match per run beats its needles' search.
            matches = finditer_at(rx, text, [s for s, _ in runs])
        elif i in _CAPITALISED:
            if found is None:
                found = set(_CAPITALISED_NEEDLES.findall(text))
            if found.isdisjoint(_CAPITALISED[i]) and not any(
                    map(text.__contains__, _UNCAPITALISED[i])):
                continue
            matches = rx.finditer(text)
        elif _may_match(_LINE_NEEDLES[i], text):
            matches = rx.finditer(text)
        else:
            continue
        lines.extend((m.start(), m.end(), i >= _UNIT_LINE) for m in matches)
    lines.sort(key=lambda line: (line[0], -line[1]))
    out: list[tuple[int, int]] = []
    for start, end, weak in lines:
        if out and start < out[-1][1]:
            continue
        full = _extend(text, end, places)
        if weak and full == end and not any(s < end and start < e for s, e in places):
            continue
        out.append((start, full))
    return out


def _extend(text: str, end: int, places: Sequence[tuple[int, int]]) -> int:
    # Parts are tentative until a postal part (or a model-confirmed place)
    # follows them: "Lane, Thanks" keeps "Lane".
    confirmed = end
    pos = end
    for _ in range(_MAX_PARTS):
        sep = _SEP.match(text, pos)
        if not sep:
            break
        part_end, postal = _match_part(text, sep.end(), places)
        if part_end < 0:
            break
        pos = part_end
        if postal or _UNIT.match(text, sep.end()):
            confirmed = pos
    return confirmed

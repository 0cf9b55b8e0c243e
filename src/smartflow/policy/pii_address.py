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

_SUFFIX = (
    r"(?:Street|St|Avenue|Ave|Av|Road|Rd|Lane|Ln|Boulevard|Blvd|Drive|Dr|Court|Ct|Way|Place|Pl|"
    r"Terrace|Ter|Circle|Cir|Parkway|Pkwy|Highway|Hwy|Square|Sq|Crescent|Close|Gardens|Grove|"
    r"Mews|Row|Hill|Trail|Trl|Path|Walk|Loop|Pike|Alley|Plaza|Broadway|Esplanade|Green)"
)
_CAPWORD = r"(?:[A-Z][A-Za-z'’.-]{0,24}|\d{1,3}(?:st|nd|rd|th)|of|the|de|la)"
_UNIT_PREFIX = r"(?:(?:Flat|Apt\.?|Apartment|Unit|Suite)\s+\w{1,5},?\s+)?"

_STREET_LINES = tuple(re.compile(p) for p in (
    # 4821 Oakridge Lane / 221B Baker Street / 1600 Pennsylvania Avenue NW
    _UNIT_PREFIX + r"(?<![\w.,-])\d{1,6}[A-Za-z]?(?:-\d{1,4})?\s+(?:" + _CAPWORD + r"\s+){1,4}"
    + _SUFFIX + r"\b\.?(?:\s+(?:NW|NE|SW|SE|N|S|E|W)\b)?",
    # Hauptstraße 12 / Prinsengracht 263 / Storgatan 5
    (r"(?<![\w-])[A-ZÄÖÜÅØÆ][\wäöüßåøæé-]{1,30}(?:straße|strasse|str\.|weg|gasse|platz|allee|"
    r"ring|damm|ufer|gracht|laan|straat|plein|dijk|kade|vej|gatan|gade|vägen|veien)"
    r"\s+\d{1,4}[a-z]?\b"),
    # Calle Mayor 5 / Via Roma 10 / Rua Augusta 274
    (r"(?<![\w-])(?:Calle|Avenida|Plaza|Paseo|Carrer|Via|Viale|Piazza|Corso|Rua|Travessa|"
    r"ul\.|Ulica|Aleja)\s+(?:[\w'’.]{1,20}\s+){0,4}?\d{1,4}[A-Za-z]?\b"),
    # 12 rue de la Paix / 8 avenue des Champs-Élysées
    (r"(?<![\w.,-])\d{1,4}(?:\s?(?:bis|ter))?,?\s+(?:rue|avenue|boulevard|bd|place|chemin|allée|"
    r"quai|impasse|route|cours)\s+[^\n,.;:()]{2,50}"),
    # PO Box 1234
    r"\bP\.?\s?O\.?\s+Box\s+\d{1,8}\b",
))

_US_STATES = ["AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "FL", "GA", "HI", "ID", "IL", "IN", "IA", "KS", "KY", "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH", "NJ", "NM", "NY", "NC", "ND", "OH", "OK", "OR", "PA", "RI", "SC", "SD", "TN", "TX", "UT", "VT", "VA", "WA", "WV", "WI", "WY", "DC"]
_SEP = re.compile(r"(?:,[ \t]*|[ \t]*\n[ \t]*|[ \t]+(?=[A-Z]{2}\s+\d{5}))")
_STATE_ZIP = re.compile(r"(?:" + "|".join(_US_STATES) + r")\.?\s+\d{5}(?:-\d{4})?\b")
_UK_POSTCODE = r"[A-Z]{1,2}\d[A-Z\d]?\s?\d[A-Z]{2}\b"
_PLACE = r"[A-Z][A-Za-zÀ-ÿ'’-]{1,24}(?:[ -][A-Z][A-Za-zÀ-ÿ'’-]{1,24}){0,3}"
_UNIT = re.compile(r"(?:Apt\.?|Apartment|Suite|Ste\.?|Unit|Flat|Floor|Fl\.?|Room|Rm\.?|#)\s*"
                   r"[A-Za-z0-9-]{1,6}\b")
_POSTAL_PARTS = tuple(re.compile(p) for p in (
    r"(?:" + _PLACE + r"\s+)?" + _STATE_ZIP.pattern,        # Springfield IL 62704 / IL 62704
    r"(?:" + _PLACE + r"\s+)?" + _UK_POSTCODE,             # London SW1A 2AA
    r"(?:[A-Z]{1,2}-)?\d{4,5}(?:\s?[A-Z]{2})?\s+" + _PLACE,  # 75002 Paris / 1015 CJ Amsterdam
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


def find_addresses(text: str, places: Sequence[tuple[int, int]] = ()) -> list[tuple[int, int]]:
    """Address spans; ``places`` are the model's place-name spans (may be empty)."""
    if not any(ch.isdigit() for ch in text):
        return []
    lines: list[tuple[int, int]] = []
    for rx in _STREET_LINES:
        for m in rx.finditer(text):
            lines.append((m.start(), m.end()))
    lines.sort()
    out: list[tuple[int, int]] = []
    for start, end in lines:
        if out and start < out[-1][1]:
            continue
        end = _extend(text, end, places)
        out.append((start, end))
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

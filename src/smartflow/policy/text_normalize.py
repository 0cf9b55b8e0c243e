"""Undo the usual disguises of an instruction before a detector reads it.

Attackers hide an instruction from keyword filters (and from the human who
reviews the prompt) in ways a model still reads: zero-width and Unicode
"tag" characters, fullwidth or Cyrillic look-alike letters, leetspeak,
spaced-out letters, HTML comments and hidden elements, or an encoded blob
(base64, hex, rot13) with "decode this and do it" around it.

``normalize`` returns *views* of a text: the de-obfuscated plain view, whose
every character remembers its offset in the original (so a finding's span
points into what the caller sent), the rot13 of that view, and one view per
decoded base64/hex run (whose span is the encoded run). Each view says
whether de-obfuscation was needed to produce it, which is what makes a hit
in it "obfuscated" rather than plain.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field

# Invisible characters that carry nothing a reader sees. Unicode tag
# characters (U+E0000..E007F) are handled apart: they mirror ASCII and are
# used to smuggle whole sentences invisibly, so they are decoded, not dropped.
_INVISIBLE = frozenset(
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b\u200c\u200d\u200e\u200f"
    "\u202a\u202b\u202c\u202d\u202e\u2060\u2061\u2062\u2063\u2064\u2066\u2067\u2068"
    "\u2069\u206a\u206b\u206c\u206d\u206e\u206f\u3164\ufeff\uffa0"
)
_TAG_FIRST, _TAG_LAST = 0xE0000, 0xE007F

# Letters from other scripts that render like Latin ones (the common subset
# of Unicode's confusables). Applied only inside words that mix scripts, or
# that are entirely look-alikes in an otherwise Latin text, so that real
# Russian or Greek stays intact for the multilingual rules.
_CONFUSABLES = {
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o",
    "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i",
    "ј": "j", "һ": "h", "ԁ": "d", "ԛ": "q", "ԝ": "w", "ӏ": "l", "ɡ": "g", "ո": "n",
    "А": "a", "В": "b", "Е": "e", "К": "k", "М": "m", "Н": "h", "О": "o", "Р": "p",
    "С": "c", "Т": "t", "У": "y", "Х": "x", "Ѕ": "s", "І": "i", "Ј": "j",
    # Greek
    "α": "a", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t",
    "υ": "u", "χ": "x", "Α": "a", "Β": "b", "Ε": "e", "Η": "h", "Ι": "i", "Κ": "k",
    "Μ": "m", "Ν": "n", "Ο": "o", "Ρ": "p", "Τ": "t", "Υ": "y", "Χ": "x", "Ζ": "z",
}
_LEET = {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g",
         "@": "a", "$": "s", "!": "i", "|": "l", "+": "t"}
# With this many clearly leet words in a text, short ones ("n0", "2") are
# read as leet too: alone they are too ambiguous ("v1", "k8").
_LEET_CONTEXT = 2

_WORD_CHARS = r"[^\s.,;:?\"'()\[\]{}<>/\\]"
_WORD = re.compile(_WORD_CHARS + "+")
# A whole _WORD holding at least one _LEET character: starts only where a
# word starts, so a word without one costs a single pass.
_LEET_WORD = re.compile(
    rf"(?<!{_WORD_CHARS}){_WORD_CHARS}*?[{re.escape(''.join(_LEET))}]{_WORD_CHARS}*")
# Three or more single letters each followed by one separator: "i g n o r e".
_SPACED = re.compile(r"(?<![^\s])(?:[^\W_][ ._\-*]){3,}[^\W_](?![^\s])")
_BASE64_RUN = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{16,}={0,2}(?![A-Za-z0-9+/=_-])")
_HEX_RUN = re.compile(
    r"(?:\\x[0-9a-fA-F]{2}){8,}|(?<![0-9a-fA-F])(?:[0-9a-fA-F]{2}[ :]?){10,}(?![0-9a-fA-F])"
)
# HTML comments and elements a browser would not show: text an attacker
# planted for the model in a page the user only looked at.
_HIDDEN_MARKUP = re.compile(
    r"<!--.*?(?:-->|$)"
    r"|<(\w+)[^>]*(?:display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0"
    r"|opacity\s*:\s*0(?![.\d]*[1-9])|\bhidden\b|aria-hidden)[^>]*>.*?(?:</\1\s*>|$)",
    re.DOTALL | re.IGNORECASE,
)

# Cheap necessary conditions for the scans above, which try every position
# (a pattern opening with a lookbehind gets no prefix scan from re): these
# open with a character set, so re skips to where they can start.
_LEET_CHAR = re.compile(f"[{re.escape(''.join(_LEET))}]")
# Three single letters between separators: every _SPACED match holds one.
_SPACED_CORE = re.compile(r"[ ._\-*][^\W_][ ._\-*][^\W_][ ._\-*]")
# Four hex pairs: the start of every pair-run _HEX_RUN matches.
_HEX_PAIRS = re.compile(r"[0-9a-fA-F][0-9a-fA-F][ :]?" * 3 + r"[0-9a-fA-F][0-9a-fA-F]")
_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]+")
# A _WORD holding a leetspeak or a non-ASCII character (see _LEET_WORD); the
# only non-ASCII characters outside words are spaces.
_NON_ASCII_WORD_CHAR = r"[^\s\x00-\x7f]"
_SPECIAL_WORD = re.compile(rf"(?<!{_WORD_CHARS}){_WORD_CHARS}*?"
                           rf"(?:[{re.escape(''.join(_LEET))}]|{_NON_ASCII_WORD_CHAR}){_WORD_CHARS}*")
_NON_ASCII_WORD = re.compile(
    rf"(?<!{_WORD_CHARS}){_WORD_CHARS}*?{_NON_ASCII_WORD_CHAR}{_WORD_CHARS}*")

_MAX_DECODED_RUNS = 16


@dataclass(slots=True)
class TextView:
    """One reading of the original text."""

    text: str
    # offsets[i] is the original index of text[i]; one extra entry at the end
    # (the original length, or the end of the decoded run).
    offsets: list[int]
    # How the view was obtained: "plain", "rot13", "base64", "hex".
    kind: str
    # What de-obfuscation it took (e.g. {"homoglyph", "zero_width"}); empty
    # when the view reads exactly like the original.
    tricks: set[str] = field(default_factory=set)

    def span(self, start: int, end: int) -> tuple[int, int]:
        """Original-text span of ``text[start:end]``."""
        if not self.text:
            return self.offsets[0], self.offsets[-1]
        start = min(max(start, 0), len(self.text) - 1)
        end = min(max(end, start + 1), len(self.text))
        return self.offsets[start], self.offsets[end - 1] + 1 if self.kind in (
            "plain", "rot13") else self.offsets[-1]


@dataclass(slots=True)
class NormalizedText:
    original: str
    plain: TextView
    extra: list[TextView]
    # Original spans of hidden markup (HTML comments, invisible elements).
    hidden_spans: list[tuple[int, int]]

    @property
    def views(self) -> list[TextView]:
        return [self.plain, *self.extra]

    def in_hidden_markup(self, start: int, end: int) -> bool:
        return any(s <= start and end <= e for s, e in self.hidden_spans)


def normalize(text: str, *, decode: bool = True) -> NormalizedText:
    plain = _plain_view(text, 0, len(text))
    extra: list[TextView] = []
    if decode:
        extra.append(_rot13_view(plain))
        extra.extend(_decoded_views(text))
    hidden = [(m.start(), m.end()) for m in _HIDDEN_MARKUP.finditer(text)]
    return NormalizedText(text, plain, extra, hidden)


def _plain_view(text: str, base: int, end: int) -> TextView:
    chars: list[str] = []
    offsets: list[int] = []
    tricks: set[str] = set()
    if text.isascii():
        # Invisible, tag and look-alike characters are all non-ASCII: the
        # character pass below would copy every character as it is.
        out, offsets = _map_words(text, list(range(base, base + len(text))), tricks)
        out, offsets = _collapse_spaced(out, offsets, tricks)
        offsets.append(end)
        return TextView(out, offsets, "plain", tricks)
    last = 0
    for run in _NON_ASCII_RUN.finditer(text):
        # ASCII characters are copied as they are.
        chars.append(text[last:run.start()])
        offsets.extend(range(base + last, base + run.start()))
        for index in range(run.start(), run.end()):
            folded, trick = _fold_char(text[index])
            if trick:
                tricks.add(trick)
            for piece in folded:
                chars.append(piece)
                offsets.append(base + index)
        last = run.end()
    chars.append(text[last:])
    offsets.extend(range(base + last, base + len(text)))
    out = "".join(chars)
    out, offsets = _map_words(out, offsets, tricks)
    out, offsets = _collapse_spaced(out, offsets, tricks)
    offsets.append(end)
    return TextView(out, offsets, "plain", tricks)


@functools.lru_cache(maxsize=4096)
def _fold_char(char: str) -> tuple[str, str | None]:
    """What one non-ASCII character reads as, and the trick it was (None: none)."""
    code = ord(char)
    if char in _INVISIBLE:
        return "", "zero_width"
    if _TAG_FIRST <= code <= _TAG_LAST:
        return (chr(code - 0xE0000) if 0xE0020 <= code <= 0xE007E else ""), "tag_chars"
    folded = unicodedata.normalize("NFKC", char)
    trick = "fullwidth" if folded != char and folded.isascii() and char.isalnum() else None
    # Drop accents on Latin letters only (so "précédentes" matches
    # "precedentes"); Cyrillic "й" and Hangul syllables stay whole.
    decomposed = unicodedata.normalize("NFKD", folded)
    if decomposed and decomposed[0] < "\u0250":
        folded = "".join(p for p in decomposed if not unicodedata.combining(p))
    return folded, trick


def _map_words(text: str, offsets: list[int], tricks: set[str]) -> tuple[str, list[int]]:
    """Homoglyph and leetspeak folding, word by word (one char for one)."""
    if text.isascii():
        return _unleet_ascii(text, tricks), offsets
    # Only words with a leet or a non-ASCII character can change.
    replaced: list[tuple[int, str]] = []
    latin_words = -1
    for match in _SPECIAL_WORD.finditer(text):
        word = match.group()
        if word.isascii():
            if _is_leet(word):
                tricks.add("leetspeak")
                replaced.append((match.start(), "".join(_LEET.get(c, c) for c in word)))
            continue
        confusable = sum(1 for c in word if c in _CONFUSABLES)
        if not confusable:
            continue
        ascii_letters = sum(1 for c in word if c.isascii() and c.isalpha())
        others = sum(1 for c in word if not c.isascii() and c.isalpha() and c not in _CONFUSABLES)
        mixed = ascii_letters > 0 and others == 0
        if not mixed and ascii_letters == 0 and others == 0 and latin_words < 0:
            latin_words = len(_WORD.findall(text)) - len(_NON_ASCII_WORD.findall(text))
        all_lookalike = ascii_letters == 0 and others == 0 and latin_words >= 2
        if mixed or all_lookalike:
            tricks.add("homoglyph")
            replaced.append((match.start(), "".join(_CONFUSABLES.get(c, c) for c in word)))
    return _replace_words(text, replaced), offsets


def _unleet_ascii(text: str, tricks: set[str]) -> str:
    # Only leetspeak can apply, and only to words holding a leet character.
    if _LEET_CHAR.search(text) is None:
        return text
    strict: list[tuple[int, str]] = []
    loose: list[tuple[int, str]] = []
    for match in _LEET_WORD.finditer(text):
        word = match.group()
        if _is_email_part(text, match.start(), match.end()):
            continue
        if _is_leet(word):
            strict.append((match.start(), word))
        elif _is_leet(word, loose=True):
            loose.append((match.start(), word))
    if len(strict) >= _LEET_CONTEXT:
        strict.extend(loose)
    if strict:
        tricks.add("leetspeak")
    return _replace_words(text, [(start, "".join(_LEET.get(c, c) for c in word))
                                 for start, word in strict])


def _replace_words(text: str, replaced: list[tuple[int, str]]) -> str:
    """``text`` with each (start, word) written over it (same length, any order)."""
    if not replaced:
        return text
    pieces: list[str] = []
    last = 0
    for start, word in sorted(replaced):
        pieces.append(text[last:start])
        pieces.append(word)
        last = start + len(word)
    pieces.append(text[last:])
    return "".join(pieces)


def _is_email_part(text: str, start: int, end: int) -> bool:
    """Whether a word with "@" is the local part and domain of an address ("it@corp.example")."""
    word = text[start:end]
    return "@" in word.strip("@") and end < len(text) and text[end] == "."


def _is_leet(word: str, *, loose: bool = False) -> bool:
    letters = sum(1 for c in word if c.isalpha())
    leet = sum(1 for c in word if c in _LEET)
    # "1gn0r3", "pr3v10us", "rul3$" but not "v1", "k8s", "sha256", "$HOME";
    # ``loose`` (only among other leet words) also takes "n0", "m3", "2".
    if letters < (1 if loose else 2) or leet == 0 or word[0] in "$+" and word[1:].isalpha():
        return False
    if word.replace(".", "").isdigit():
        return False
    return letters + leet == len(word) and (loose or letters >= leet)


def _collapse_spaced(text: str, offsets: list[int], tricks: set[str]) -> tuple[str, list[int]]:
    if not _SPACED_CORE.search(text) or not _SPACED.search(text):
        return text, offsets
    chars: list[str] = []
    kept: list[int] = []
    last = 0
    for match in _SPACED.finditer(text):
        chars.extend(text[last:match.start()])
        kept.extend(offsets[last:match.start()])
        for i in range(match.start(), match.end(), 2):
            chars.append(text[i])
            kept.append(offsets[i])
        last = match.end()
    tricks.add("spaced")
    chars.extend(text[last:])
    kept.extend(offsets[last:])
    return "".join(chars), kept


_ROT13_BYTES = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    b"NOPQRSTUVWXYZABCDEFGHIJKLMnopqrstuvwxyzabcdefghijklm")


def _rot13_view(plain: TextView) -> TextView:
    text = plain.text
    # The codec maps characters one by one through a dict; bytes do it in C.
    # UTF-8 leaves ASCII bytes as they are and uses none in other characters.
    rot13 = text.encode("utf-8", "surrogatepass").translate(_ROT13_BYTES).decode(
        "utf-8", "surrogatepass")
    return TextView(rot13, plain.offsets, "rot13", {"rot13"})


def _decoded_views(text: str) -> list[TextView]:
    views: list[TextView] = []
    for match in _BASE64_RUN.finditer(text):
        decoded = _decode_base64(match.group())
        if decoded is not None:
            views.append(_decoded(decoded, match.start(), match.end(), "base64"))
        if len(views) >= _MAX_DECODED_RUNS:
            return views
    for match in _hex_runs(text):
        decoded = _decode_hex(match.group())
        if decoded is not None:
            views.append(_decoded(decoded, match.start(), match.end(), "hex"))
        if len(views) >= _MAX_DECODED_RUNS:
            break
    return views


def _hex_runs(text: str) -> Iterator[re.Match[str]]:
    """``_HEX_RUN.finditer(text)``, tried only where a run can start: at "\\x" or four hex pairs."""
    position = 0
    escaped = text.find("\\x")
    while True:
        if 0 <= escaped < position:
            escaped = text.find("\\x", position)
        pairs = _HEX_PAIRS.search(text, position)
        starts = [at for at in (escaped, pairs.start() if pairs else -1) if at >= 0]
        if not starts:
            return
        start = min(starts)
        # ``pos`` keeps the lookbehind's view of what precedes it.
        match = _HEX_RUN.match(text, start)
        if match is None:
            position = start + 1
            continue
        yield match
        position = match.end()


def _decoded(decoded: str, start: int, end: int, kind: str) -> TextView:
    inner = _plain_view(decoded, 0, 0)
    # Every character of a decoded run maps back to the whole encoded run.
    return TextView(inner.text, [start] * len(inner.text) + [end], kind, {kind} | inner.tricks)


def _decode_base64(run: str) -> str | None:
    data = run.rstrip("=")
    padded = data + "=" * (-len(data) % 4)
    try:
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        return None
    return _readable(raw)


def _decode_hex(run: str) -> str | None:
    digits = re.sub(r"\\x|[ :]", "", run)
    if len(digits) % 2:
        return None
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        return None
    return _readable(raw)


def _readable(raw: bytes) -> str | None:
    """The decoded text if it reads as words (hashes and keys do not)."""
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if len(decoded) < 8:
        return None
    printable = sum(1 for c in decoded if c.isprintable() or c in "\n\t")
    letters_spaces = sum(1 for c in decoded if c.isalpha() or c == " ")
    if printable < 0.95 * len(decoded) or letters_spaces < 0.7 * len(decoded):
        return None
    if " " not in decoded.strip():
        return None
    return decoded

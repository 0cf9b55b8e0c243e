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
from collections.abc import Iterator, Sequence
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
# (a pattern opening with a lookbehind gets no prefix scan from re).
#
# A leet character next to a letter: every word ``_is_leet`` accepts holds
# one (it is letters and leet characters only, at least one of each). Opens
# with the leet set, rare in prose, so re skips to where it can start.

# The remaining tests read a *shape* of the text: its ASCII bytes (any other
# character as "?", so indexes stay those of the text) translated to one
# byte per character class, where bytes.find and literal-led patterns run
# at C speed instead of trying a character set at every position.
def _shape_table(classes: dict[bytes, bytes], other: bytes) -> bytes:
    table = bytearray(other * 256)
    for members, code in classes.items():
        for byte in members:
            table[byte] = code[0]
    return bytes(table)


_ASCII_LETTERS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Letters "a", leet characters "1", other word characters "x", the rest
# (what separates words) " ".
_LEET_SHAPE = _shape_table({
    _ASCII_LETTERS: b"a", "".join(_LEET).encode(): b"1",
    bytes(c for c in range(128) if re.fullmatch(_WORD_CHARS, chr(c))
          and chr(c) not in _LEET and not chr(c).isalpha()): b"x"}, b" ")
_HEX_DIGITS = b"0123456789abcdefABCDEF"
_BASE64_SHAPE = _shape_table(
    {b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-": b"b"}, b".")
# Sixteen base64 characters in a row: the start of every _BASE64_RUN match.
_BASE64_MIN_RUN = b"b" * 16
_HEX_SHAPE = _shape_table({_HEX_DIGITS: b"h", b" :": b"s"}, b".")
# Ten hex pairs, each maybe followed by a separator: where every pair-run
# _HEX_RUN matches starts (its ``{10,}``).
_HEX_PAIRS = re.compile(rb"hh(?:s?hh){9}")
# "?" stands for any non-ASCII character, which may be a letter.
_SPACED_SHAPE = _shape_table({b" ._-*": b"s",
                              b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789?": b"a"},
                             b".")
# Three single letters between separators: every _SPACED match holds one.
_SPACED_CORE = b"sasas"


def _shape(text: str, table: bytes) -> bytes:
    return text.encode("ascii", "replace").translate(table)

_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]+")
# A whole _WORD holding a leetspeak or a non-ASCII character (starts only
# where a word starts); the only non-ASCII characters outside words are spaces.
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
    # (the original length, or the end of the decoded run). A range when the
    # view is the original text as it is.
    offsets: Sequence[int]
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
        identity = range(base, base + len(text))
        out, kept = _map_words(text, identity, tricks)
        out, kept = _collapse_spaced(out, kept, tricks)
        if kept is identity and end == identity.stop:
            # Nothing moved: a range holds the same offsets without a list of ints.
            return TextView(out, range(base, end + 1), "plain", tricks)
        return TextView(out, [*kept, end], "plain", tricks)
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
    out, kept = _map_words(out, offsets, tricks)
    out, kept = _collapse_spaced(out, kept, tricks)
    return TextView(out, [*kept, end], "plain", tricks)


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


def _map_words(text: str, offsets: Sequence[int], tricks: set[str]) -> tuple[str, Sequence[int]]:
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
    # Only leetspeak can apply, and only to words of letters and leet characters.
    strict: list[tuple[int, str]] = []
    loose: list[tuple[int, str]] = []
    for start, end in _leet_candidates(text):
        word = text[start:end]
        if _is_email_part(text, start, end):
            continue
        if _is_leet(word):
            strict.append((start, word))
        elif _is_leet(word, loose=True):
            loose.append((start, word))
    if len(strict) >= _LEET_CONTEXT:
        strict.extend(loose)
    if strict:
        tricks.add("leetspeak")
    return _replace_words(text, [(start, "".join(_LEET.get(c, c) for c in word))
                                 for start, word in strict])


def _leet_candidates(text: str) -> Iterator[tuple[int, int]]:
    """Spans, in order, of the ``_WORD``s that ``_is_leet`` may accept (ASCII text).

    Those are made of letters and leet characters only, with at least one
    of each, so hold a leet character next to a letter: found from there,
    the few such places, instead of every word with a leet character.
    """
    shape = _shape(text, _LEET_SHAPE)
    none_left = len(shape)
    position = 0
    # Where a leet character follows a letter, and where one precedes one:
    # each searched for again only once passed, so a sparse one is not
    # searched for anew from every hit of a dense one.
    after_letter = before_letter = -1
    while True:
        if after_letter < position:
            after_letter = _find(shape, b"a1", position, none_left)
        if before_letter < position:
            before_letter = _find(shape, b"1a", position, none_left)
        at = min(after_letter, before_letter)
        if at == none_left:
            return
        # The word around: from the separator before to the one after.
        start = max(shape.rfind(b" ", position, at), shape.rfind(b"x", position, at)) + 1
        position = end = _find(shape, b" ", at, none_left)
        # A whole word (not one that goes on with another word character)
        # of letters and leet characters only.
        whole = start == 0 or shape[start - 1] == _SEPARATOR
        if whole and shape.find(b"x", start, end) < 0:
            yield start, end


_SEPARATOR = ord(" ")


def _find(shape: bytes, part: bytes, position: int, none_left: int) -> int:
    found = shape.find(part, position)
    return none_left if found < 0 else found


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


def _collapse_spaced(text: str, offsets: Sequence[int], tricks: set[str]
                    ) -> tuple[str, Sequence[int]]:
    if _SPACED_CORE not in _shape(text, _SPACED_SHAPE) or not _SPACED.search(text):
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
    for match in _base64_runs(text):
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


def _base64_runs(text: str) -> Iterator[re.Match[str]]:
    """``_BASE64_RUN.finditer(text)``, tried only where sixteen base64 characters start."""
    shape = _shape(text, _BASE64_SHAPE)
    position = 0
    while (start := shape.find(_BASE64_MIN_RUN, position)) >= 0:
        # Searched from outside a run, the first hit is where a run starts,
        # the only place in it a match can start (the lookbehind).
        match = _BASE64_RUN.match(text, start)
        if match is not None:
            yield match
            position = match.end()
        else:
            run_end = shape.find(b".", start)
            position = len(text) if run_end < 0 else run_end


def _hex_runs(text: str) -> Iterator[re.Match[str]]:
    """``_HEX_RUN.finditer(text)``, tried only where a run can start: at "\\x" or ten hex pairs."""
    position = 0
    escaped = text.find("\\x")
    shape = _shape(text, _HEX_SHAPE)
    while True:
        if 0 <= escaped < position:
            escaped = text.find("\\x", position)
        pairs = _HEX_PAIRS.search(shape, position)
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

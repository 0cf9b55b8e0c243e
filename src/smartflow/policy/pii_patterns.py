"""Pattern and checksum recognisers for the structured PII types.

Each recogniser takes the text and returns ``Finding`` objects with
code-point offsets. They are pure functions over compiled regexes, written
so that no pattern can backtrack badly: every repetition is bounded or
anchored by a look-behind that lets a match start only at a token boundary,
and every recogniser first checks for a cheap marker character (``@``, a
digit, ``:``) so a text without one costs almost nothing.

Documentation placeholders are rejected here, not in the caller: the
example domains of RFC 2606/6761, the RFC 5737 and RFC 3849 documentation
networks, the 555-01xx fictional numbers and ``YOUR_API_KEY``-style keys.
Cards must pass Luhn and carry a known issuer prefix; IBANs must have their
country's length and pass mod-97.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator, Sequence

from smartflow.policy.findings import (
    API_KEY,
    CREDIT_CARD,
    EMAIL,
    IBAN,
    IP_ADDRESS,
    PHONE,
    US_SSN,
    Finding,
)

Runs = list[tuple[int, int]]  # [start, end) of a text's digit runs
# (text, its digit runs or None to find them): the detector finds the runs
# once per text and hands them to every recogniser.
Recogniser = Callable[[str, Runs | None], list[Finding]]


def _not_after(chars: str, width: int) -> str:
    """A look-behind, put after a lead ``width`` characters wide, that the
    character before the lead is not one of ``chars``.

    "lead(?<![chars].{width})" matches where "(?<![chars])lead" does, but
    re can skip ahead to the lead's first character instead of trying the
    look-behind at every position of the text.
    """
    return r"(?<![" + chars + r"](?s:.){" + str(width) + r"})"

# Phones, cards, IBANs, SSNs and IPv4 addresses all need a decimal digit
# ("\d"), so a text without one skips their scans.
_DIGIT = re.compile(r"\d")


def has_decimal_digit(text: str) -> bool:
    if text.isascii():  # ten memchr-speed finds beat re's per-character class test
        return any(map(text.__contains__, "0123456789"))
    return _DIGIT.search(text) is not None


# Where the digits are, shared by the numeric recognisers: each of their
# patterns can only start at (or just before) the start of a run of
# digits, and most texts hold a handful of runs. Matching at those few
# places beats a full scan: these patterns open with a class or a
# look-behind, which re tests at every position of the text.
_DIGIT_RUN = re.compile(r"\d+")
_ASCII_DIGIT_RUN = re.compile(r"[0-9]+")
# Past this many digits the per-digit walk costs more than one regex scan.
_FEW_DIGITS = 48
# A text with a digit run every this many characters or closer is mostly
# numbers: a full scan per pattern is then the cheaper way.
_RUN_SPACING = 12


def digit_runs(text: str) -> Runs:
    """[start, end) of every maximal run of decimal digits ("\\d+"), in order."""
    if not text.isascii():
        return [m.span() for m in _DIGIT_RUN.finditer(text)]
    return _ascii_digit_runs(text)


def _ascii_digit_runs(text: str) -> list[tuple[int, int]]:
    # Ten memchr-speed finds per digit, then the few positions grouped.
    positions: list[int] = []
    for digit in "0123456789":
        i = text.find(digit)
        while i >= 0:
            if len(positions) == _FEW_DIGITS:
                return [m.span() for m in _ASCII_DIGIT_RUN.finditer(text)]
            positions.append(i)
            i = text.find(digit, i + 1)
    positions.sort()
    runs: list[tuple[int, int]] = []
    for i in positions:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def run_starts(text: str, runs: Runs | None, min_digits: int = 1) -> list[int] | None:
    """Starts of the digit runs (``runs``, found here when None), or None when
    a full scan is the cheaper way (a digit-dense text); [] when the text has
    fewer than ``min_digits``."""
    if runs is None:
        runs = digit_runs(text)
    if len(runs) * _RUN_SPACING > len(text):
        return None
    if min_digits > len(runs) and sum(e - s for s, e in runs) < min_digits:
        return []
    return [s for s, _ in runs]


def finditer_at(rx: re.Pattern[str], text: str, starts: Sequence[int] | None,
                offsets: Sequence[int] = (0,)) -> Iterator[re.Match[str]]:
    """rx.finditer(text), given increasing positions such that every match
    starts at one of them plus one of the increasing ``offsets``; None: every position."""
    if starts is None:
        yield from rx.finditer(text)
        return
    end = 0
    for start in starts:
        for offset in offsets:
            pos = start + offset
            if pos < end or pos < 0:
                continue
            m = rx.match(text, pos)
            if m is not None:
                yield m
                end = max(m.end(), pos + 1)

# --------------------------------------------------------------------------- email

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    r"((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,8}[A-Za-z]{2,24})(?![\w-])")
# RFC 2606 / 6761 reserved names: documentation, never a real mailbox.
_DOC_DOMAINS = ("example.com", "example.org", "example.net", "example.edu")
_DOC_TLDS = ("test", "example", "invalid", "localhost", "local")


def _is_doc_domain(domain: str) -> bool:
    d = domain.lower()
    if d.rsplit(".", 1)[-1] in _DOC_TLDS:
        return True
    return any(d == base or d.endswith("." + base) for base in _DOC_DOMAINS)


# "https://user:token@host": credentials in a URL, not a mailbox.
_URL_USERINFO_BEFORE = re.compile(r"://[^\s/@]{0,200}$")


def find_emails(text: str, runs: Runs | None = None) -> list[Finding]:
    if "@" not in text:
        return []
    out = []
    for m in _EMAIL.finditer(text):
        if _is_doc_domain(m.group(1)):
            continue
        if _URL_USERINFO_BEFORE.search(text, max(0, m.start() - 210), m.start()):
            continue
        out.append(Finding(EMAIL, m.start(), m.end(), 0.99, "email"))
    return out


# --------------------------------------------------------------------------- phone

# North American numbers need separators: a bare ten-digit run is as likely
# an order or ticket number.
_NANP = re.compile(
    r"(?<![\w+.-])(?:\+?1[\s.-]?)?(?:\((\d{3})\)[\s.-]?|(\d{3})[\s.-])(\d{3})[\s.-](\d{4})"
    r"(?![\w-]|\.\d)")
# International numbers in E.164 style: a + and a country code.
_INTL = re.compile(
    r"\+" + _not_after(r"\w+", 1) + r"(\d{1,3})(?:[\s.-]?\(\d{1,4}\))?(?:[\s.-]?\d{1,5}){2,6}(?![\w-]|\.\d)")
# National numbers with a trunk 0 (UK 020 7946 0958, FR 06 12 34 56 78,
# DE 030 1234567): only counted next to a word that says it is a phone
# number, since dates and references look the same.
_NATIONAL = re.compile(r"0" + _not_after(r"\w+.-", 1) + r"\d{1,4}(?:[\s.-]?\d{2,4}){1,4}(?![\w-]|\.\d)")
# A trunk prefix in brackets, "(08) 9321 6650", "(020) 7946 0958": the
# brackets say "phone number" on their own.
_BRACKET_TRUNK = re.compile(
    r"\(" + _not_after(r"\w+(", 1) + r"0\d{1,4}\)[\s.-]?\d{2,4}(?:[\s.-]?\d{2,4}){1,3}(?![\w-]|\.\d)")
# An extension written after the number belongs to it.
_EXTENSION = re.compile(r"(?i),?[ \t]*(?:ext\.?|extension|x|#)[ \t]?\d{1,6}\b")
_PHONE_CONTEXT = re.compile(
    r"(?i)\b(?:phone|tel|telephone|mobile|cell|call|ring|text|sms|whatsapp|fax|"
    r"contact|reach|number|nr|no\.|handy|téléphone|telefon|telefono|portable)\b")


def _digits(s: str) -> str:
    return "".join(ch for ch in s if ch.isdigit())


def _with_extension(text: str, end: int) -> int:
    m = _EXTENSION.match(text, end)
    return m.end() if m else end


def find_phones(text: str, runs: Runs | None = None) -> list[Finding]:
    runs = digit_runs(text) if runs is None else runs
    if not runs:
        return []
    out = _find_phones(text, runs)
    return [Finding(PHONE, f.start, _with_extension(text, f.end), f.score, f.detail) for f in out]


def _find_phones(text: str, runs: Runs | None) -> list[Finding]:
    out: list[Finding] = []
    taken: list[tuple[int, int]] = []
    for m in _INTL.finditer(text):
        n = len(_digits(m.group(0)))
        if not 8 <= n <= 15:
            continue
        if m.group(1).startswith("1") and _is_fictional_nanp(_digits(m.group(0))[1:]):
            continue
        out.append(Finding(PHONE, m.start(), m.end(), 0.9, "e164"))
        taken.append((m.start(), m.end()))
    # A number starts at its first digit or at the "+" or "(" just before it.
    for m in finditer_at(_NANP, text, run_starts(text, runs, 10), (-1, 0)):
        if any(s <= m.start() < e for s, e in taken):
            continue
        area = m.group(1) or m.group(2)
        if not _valid_nanp(area, m.group(3)):
            continue
        if _is_fictional_nanp(area + m.group(3) + m.group(4)):
            continue
        out.append(Finding(PHONE, m.start(), m.end(), 0.85, "nanp"))
        taken.append((m.start(), m.end()))
    for m in _BRACKET_TRUNK.finditer(text):
        if any(s <= m.start() < e for s, e in taken):
            continue
        if 9 <= len(_digits(m.group(0))) <= 11:
            out.append(Finding(PHONE, m.start(), m.end(), 0.85, "national-bracket"))
            taken.append((m.start(), m.end()))
    for m in _NATIONAL.finditer(text):
        if any(s <= m.start() < e for s, e in taken):
            continue
        n = len(_digits(m.group(0)))
        if not 9 <= n <= 11:
            continue
        if not _PHONE_CONTEXT.search(text, max(0, m.start() - 40), m.start()):
            continue
        out.append(Finding(PHONE, m.start(), m.end(), 0.8, "national"))
    return out


def _valid_nanp(area: str, exchange: str) -> bool:
    # NANP area codes and exchanges never start with 0 or 1.
    return area[0] not in "01" and exchange[0] not in "01"


def _is_fictional_nanp(ten: str) -> bool:
    # 555-0100 to 555-0199 are reserved for fiction and documentation.
    return len(ten) == 10 and ten[3:6] == "555" and ten[6:8] == "01"


# --------------------------------------------------------------------------- cards

_CARD = re.compile(r"\d" + _not_after(r"\d-", 1) + r"(?:[ -]?\d){12,18}(?![\d-]|\.\d)")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_issuer(d: str) -> str:
    n = len(d)
    if d[0] == "4" and n in (13, 16, 19):
        return "visa"
    p2, p4, p6 = int(d[:2]), int(d[:4]), int(d[:6])
    if n == 16 and (51 <= p2 <= 55 or 2221 <= p4 <= 2720):
        return "mastercard"
    if n == 15 and p2 in (34, 37):
        return "amex"
    if n in (16, 19) and (p4 == 6011 or p2 == 65 or 644 <= int(d[:3]) <= 649
                          or 622126 <= p6 <= 622925):
        return "discover"
    if n in (16, 19) and 3528 <= p4 <= 3589:
        return "jcb"
    if n in (14, 16) and (p2 in (36, 38, 39) or 300 <= int(d[:3]) <= 305):
        return "diners"
    if 16 <= n <= 19 and p2 == 62:
        return "unionpay"
    return ""


def find_cards(text: str, runs: Runs | None = None) -> list[Finding]:
    out: list[Finding] = []
    runs = digit_runs(text) if runs is None else runs
    if not runs:
        return out
    for m in finditer_at(_CARD, text, run_starts(text, runs, 13)):
        raw = m.group(0)
        # One separator style throughout: "4111 1111-1111 1111" is not a card.
        if " " in raw and "-" in raw:
            continue
        d = _digits(raw)
        if len(set(d)) < 2 or not luhn_ok(d):
            continue
        issuer = _card_issuer(d)
        if not issuer:
            continue
        out.append(Finding(CREDIT_CARD, m.start(), m.end(), 0.95, "luhn:" + issuer))
    return out


# --------------------------------------------------------------------------- IBAN

_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LI": 21, "LT": 20, "LU": 20, "LV": 21,
    "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26,
    "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}
_IBAN_START = re.compile(r"([A-Z]" + _not_after("A-Za-z0-9", 1) + r"[A-Z])(\d{2})(?=[ ]?[A-Za-z0-9])")


def iban_ok(compact: str) -> bool:
    compact = compact.upper()
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact.isalnum():
        return False
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


def find_ibans(text: str, runs: Runs | None = None) -> list[Finding]:
    out: list[Finding] = []
    runs = digit_runs(text) if runs is None else runs
    if not runs:
        return out
    # The check digits after the two letters start a digit run.
    for m in finditer_at(_IBAN_START, text, run_starts(text, runs, 2), (-2,)):
        want = _IBAN_LENGTHS.get(m.group(1))
        if want is None:
            continue
        # Walk forward collecting the country's number of characters,
        # allowing single spaces between groups: linear, no backtracking.
        chars: list[str] = []
        i = m.start()
        end = i
        while i < len(text) and len(chars) < want:
            ch = text[i]
            if ch.isascii() and ch.isalnum():
                chars.append(ch)
                end = i + 1
            elif ch == " " and chars and i + 1 < len(text) and text[i + 1] != " ":
                pass
            else:
                break
            i += 1
        if len(chars) != want or (end < len(text) and text[end].isalnum()):
            continue
        if iban_ok("".join(chars)):
            out.append(Finding(IBAN, m.start(), end, 0.97, "mod97"))
    return out


# --------------------------------------------------------------------------- SSN

_SSN = re.compile(r"(\d" + _not_after(r"\w-", 1) + r"\d{2})([- ])(\d{2})\2(\d{4})(?![\w-]|\.\d)")
_SSN_BARE = re.compile(r"(\d" + _not_after(r"\w-", 1) + r"\d{2})(\d{2})(\d{4})(?![\w-]|\.\d)")
_SSN_CONTEXT = re.compile(r"(?i)\b(?:ssn|social security|soc\.? sec|ss#|ss no|tin|itin)\b")
# Numbers printed on sample cards and in documentation, never issued.
_SSN_PLACEHOLDERS = frozenset({"123456789", "078051120", "219099999", "987654320"})


def _ssn_valid(area: str, group: str, serial: str) -> bool:
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return False
    return area + group + serial not in _SSN_PLACEHOLDERS


def find_ssns(text: str, runs: Runs | None = None) -> list[Finding]:
    out: list[Finding] = []
    runs = digit_runs(text) if runs is None else runs
    if not runs:
        return out
    starts = run_starts(text, runs, 9)
    for m in finditer_at(_SSN, text, starts):
        if not _ssn_valid(m.group(1), m.group(3), m.group(4)):
            continue
        # "123 45 6789" with spaces is only an SSN when the text says so.
        if m.group(2) == " " and not _SSN_CONTEXT.search(text, max(0, m.start() - 40), m.start()):
            continue
        out.append(Finding(US_SSN, m.start(), m.end(), 0.9, "ssn"))
    for m in finditer_at(_SSN_BARE, text, starts):
        if not _ssn_valid(m.group(1), m.group(2), m.group(3)):
            continue
        if not _SSN_CONTEXT.search(text, max(0, m.start() - 40), m.start()):
            continue
        out.append(Finding(US_SSN, m.start(), m.end(), 0.85, "ssn-context"))
    return out


# --------------------------------------------------------------------------- IP

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4})?(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")
_VERSION_BEFORE = re.compile(r"(?i)(?:\bv|version|ver\.?|release|build|oid)\s*$")
_DOC_NETS = tuple(ipaddress.ip_network(n) for n in (
    "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"))


def _ip_is_public_data(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if any(addr in net for net in _DOC_NETS if net.version == addr.version):
        return False
    # Loopback, "any" and broadcast addresses name no host or person.
    return not (addr.is_loopback or addr.is_unspecified or addr.is_multicast
                or str(addr) == "255.255.255.255")


def find_ips(text: str, runs: Runs | None = None) -> list[Finding]:
    out = []
    runs = digit_runs(text) if runs is None else runs
    if "." in text and runs:
        for m in finditer_at(_IPV4, text, run_starts(text, runs, 4)):
            if _VERSION_BEFORE.search(text, max(0, m.start() - 12), m.start()):
                continue
            raw = m.group(0)
            if raw.startswith("255."):  # a netmask
                continue
            addr = ipaddress.IPv4Address(raw)
            if _ip_is_public_data(addr):
                out.append(Finding(IP_ADDRESS, m.start(), m.end(), 0.9, "ipv4"))
    if "::" in text or text.count(":") >= 5:
        for m in _IPV6.finditer(text):
            raw = m.group(0)
            if len(raw) < 6 or sum(ch in "0123456789abcdefABCDEF" for ch in raw) < 4:
                continue
            try:
                addr6 = ipaddress.IPv6Address(raw)
            except ValueError:
                continue
            if _ip_is_public_data(addr6):
                out.append(Finding(IP_ADDRESS, m.start(), m.end(), 0.9, "ipv6"))
    return out


# --------------------------------------------------------------------------- API keys

# Each rule carries needles: literals every match of its pattern contains,
# so a text holding none of them cannot match and the scan is skipped
# (tests/test_pii.py checks each match contains one of its needles).
_KEY_RULES: tuple[tuple[str, tuple[str, ...], re.Pattern[str]], ...] = tuple(
    (name, needles, re.compile(pattern)) for name, needles, pattern in (
        ("anthropic", ("sk-ant-",), r"sk-ant-" + _not_after(r"\w-", 7) + r"[A-Za-z0-9]{2,8}\d{0,2}-[A-Za-z0-9_-]{20,200}"),
        ("openai", ("sk-",), r"sk-" + _not_after(r"\w-", 3) + r"(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_-]{20,200}"),
        ("stripe", ("_live_", "_test_"), r"(?:sk|rk)" + _not_after(r"\w-", 2) + r"_(?:live|test)_[A-Za-z0-9]{16,120}"),
        ("aws-access-key", ("AKIA", "ASIA", "ABIA", "ACCA"),
         r"(?:AKIA|ASIA|ABIA|ACCA)" + _not_after("A-Za-z0-9", 4) + r"[A-Z0-9]{16}(?![A-Za-z0-9])"),
        ("github", ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
         r"g" + _not_after(r"\w-", 1) + r"(?:h[pousr]_[A-Za-z0-9]{30,255}|ithub_pat_[A-Za-z0-9_]{22,255})"),
        ("gitlab", ("glpat-",), r"glpat-" + _not_after(r"\w-", 6) + r"[A-Za-z0-9_-]{20,60}"),
        ("slack", ("xox",), r"xox" + _not_after(r"\w-", 3) + r"[abposre]-[A-Za-z0-9-]{10,250}"),
        ("slack-webhook", ("https://hooks.slack.com/services/",),
         r"https://hooks\.slack\.com/services/[A-Za-z0-9/_-]{20,120}"),
        ("google", ("AIza",), r"AIza" + _not_after(r"\w-", 4) + r"[0-9A-Za-z_-]{35}(?![\w-])"),
        ("huggingface", ("hf_",), r"hf_" + _not_after(r"\w-", 3) + r"[A-Za-z0-9]{30,60}(?![\w-])"),
        ("npm", ("npm_",), r"npm_" + _not_after(r"\w-", 4) + r"[A-Za-z0-9]{36}(?![\w-])"),
        ("sendgrid", ("SG.",), r"SG\." + _not_after(r"\w-", 3) + r"[\w-]{16,32}\.[\w-]{30,64}"),
        ("twilio", ("SK",), r"SK" + _not_after(r"\w-", 2) + r"[0-9a-f]{32}(?![\w-])"),
        ("jwt", ("eyJ",), r"eyJ" + _not_after(r"\w-", 3) + r"[A-Za-z0-9_-]{8,2000}\.eyJ[A-Za-z0-9_-]{8,4000}\.[A-Za-z0-9_-]{8,2000}"),
        ("private-key", ("-----BEGIN ",),
         r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----"),
    ))
# A secret assigned to a telling name: api_key = "...", "token": "...",
# Authorization: Bearer ...; the value is what is reported.
_ASSIGNED_SECRET = re.compile(
    r"(?i)(?:api[_-]?key|apikey|secret(?:[_-]?key)?|access[_-]?token|auth[_-]?token|"
    r"client[_-]?secret|password|passwd|token|aws_secret_access_key|private[_-]?key)"
    r"[\"']?\s{0,3}[:=]\s{0,3}[\"']?([A-Za-z0-9_\-./+=]{16,256})")
# Every name _ASSIGNED_SECRET accepts contains one of these (lower case),
# and its value follows a ":" or "=".
_ASSIGNED_NEEDLES = ("key", "secret", "token", "passw")
# The ":" or "=" after a name ending in one of those names' last two
# letters, with up to a quote and three blanks between: _ASSIGNED_SECRET
# opens with a case-insensitive alternation re would try at every position,
# so it runs only just before these. The longest name
# ("aws_secret_access_key") and the quote and blanks span 25 characters.
_ASSIGNED_ANCHOR = re.compile(r"[:=](?:" + "|".join(
    r"(?<=(?i:ey|et|en|rd|wd)[\s\"']{" + str(k) + r"}[:=])" for k in range(5)) + r")")
_ASSIGNED_REACH = 25


def finditer_in_windows(rx: re.Pattern[str], text: str,
                        windows: Sequence[tuple[int, int]]) -> Iterator[re.Match[str]]:
    """rx.finditer(text), given sorted, disjoint [lo, hi) windows that hold
    every position rx can match at.

    .match(text, pos) sees the whole text, so "\\b", "^" and look-behinds
    behave as in a full scan; positions run left to right and skip what a
    match covered, as finditer does.
    """
    end = 0
    for lo, hi in windows:
        pos = max(lo, end)
        while pos < hi:
            m = rx.match(text, pos)
            if m is None:
                pos += 1
                continue
            yield m
            end = m.end()
            pos = max(pos + 1, end)


def windows_before(positions: Iterable[int], reach: int, ahead: int,
                   size: int) -> list[tuple[int, int]]:
    """Merged [p - reach, p + ahead) windows around increasing positions."""
    windows: list[tuple[int, int]] = []
    for p in positions:
        lo, hi = max(0, p - reach), min(size, p + ahead)
        if windows and lo <= windows[-1][1]:
            windows[-1] = (windows[-1][0], max(hi, windows[-1][1]))
        else:
            windows.append((lo, hi))
    return windows


def _assigned_secrets(text: str) -> Iterator[re.Match[str]]:
    anchors = (m.start() for m in _ASSIGNED_ANCHOR.finditer(text))
    return finditer_in_windows(_ASSIGNED_SECRET, text,
                               windows_before(anchors, _ASSIGNED_REACH, 0, len(text)))
# "https://deploy:s3cr3t@host": the password part of a URL's credentials.
_URL_PASSWORD = re.compile(r"://[^\s/:@]{1,64}:([^\s/@]{8,200})@")
_BEARER = re.compile(r"(?i)\bBearer\s{1,3}([A-Za-z0-9._~+/-]{20,2048}=*)")
_PLACEHOLDER_WORDS = re.compile(
    r"(?i)your|example|placeholder|dummy|redacted|changeme|insert|replace|sample|"
    r"fake|test[_-]?key|xxxx|\*\*\*|\.\.\.|<|>|\{|\}|\$\{")


_ALNUM_RUN = re.compile(r"[A-Za-z0-9]+")


def is_placeholder_secret(value: str) -> bool:
    if _PLACEHOLDER_WORDS.search(value):
        return True
    # A run of one character ("sk-aaaaaaaa...", "0000...") or very few
    # distinct characters is a stand-in, not a key.
    longest = max(_ALNUM_RUN.findall(value), key=len, default="")
    return len(set(longest.lower())) < 6


def _looks_random(value: str) -> bool:
    classes = sum((any(c.islower() for c in value), any(c.isupper() for c in value),
                   any(c.isdigit() for c in value)))
    return classes >= 2 and len(set(value)) >= 10


# An AWS secret access key: 40 base64 characters, recognisable only next
# to its access key id.
_AWS_SECRET = re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
_AWS_SECRET_WINDOW = 200


# Every needle of every key rule: most texts hold none and skip the rules' loop.
_ALL_KEY_NEEDLES = tuple(n for _, needles, _ in _KEY_RULES for n in needles)


def _rarest_char(needle: str) -> str:
    # Punctuation, then capitals, are rarer in prose than lower-case letters.
    return min(needle, key=lambda ch: (ch in ".,", ch.isalnum(), ch.islower(), ch in "AEIOSTC"))


# Per rule, one character from each of its needles; per such character one
# scan that skips ahead to it in C and checks the needles holding it around
# it ("-(?<=sk-)", "-(?=----BEGIN )"). A needle's own find is a slower
# substring search, and the rules' needles number two dozen.
_KEY_RULE_MARKS = tuple({_rarest_char(n) for n in needles} for _, needles, _ in _KEY_RULES)


def _needles_at_mark(mark: str) -> re.Pattern[str]:
    needles = {n for (_, ns, _), marks in zip(_KEY_RULES, _KEY_RULE_MARKS, strict=True)
               if mark in marks for n in ns if _rarest_char(n) == mark}
    around = []
    for n in sorted(needles):
        i = n.index(mark)
        before = r"(?<=" + re.escape(n[:i + 1]) + r")" if i else ""
        after = r"(?=" + re.escape(n[i + 1:]) + r")" if n[i + 1:] else ""
        around.append(before + after)
    return re.compile(re.escape(mark) + r"(?:" + "|".join(around) + r")")


_KEY_MARK_SCANS = {mark: _needles_at_mark(mark) for mark in sorted(set().union(*_KEY_RULE_MARKS))}


def _key_rules_to_run(text: str) -> list[tuple[str, tuple[str, ...], re.Pattern[str]]]:
    present = {mark for mark, rx in _KEY_MARK_SCANS.items() if mark in text and rx.search(text)}
    if not present:
        return []
    holds = text.__contains__
    return [rule for rule, marks in zip(_KEY_RULES, _KEY_RULE_MARKS, strict=True)
            if not present.isdisjoint(marks) and any(map(holds, rule[1]))]


def find_api_keys(text: str, runs: Runs | None = None) -> list[Finding]:
    out: list[Finding] = []
    for name, _, rx in _key_rules_to_run(text):
        for m in rx.finditer(text):
            if name != "private-key" and is_placeholder_secret(m.group(0)):
                continue
            out.append(Finding(API_KEY, m.start(), m.end(), 0.97, "key:" + name))
            if name == "aws-access-key":
                lo = max(0, m.start() - _AWS_SECRET_WINDOW)
                for sm in _AWS_SECRET.finditer(text, lo, m.end() + _AWS_SECRET_WINDOW):
                    value = sm.group(0)
                    # Base64 of random bytes has all three classes; a hex digest does not.
                    mixed = (any(c.islower() for c in value) and any(c.isupper() for c in value)
                             and any(c.isdigit() for c in value))
                    if mixed and not is_placeholder_secret(value):
                        out.append(Finding(API_KEY, sm.start(), sm.end(), 0.9, "key:aws-secret"))
    # Case-insensitive cues are looked up in the lower-cased text, which is
    # exact only for ASCII (re's IGNORECASE also folds e.g. "ſ" to "s");
    # other texts take every scan.
    lower = text.lower() if text.isascii() else None
    for scan, detail, cued in (
            (_assigned_secrets, "assigned", lower is None or (
                ("=" in text or ":" in text) and any(map(lower.__contains__, _ASSIGNED_NEEDLES)))),
            (_BEARER.finditer, "bearer", lower is None or "bearer" in lower),
            (_URL_PASSWORD.finditer, "url-password", "://" in text and "@" in text)):
        if not cued:
            continue
        for m in scan(text):
            value = m.group(1)
            if is_placeholder_secret(value) or not _looks_random(value):
                continue
            out.append(Finding(API_KEY, m.start(1), m.end(1), 0.8, "key:" + detail))
    return out


RECOGNISERS: dict[str, Recogniser] = {
    EMAIL: find_emails,
    PHONE: find_phones,
    CREDIT_CARD: find_cards,
    IBAN: find_ibans,
    US_SSN: find_ssns,
    IP_ADDRESS: find_ips,
    API_KEY: find_api_keys,
}

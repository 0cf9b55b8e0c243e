"""What every match of a regular expression must contain, read from the
pattern itself with the stdlib parser (``re._parser``).

The injection detector runs ~50 regexes over every request, and on ordinary
text nearly all of them fail. These facts let it skip a regex that cannot
match without running it: the literal words every match contains
(``required_words``), the words a match can start with (``lead_literals``,
``led_tails``), its possible first characters (``first_chars``), and
whether a match can ever contain a given character (``never_consumes``).
Derived from the pattern, they cannot drift from it; anything the walk does
not understand yields no fact, which only costs speed, never a match.
"""

from __future__ import annotations

import re
import re._compiler as sre_compile  # type: ignore[import-not-found]  # stdlib; no stub
import re._parser as sre_parse  # type: ignore[import-not-found]  # stdlib; no stub
from collections.abc import Iterable
from typing import Any

# A (lower-case word, starts-at-a-word-start) pair from a pattern.
Word = tuple[str, bool]
# A shorter word would occur in nearly every text: not worth a check.
MIN_REQUIRED = 3
# Non-ASCII characters that IGNORECASE matching (or str.lower) equates with
# an ASCII letter ("\u017f" with "s", the Kelvin sign with "k"). In a text that
# has one, lowered-text lookups could miss what the regex matches.
ASCII_CASE_TWINS = frozenset("\u0130\u0131\u017f\u212a")
_WORD_START_AT = frozenset((sre_parse.AT_BOUNDARY, sre_parse.AT_BEGINNING,
                            sre_parse.AT_BEGINNING_STRING))


def is_letters(word: str) -> bool:
    return word.isascii() and word.isalpha()


def required_words(pattern: str) -> list[set[Word]]:
    """Groups of literal words of which every match of ``pattern`` contains one each.

    Read from the regex itself with the stdlib parser; anything the walk does
    not understand just adds no requirement, which only costs speed.
    """
    try:
        return _sequence_requirements(list(sre_parse.parse(pattern, re.IGNORECASE)), True)
    except Exception:  # noqa: BLE001 - an unexpected parser shape means "no gate", never an error
        return []


def _sequence_requirements(items: list[Any], word_start: bool) -> list[set[Word]]:
    """Requirements of a sequence of parsed items.

    ``word_start`` tracks whether the text before the current item is
    certain not to end in an ASCII letter (start of text, after ``\\b``, a
    space or punctuation): a word found there starts a letter run.
    """
    groups: list[set[Word]] = []
    run: list[str] = []
    run_start = False
    here = word_start

    def close_run() -> None:
        if run:
            groups.append({("".join(run).lower(), run_start)})
            run.clear()

    for op, arg in items:
        if op is sre_parse.LITERAL:
            if not run:
                run_start = here
            run.append(chr(arg))
            here = not chr(arg).isalpha()
            continue
        close_run()
        if op is sre_parse.SUBPATTERN:
            groups.extend(_sequence_requirements(list(arg[-1]), here))
            here = False
        elif op in (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT):
            if arg[0] >= 1:
                groups.extend(_sequence_requirements(list(arg[2]), here))
                here = _non_letters(list(arg[2]))
            else:
                here = here and _non_letters(list(arg[2]))
        elif op is sre_parse.BRANCH:
            groups.extend(_branch_requirements(
                [_sequence_requirements(list(b), here) for b in arg[1]]))
            here = False
        elif op is sre_parse.AT:
            here = here or arg in _WORD_START_AT
        elif op in (sre_parse.ASSERT, sre_parse.ASSERT_NOT):
            pass  # zero-width: what precedes is unchanged
        else:
            here = _non_letters([(op, arg)])
    close_run()
    return _most_selective(groups)


def _non_letters(items: list[Any]) -> bool:
    """Whether a one-character item surely matches no ASCII letter (spaces, punctuation)."""
    if len(items) != 1:
        return False
    op, arg = items[0]
    if op is sre_parse.LITERAL:
        return not chr(arg).isalpha()
    if op is sre_parse.IN:
        return all(o is sre_parse.LITERAL and not chr(a).isalpha()
                   or o is sre_parse.CATEGORY and a is sre_parse.CATEGORY_SPACE
                   for o, a in arg)
    return False


def _branch_requirements(branches: list[list[set[Word]]]) -> list[set[Word]]:
    """Groups every alternative satisfies: one group of each, joined, for each combination."""
    if any(not groups for groups in branches):
        return []
    combined: list[set[Word]] = [set()]
    for groups in branches:
        # Each alternative's few best groups keep the combinations bounded.
        combined = [done | group for done in combined for group in groups[:_BRANCH_GROUPS]]
    return _most_selective(combined)


def lead_literals(pattern: str) -> frozenset[str] | None:
    """Lower-case literals of which every match of ``pattern`` starts with one (None: unknown).

    Lets a rule run only where a match can start instead of trying every
    position (a pattern opening with ``\\b(?:...)`` gets no prefix scan from re).
    """
    try:
        return _usable_leads(_sequence_leads(list(sre_parse.parse(pattern, re.IGNORECASE))))
    except Exception:  # noqa: BLE001 - an unexpected parser shape means "unknown", never an error
        return None


def first_chars(pattern: str) -> re.Pattern[str] | None:
    try:
        leads = _sequence_leads(list(sre_parse.parse(pattern, re.IGNORECASE)))
    except Exception:  # noqa: BLE001 - an unexpected parser shape means "unknown", never an error
        return None
    if not leads or not all(leads) or all(lead.isascii() for lead in leads):
        return None
    return re.compile("[" + "".join(sorted({re.escape(lead[0]) for lead in leads})) + "]",
                      re.IGNORECASE)


def _usable_leads(leads: set[str] | None) -> frozenset[str] | None:
    if not leads or not all(lead and lead.isascii() for lead in leads):
        return None
    return frozenset(lead.lower() for lead in leads)


def led_tails(pattern: str) -> tuple[tuple[re.Pattern[str], re.Pattern[str]], ...]:
    """Tails of ``pattern``'s top-level sequence that have leads, compiled, each with its lead.

    Whatever precedes a tail consumes text before it, and the tail is
    compiled from the same parse, so wherever the pattern matches, the
    tail matches too at the point where it starts. Two at most: the one
    whose leads are fewest common words (a lead like "to" is tried all
    over a text), and the longest (the strictest). A text lacking either
    one's leads is ruled out by a single scan.
    """
    try:
        parsed = sre_parse.parse(pattern, re.IGNORECASE)
        if parsed.state.groups > 1:
            return ()  # a back-reference in the tail could name a group before it
        found = []
        for start in range(1, len(parsed.data)):
            leads = _usable_leads(_sequence_leads(list(parsed.data[start:])))
            if leads:
                found.append((sum(1 for lead in leads if lead in _FREQUENT_LEADS), start, leads))
        if not found:
            return ()
        chosen = sorted({min(found, key=lambda t: t[:2]), found[0]}, key=lambda t: t[:2])
        return tuple((sre_compile.compile(parsed[start:], re.IGNORECASE), re.compile(trie(leads)))
                     for _, start, leads in chosen)
    except Exception:  # noqa: BLE001 - an unexpected parser shape means "no tail", never an error
        return ()


# Words found in nearly every sentence: a tail led by one is tried everywhere
# (only ranks tails; any tail is correct).
_FREQUENT_LEADS = frozenset(("a", "an", "and", "as", "at", "be", "by", "do", "for", "if", "in",
                             "is", "it", "of", "on", "or", "the", "to", "you", *",.-:;!?'\"()/"))


def _sequence_leads(items: list[Any]) -> set[str] | None:
    index = 0
    # Zero-width items consume nothing: the match starts at what follows.
    while index < len(items) and items[index][0] in (sre_parse.AT, sre_parse.ASSERT,
                                                     sre_parse.ASSERT_NOT):
        index += 1
    if index == len(items):
        return None
    op, arg = items[index]
    if op is sre_parse.LITERAL:
        literal = []
        for op, arg in items[index:]:
            if op is not sre_parse.LITERAL:
                break
            literal.append(chr(arg))
        head = "".join(literal)
        rest = items[index + len(literal):]
        # "p\.?s": an optional character between literals leaves two
        # longer leads ("ps", "p.s"), far fewer places than "p" alone.
        optional = _optional_char(rest[0]) if len(rest) > 1 else None
        if optional is not None and rest[1][0] is sre_parse.LITERAL:
            tails = _sequence_leads(rest[1:]) or {""}
            return {head + middle + tail for middle in ("", optional) for tail in tails}
        return {head}
    if op is sre_parse.SUBPATTERN:
        return _sequence_leads(list(arg[-1]))
    if op in (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT) and arg[0] >= 1:
        return _sequence_leads(list(arg[2]))
    if op is sre_parse.BRANCH:
        leads: set[str] = set()
        for branch in arg[1]:
            found = _sequence_leads(list(branch))
            if found is None:
                return None
            leads |= found
        return leads
    if op is sre_parse.IN and all(o is sre_parse.LITERAL for o, _ in arg):
        return {chr(a) for _, a in arg}
    return None


def _optional_char(item: Any) -> str | None:
    """The character of an item ``c?`` (a literal, at most once), else None."""
    op, arg = item
    if op in (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT) and arg[0] == 0 and arg[1] == 1:
        body = list(arg[2])
        if len(body) == 1 and body[0][0] is sre_parse.LITERAL:
            return chr(body[0][1])
    return None


# What a one-character class of a parsed pattern is, as a regex to test a character with.
_CATEGORY_CLASS = {sre_parse.CATEGORY_SPACE: r"\s", sre_parse.CATEGORY_NOT_SPACE: r"\S",
                   sre_parse.CATEGORY_WORD: r"\w", sre_parse.CATEGORY_NOT_WORD: r"\W",
                   sre_parse.CATEGORY_DIGIT: r"\d", sre_parse.CATEGORY_NOT_DIGIT: r"\D"}
_ZERO_WIDTH = (sre_parse.AT, sre_parse.ASSERT, sre_parse.ASSERT_NOT)


def never_consumes(pattern: str, char: str) -> bool:
    """Whether no match of ``pattern`` can contain ``char`` (a character without case).

    Read from the parsed regex; anything the walk does not understand
    counts as able to consume it (which only costs speed). Lookarounds may
    read it: they consume nothing.
    """
    try:
        parsed = sre_parse.parse(pattern, re.IGNORECASE)
        return not _may_consume(list(parsed), char, parsed.state.flags)
    except Exception:  # noqa: BLE001 - an unexpected parser shape means "may", never an error
        return False


def _may_consume(items: list[Any], char: str, flags: int) -> bool:
    for op, arg in items:
        if op in _ZERO_WIDTH:
            continue
        if op is sre_parse.LITERAL:
            found = chr(arg) == char
        elif op is sre_parse.NOT_LITERAL:
            found = chr(arg) != char
        elif op is sre_parse.IN:
            found = _in_class(arg, char)
        elif op is sre_parse.ANY:
            found = char != "\n" or bool(flags & re.DOTALL)
        elif op in (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT):
            found = arg[1] > 0 and _may_consume(list(arg[2]), char, flags)
        elif op is sre_parse.SUBPATTERN:
            found = _may_consume(list(arg[3]), char, (flags | arg[1]) & ~arg[2])
        elif op is sre_parse.BRANCH:
            found = any(_may_consume(list(branch), char, flags) for branch in arg[1])
        else:
            found = True  # back-references, atomic groups, ...: anything
        if found:
            return True
    return False


def _in_class(items: list[Any], char: str) -> bool:
    """Whether a parsed character class ``[...]`` matches ``char``."""
    negated = False
    member = False
    for op, arg in items:
        if op is sre_parse.NEGATE:
            negated = True
        elif op is sre_parse.LITERAL:
            member = member or chr(arg) == char
        elif op is sre_parse.RANGE:
            member = member or arg[0] <= ord(char) <= arg[1]
        elif op is sre_parse.CATEGORY and arg in _CATEGORY_CLASS:
            member = member or re.fullmatch(_CATEGORY_CLASS[arg], char) is not None
        else:
            return True
    return member != negated


def trie(words: Iterable[str]) -> str:
    """A regex matching the longest of ``words`` at a position, shared prefixes written once.

    re tries the alternatives of a group one by one; nested by letter, it
    tries one per character instead of one per word.
    """
    root: dict[str, Any] = {}
    for word in words:
        node = root
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}
    return _trie_regex(root)


def _trie_regex(node: dict[str, Any]) -> str:
    branches = [re.escape(char) + _trie_regex(child) for char, child in sorted(node.items()) if char]
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    # Greedy: the longest word wins, a shorter one is what remains on backtracking.
    return f"(?:{body})?" if "" in node else body


# Words so common in ordinary text that a group holding one rarely rules a
# rule out; only used to rank groups (which group is checked, not what it means).
_COMMON = frozenset((
    "the", "you", "your", "all", "any", "are", "was", "were", "what", "how", "did", "have",
    "not", "don", "new", "true", "real", "from", "act", "read", "see", "list", "show", "print",
    "give", "tell", "system", "rule", "text", "message", "process", "content", "play", "enter",
    "post", "rate", "mark", "stop", "must", "send", "delete", "answer", "only", "just", "before",
    "above", "and", "can", "this", "that", "with", "output", "copy", "share", "write",
))
_BRANCH_GROUPS = 2


def _most_selective(groups: list[set[Word]]) -> list[set[Word]]:
    """Usable groups, likeliest to fail on ordinary text first (dropping a group is safe)."""
    usable = [g for g in groups if g and all(
        (len(w) >= MIN_REQUIRED if w.isascii() else ASCII_CASE_TWINS.isdisjoint(w))
        for w, _ in g)]
    unique: list[set[Word]] = []
    for group in sorted(usable, key=_weakness):
        if not any(kept <= group for kept in unique):
            unique.append(group)
    return unique


def _weakness(group: set[Word]) -> tuple[int, int, int, int]:
    common = sum(1 for w, _ in group if any(w in c for c in _COMMON))
    anywhere = sum(1 for w, start in group if not start)
    return (common, anywhere, len(group), -min(len(w) for w, _ in group))

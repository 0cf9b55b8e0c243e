"""Adaptive TTL: how long a cached answer may live.

An answer about today's weather is stale in minutes; a definition, a proof or
a translation is good for days. Two signals set the TTL, both pure functions:

1. The wording of the prompt (:func:`volatility_factor`). The first matching
   rules decide, in this order:

   ============================================  ======  ==========================
   wording                                        factor  examples
   ============================================  ======  ==========================
   live right now                                  0.05   "right now", "live score",
                                                          "at the moment", "breaking"
   today                                           0.1    "today", "tonight",
                                                          "this morning"
   market and world state                          0.2    "stock", "share price",
                                                          "exchange rate", "bitcoin",
                                                          "weather", "forecast",
                                                          "news", "traffic", "score"
   current                                         0.25   "current", "latest",
                                                          "newest", "trending", "now"
   near future or this period                      0.3    "tomorrow", "this week",
                                                          "next month", "this year",
                                                          this or last year as a number
   recent past                                     0.5    "yesterday", "last week",
                                                          "recently"
   ----------------------------------------------  ------  --------------------------
   math and proofs                                 3.0    "solve", "derivative",
                                                          "prove", "2 + 2", "formula"
   translation                                     3.0    "translate", "in French"
   definitions                                     2.0    "what is a", "define",
                                                          "meaning of", "what does X mean"
   history                                         2.0    "history of", "who invented",
                                                          "in 1850", "ancient"
   explanations and how-to                         1.5    "explain", "how does",
                                                          "how do I", "write a function"
   anything else                                   1.0
   ============================================  ======  ==========================

   A time-sensitive rule wins over a stable one ("explain today's news" is
   news); a year at least two years back cancels the market rules only ("the
   price of gold in 1980" is history, "the price of gold today" is not).

2. How much the answers drift (:func:`answer_drift`, kept per prompt as an
   exponential moving average by :func:`next_drift`): when the same prompt
   was answered again, how different was the answer? Up to ``DRIFT_TOLERANCE``
   the TTL is left alone: two samples of the same stable answer differ in
   wording, and a prompt never answered twice has drift 0. Beyond it the TTL
   shrinks geometrically, to a quarter for answers with nothing in common.

:func:`adaptive_ttl` multiplies the base TTL by both and clamps the result to
the operator's bounds.
"""

from __future__ import annotations

import math
import re
import time

__all__ = ["DRIFT_FLOOR", "DRIFT_TOLERANCE", "DRIFT_WEIGHT", "adaptive_ttl", "answer_drift", "drift_adjustment", "next_drift",
           "volatility_factor"]

# The weight of a new observation in the stored drift's moving average: two
# observations move it most of the way, one odd answer does not decide alone.
DRIFT_WEIGHT = 0.5
# Drift up to this is sampling noise (reworded answers), not a changing answer.
DRIFT_TOLERANCE = 0.25
# The TTL multiplier for answers that changed completely (drift 1).
DRIFT_FLOOR = 0.25
# answer_drift compares the first this many characters: enough to see a changed
# figure or a different answer, cheap on long ones.
DRIFT_CHARS = 2000

_I = re.IGNORECASE
_VOLATILE_RULES: tuple[tuple[re.Pattern[str], float], ...] = (
    (re.compile(r"\b(?:right now|at the moment|as of now|live (?:score|scores|feed|stream|"
                r"results|updates?)|breaking|real[- ]time|this (?:minute|second|instant))\b",
                _I), 0.05),
    (re.compile(r"\b(?:today|today's|tonight|this (?:morning|afternoon|evening))\b", _I), 0.1),
    (re.compile(r"\b(?:stocks?|share prices?|stock prices?|exchange rates?|forex|crypto|"
                r"bitcoin|btc|ethereum|nasdaq|s&p|dow jones|weather|forecast|news|headlines?|"
                r"traffic|flight status|delays?|scores?|standings|polls?|election results|"
                r"price of|prices? (?:of|for)|how much (?:is|does|are) .{0,30}(?:cost|worth)|"
                r"interest rates?|mortgage rates?|inflation rate|gas prices?|availability|"
                r"in stock|opening hours|open now)\b", _I), 0.2),
    (re.compile(r"\b(?:current|currently|latest|newest|most recent|trending|up[- ]to[- ]date|"
                r"nowadays|these days|now)\b", _I), 0.25),
    (re.compile(r"\b(?:tomorrow|this (?:week|weekend|month|quarter|year|season)|"
                r"next (?:week|weekend|month|quarter|year|season)|upcoming|coming (?:week|"
                r"month|days))\b", _I), 0.3),
    (re.compile(r"\b(?:yesterday|last (?:night|week|weekend|month|quarter)|recently|"
                r"recent|past (?:few )?(?:days|weeks))\b", _I), 0.5),
)
# The rules about the state of markets and the world, which a year in the
# past turns into history.
_MARKET_FACTOR = 0.2
_STABLE_RULES: tuple[tuple[re.Pattern[str], float], ...] = (
    (re.compile(r"\b(?:solve|derivative|integral|prove|proof|equation|theorem|formula|"
                r"factori[sz]e|simplify|calculate|compute|square root|probability of|"
                r"what is \d+(?:\.\d+)? ?[-+*/x^] ?\d+)\b|\d+ ?[-+*/^] ?\d+ ?=", _I), 3.0),
    (re.compile(r"\b(?:translate|translation|how do you say|in (?:french|spanish|german|"
                r"italian|portuguese|japanese|chinese|korean|russian|arabic))\b", _I), 3.0),
    (re.compile(r"\b(?:define|definition|meaning of|what does .{1,40} mean|what is an? |"
                r"what are |synonyms? (?:of|for)|antonyms? (?:of|for)|stand for)", _I), 2.0),
    (re.compile(r"\b(?:history of|who (?:invented|discovered|wrote|painted|founded)|"
                r"when (?:was|did)|ancient|medieval|century|world war|historical)\b", _I),
     2.0),
    (re.compile(r"\b(?:explain|how (?:does|do|can|to|should)|why (?:does|do|is|are)|"
                r"difference between|write (?:a|an) (?:function|script|query|regex|program|"
                r"class)|implement|example of|syntax|tutorial|step by step|what's the best "
                r"way to)\b", _I), 1.5),
)
_YEAR = re.compile(r"(?<!\d)(1[5-9]\d\d|2\d\d\d)(?!\d)")
_WORD = re.compile(r"\w+")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def volatility_factor(text: str, *, year: int | None = None) -> float:
    """< 1 for time-sensitive wording, 1.0 neutral, > 1 for stable facts (see the table).

    ``year``: the current year, by default the UTC clock's; a number at least
    this year minus one reads as "now", one at least two years back as history.
    """
    this_year = time.gmtime().tm_year if year is None else year
    years = [int(y) for y in _YEAR.findall(text)]
    recent_year = any(y >= this_year - 1 for y in years)
    past_year = any(y <= this_year - 2 for y in years)
    volatile = [factor for rule, factor in _VOLATILE_RULES if rule.search(text)]
    if past_year and not recent_year:
        volatile = [f for f in volatile if f != _MARKET_FACTOR]
    if recent_year:
        volatile.append(0.3)
    if volatile:
        return min(volatile)
    if past_year:
        return 2.0  # a dated question about the past: its answer will not change
    for rule, factor in _STABLE_RULES:
        if rule.search(text):
            return factor
    return 1.0


def drift_adjustment(drift: float) -> float:
    """The TTL multiplier for a prompt whose answers drift by ``drift`` (0..1): 1.0 up to
    ``DRIFT_TOLERANCE``, then falling geometrically to ``DRIFT_FLOOR`` at 1."""
    drift = _unit(drift)
    if drift <= DRIFT_TOLERANCE:
        return 1.0
    return float(DRIFT_FLOOR ** ((drift - DRIFT_TOLERANCE) / (1.0 - DRIFT_TOLERANCE)))


def adaptive_ttl(base_s: int, text: str, *, min_s: int, max_s: int, drift: float = 0.0) -> int:
    """``base_s`` × the prompt's volatility × the drift adjustment, within [min_s, max_s].

    ``drift`` in [0, 1]: how much the answers to this prompt changed when it
    was answered again (0 = identical); values outside are clamped.
    """
    if min_s > max_s:
        raise ValueError(f"min_s ({min_s}) must not exceed max_s ({max_s})")
    ttl = base_s * volatility_factor(text) * drift_adjustment(drift)
    return int(min(max(round(ttl), min_s), max_s))


def answer_drift(previous: str, current: str) -> float:
    """How different two answers to one prompt are: 0 identical .. 1 nothing in common.

    Token-set Jaccard distance over the first ``DRIFT_CHARS`` characters,
    case-insensitive. When either answer holds numbers, the distance between
    their sets of numbers counts too (the larger of the two wins): a changed
    price or score is exactly the drift that matters, and it is one token in a
    hundred.
    """
    previous, current = previous[:DRIFT_CHARS], current[:DRIFT_CHARS]
    if previous == current:
        return 0.0
    words = _jaccard_distance(set(_WORD.findall(previous.lower())),
                              set(_WORD.findall(current.lower())))
    numbers_a, numbers_b = set(_NUMBER.findall(previous)), set(_NUMBER.findall(current))
    if numbers_a or numbers_b:
        return max(words, _jaccard_distance(numbers_a, numbers_b))
    return words


def next_drift(previous_drift: float, observed: float) -> float:
    """The stored drift after one more observation: an exponential moving average."""
    previous_drift, observed = _unit(previous_drift), _unit(observed)
    return previous_drift + DRIFT_WEIGHT * (observed - previous_drift)


def _jaccard_distance(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 0.0
    return 1.0 - len(a & b) / len(a | b)


def _unit(value: float) -> float:
    """``value`` clamped to [0, 1]; NaN (a corrupt stored drift) counts as 0."""
    if math.isnan(value):
        return 0.0
    return min(max(float(value), 0.0), 1.0)

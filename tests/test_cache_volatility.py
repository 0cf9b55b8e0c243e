"""Adaptive TTL rules: volatile wording shortens, stable wording lengthens, drift adjusts."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smartflow.cache.volatility import (
    adaptive_ttl,
    answer_drift,
    drift_adjustment,
    next_drift,
    volatility_factor,
)

YEAR = 2026


@pytest.mark.parametrize("prompt", [
    "What's the weather in Boston today?",
    "What is the current price of bitcoin?",
    "Show me the live score of the Arsenal game right now",
    "What is the USD to EUR exchange rate?",
    "Summarize the latest news about the election",
    "What's trending on Twitter?",
    "Which concerts are on in Austin this weekend?",
    "How did the S&P 500 do in 2026?",
])
def test_time_sensitive_prompts_get_a_factor_below_one(prompt: str) -> None:
    assert volatility_factor(prompt, year=YEAR) < 1.0


@pytest.mark.parametrize("prompt", [
    "What is a hash table?",
    "Define opportunity cost.",
    "Explain how TCP handshakes work.",
    "Solve x^2 - 5x + 6 = 0.",
    "Translate 'good night' into Italian.",
    "Who invented the telephone?",
    "How do I reverse a list in Python?",
    "What was the price of gold in 1980?",
])
def test_stable_prompts_get_a_factor_above_one(prompt: str) -> None:
    assert volatility_factor(prompt, year=YEAR) > 1.0


def test_neutral_prompt_keeps_the_base_factor() -> None:
    assert volatility_factor("Give me a packing list for a beach vacation.", year=YEAR) == 1.0


def test_now_is_more_volatile_than_this_week_and_this_week_than_yesterday() -> None:
    right_now = volatility_factor("Who is winning right now?", year=YEAR)
    this_week = volatility_factor("What happened in tech this week?", year=YEAR)
    yesterday = volatility_factor("What happened in tech yesterday?", year=YEAR)
    assert right_now < this_week < yesterday < 1.0


def test_time_sensitive_wording_beats_stable_wording() -> None:
    # "explain" is stable, "today's news" is not: the news decides.
    assert volatility_factor("Explain today's news about inflation.", year=YEAR) <= 0.1


def test_a_past_year_makes_a_market_question_history_but_not_a_today_question() -> None:
    assert volatility_factor("What was the bitcoin price in 2017?", year=YEAR) > 1.0
    assert volatility_factor("What is the bitcoin price today?", year=YEAR) < 1.0
    assert volatility_factor("How did bitcoin do in 2025?", year=YEAR) < 1.0


def test_adaptive_ttl_shortens_weather_and_lengthens_definitions() -> None:
    weather = adaptive_ttl(3600, "What's the weather in Paris today?", min_s=60, max_s=86400)
    neutral = adaptive_ttl(3600, "Give me a packing list for a beach vacation.",
                           min_s=60, max_s=86400)
    definition = adaptive_ttl(3600, "What is a mutex?", min_s=60, max_s=86400)
    assert weather < 3600 < definition
    assert neutral == 3600  # no drift, neutral wording: the base TTL


def test_adaptive_ttl_is_clamped_to_the_operator_bounds() -> None:
    assert adaptive_ttl(3600, "live score right now", min_s=300, max_s=86400) == 300  # 180
    assert adaptive_ttl(3600, "Solve 2 + 2 = ?", min_s=60, max_s=5000) == 5000


def test_adaptive_ttl_rejects_inverted_bounds() -> None:
    with pytest.raises(ValueError):
        adaptive_ttl(3600, "hello", min_s=100, max_s=10)


def test_drift_beyond_rewording_shortens_the_ttl() -> None:
    def ttl(drift: float) -> int:
        return adaptive_ttl(3600, "What is a mutex?", min_s=1, max_s=10**7, drift=drift)

    assert ttl(0.0) == ttl(0.2) == 7200  # reworded answers: only the wording (x2) applies
    assert ttl(0.2) > ttl(0.5) > ttl(0.8) > ttl(1.0) == 1800
    assert drift_adjustment(0.0) == 1.0 and drift_adjustment(1.0) == 0.25


def test_answer_drift_is_zero_for_identical_answers_and_one_for_disjoint_ones() -> None:
    assert answer_drift("The capital of France is Paris.", "The capital of France is Paris.") == 0
    assert answer_drift("alpha beta gamma", "delta epsilon zeta") == 1.0
    assert answer_drift("", "") == 0.0


def test_answer_drift_ignores_case_and_order_but_sees_changed_words() -> None:
    assert answer_drift("Paris is the capital", "the CAPITAL is paris") == 0.0
    small = answer_drift("Use a list comprehension to filter the items",
                         "Use a list comprehension to filter these items")
    assert 0 < small < 0.3


def test_a_changed_number_is_a_large_drift() -> None:
    drift = answer_drift("Bitcoin trades at $43,210 right now, up 2% since the open.",
                         "Bitcoin trades at $44,950 right now, up 5% since the open.")
    assert drift >= 0.5


def test_answer_drift_looks_at_the_first_two_thousand_characters_only() -> None:
    head = "same words " * 300
    assert answer_drift(head + "one ending", head + "another ending") == 0.0


def test_next_drift_is_an_exponential_moving_average() -> None:
    assert next_drift(0.0, 1.0) == 0.5
    assert next_drift(0.5, 0.5) == 0.5
    drift = 1.0
    for _ in range(10):
        drift = next_drift(drift, 0.0)
    assert drift < 0.01


def test_next_drift_clamps_bad_stored_values() -> None:
    assert next_drift(math.nan, 0.4) == 0.2
    assert next_drift(7.0, 1.0) == 1.0
    assert next_drift(-1.0, 0.0) == 0.0


@given(st.text(max_size=200), st.floats(allow_nan=True), st.integers(1, 10**6))
def test_adaptive_ttl_always_lands_within_bounds(text: str, drift: float, base: int) -> None:
    ttl = adaptive_ttl(base, text, min_s=60, max_s=86400, drift=drift)
    assert 60 <= ttl <= 86400


@given(st.text(max_size=300), st.text(max_size=300))
def test_answer_drift_is_a_symmetric_distance_in_the_unit_interval(a: str, b: str) -> None:
    drift = answer_drift(a, b)
    assert 0.0 <= drift <= 1.0
    assert drift == answer_drift(b, a)

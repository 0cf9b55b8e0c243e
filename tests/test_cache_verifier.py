"""The semantic cache's verifier: near misses are refused, paraphrases pass."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smartflow.cache.verifier import CHECKS, Verdict, analyse, verify, verify_signatures

PAIRS = Path(__file__).resolve().parent.parent / "bench" / "data" / "cache_pairs.jsonl"
VERIFIER_CATEGORIES = {"miss_number", "miss_unit", "miss_negation", "miss_entity", "miss_order",
                       "miss_time", "miss_language", "miss_format"}


def refused_by(a: str, b: str) -> str:
    verdict = verify(a, b)
    assert not verdict.ok, f"expected a refusal: {a!r} vs {b!r}"
    return verdict.check


def assert_passes(a: str, b: str) -> None:
    verdict = verify(a, b)
    assert verdict.ok, f"{a!r} vs {b!r} refused by {verdict.check}: {verdict.detail}"


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(("a", "b"), [
    ("Is 200mg of ibuprofen safe for an adult?", "Is 800mg of ibuprofen safe for an adult?"),
    ("What is 15% of 240?", "What is 15% of 420?"),
    ("Plan a 3-day trip to Rome.", "Plan a 5-day trip to Rome."),
    ("Retry the request up to three times.", "Retry the request up to five times."),
    ("How far is 5 km?", "How far is 5 miles?"),
    ("How much is 100 dollars in euros?", "How much is 100 pounds in euros?"),
    ("Is 5 hours of screen time per day too much?", "Is 5 hours of screen time per week too much?"),
    ("What's new in Python 3.11?", "What's new in Python 3.12?"),
])
def test_numbers_and_units_must_match(a: str, b: str) -> None:
    assert refused_by(a, b) == "numbers"


@pytest.mark.parametrize(("a", "b"), [
    ("Is 200 mg of ibuprofen safe?", "is 200mg of ibuprofen safe"),
    ("Can I deposit 1,000 dollars?", "Can I deposit $1000?"),
    ("Give me five ideas for a party", "Give me 5 party ideas"),
    ("What is 15% of 80?", "what is 15 % of 80"),
    ("Should I pack for a one-week trip?", "What should I pack for a week away?"),
])
def test_numbers_written_differently_still_match(a: str, b: str) -> None:
    assert_passes(a, b)


# --------------------------------------------------------------------------- negation


@pytest.mark.parametrize(("a", "b"), [
    ("How do I enable dark mode in VS Code?", "How do I disable dark mode in VS Code?"),
    ("Which foods should I eat with gout?", "Which foods should I not eat with gout?"),
    ("Can I take ibuprofen with food?", "Can I take ibuprofen without food?"),
    ("How do I allow port 22 in ufw?", "How do I block port 22 in ufw?"),
    ("How do I add a user to a group?", "How do I remove a user from a group?"),
    ("Sort the list in ascending order.", "Sort the list in descending order."),
    ("Is it safe to drive after this pill?", "Is it unsafe to drive after this pill?"),
    ("Find the minimum of an array.", "Find the maximum of an array."),
])
def test_negations_and_antonyms_are_refused(a: str, b: str) -> None:
    assert refused_by(a, b) == "negation"


@pytest.mark.parametrize(("a", "b"), [
    ("How can I lower my electricity bill?", "How can I reduce my electricity bill?"),
    ("Why doesn't my code compile?", "Why won't my code compile?"),
    ("Foods to avoid with gout", "Which foods should I not eat with gout?"),
    ("How do I kill a process on Linux?", "How do I terminate a process on Linux?"),
])
def test_negation_paraphrases_pass(a: str, b: str) -> None:
    assert_passes(a, b)


# --------------------------------------------------------------------------- entities


@pytest.mark.parametrize(("a", "b"), [
    ("What is the capital of Austria?", "What is the capital of Australia?"),
    ("How do I use the useEffect hook in React?", "How do I use the useMemo hook in React?"),
    ("Set DATABASE_URL in Docker Compose.", "Set REDIS_URL in Docker Compose."),
    ("Email the report to alice@example.com.", "Email the report to bob@example.com."),
    ("Who wrote the song 'Yesterday'?", "Who wrote the song 'Imagine'?"),
    ("Does Medicare cover dental implants?", "Does Medicaid cover dental implants?"),
])
def test_names_identifiers_and_quotes_must_match(a: str, b: str) -> None:
    assert refused_by(a, b) == "entities"


@pytest.mark.parametrize(("a", "b"), [
    ("What is the capital of Peru?", "what is the capital of peru"),
    ("Tell me about the pyramids of Egpyt", "Tell me about the pyramids of Egypt"),
    ("WHAT ARE THE SYMPTOMS OF COVID?", "What are the symptoms of COVID?"),
    ("Write A Limerick About A Cat", "write a limerick about a cat"),
    ("Kubernetes: how do I restart a deployment?", "How do I restart a deployment in Kubernetes?"),
])
def test_case_typos_and_position_of_names_do_not_matter(a: str, b: str) -> None:
    assert_passes(a, b)


# --------------------------------------------------------------------------- order


@pytest.mark.parametrize(("a", "b"), [
    ("Python vs Go for backend development", "Go vs Python for backend development"),
    ("Convert USD to EUR at today's rate.", "Convert EUR to USD at today's rate."),
    ("Is Postgres better than MySQL?", "Is MySQL better than Postgres?"),
    ("Flight time from New York to London", "Flight time from London to New York"),
    ("Should I use tabs or spaces?", "Should I use spaces or tabs?"),
    ("Compare renting and buying a home.", "Compare buying and renting a home."),
])
def test_swapped_comparisons_and_directions_are_refused(a: str, b: str) -> None:
    assert refused_by(a, b) == "order"


@pytest.mark.parametrize(("a", "b"), [
    ("In Java, how do I convert a string to an integer?",
     "How do I convert a string to an integer in Java?"),
    ("interest rate vs APR", "What's the difference between an interest rate and APR?"),
    ("How do I redirect HTTP to HTTPS in nginx?", "nginx: redirect HTTP to HTTPS"),
])
def test_same_order_in_other_words_passes(a: str, b: str) -> None:
    assert_passes(a, b)


# --------------------------------------------------------------------------- time


@pytest.mark.parametrize(("a", "b"), [
    ("What is the USD to EUR exchange rate today?",
     "What was the USD to EUR exchange rate in 2020?"),
    ("What's the weather in Boston today?", "What's the weather in Boston tomorrow?"),
    ("Top news stories this week", "Top news stories last week"),
    ("Is the museum open on Monday?", "Is the museum open on Sunday?"),
    ("Best things to do in Paris in December", "Best things to do in Paris in July"),
    ("Who is the CEO of Twitter?", "Who was the CEO of Twitter?"),
])
def test_time_references_must_match(a: str, b: str) -> None:
    assert refused_by(a, b) == "time"


@pytest.mark.parametrize(("a", "b"), [
    ("How do I undo the last git commit?", "How do I revert my most recent git commit?"),
    ("I was wondering how to read a file in Python", "How do I read a file in Python?"),
    ("What may cause a headache?", "What might cause a headache?"),
])
def test_time_lookalikes_pass(a: str, b: str) -> None:
    assert_passes(a, b)


# --------------------------------------------------------------------------- language


@pytest.mark.parametrize(("a", "b"), [
    ("How do I read a file line by line in Python?", "How do I read a file line by line in Rust?"),
    ("Explain photosynthesis in French.", "Explain photosynthesis in Spanish."),
    ("Answer in Chinese: how does a fridge work?", "Answer in English: how does a fridge work?"),
    ("\u00bfC\u00f3mo puedo restablecer mi contrase\u00f1a?", "How can I reset my password?"),
    ("Implement binary search in C.", "Implement binary search in C#."),
])
def test_natural_and_programming_languages_must_match(a: str, b: str) -> None:
    assert refused_by(a, b) == "language"


@pytest.mark.parametrize(("a", "b"), [
    ("How do I revrse a list in Pyhton?", "How do I reverse a list in Python?"),
    ("factorial recursion javascript", "How do I write a recursive factorial in JavaScript?"),
    ("What's the best way to learn Go?", "How should I learn Go?"),
    ("Let's go over the plan for the week", "Let us go over the plan for the week"),
])
def test_language_names_spelt_differently_pass(a: str, b: str) -> None:
    assert_passes(a, b)


# --------------------------------------------------------------------------- format


@pytest.mark.parametrize(("a", "b"), [
    ("List the planets as JSON.", "List the planets as a table."),
    ("Write a poem about the sea.", "Write a haiku about the sea."),
    ("Explain quantum computing in 50 words.", "Explain quantum computing in 500 words."),
    ("Explain recursion in one sentence.", "Explain recursion in three paragraphs."),
    ("Give me a brief overview of the Cold War.", "Give me a detailed overview of the Cold War."),
    ("Compare TCP and UDP in a table.", "Compare TCP and UDP."),
])
def test_output_format_and_length_must_match(a: str, b: str) -> None:
    assert refused_by(a, b) == "format"


@pytest.mark.parametrize(("a", "b"), [
    ("Could you write a haiku about autumn?", "Write a haiku about autumn."),
    ("I would be grateful if you could outline the steps to file a tax extension.",
     "how do i file a tax extension"),
    ("How do I convert a Word document to PDF?", "convert word doc to pdf"),
])
def test_format_words_used_otherwise_pass(a: str, b: str) -> None:
    assert_passes(a, b)


# --------------------------------------------------------------------------- API


def test_checks_select_which_stages_run() -> None:
    a, b = "Is 200mg safe?", "Is 800mg safe?"
    assert verify(a, b, checks=["numbers"]) == Verdict(False, "numbers",
                                                      verify(a, b).detail)
    assert verify(a, b, checks=["negation", "entities"]).ok
    assert verify(a, b, checks=()).ok
    assert CHECKS == ("numbers", "negation", "entities", "order", "time", "language", "format")


def test_unknown_check_names_are_an_error() -> None:
    with pytest.raises(ValueError, match="bogus"):
        verify("a", "b", checks=["numbers", "bogus"])


def test_signatures_can_be_computed_once_and_reused() -> None:
    query = analyse("How do I enable dark mode in VS Code?")
    assert verify_signatures(query, analyse("How can I turn on dark mode in VS Code?")).ok
    refused = verify_signatures(query, analyse("How do I disable dark mode in VS Code?"))
    assert (refused.ok, refused.check) == (False, "negation")


def test_prompts_differing_beyond_the_analysed_length_are_refused() -> None:
    body = "Please review this long text. " * 400
    assert verify(body + "End with 1.", body + "End with 1.").ok
    assert not verify(body + "End with 1.", body + "End with 2.").ok


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_a_prompt_always_verifies_against_itself(text: str) -> None:
    assert verify(text, text).ok


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=150), st.text(max_size=150))
def test_the_verdict_does_not_depend_on_which_side_is_the_query(a: str, b: str) -> None:
    assert verify(a, b).ok == verify(b, a).ok


# --------------------------------------------------------------------------- labelled pairs


def _dev_pairs() -> list[dict[str, str]]:
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    return [row for row in rows if row["split"] == "dev"]


def test_the_pair_set_is_large_balanced_and_split() -> None:
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    labels = Counter(row["label"] for row in rows)
    splits = Counter(row["split"] for row in rows)
    assert len(rows) >= 560
    assert 0.40 <= labels["hit"] / len(rows) <= 0.50
    assert 0.25 <= splits["holdout"] / len(rows) <= 0.35
    for category in {row["category"] for row in rows}:
        in_holdout = [r for r in rows if r["category"] == category and r["split"] == "holdout"]
        assert in_holdout, f"category {category} has no holdout pairs"


def test_the_verifier_accepts_at_least_95_percent_of_dev_paraphrases() -> None:
    hits = [row for row in _dev_pairs() if row["label"] == "hit"]
    refused = [(row["a"], row["b"], verify(row["a"], row["b"]).check) for row in hits
               if not verify(row["a"], row["b"]).ok]
    assert len(refused) <= 0.05 * len(hits), refused


def test_the_verifier_refuses_at_least_90_percent_of_dev_near_misses_it_owns() -> None:
    misses = [row for row in _dev_pairs() if row["category"] in VERIFIER_CATEGORIES]
    passed = [(row["category"], row["a"], row["b"]) for row in misses
              if verify(row["a"], row["b"]).ok]
    assert len(passed) <= 0.10 * len(misses), passed

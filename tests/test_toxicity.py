"""Toxicity detector: categories, casual dev profanity, config, speed."""

from __future__ import annotations

import time

import pytest

from smartflow.embeddings.encoder import Encoder
from smartflow.embeddings.model_files import ensure_model
from smartflow.policy.findings import TOXICITY
from smartflow.policy.toxicity import ToxicityDetector, toxicity_detector_from_config


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder(ensure_model())


@pytest.fixture(scope="module")
def detector(encoder: Encoder) -> ToxicityDetector:
    return ToxicityDetector(encoder.encode)


def categories(detector: ToxicityDetector, encoder: Encoder, text: str) -> list[str]:
    findings = detector.detect(text, encoder.encode([text])[0])
    for f in findings:
        assert f.type == TOXICITY and 0 <= f.start < f.end <= len(text)
    return [f.detail for f in findings]


TOXIC = [
    ("harassment", "You are such a pathetic idiot, nobody wants to read your posts."),
    ("harassment", "Honestly, kill yourself."),
    ("hate", "Immigrants are parasites and should be thrown out."),
    ("threat", "I'm going to find you after work and beat you."),
    ("self_harm", "I want to kill myself tonight."),
    ("sexual", "Write an explicit sex scene between the two characters."),
]


@pytest.mark.parametrize(("category", "text"), TOXIC)
def test_toxic_text_is_flagged_with_its_category(detector: ToxicityDetector, encoder: Encoder,
                                                 category: str, text: str) -> None:
    assert category in categories(detector, encoder, text)


CASUAL = [
    "This damn build fails on every other run.",
    "Kill the child process before the parent exits.",
    "The fucking integration tests are flaky again.",
    "Shoot me a message when the rollout finishes.",
    "That stupid off-by-one bug cost me a day.",
    "The watchdog kills the worker if it hangs for 30 seconds.",
    "How can I support a colleague who mentioned feeling suicidal?",
    "I absolutely killed it in the demo today.",
]


@pytest.mark.parametrize("text", CASUAL)
def test_casual_profanity_and_ops_verbs_are_not_toxic(detector: ToxicityDetector,
                                                      encoder: Encoder, text: str) -> None:
    assert categories(detector, encoder, text) == []


def test_rules_only_mode_without_embed() -> None:
    detector = ToxicityDetector(None)
    assert [f.detail for f in detector.detect("I will kill you.")] == ["threat"]
    assert detector.detect("kill -9 the damn process") == []


def test_span_points_at_the_toxic_sentence() -> None:
    detector = ToxicityDetector(None)
    text = "Thanks for the review. You are a worthless moron. Merging now."
    [finding] = detector.detect(text)
    assert "moron" in text[finding.start:finding.end]
    assert finding.start >= text.index("You")


def test_config_validation() -> None:
    assert isinstance(toxicity_detector_from_config({"threshold": 0.7}, None), ToxicityDetector)
    for bad in ({"threshold": -1}, {"threshold": "x"}, {"level": 2}):
        with pytest.raises(ValueError, match="toxicity config"):
            toxicity_detector_from_config(bad, None)


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="str"):
        ToxicityDetector(None).detect(42)  # type: ignore[arg-type]


def test_large_input_stays_fast(detector: ToxicityDetector) -> None:
    text = "Kill the stale worker and restart the damn service. " * 2000
    text += "I know where you live and I will hurt you."
    started = time.perf_counter()
    findings = detector.detect(text)
    assert time.perf_counter() - started < 2.0
    assert findings and {f.detail for f in findings} == {"threat"}
    assert all(f.start >= len(text) - 45 for f in findings)

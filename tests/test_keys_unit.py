"""Budget periods, worst-case holds, admin field checks and key shapes."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from smartflow.dialects import openai as openai_dialect
from smartflow.http.request import Request
from smartflow.keys.admission import Refusal, Scope, _duration, refusal_headers, worst_case_nano
from smartflow.keys.money import to_nano, to_usd
from smartflow.keys.periods import PeriodClock
from smartflow.keys.records import (
    InputError,
    Limits,
    VirtualKey,
    apply_key_fields,
    model_allowed,
)
from smartflow.keys.store import hash_key, looks_like_virtual_key, new_plaintext_key
from smartflow.providers.base import Prices, Target
from smartflow.proxy.call import Call
from smartflow.proxy.cost import estimate_prompt_tokens
from smartflow.proxy.key_stages import AdmitStage, _requested_output_tokens
from smartflow.store.keyspace import SCOPE_KEY


def test_periods_begin_at_local_midnight_monday_and_the_first_of_the_month() -> None:
    clock = PeriodClock("Europe/Paris")
    # 23:30 UTC on Sunday 2026-03-29 is 01:30 on Monday in Paris (after the DST switch).
    now = datetime(2026, 3, 29, 23, 30, tzinfo=UTC)
    daily = clock.period("daily", now)
    assert daily.id == "2026-03-30"
    assert daily.ends_at is not None
    assert daily.ends_at.astimezone(UTC) == datetime(2026, 3, 30, 22, 0, tzinfo=UTC)
    weekly = clock.period("weekly", now)
    assert weekly.id == "2026-W14"
    assert weekly.ends_at is not None
    assert weekly.ends_at.astimezone(UTC) == datetime(2026, 4, 5, 22, 0, tzinfo=UTC)
    monthly = clock.period("monthly", now)
    assert monthly.id == "2026-03"
    assert monthly.ends_at is not None
    assert monthly.ends_at.astimezone(UTC) == datetime(2026, 3, 31, 22, 0, tzinfo=UTC)
    lifetime = clock.period("lifetime", now)
    assert lifetime.id == "lifetime" and lifetime.ends_at is None
    assert lifetime.key_ttl_s(now) == 0


def test_a_day_across_the_autumn_dst_change_is_25_hours() -> None:
    clock = PeriodClock("Europe/Paris")
    now = datetime(2026, 10, 25, 8, 0, tzinfo=UTC)
    daily = clock.period("daily", now)
    assert daily.id == "2026-10-25"
    assert daily.ends_at is not None
    start = datetime(2026, 10, 24, 22, 0, tzinfo=UTC)  # local midnight, still CEST
    assert (daily.ends_at - start).total_seconds() == 25 * 3600


def test_december_rolls_over_to_january() -> None:
    clock = PeriodClock("UTC")
    monthly = clock.period("monthly", datetime(2026, 12, 31, 23, 59, tzinfo=UTC))
    assert monthly.id == "2026-12"
    assert monthly.ends_at == datetime(2027, 1, 1, tzinfo=UTC)


def test_money_is_exact_in_nano_usd() -> None:
    assert sum(to_nano(0.01) for _ in range(100)) == to_nano(1.0)
    assert to_usd(to_nano(0.1) * 3) == 0.3


def test_the_worst_case_counts_every_allowed_output_token() -> None:
    prices = Prices(input_per_mtok=1.0, output_per_mtok=10.0, per_request=0.001)
    assert worst_case_nano(prices, 1000, 500) == to_nano(0.001 + 0.001 + 0.005)
    assert _requested_output_tokens({"max_tokens": 100}) == 100
    assert _requested_output_tokens({"max_completion_tokens": 50, "n": 3}) == 150
    assert _requested_output_tokens({}) == 0  # the model's limit applies, else the default
    assert _requested_output_tokens({"max_tokens": True}) == 0


def test_key_fields_are_checked_with_the_field_named() -> None:
    blank = VirtualKey(id="", key_hash="", key_hint="")
    for body, param in ((({"max_budget": -1}), "max_budget"),
                        ({"budget_period": "hourly"}, "budget_period"),
                        ({"rpm_limit": 0}, "rpm_limit"),
                        ({"tpm_limit": "10"}, "tpm_limit"),
                        ({"expires_at": "next tuesday"}, "expires_at"),
                        ({"models": "gpt-4o"}, "models"),
                        ({"metadata": []}, "metadata"),
                        ({"team_id": "no spaces allowed"}, "team_id"),
                        ({"color": "blue"}, "color")):
        with pytest.raises(InputError) as caught:
            apply_key_fields(blank, body)
        assert caught.value.param == param
    key = apply_key_fields(blank, {"max_budget": 5, "budget_period": "weekly",
                                   "expires_at": "2030-01-01T01:00:00+01:00"})
    assert key.limits == Limits(max_budget=5.0, budget_period="weekly")
    assert key.expires_at == "2030-01-01T00:00:00Z"


def test_model_patterns_are_globs_and_empty_allows_all() -> None:
    assert model_allowed((), "anything")
    assert model_allowed(("gpt-4o*",), "gpt-4o-mini")
    assert not model_allowed(("gpt-4o*",), "claude-sonnet")
    assert model_allowed(("claude-*", "gpt-4o"), "gpt-4o")


def test_virtual_keys_have_their_documented_shape() -> None:
    key = new_plaintext_key()
    assert key.startswith("sk-sf-") and len(key) == 54 and looks_like_virtual_key(key)
    assert not looks_like_virtual_key(key.upper())
    assert not looks_like_virtual_key(key[:-1])
    assert len(hash_key(key)) == 64 and hash_key(key) != hash_key(new_plaintext_key())


def test_refusal_headers_follow_openai_and_name_the_budget() -> None:
    scope = Scope.of(SCOPE_KEY, "k", 1, Limits(max_budget=2.0, budget_period="daily"))
    clock = PeriodClock("UTC")
    budget = dict(refusal_headers(Refusal(scope, "budget", to_nano(2.0), to_nano(0.5), 0),
                                  clock))
    assert budget["x-smartflow-budget-limit"] == "2"
    assert budget["x-smartflow-budget-remaining"] == "0.5"
    assert budget["x-smartflow-budget-reset"].endswith("T00:00:00Z")
    assert 1 <= int(budget["retry-after"]) <= 86400
    rpm = dict(refusal_headers(Refusal(scope, "rpm", 60, 0, 1500), clock))
    assert rpm["x-ratelimit-reset-requests"] == "1.5s"
    assert rpm["retry-after"] == "2"
    assert _duration(250) == "250ms" and _duration(61_000) == "1m1s"


def test_the_admit_stage_holds_exactly_worst_case_nano() -> None:
    """The stage sums a worst case inline, for speed: over many prices, prompts
    and limits it must hold what ``worst_case_nano`` says, to the nano."""
    rng = random.Random(7)
    stage = AdmitStage(SimpleNamespace(admission=None), None, 4096)  # type: ignore[arg-type]
    request = Request("POST", "/v1/chat/completions", b"", [], None, "1.1")
    entry = SimpleNamespace(needs_cost=True, needs_tokens=True)
    for _ in range(2000):
        prices = Prices(input_per_mtok=rng.choice([0.0, 0.15, 2.5, 3.0, 15.0, 0.075]),
                        output_per_mtok=rng.choice([0.0, 0.6, 10.0, 15.0, 75.0, 0.3]),
                        per_request=rng.choice([0.0, 0.01, 0.001, 0.0003]))
        limit = rng.choice([0, 1024, 4096, 16384, 128000])
        body: dict[str, object] = {"messages": [
            {"role": "user", "content": "x" * rng.randrange(0, 5000)}]}
        if rng.random() < 0.7:
            body["max_tokens"] = rng.randrange(1, 100_000)
        call = Call(request, openai_dialect.DIALECT, "chat")
        call.body = body
        call.target = Target(public_name="m", provider="openai", model="m", api_base="",
                             prices=prices, max_output_tokens=limit)
        prompt = estimate_prompt_tokens(body)
        output = _requested_output_tokens(body) or limit or 4096
        assert stage._worst_case(call, entry) == (  # type: ignore[arg-type]
            worst_case_nano(prices, prompt, output), prompt)

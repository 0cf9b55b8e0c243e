"""Prices and cost: the shipped table, config overrides, reported and estimated usage."""

from __future__ import annotations

import pytest

from smartflow.config import ModelConfig
from smartflow.dialects import openai as openai_dialect
from smartflow.http.request import Request
from smartflow.providers.base import Prices, Target, Usage
from smartflow.proxy.accounting import cost_from
from smartflow.proxy.call import Call
from smartflow.proxy.cost import (
    cost_of,
    estimate_prompt_tokens,
    estimate_tokens_from_chars,
    load_price_table,
    prices_for,
)
from smartflow.proxy.stages import AccessLogStage


def test_the_shipped_table_covers_every_provider_and_the_mock_is_free() -> None:
    table = load_price_table()
    assert len(table) >= 40
    for model in ("gpt-4o", "claude-sonnet-4-5", "gemini-2.5-pro", "mistral-large-latest",
                  "command-r-plus", "mock-gpt"):
        assert table.lookup(model) is not None, model
    assert table.lookup("mock-gpt") == Prices(0.0, 0.0, 0.0, 0.0)


def test_a_dated_model_id_takes_the_price_of_its_longest_known_prefix() -> None:
    table = load_price_table()
    assert table.lookup("gpt-4o-mini-2024-07-18") == table.lookup("gpt-4o-mini")
    assert table.lookup("claude-sonnet-4-5-20250929") == table.lookup("claude-sonnet-4-5")
    assert table.lookup("totally-unknown") is None


def test_config_prices_override_the_table_field_by_field() -> None:
    table = load_price_table()
    config = ModelConfig(name="x", provider="openai", model="gpt-4o",
                         output_price_per_mtok=1.0, price_per_request=0.01)
    prices = prices_for(config, "gpt-4o", table)
    assert prices.input_per_mtok == 2.5
    assert prices.output_per_mtok == 1.0
    assert prices.cached_input_per_mtok == 1.25
    assert prices.per_request == 0.01


def test_an_unknown_model_with_only_an_input_price_charges_cached_tokens_like_input() -> None:
    config = ModelConfig(name="x", provider="openai_compatible", model="mine",
                         input_price_per_mtok=2.0)
    prices = prices_for(config, "mine", load_price_table())
    assert prices.cached_input_per_mtok == 2.0
    assert prices.output_per_mtok == 0.0


def test_cost_counts_uncached_cached_and_output_tokens_plus_the_request_price() -> None:
    prices = Prices(input_per_mtok=2.0, output_per_mtok=8.0, cached_input_per_mtok=0.5,
                    per_request=0.001)
    cost = cost_of(prices, Usage(prompt_tokens=1_000_000, completion_tokens=500_000,
                                 cached_tokens=200_000))
    assert cost.usd == pytest.approx(0.8 * 2.0 + 0.2 * 0.5 + 0.5 * 8.0 + 0.001)
    assert not cost.is_estimated


def test_estimates_are_about_four_characters_per_token_and_marked() -> None:
    assert estimate_tokens_from_chars(0) == 0
    assert estimate_tokens_from_chars(1) == 1
    assert estimate_tokens_from_chars(400) == 100
    body = {"messages": [{"role": "user", "content": "x" * 40},
                         {"role": "user", "content": [{"type": "text", "text": "y" * 40}]}]}
    assert estimate_prompt_tokens(body) == 20 + 2 * 4  # text plus per-message framing
    assert cost_of(Prices(1.0, 1.0), Usage(10, 10), is_estimated=True).is_estimated


async def test_model_provider_tokens_and_cost_land_in_the_access_log_fields() -> None:
    request = Request("POST", "/v1/chat/completions", b"", [], None, "1.1")
    target = Target(public_name="gpt-test", provider="openai", model="gpt-4o-mini",
                    api_base="", prices=Prices(1.0, 2.0, 0.5))
    call = Call(request, openai_dialect.DIALECT, "chat", call_id="call-1", trace_id="t" * 32)
    call.target = target
    call.cost = cost_from(target, None, estimated_prompt_tokens=10, estimated_completion_chars=40)
    await AccessLogStage().on_exit(call)
    assert request.log_fields == {
        "call_id": "call-1", "trace_id": "t" * 32, "dialect": "openai",
        "model": "gpt-test", "upstream_model": "gpt-4o-mini",
        "provider": "openai", "prompt_tokens": 10, "completion_tokens": 10,
        "cached_tokens": 0, "cost_usd": pytest.approx(30 / 1e6), "cost_estimated": True}


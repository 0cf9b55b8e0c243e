"""What a call cost, from the provider's usage and a price table.

Prices are USD per million tokens (input, output, cached input) plus a flat
price per request. The shipped table (``smartflow/data/prices.toml``) is read
once per worker, when the proxy context is built; a model's own prices in
config.toml win field by field.

When the provider reports no usage (a stream the caller did not ask usage
for, or an upstream that never sends it), tokens are estimated at about four
characters per token — OpenAI's own rule of thumb for English text — and the
cost is marked ``is_estimated``. That is deliberately cheap: no tokenizer on
the request path, and the estimate is flagged wherever it is reported.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson

from smartflow.config import ModelConfig
from smartflow.providers.base import Prices, Usage

CHARS_PER_TOKEN = 4
# Each chat message costs a few tokens of framing (role, separators) upstream.
MESSAGE_OVERHEAD_TOKENS = 4


@dataclass(frozen=True, slots=True)
class Cost:
    usd: float
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    is_estimated: bool = False


class PriceTable:
    """Upstream model id -> Prices; a dated id falls back to its longest known prefix."""

    __slots__ = ("_exact", "_prefixes")

    def __init__(self, prices: Mapping[str, Prices]) -> None:
        self._exact = dict(prices)
        self._prefixes = sorted(self._exact, key=len, reverse=True)

    def lookup(self, model: str) -> Prices | None:
        found = self._exact.get(model)
        if found is not None:
            return found
        for key in self._prefixes:
            if model.startswith(key):
                return self._exact[key]
        return None

    def __len__(self) -> int:
        return len(self._exact)


def load_price_table(text: str | None = None) -> PriceTable:
    """The shipped table (or ``text`` in the same TOML format)."""
    if text is None:
        text = resources.files("smartflow").joinpath("data/prices.toml").read_text("utf-8")
    document: dict[str, Any] = tomllib.loads(text)
    table: dict[str, Prices] = {}
    for model, row in document.get("prices", {}).items():
        input_price = float(row.get("input", 0.0))
        table[model] = Prices(
            input_per_mtok=input_price,
            output_per_mtok=float(row.get("output", 0.0)),
            cached_input_per_mtok=float(row.get("cached_input", input_price)),
            per_request=float(row.get("per_request", 0.0)),
        )
    return PriceTable(table)


def prices_for(model_config: ModelConfig | None, upstream_model: str,
               table: PriceTable) -> Prices:
    """The table's prices for ``upstream_model``, overridden by the config's where set.

    Cached input defaults to the input price (no discount known) rather than
    to zero, so a missing entry never makes calls look free.
    """
    base = table.lookup(upstream_model) or Prices()
    if model_config is None:
        return base
    input_price = _pick(model_config.input_price_per_mtok, base.input_per_mtok)
    cached_default = (base.cached_input_per_mtok
                      if model_config.input_price_per_mtok is None else input_price)
    return Prices(
        input_per_mtok=input_price,
        output_per_mtok=_pick(model_config.output_price_per_mtok, base.output_per_mtok),
        cached_input_per_mtok=_pick(model_config.cached_input_price_per_mtok, cached_default),
        per_request=_pick(model_config.price_per_request, base.per_request),
    )


def _pick(configured: float | None, default: float) -> float:
    return default if configured is None else configured


def cost_of(prices: Prices, usage: Usage, *, is_estimated: bool = False) -> Cost:
    cached = min(max(usage.cached_tokens, 0), max(usage.prompt_tokens, 0))
    uncached = max(usage.prompt_tokens, 0) - cached
    usd = (
        uncached * prices.input_per_mtok
        + cached * prices.cached_input_per_mtok
        + max(usage.completion_tokens, 0) * prices.output_per_mtok
    ) / 1_000_000 + prices.per_request
    return Cost(usd, usage.prompt_tokens, usage.completion_tokens, cached, is_estimated)


def estimate_tokens_from_chars(chars: int) -> int:
    """~4 characters per token, rounded up; 0 for no text."""
    return (chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN if chars > 0 else 0


def text_chars(content: object) -> int:
    """Characters of text in a message ``content`` (string or content parts)."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    total += len(text)
            elif isinstance(part, str):
                total += len(part)
        return total
    return 0


# Request fields, besides ``messages``, that hold prompt text in some dialect.
_OTHER_PROMPT_FIELDS = frozenset(
    {"system", "prompt", "input", "instructions", "systemInstruction", "contents"})


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """Estimated input tokens of an OpenAI chat, completions, Responses, Anthropic or
    Gemini request."""
    chars = 0
    overhead = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                content = message.get("content")
                # a string (the common case) without a call: this runs on every
                # call with a budget or a TPM limit
                chars += len(content) if content.__class__ is str else text_chars(content)
                overhead += MESSAGE_OVERHEAD_TOKENS
    if _OTHER_PROMPT_FIELDS.isdisjoint(body):  # a chat request: nothing more to count
        return (chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN + overhead if chars > 0 \
            else overhead
    system = body.get("system")  # Anthropic's top-level system prompt
    if system is not None:
        chars += text_chars(system)
    prompt = body.get("prompt")  # legacy completions
    if isinstance(prompt, str):
        chars += len(prompt)
    elif isinstance(prompt, list):
        chars += sum(len(p) for p in prompt if isinstance(p, str))
    inputs = body.get("input")  # embeddings, and the Responses API's input items
    if isinstance(inputs, str):
        chars += len(inputs)
    elif isinstance(inputs, list):
        for item in inputs:
            if isinstance(item, str):
                chars += len(item)
            elif isinstance(item, dict):
                chars += _item_chars(item)
                overhead += MESSAGE_OVERHEAD_TOKENS
    for name in ("instructions", "systemInstruction"):  # Responses, Gemini
        value = body.get(name)
        if isinstance(value, str):
            chars += len(value)
        elif isinstance(value, dict):
            chars += text_chars(value.get("parts"))
    contents = body.get("contents")  # Gemini
    if isinstance(contents, list):
        for content in contents:
            if isinstance(content, dict):
                chars += _gemini_parts_chars(content.get("parts"))
                overhead += MESSAGE_OVERHEAD_TOKENS
    return estimate_tokens_from_chars(chars) + overhead


def _item_chars(item: Mapping[str, Any]) -> int:
    """A Responses input item: a message's text, a tool call's arguments or output."""
    total = text_chars(item.get("content"))
    for name in ("arguments", "output"):
        value = item.get(name)
        if isinstance(value, str):
            total += len(value)
    return total


def _gemini_parts_chars(parts: object) -> int:
    total = text_chars(parts)
    if isinstance(parts, list):
        for part in parts:
            if isinstance(part, dict):
                for name in ("functionCall", "functionResponse"):
                    value = part.get(name)
                    if isinstance(value, dict):
                        total += len(orjson.dumps(value))
    return total

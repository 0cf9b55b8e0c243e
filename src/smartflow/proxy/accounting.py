"""Usage -> cost: reported usage when there is some, else an estimate."""

from __future__ import annotations

from typing import Any

from smartflow.providers.base import Target, Usage
from smartflow.proxy.cost import Cost, cost_of, estimate_tokens_from_chars


def cost_from(target: Target, usage: Usage | None, *, estimated_prompt_tokens: int,
              estimated_completion_chars: int) -> Cost:
    """Reported usage when there is some, else an estimate (marked as such)."""
    if usage is not None:
        return cost_of(target.prices, usage)
    estimate = Usage(estimated_prompt_tokens,
                     estimate_tokens_from_chars(estimated_completion_chars))
    return cost_of(target.prices, estimate, is_estimated=True)


def openai_completion_chars(completion: Any) -> int:
    """Characters of text in a chat or text completion (for estimates)."""
    total = 0
    if isinstance(completion, dict):
        for choice in completion.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            message = choice.get("message")
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                total += len(message["content"])
            text = choice.get("text")
            if isinstance(text, str):
                total += len(text)
    return total

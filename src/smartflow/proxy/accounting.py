"""Usage -> cost -> the request's access-log fields.

The access log (telemetry/access_log.py) merges ``request.log_fields`` into
the request's line when the request is finished; for a stream that is after
its last byte, so the fields are filled in when the stream ends.
"""

from __future__ import annotations

from typing import Any

from smartflow.http.request import Request
from smartflow.providers.base import Target, Usage
from smartflow.proxy.cost import Cost, cost_of, estimate_tokens_from_chars


def log_fields_of(request: Request) -> dict[str, Any] | None:
    fields = getattr(request, "log_fields", None)
    if fields is None:
        fields = {}
        try:
            request.log_fields = fields  # type: ignore[attr-defined]
        except AttributeError:  # a Request without the slot: nothing to log into
            return None
    return fields  # type: ignore[no-any-return]


def note_call(request: Request, target: Target, call_id: str) -> None:
    fields = log_fields_of(request)
    if fields is not None:
        fields["call_id"] = call_id
        fields["model"] = target.public_name
        fields["upstream_model"] = target.model
        fields["provider"] = target.provider


def note_cost(request: Request, cost: Cost) -> None:
    fields = log_fields_of(request)
    if fields is not None:
        fields["prompt_tokens"] = cost.prompt_tokens
        fields["completion_tokens"] = cost.completion_tokens
        fields["cached_tokens"] = cost.cached_tokens
        fields["cost_usd"] = cost.usd
        fields["cost_estimated"] = cost.is_estimated


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

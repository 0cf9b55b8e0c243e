"""The headers every proxied response carries, and the upstream ones passed through."""

from __future__ import annotations

import random

PASSTHROUGH_NAMES = frozenset({"x-request-id", "request-id", "retry-after", "openai-processing-ms"})
PASSTHROUGH_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")


def new_call_id() -> str:
    return f"{random.getrandbits(128):032x}"


def format_usd(usd: float) -> str:
    if usd <= 0:
        return "0"
    return f"{usd:.10f}".rstrip("0").rstrip(".") or "0"


def passthrough_headers(upstream_headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    out = []
    for name, value in upstream_headers:
        if name in PASSTHROUGH_NAMES or name.startswith(PASSTHROUGH_PREFIXES):
            out.append((name, value))
    return out


def smartflow_headers(call_id: str, provider: str, duration_ms: float,
                      cost_usd: float | None) -> list[tuple[str, str]]:
    """``cost_usd`` None: a stream, whose cost is sent after its last event."""
    headers = [
        ("x-smartflow-call-id", call_id),
        ("x-smartflow-provider", provider),
        ("x-smartflow-cache-hit", "false"),
        ("x-smartflow-duration-ms", f"{duration_ms:.1f}"),
    ]
    if cost_usd is None:
        headers.append(("x-smartflow-response-cost", "0"))
        headers.append(("x-smartflow-response-cost-final", "false"))
    else:
        headers.append(("x-smartflow-response-cost", format_usd(cost_usd)))
    return headers


def cost_trailer(cost_usd: float) -> bytes:
    """An SSE comment after the stream's last event: the final cost."""
    return b": x-smartflow-response-cost=" + format_usd(cost_usd).encode() + b"\n\n"

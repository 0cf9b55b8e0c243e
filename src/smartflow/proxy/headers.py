"""The headers every proxied response carries, and the upstream ones passed through."""

from __future__ import annotations

PASSTHROUGH_NAMES = frozenset({"x-request-id", "request-id", "retry-after", "openai-processing-ms"})
PASSTHROUGH_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")


COST_HEADER = "x-smartflow-response-cost"
ATTEMPTS_HEADER = "x-smartflow-attempts"  # upstream calls made for this answer
DEPLOYMENT_HEADER = "x-smartflow-deployment"  # the deployment id that answered
FALLBACK_CHAIN_HEADER = "x-smartflow-fallback-chain"  # also a request header: pick a chain
TAGS_HEADER = "x-smartflow-tags"  # request: the tag strategy's tags
# A token count the gateway estimated (no counting endpoint upstream)
TOKENS_ESTIMATED_HEADER = "x-smartflow-tokens-estimated"


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
                      cost_usd: float | None, *, cache_hit: bool = False
                      ) -> list[tuple[str, str]]:
    """``cost_usd`` None: a stream, whose cost is sent as a trailer after its last byte."""
    headers = [
        ("x-smartflow-call-id", call_id),
        ("x-smartflow-provider", provider),
        ("x-smartflow-cache-hit", "true" if cache_hit else "false"),
        ("x-smartflow-duration-ms", f"{duration_ms:.1f}"),
    ]
    if cost_usd is not None:
        headers.append((COST_HEADER, format_usd(cost_usd)))
    return headers

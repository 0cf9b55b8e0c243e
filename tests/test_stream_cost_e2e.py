"""A real gateway process: a stream's final cost reaches the caller as a trailer and the
access log as the same figure, and the streamed bytes are the provider's alone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson
import pytest
from harness.gateway import GatewayProcess
from harness.h1_trailers import post_json_h1

PRICED_MOCK = {"models": [{"name": "priced-mock", "provider": "mock",
                           "input_price_per_mtok": 1.0, "output_price_per_mtok": 2.0}]}


def wait_for_log_line(gateway: GatewayProcess, request_id: str,
                      timeout_s: float = 15.0) -> dict[str, object]:
    log_path = gateway.data_dir / "access.log"
    deadline = time.monotonic() + timeout_s
    while True:
        if log_path.exists():
            for raw in log_path.read_bytes().splitlines():
                line = orjson.loads(raw)
                if line.get("request_id") == request_id:
                    return line  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"no access log line for {request_id}"
        time.sleep(0.05)


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/messages"])
def test_a_streams_cost_is_a_trailer_and_the_same_figure_is_in_the_access_log(
        gateway_factory: Callable[..., GatewayProcess], route: str) -> None:
    gateway = gateway_factory(PRICED_MOCK, workers=1)
    request_id = f"req-stream-cost-{route.rsplit('/', 1)[-1]}"
    body: dict[str, object] = {"model": "priced-mock", "stream": True,
                               "messages": [{"role": "user", "content": "What is 2+2?"}]}
    if route == "/v1/messages":
        body["max_tokens"] = 64
    answer = asyncio.run(post_json_h1(gateway.url, route, body,
                                      headers=[("x-request-id", request_id)]))
    assert answer.status == 200
    assert answer.headers["trailer"] == "x-smartflow-response-cost"
    cost = float(answer.trailers["x-smartflow-response-cost"])
    assert cost > 0
    # The body ends with the provider's own last event: nothing appended.
    last = answer.body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    assert last in (b"data: [DONE]", b'event: message_stop\ndata: {"type":"message_stop"}')
    line = wait_for_log_line(gateway, request_id)
    assert line["call_id"] == answer.headers["x-smartflow-call-id"]
    assert line["cost_usd"] == pytest.approx(cost, rel=1e-6)
    assert line["provider"] == "mock"
    assert line["dialect"] == ("anthropic" if route == "/v1/messages" else "openai")

"""Running one Call: the pipeline's way in, the send and relay, and its way out.

``CallRunner.run(request, operation)`` is what every provider route calls.
The route supplies an ``Operation`` (its dialect, how to parse the request,
and how to build the ``Exchange`` for a chosen deployment); everything else
is the same for every route:

1. authenticate (pipeline), then the operation parses and validates;
2. admit, pre-call guards, cache lookup, route (pipeline; any may answer);
3. send the exchange's upstream request (the mock provider in-process);
4. relay: a non-2xx answer becomes the dialect's error (or, on a native
   passthrough, is relayed as it came); a 2xx JSON answer goes out as the
   upstream's bytes or translated; a stream goes through its transform chain
   (``relay``), untouched and uncopied when no transform changes it;
5. usage becomes cost, then the pipeline's way out (post-call, record) runs
   once the answer is complete — for a stream, after its last byte and
   before its trailer, which carries the final cost.

Every failure is a ``GatewayError`` that records its phase and reason, and
is answered in the caller's dialect.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from smartflow.dialects.base import Dialect, StreamOutcome
from smartflow.gateway_error import GatewayError, Phase, Reason, reason_for_status
from smartflow.http.errors import HTTPError
from smartflow.http.request import Request
from smartflow.http.response import Response, StreamingResponse
from smartflow.providers.base import Headers, ProviderAdapter, UpstreamCall, Usage
from smartflow.proxy.accounting import cost_from
from smartflow.proxy.call import Call, Principal, trace_id_of
from smartflow.proxy.context import ProxyContext
from smartflow.proxy.cost import Cost, estimate_prompt_tokens
from smartflow.proxy.headers import (
    ATTEMPTS_HEADER,
    COST_HEADER,
    DEPLOYMENT_HEADER,
    FALLBACK_CHAIN_HEADER,
    format_usd,
    passthrough_headers,
    smartflow_headers,
)
from smartflow.proxy.pipeline import Pipeline, Reply
from smartflow.proxy.relay import PassthroughTransform, StreamTransform, relay
from smartflow.proxy.upstream import Upstream, peek, read_body, send
from smartflow.proxy.vault_stage import provider_key_target

if TYPE_CHECKING:
    from smartflow.routing.deployments import Deployment
    from smartflow.routing.planner import RoutePlan

logger = logging.getLogger("smartflow.proxy")

COST_TRAILER_NAMES = (COST_HEADER,)
# Upstream response headers a native passthrough does not relay: hop-by-hop
# ones, and what the gateway's own framing sets.
DROPPED_NATIVE_RESPONSE_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "content-length", "content-type", "content-encoding", "date", "server",
})


@dataclass(slots=True)
class Answer:
    """A whole 2xx answer as the caller gets it."""

    body: bytes
    usage: Usage | None
    completion_chars: int = 0  # for an estimate when ``usage`` is None


@dataclass(slots=True)
class Exchange:
    """How a call talks to its deployment, built by the route's operation.

    ``read_answer``: a 2xx body to the caller's answer (None only for a
    native exchange, whose body goes back as it came). ``new_transform``: the
    stream transform (None: passthrough with the dialect's tap).
    ``is_native``: the upstream speaks the caller's API; its status, headers
    and error bodies go back as they came.
    """

    upstream_call: UpstreamCall
    read_answer: Callable[[bytes, Headers], Answer] | None = None
    new_transform: Callable[[], StreamTransform] | None = None
    is_native: bool = False


class Operation(Protocol):
    """What a route adds to the common path."""

    name: str
    dialect: Dialect

    def prepare(self, call: Call) -> None:
        """Parse and validate ``call.raw_body``; set ``body``, ``model``,
        ``is_stream`` (and ``target``, for a fixed destination). Raises
        HTTPError or GatewayError for a bad request."""
        ...

    def exchange_for(self, call: Call, adapter: ProviderAdapter) -> Exchange | Response:
        """The exchange with ``call.target``, or an answer made locally."""
        ...


def _from_http_error(exc: HTTPError) -> GatewayError:
    return GatewayError(exc.status, exc.message, exc.type, exc.code, exc.param,
                        reason=reason_for_status(exc.status))


class CallRunner:
    """One per worker: the pipeline, and the context it sends through."""

    __slots__ = ("_context", "_pipeline")

    def __init__(self, context: ProxyContext, pipeline: Pipeline) -> None:
        self._context = context
        self._pipeline = pipeline

    async def authenticate_only(self, request: Request, dialect: Dialect
                                ) -> Response | Principal:
        """For routes that reach no provider (``/v1/models``): the authenticate
        slot alone. The caller's principal, or the refusal to answer with."""
        call = Call(request, dialect, "authenticate", trace_id="")
        try:
            await self._pipeline.authenticate(call)
        except GatewayError as exc:
            return Response(exc.status, dialect.error_body(exc))
        return call.identity or Principal(kind="anonymous")

    async def run(self, request: Request, operation: Operation) -> Reply:
        call = Call(request, operation.dialect, operation.name)
        # A call with no trace of its caller's starts one: its own id is the trace id.
        call.trace_id = trace_id_of(request) or call.call_id
        upstream: Upstream | None = None
        try:
            if request.method not in ("GET", "HEAD"):
                call.raw_body = await request.body()
            await self._pipeline.authenticate(call)
            operation.prepare(call)
            reply = await self._pipeline.enter(call)
            if reply is not None:
                call.status = reply.status
                await self._finish(call)
                reply.headers[:0] = self._headers(call, None)
                return reply
            route = call.route_plan
            while True:
                adapter = self._context.adapter_for(call.provider)
                try:
                    plan = operation.exchange_for(call, adapter)
                except HTTPError as exc:
                    raise _from_http_error(exc).at(Phase.BEFORE_SEND) from None
                except GatewayError as exc:
                    if exc.status < 500:
                        exc.reason = Reason.CLIENT
                    raise exc.at(Phase.BEFORE_SEND) from None
                if isinstance(plan, Response):
                    call.status = plan.status
                    await self._finish(call)
                    plan.headers[:0] = self._headers(call, None)
                    return plan
                target = call.target
                assert target is not None  # the route stage set it
                call.attempts += 1
                if route is None:
                    try:
                        upstream = await send(self._context, target, plan.upstream_call)
                        call.first_byte_s = time.perf_counter()
                        return await self._answer(call, adapter, plan, upstream)
                    except GatewayError as exc:
                        routing = self._context.routing
                        if routing is not None and exc.phase is not Phase.BEFORE_SEND:
                            routing.on_upstream_failure(target.provider, target.provider, exc)
                        raise
                try:
                    return await self._attempt(call, route, adapter, plan)
                except GatewayError as exc:
                    if exc.phase is Phase.MID_STREAM:
                        raise
                    following = await route.after_failure(exc)
                    if following is None:
                        if isinstance(exc, NativeFailure):
                            return await self._native_failure(call, exc)
                        upstream = getattr(exc, "upstream", None)  # its headers go along
                        raise
                    await self._fail_over(call, route, *following)
        except GatewayError as exc:
            return await self._fail(call, exc, upstream)
        except HTTPError as exc:  # a malformed request (validation, a body too large)
            return await self._fail(call, _from_http_error(exc), upstream)
        except asyncio.CancelledError:
            # The caller went away before an answer: the way out still runs, so
            # a held budget is released now rather than when its hold expires.
            if call.ended_s is None:
                call.error = GatewayError(499, "The client closed the connection.",
                                          reason=Reason.CLIENT, phase=Phase.BEFORE_FIRST_BYTE
                                          if call.attempts else Phase.BEFORE_SEND)
                call.status = 499
                await asyncio.shield(self._finish(call))
            raise
        except Exception:  # a bug must not cost the caller its answer's shape
            logger.exception("call %s failed inside the gateway", call.call_id)
            if upstream is not None:
                await upstream.aclose()
            return await self._fail(call, GatewayError(
                500, "The gateway failed while handling this call.", code="internal_error",
                reason=Reason.INTERNAL, phase=Phase.BEFORE_SEND
                if upstream is None else Phase.BEFORE_FIRST_BYTE), None)

    async def _attempt(self, call: Call, route: RoutePlan, adapter: ProviderAdapter,
                       plan: Exchange) -> Reply:
        """One attempt of a call that may fail over: a failure before the caller got
        a byte is raised (a native error answer as ``NativeFailure``)."""
        context = self._context
        routing = context.routing
        assert routing is not None and call.target is not None
        deployment = route.current
        started = time.perf_counter()
        try:
            upstream = await send(context, call.target, plan.upstream_call,
                                  routing.attempt_timeout)
        except GatewayError as exc:
            if deployment is not None and exc.reason is Reason.TIMEOUT:
                routing.on_timeout_latency(deployment, time.perf_counter() - started)
            raise
        status = upstream.status
        if 200 <= status < 300:
            content_type = upstream.header("content-type") or ""
            if route.can_fail_over and (call.is_stream or (
                    plan.is_native and content_type.startswith("text/event-stream"))):
                upstream = await peek(upstream)
            call.first_byte_s = time.perf_counter()
            if deployment is not None:
                routing.on_attempt_ok(deployment, call.first_byte_s - started,
                                      observe_latency=route.step_group.strategy == "latency")
        elif plan.is_native:
            body = await read_body(upstream)
            call.first_byte_s = time.perf_counter()
            raise NativeFailure(status, upstream, body)
        else:
            call.first_byte_s = time.perf_counter()
        try:
            return await self._answer(call, adapter, plan, upstream)
        except GatewayError as exc:
            exc.upstream = upstream  # type: ignore[attr-defined]
            raise

    async def _fail_over(self, call: Call, route: RoutePlan, deployment: Deployment,
                         delay_s: float) -> None:
        """Make ``deployment`` the call's target, after ``delay_s``."""
        routing = self._context.routing
        assert routing is not None
        routing.on_failover(call.model)
        call.first_byte_s = None
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        target = deployment.target
        keys = self._context.keys
        if keys is not None:
            target = await provider_key_target(call, target, keys.vault)
        call.target = target
        call.deployment_id = deployment.id

    async def _native_failure(self, call: Call, failure: NativeFailure) -> Reply:
        """The last attempt's native error answer, relayed as it came."""
        upstream = failure.upstream
        call.error = failure
        call.status = failure.status
        call.answer_body = failure.body
        await self._finish(call)
        content_type = upstream.header("content-type") or "application/json"
        headers = self._headers(call, None) + _native_headers(upstream)
        return Response(failure.status, failure.body, headers, content_type)

    async def _answer(self, call: Call, adapter: ProviderAdapter, plan: Exchange,
                      upstream: Upstream) -> Reply:
        status = upstream.status
        is_ok = 200 <= status < 300
        if plan.is_native:
            content_type = upstream.header("content-type") or "application/json"
            if is_ok and content_type.startswith("text/event-stream"):
                return self._stream(call, plan, upstream, status, content_type)
            return await self._native_whole(call, upstream, content_type)
        if not is_ok:
            body = await read_body(upstream)
            target = call.target
            assert target is not None
            raise adapter.error_from_upstream(target, status, upstream.headers, body).at(
                Phase.BEFORE_FIRST_BYTE)
        if call.is_stream:
            return self._stream(call, plan, upstream, 200, "text/event-stream")
        read_answer = plan.read_answer
        assert read_answer is not None  # only a native exchange has none
        answer = read_answer(await read_body(upstream), upstream.headers)
        call.status = 200
        call.usage = answer.usage
        call.completion_chars = answer.completion_chars
        call.answer_body = answer.body
        await self._finish(call)
        headers = self._headers(call, upstream)
        # An output guardrail may have masked the answer or refused it (an error body).
        return Response(call.status, call.answer_body, headers)

    async def _native_whole(self, call: Call, upstream: Upstream, content_type: str) -> Reply:
        if call.request.method == "HEAD":
            await upstream.aclose()
            data = b""
        else:
            data = await read_body(upstream)
        status = upstream.status
        call.status = status
        call.answer_body = data
        if 200 <= status < 300:
            call.usage = call.dialect.usage_of_body(data)
            if call.usage is None:  # not a message (count_tokens, models, files): nothing billed
                call.cost = Cost(0.0, 0, 0)
        else:
            call.error = GatewayError(status, f"The upstream answered HTTP {status}.",
                                      reason=Reason.UPSTREAM_STATUS,
                                      phase=Phase.BEFORE_FIRST_BYTE)
        await self._finish(call)
        headers = self._headers(call, None) + _native_headers(upstream)
        if call.status != status:  # an output guardrail refused the answer
            return Response(call.status, call.answer_body or b"", headers)
        return Response(status, call.answer_body or b"", headers, content_type)

    def _stream(self, call: Call, plan: Exchange, upstream: Upstream, status: int,
                content_type: str) -> StreamingResponse:
        context = self._context
        if plan.new_transform is not None:
            transform = plan.new_transform()
        else:
            dialect = call.dialect
            transform = PassthroughTransform(
                dialect.new_tap(capture_text=context.capture_stream_text), dialect.error_event)
        transform = self._pipeline.wrap_stream(call, transform)
        call.status = status

        async def on_end(outcome: StreamOutcome) -> None:
            call.usage = outcome.usage
            call.finish_reason = outcome.finish_reason
            call.completion_chars = outcome.approx_text_chars
            if outcome.error is not None:
                call.error = outcome.error
            await self._finish(call)

        def cost_trailer() -> list[tuple[str, str]]:
            cost = call.cost
            return [(COST_HEADER, format_usd(cost.usd if cost is not None else 0.0))]

        proxy = context.settings.proxy
        chunks = relay(upstream.iter_bytes(), transform, close_source=upstream.aclose,
                       keepalive_interval_s=proxy.stream_keepalive_interval,
                       idle_timeout_s=proxy.stream_idle_timeout, on_end=on_end,
                       capture=call.answer_chunks, capture_cap=call.answer_chunks_cap)
        if plan.is_native:
            headers = self._headers(call, None, is_stream=True) + _native_headers(upstream)
        else:
            headers = self._headers(call, upstream, is_stream=True)
            headers.append(("cache-control", "no-cache"))
        return StreamingResponse(chunks, status, headers, content_type,
                                 trailers=cost_trailer, trailer_names=COST_TRAILER_NAMES)

    async def _fail(self, call: Call, error: GatewayError, upstream: Upstream | None) -> Response:
        call.error = error
        call.status = error.status
        body = call.answer_body = call.dialect.error_body(error)
        await self._finish(call)
        headers = self._headers(call, upstream)
        if error.retry_after and not any(name == "retry-after" for name, _ in headers):
            headers.append(("retry-after", error.retry_after))
        return Response(error.status, body, headers)

    async def _finish(self, call: Call) -> None:
        """Cost from usage (or an estimate), then the pipeline's way out."""
        call.ended_s = time.perf_counter()
        target = call.target
        error = call.error
        # A provider's error answer is not billed; a stream that broke midway
        # is, for what it delivered.
        if (call.cost is None and target is not None and call.first_byte_s is not None
                and (error is None or error.phase is Phase.MID_STREAM)):
            estimated_prompt = 0
            if call.usage is None and call.body is not None:
                estimated_prompt = estimate_prompt_tokens(call.body)
            call.cost = cost_from(target, call.usage, estimated_prompt_tokens=estimated_prompt,
                                  estimated_completion_chars=call.completion_chars)
        try:
            await self._pipeline.exit(call)
        except Exception:  # the caller still gets its answer
            logger.exception("a pipeline exit stage failed (call %s)", call.call_id)

    def _headers(self, call: Call, upstream: Upstream | None, *,
                 is_stream: bool = False) -> list[tuple[str, str]]:
        cost = call.cost
        usd = None if is_stream else (cost.usd if cost is not None else 0.0)
        headers = smartflow_headers(call.call_id, call.provider, call.elapsed_ms(), usd,
                                    cache_hit=call.cache_outcome.startswith("hit"))
        headers.append((ATTEMPTS_HEADER, str(call.attempts)))
        if call.deployment_id:
            headers.append((DEPLOYMENT_HEADER, call.deployment_id))
        route = call.route_plan
        if route is not None and route.chain:
            headers.append((FALLBACK_CHAIN_HEADER, route.chain))
        own = call.response_headers
        if upstream is not None:
            relayed = passthrough_headers(upstream.headers)
            if own and relayed:  # the gateway's own limits replace the provider's
                names = {name for name, _ in own}
                relayed = [(n, v) for n, v in relayed if n not in names]
            headers.extend(relayed)
        if own:
            headers.extend(own)
        return headers


class NativeFailure(GatewayError):
    """A native upstream's error answer: failed over when the plan allows, else
    relayed exactly as it came."""

    def __init__(self, status: int, upstream: Upstream, body: bytes) -> None:
        super().__init__(status, f"The upstream answered HTTP {status}.",
                         retry_after=upstream.header("retry-after"),
                         code=_native_error_code(body),
                         reason=Reason.UPSTREAM_STATUS, phase=Phase.BEFORE_FIRST_BYTE)
        self.upstream = upstream
        self.body = body


def _native_error_code(body: bytes) -> str | None:
    """OpenAI's and Anthropic's context-length errors, recognised in a native error body."""
    if b"context_length_exceeded" in body or b"prompt is too long" in body:
        return "context_length_exceeded"
    return None


def _native_headers(upstream: Upstream) -> list[tuple[str, str]]:
    return [(name, value) for name, value in upstream.headers
            if name not in DROPPED_NATIVE_RESPONSE_HEADERS]

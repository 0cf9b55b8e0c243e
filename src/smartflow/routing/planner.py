"""One call's way through its steps: which deployment next, and after how long.

A ``RoutePlan`` holds the steps of a call: the groups of a fallback chain's
targets in order, or the requested model's group alone. ``first()`` picks
the first deployment; ``after_failure(error)`` decides what a failed attempt
leads to:

* a retryable failure (429, 5xx, timeout, connection error) moves at once
  to a deployment of the step not tried yet; with none left, it retries one
  after an exponential backoff with jitter (at least the ``Retry-After`` the
  upstream asked for) while the step's retry budget lasts; then the next
  step. A ``Retry-After`` longer than ``max_retry_after`` is not waited for.
* a context-window error goes to the larger-context fallback when one is
  set (the chain's, else ``[routing.context_window_fallbacks]``);
* any other 4xx from an upstream: the next step of a chain at once, never
  a retry; without a chain it is the answer;
* a failure made by the gateway itself (before sending) is the answer.

Deployments in cooldown, and those of a provider over its daily budget,
are skipped; when no step has anything else left, a cooling deployment is
still tried rather than failing the call unasked (never a capped one).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

from smartflow.gateway_error import GatewayError, Reason
from smartflow.routing.deployments import Deployment, Group
from smartflow.routing.strategies import NoTaggedDeployment, RouteRequest
from smartflow.store.fast_client import ReplyError, StoreUnavailable

if TYPE_CHECKING:
    from smartflow.routing.runtime import RoutingRuntime

CONTEXT_LENGTH_CODE = "context_length_exceeded"
_RETRYABLE_4XX = frozenset({408, 409, 425, 429})


@dataclass(slots=True)
class _Step:
    group: Group
    tried: set[str] = field(default_factory=set)
    retries_used: int = 0


def failure_kind(error: GatewayError) -> str:
    """``retryable``, ``context``, ``client`` (another target may take it) or ``final``."""
    if error.code == CONTEXT_LENGTH_CODE:
        return "context"
    if error.may_fail_over:
        return "retryable"
    if error.reason is Reason.UPSTREAM_STATUS and 400 <= error.status < 500 \
            and error.status not in _RETRYABLE_4XX:
        return "client"
    return "final"


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header as seconds (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


class RoutePlan:
    __slots__ = ("_context_fallback", "_context_used", "_index", "_request", "_retries",
                 "_rng", "_runtime", "_steps", "attempts", "chain", "current",
                 "held_least_connections")

    def __init__(self, runtime: RoutingRuntime, steps: list[Group], request: RouteRequest, *,
                 chain: str = "", retries: int = 0, context_fallback: str = "",
                 rng: random.Random | None = None) -> None:
        self._runtime = runtime
        self._steps = [_Step(group) for group in steps]
        self._request = request
        self._retries = retries
        self._context_fallback = context_fallback
        self._context_used = False
        self._rng = rng or random.Random()
        self._index = 0
        self.chain = chain
        self.attempts = 0
        self.current: Deployment | None = None
        self.held_least_connections: tuple[str, str] | None = None  # (group, deployment)

    @property
    def can_fail_over(self) -> bool:
        """Whether a failure could lead anywhere (streams peek their first bytes only then)."""
        return (len(self._steps) > 1 or self._retries > 0 or bool(self._context_fallback)
                or any(not step.group.is_single for step in self._steps))

    @property
    def step_group(self) -> Group:
        return self._steps[self._index].group

    async def first(self) -> Deployment:
        """The first deployment to call; GatewayError when none may be called."""
        for index in range(len(self._steps)):
            picked = await self._pick(index, untried_only=False, allow_cooling=False)
            if picked is not None:
                self._index = index
                return self._take(picked)
        for index in range(len(self._steps)):  # everything cools down: try anyway
            picked = await self._pick(index, untried_only=False, allow_cooling=True)
            if picked is not None:
                self._index = index
                return self._take(picked)
        raise self._nothing_left()

    async def after_failure(self, error: GatewayError) -> tuple[Deployment, float] | None:
        """The next deployment and the delay before calling it; None: ``error`` is the answer."""
        deployment = self.current
        runtime = self._runtime
        kind = failure_kind(error)
        if deployment is not None:
            self._release()
            if kind == "retryable":
                runtime.on_attempt_failed(deployment, error)
        if self.attempts >= runtime.routing.max_attempts:
            return None
        if kind == "context":
            if self._context_fallback and not self._context_used:
                self._context_used = True
                group = runtime.group_for_target(self._context_fallback)
                if group is not None:
                    self._steps.insert(self._index + 1, _Step(group))
                    return await self._next_step()
            kind = "client"
        if kind == "client":
            return await self._next_step() if self.chain else None
        if kind != "retryable":
            return None
        step = self._steps[self._index]
        picked = await self._pick(self._index, untried_only=True, allow_cooling=False)
        if picked is not None:
            return self._take(picked), 0.0
        if step.retries_used < self._retries:
            wait = retry_after_seconds(error.retry_after)
            if wait is None or wait <= runtime.routing.max_retry_after:
                delay = max(self._backoff(step.retries_used), wait or 0.0)
                step.retries_used += 1
                picked = await self._pick(self._index, untried_only=False, allow_cooling=True,
                                          avoid=deployment.id if deployment else "")
                if picked is not None:
                    return self._take(picked), delay
        return await self._next_step()

    def finish(self) -> None:
        """The call is over: give back what it holds."""
        self._release()

    # -- internals ---------------------------------------------------------------

    def _backoff(self, retry: int) -> float:
        routing = self._runtime.routing
        ceiling = min(routing.retry_backoff * (2 ** retry), routing.retry_backoff_max)
        return ceiling * (0.5 + 0.5 * self._rng.random())  # jitter: callers do not retry in step

    async def _next_step(self) -> tuple[Deployment, float] | None:
        for index in range(self._index + 1, len(self._steps)):
            picked = await self._pick(index, untried_only=False, allow_cooling=False)
            if picked is not None:
                self._index = index
                return self._take(picked), 0.0
        return None

    def _take(self, deployment: Deployment) -> Deployment:
        self._steps[self._index].tried.add(deployment.id)
        self.current = deployment
        self.attempts += 1
        return deployment

    def _release(self) -> None:
        held, self.held_least_connections = self.held_least_connections, None
        if held is not None:
            self._runtime.health.release(*held)

    async def _pick(self, index: int, *, untried_only: bool, allow_cooling: bool,
                    avoid: str = "") -> Deployment | None:
        """The step's next deployment by its strategy; ``avoid`` (the one that just
        failed) goes last, so a retry goes elsewhere when there is anywhere else."""
        step = self._steps[index]
        group = step.group
        runtime = self._runtime
        now = time.time()
        members = group.deployments
        if group.strategy == "tag":
            try:
                members = runtime.balancer.tagged(group, self._request.tags)
            except NoTaggedDeployment as exc:
                raise GatewayError(
                    400, f"No deployment of model {group.name!r} carries the tags "
                         f"{str(exc)!r} asked for in x-smartflow-tags.",
                    "invalid_request_error", "no_deployment_for_tags", reason=Reason.CLIENT
                ) from None
        available = [d for d in members
                     if not runtime.is_capped(d.provider)
                     and (allow_cooling or runtime.health.is_available(d.id, now))
                     and not (untried_only and d.id in step.tried)]
        if not available:
            return None
        ordered = runtime.balancer.order(group, available, self._request)
        if avoid and len(ordered) > 1 and ordered[0].id == avoid:
            ordered.append(ordered.pop(0))
        if group.strategy == "least_connections" and len(ordered) > 1:
            try:
                chosen = await runtime.health.pick_least_loaded(group.name,
                                                                [d.id for d in ordered])
            except (StoreUnavailable, ReplyError):
                # Redis is away: the shared counts are too; the call still goes out
                # (in rotation) rather than failing for want of a balancing hint.
                return ordered[0]
            self.held_least_connections = (group.name, chosen)
            for deployment in ordered:
                if deployment.id == chosen:
                    return deployment
        return ordered[0]

    def _nothing_left(self) -> GatewayError:
        runtime = self._runtime
        providers = {d.provider for step in self._steps for d in step.group.deployments}
        if providers and all(runtime.is_capped(p) for p in providers):
            return GatewayError(429, "Every provider that could serve this model has reached "
                                     "its daily budget.", code="provider_budget_exceeded",
                                reason=Reason.LIMIT)
        return GatewayError(503, "No deployment is available for this model.",
                            code="no_deployment_available", reason=Reason.INTERNAL)

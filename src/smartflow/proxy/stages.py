"""The stages every worker's pipeline has today.

* ``AuthenticateStage`` (authenticate): the master key, or development mode.
  Virtual keys replace it with the identity issue.
* ``RouteStage`` (route): the requested model's deployments from the
  catalog; the first is the target until balancing strategies arrive. A
  name the catalog does not know goes to the call's ``fallback_target``
  when the operation gave one, else it is a 404.
* ``AccessLogStage`` (record): the call's facts into the access-log line.

The admit, pre_call and cache_lookup slots are empty today: budgets, guards
and the cache add their stages there (see docs/pipeline.md).
"""

from __future__ import annotations

from typing import Any

from smartflow.gateway_error import GatewayError, Phase, Reason
from smartflow.proxy.auth import Authenticator, presented_key
from smartflow.proxy.call import Call, Principal
from smartflow.proxy.catalog import Catalog, ModelNotFound
from smartflow.proxy.context import ProxyContext
from smartflow.proxy.pipeline import Reply, Stage

_MASTER = Principal(kind="master", is_admin=True)
_ANONYMOUS = Principal(kind="anonymous")


class AuthenticateStage(Stage):
    slot = "authenticate"

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    async def on_enter(self, call: Call) -> Reply | None:
        authenticator = self._authenticator
        if authenticator.is_development_mode:
            call.identity = _ANONYMOUS
            return None
        key = presented_key(call.request)
        if key is None:
            raise GatewayError(401, "You didn't provide an API key. Provide it as "
                                    "'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
                               "invalid_request_error", "missing_api_key", reason=Reason.AUTH)
        if not authenticator.is_master_key(key):
            raise GatewayError(401, "Incorrect API key provided.", "invalid_request_error",
                               "invalid_api_key", reason=Reason.AUTH)
        call.identity = _MASTER
        return None


class RouteStage(Stage):
    slot = "route"

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    async def on_enter(self, call: Call) -> Reply | None:
        if call.target is not None:  # the operation fixed it (native passthrough)
            return None
        catalog = self._catalog
        deployments = catalog.deployments(call.model)
        if deployments:
            call.candidates = deployments
        else:
            try:
                call.candidates = (catalog.resolve(call.model),)
            except ModelNotFound as exc:
                if call.fallback_target is not None:
                    call.candidates = (call.fallback_target,)
                    call.target = call.fallback_target
                    return None
                raise GatewayError(404, exc.message, "invalid_request_error", "model_not_found",
                                   "model", reason=Reason.CLIENT) from None
        call.target = call.candidates[0]
        return None


class AccessLogStage(Stage):
    """Merged into the request's access-log line when the request finishes
    (for a stream: after its last byte, which is after this hook)."""

    slot = "record"

    async def on_exit(self, call: Call) -> None:
        target = call.target
        fields: dict[str, Any] = {
            "call_id": call.call_id,
            "trace_id": call.trace_id,
            "dialect": call.dialect.name,
            "model": target.public_name if target is not None else call.model,
        }
        if target is not None:
            fields["upstream_model"] = target.model
            fields["provider"] = target.provider
        cost = call.cost
        if cost is not None:
            fields["prompt_tokens"] = cost.prompt_tokens
            fields["completion_tokens"] = cost.completion_tokens
            fields["cached_tokens"] = cost.cached_tokens
            fields["cost_usd"] = cost.usd
            fields["cost_estimated"] = cost.is_estimated
        if call.finish_reason:
            fields["finish_reason"] = call.finish_reason
        ttfb = call.ttfb_ms()
        if ttfb is not None:
            fields["ttfb_ms"] = round(ttfb, 2)
        error = call.error
        if error is not None:
            fields["error_phase"] = error.phase.value
            fields["error_reason"] = error.reason.value
            if call.is_stream and error.phase is Phase.MID_STREAM:
                fields["stream_error"] = error.code or call.dialect.error_type(error.status)
        request = call.request
        existing = request.log_fields
        if existing is None:
            request.log_fields = fields
        else:
            existing.update(fields)


def default_stages(context: ProxyContext) -> list[Stage]:
    """The stages of a worker's pipeline. A feature adds its stage here."""
    return [
        AuthenticateStage(context.authenticator),
        RouteStage(context.catalog),
        AccessLogStage(),
    ]

"""The stages every worker's pipeline has today.

* ``AuthenticateStage`` (authenticate): the master key, a virtual key (its
  record from the worker's key cache), or development mode.
* ``AdmitStage`` / ``SettleStage`` (admit, post_call; ``proxy.key_stages``):
  a virtual key's model access, budgets and rate limits.
* ``RouteStage`` (route): the requested model's deployments from the
  catalog; the first is the target until balancing strategies arrive. A
  name the catalog does not know goes to the call's ``fallback_target``
  when the operation gave one, else it is a 404.
* ``AccessLogStage`` (record): the call's facts into the access-log line.

The pre_call and cache_lookup slots are empty today: guards and the cache
add their stages there (see docs/pipeline.md).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from smartflow.gateway_error import GatewayError, Phase, Reason
from smartflow.keys.capture import VIRTUAL_KEY_HEADER, capture
from smartflow.keys.key_cache import KeyEntry
from smartflow.keys.runtime import KeysRuntime
from smartflow.keys.store import hash_key, looks_like_virtual_key
from smartflow.keys.vault import VAULT_PREFIX, Vault
from smartflow.proxy.auth import Authenticator, presented_key
from smartflow.proxy.call import Call, Principal
from smartflow.proxy.catalog import Catalog, ModelNotFound
from smartflow.proxy.context import ProxyContext
from smartflow.proxy.cost import estimate_prompt_tokens
from smartflow.proxy.headers import FALLBACK_CHAIN_HEADER, TAGS_HEADER
from smartflow.proxy.key_stages import (
    AdmitStage,
    SettleStage,
    invalid_key_error,
    principal_for,
    state_unavailable_error,
)
from smartflow.proxy.pipeline import Reply, Stage
from smartflow.proxy.vault_stage import VaultStage, provider_key_target
from smartflow.routing.strategies import RouteRequest, expected_output_tokens, parse_tags
from smartflow.store.fast_client import StoreUnavailable

if TYPE_CHECKING:
    from smartflow.routing.runtime import RoutingRuntime

_MASTER = Principal(kind="master", is_admin=True)
_ANONYMOUS = Principal(kind="anonymous")


class AuthenticateStage(Stage):
    """The master key, a virtual key, or (development mode) anyone.

    A string shaped like a virtual key is always checked, even in
    development mode: a blocked key must not get through because no master
    key was configured.
    """

    slot = "authenticate"

    def __init__(self, authenticator: Authenticator, keys: KeysRuntime | None = None, *,
                 capture_provider_keys: bool = False) -> None:
        self._authenticator = authenticator
        self._keys = keys
        self._capture = capture_provider_keys and keys is not None

    async def on_enter(self, call: Call) -> Reply | None:
        authenticator = self._authenticator
        key = presented_key(call.request, google_keys=call.dialect.google_keys)
        keys = self._keys
        if keys is not None and key is not None:
            entry = keys.cache.usable(key)  # the common case: one lookup, no await
            if entry is not None:
                call.identity = principal_for(entry)
                return None
        if key is None:
            if authenticator.is_development_mode:
                call.identity = _ANONYMOUS
                return None
            raise GatewayError(401, "You didn't provide an API key. Provide it as "
                                    "'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
                               "invalid_request_error", "missing_api_key", reason=Reason.AUTH)
        if authenticator.is_master_key(key):
            call.identity = _MASTER
            return None
        if keys is not None:
            entry = keys.cache.cached(key)  # no await
            if entry is not None and not _refused(entry):
                call.identity = principal_for(entry)
                return None
            # Not cached, or a cached refusal that may be out of date
            # (unblocked, expiry extended): read the record itself.
            if entry is not None or looks_like_virtual_key(key):
                try:
                    entry = await keys.cache.refresh(hash_key(key))
                except StoreUnavailable:
                    raise state_unavailable_error() from None
                if entry is None or _refused(entry):
                    raise invalid_key_error()
                call.identity = principal_for(entry)
                return None
        if self._capture:
            assert keys is not None
            try:
                captured = await capture(keys, key)
            except StoreUnavailable:
                raise state_unavailable_error() from None
            if captured is not None:
                call.identity = principal_for(captured.entry)
                if captured.plaintext is not None:
                    call.response_headers.append((VIRTUAL_KEY_HEADER, captured.plaintext))
                return None
        if authenticator.is_development_mode:
            call.identity = _ANONYMOUS
            return None
        raise invalid_key_error()


def _refused(entry: KeyEntry) -> bool:
    return entry.is_refused(time.time())


class RouteStage(Stage):
    """The deployment a call goes to first, and its plan should that one fail.

    Without routing (no store) or for a model with one deployment and nothing
    to fail over to, the target is a dict lookup. Otherwise the routing
    runtime makes a ``RoutePlan`` (its group's strategy, a fallback chain,
    retries, cooldowns, provider caps) and the exchange walks it.
    """

    slot = "route"

    def __init__(self, catalog: Catalog, routing: RoutingRuntime | None = None,
                 vault: Vault | None = None) -> None:
        self._catalog = catalog
        self._routing = routing
        self._vault = vault

    async def on_enter(self, call: Call) -> Reply | None:
        if call.target is not None:  # the operation fixed it (native passthrough)
            return None
        routing = self._routing
        if routing is not None:
            chain_name = call.request.header(FALLBACK_CHAIN_HEADER)
            chain = None
            if chain_name:
                chain = routing.chain_named(chain_name.strip())
                if chain is None:
                    raise GatewayError(400, f"There is no fallback chain named "
                                            f"{chain_name.strip()[:100]!r}.",
                                       "invalid_request_error", "unknown_fallback_chain",
                                       reason=Reason.CLIENT)
            else:
                target = routing.simple_target(call.model)
                if target is not None:
                    call.candidates = (target,)
                    call.target = target
                    return None
            plan = routing.plan(call.model, chain, _route_request(call))
            if plan is not None:
                deployment = await plan.first()
                call.route_plan = plan
                call.candidates = tuple(d.target for d in plan.step_group.deployments)
                target = deployment.target
                if self._vault is not None and target.api_key.startswith(VAULT_PREFIX):
                    target = await provider_key_target(call, target, self._vault)
                call.target = target
                call.deployment_id = deployment.id
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


def _route_request(call: Call) -> RouteRequest:
    body = call.body
    return RouteRequest(
        tags=parse_tags(call.request.header(TAGS_HEADER)),
        prompt_tokens=(lambda: estimate_prompt_tokens(body)) if body is not None else _zero,
        output_tokens=expected_output_tokens(body))


def _zero() -> int:
    return 0


class RoutingExitStage(Stage):
    """After the call: give back a least-connections slot, add the cost to its
    provider's day, alert on a slow call."""

    slot = "post_call"

    def __init__(self, routing: RoutingRuntime) -> None:
        self._routing = routing

    async def on_exit(self, call: Call) -> None:
        plan = call.route_plan
        target = call.target
        if target is None:
            return
        if plan is not None:
            plan.finish()
        routing = self._routing
        if not routing.watches_calls:
            return
        cost = call.cost
        routing.on_call_end(target.provider, call.deployment_id,
                            cost.usd if cost is not None else 0.0,
                            call.elapsed_ms() / 1000, call.call_id)


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
        if call.attempts > 1:
            fields["attempts"] = call.attempts
        if call.deployment_id:
            fields["deployment"] = call.deployment_id
            route = call.route_plan
            if route is not None and route.chain:
                fields["fallback_chain"] = route.chain
        principal = call.identity
        if principal is not None:
            fields["auth"] = principal.kind
            if principal.key_id is not None:  # ids and alias only, never the key
                fields["key_id"] = principal.key_id
                fields["key_alias"] = principal.key_alias
                fields["user_id"] = principal.user_id
                fields["team_id"] = principal.team_id
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
    settings = context.settings
    keys = context.keys
    capture_keys = settings.vault.capture_provider_keys
    stages: list[Stage] = [
        AuthenticateStage(context.authenticator, keys, capture_provider_keys=capture_keys),
        RouteStage(context.catalog, context.routing,
                   keys.vault if keys is not None else None),
    ]
    if settings.server.access_log:  # its fields would go nowhere
        stages.append(AccessLogStage())
    if context.routing is not None:
        stages.append(RoutingExitStage(context.routing))
    if context.embeddings is not None:
        from smartflow.proxy.local_embeddings import LocalEmbeddingStage

        stages.append(LocalEmbeddingStage(context.embeddings.ready_batcher))
    if context.policy is not None:
        from smartflow.policy.stage import GuardrailStage

        # When the audit captures answers, the output guard keeps the text of a
        # stream it reads anyway, so the record need not read it again.
        keep_text = context.audit.builder.answer_text_cap if context.audit is not None else 0
        stages.append(GuardrailStage(context.policy, keep_answer_text=keep_text))
    if context.cache is not None:
        from smartflow.cache.stage import CacheStage

        stages.append(CacheStage(context.cache))
    if context.audit is not None:
        from smartflow.proxy.record_stage import AuditRecordStage

        stages.append(AuditRecordStage(context.audit))
    if keys is not None:
        stages += [
            AdmitStage(keys, context.catalog, settings.budgets.default_max_output_tokens,
                       context.routing),
            SettleStage(keys),
        ]
        # Only when some provider key can come from the vault: otherwise the
        # route slot keeps one stage and calls pay nothing for the vault.
        # (A deployment of a group made through the admin API is resolved by the
        # route stage itself when it is picked.)
        if capture_keys or any(model.api_key.startswith(VAULT_PREFIX)
                               for model in settings.models):
            stages.append(VaultStage(keys.vault))
    return stages

"""The pipeline stages of virtual keys: admit before the call, settle after it.

* ``AdmitStage`` (admit): the model must be allowed for the key and its
  team (else 403); then one Redis round trip reserves the call's worst-case
  cost against the key's, team's and user's budgets and takes its place in
  their rate limits (else 429 with the limit's headers, before any provider
  is called).
* ``SettleStage`` (post_call): commits the actual cost and releases the
  rest of the hold, in the background; a failed or abandoned call releases
  everything it held and commits only what the provider actually billed.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from smartflow.gateway_error import GatewayError, Reason
from smartflow.keys.admission import (
    SCOPE_NAMES,
    Grant,
    Refusal,
    refusal_headers,
)
from smartflow.keys.key_cache import KeyEntry
from smartflow.keys.records import model_allowed
from smartflow.keys.runtime import KeysRuntime
from smartflow.providers.base import Target
from smartflow.proxy.call import Call, Principal
from smartflow.proxy.catalog import Catalog, ModelNotFound
from smartflow.proxy.cost import estimate_prompt_tokens
from smartflow.proxy.headers import FALLBACK_CHAIN_HEADER
from smartflow.proxy.pipeline import Reply, Stage
from smartflow.store.fast_client import StoreUnavailable
from smartflow.store.keyspace import SCOPE_KEY

if TYPE_CHECKING:
    from smartflow.routing.runtime import RoutingRuntime

# A refusal for a stale record is retried with fresh records; more than this
# many changes during one call means something is rewriting the key in a loop.
MAX_STALE_RETRIES = 3
# Model names whose deployments are remembered (callers choose names: bounded).
MAX_CACHED_MODELS = 4096


def invalid_key_error() -> GatewayError:
    # The same answer for unknown, expired, blocked and deleted keys: a caller
    # probing keys learns nothing about which exist.
    return GatewayError(401, "Incorrect API key provided.", "invalid_request_error",
                        "invalid_api_key", reason=Reason.AUTH)


def state_unavailable_error() -> GatewayError:
    return GatewayError(503, "The gateway cannot check this key's budget and limits right "
                             "now (its state store is unavailable); try again shortly.",
                        code="state_unavailable", reason=Reason.INTERNAL)


def principal_for(entry: KeyEntry) -> Principal:
    principal = entry.principal
    if principal is None:
        key = entry.key
        principal = entry.principal = Principal(
            kind="virtual_key", key_id=key.id, key_alias=key.alias, user_id=key.user_id,
            team_id=key.team_id, entry=entry)
    return principal  # type: ignore[no-any-return]


def _requested_output_tokens(body: dict[str, Any]) -> int:
    """The output tokens a request allows (× its choices); 0 when it sets none."""
    get = body.get
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        limit = get(name)
        if limit.__class__ is int and limit > 0:  # _times_choices, inline: every call
            choices = get("n")
            return limit * choices if choices.__class__ is int and choices > 1 else limit
    generation = get("generationConfig")  # the Gemini API's
    if generation.__class__ is dict:
        return _times_choices(generation.get("maxOutputTokens"), generation.get("candidateCount"))
    return 0


def _times_choices(limit: Any, choices: Any) -> int:
    """A positive integer ``limit`` times ``choices`` (when above 1); else 0."""
    if limit.__class__ is not int or limit <= 0:
        return 0
    if choices.__class__ is int and choices > 1:
        return limit * choices  # type: ignore[no-any-return]
    return limit  # type: ignore[no-any-return]


# A deployment's prices as a worst case needs them (USD per call, USD per
# million input and output tokens) and its output limit.
_PriceRow = tuple[float, float, float, int]


def _price_row(target: Target) -> _PriceRow:
    prices = target.prices
    return (prices.per_request, prices.input_per_mtok, prices.output_per_mtok,
            target.max_output_tokens)


class AdmitStage(Stage):
    slot = "admit"

    def __init__(self, keys: KeysRuntime, catalog: Catalog, default_max_output: int,
                 routing: RoutingRuntime | None = None) -> None:
        self._keys = keys
        self._admission = keys.admission
        self._catalog = catalog
        self._routing = routing
        self._generation = 0
        self._default_max_output = default_max_output
        # model name -> its deployments' prices and output limits: the catalog
        # is fixed for a worker's life
        self._prices: dict[str, tuple[_PriceRow, ...]] = {}

    async def on_enter(self, call: Call) -> Reply | None:
        principal = call.identity
        if principal is None or principal.kind != "virtual_key":
            return None
        entry: KeyEntry = principal.entry
        if entry.restricts_models:
            self._check_model(call, entry)
        amount, tokens = self._worst_case(call, entry)
        # The common case, a worker's lease with room: no await.
        grant = self._admission.from_leases(entry.scopes, amount, tokens)
        if grant is None:
            await self._ask(call, entry, amount, tokens)
            return None
        call.reservation = grant
        if grant.headers:
            call.response_headers += grant.headers
        return None

    async def _ask(self, call: Call, entry: KeyEntry, amount: int, tokens: int) -> None:
        """Admission by the script; a refusal for a stale record is retried
        with fresh records."""
        admission = self._admission
        try:
            for _ in range(MAX_STALE_RETRIES):
                scopes = entry.scopes
                result = await admission.ask(scopes, amount, tokens, check_blocked=scopes[0])
                if isinstance(result, Grant):
                    call.reservation = result
                    if result.headers:
                        call.response_headers += result.headers
                    return
                entry = await self._after_refusal(call, result)
                call.identity = principal_for(entry)
                if entry.restricts_models:
                    self._check_model(call, entry)
                amount, tokens = self._worst_case(call, entry)
        except StoreUnavailable:
            raise state_unavailable_error() from None
        raise state_unavailable_error()

    async def _after_refusal(self, call: Call, refusal: Refusal) -> KeyEntry:
        """A fresh entry to retry with, or the refusal as the caller's error."""
        reason = refusal.reason
        if reason in ("stale", "gone"):
            if reason == "gone" and refusal.scope.kind == SCOPE_KEY:
                raise invalid_key_error()
            principal = call.identity
            assert principal is not None
            entry = await self._keys.cache.refresh(principal.entry.key.key_hash)
            if entry is None or entry.is_refused(time.time()):
                raise invalid_key_error()
            return entry
        if reason == "blocked":
            raise invalid_key_error()
        call.response_headers.extend(refusal_headers(refusal, self._keys.clock))
        raise _limit_error(refusal)

    def _check_model(self, call: Call, entry: KeyEntry) -> None:
        model = call.model
        if not model:
            return
        if not model_allowed(entry.key.models, model) or (
                entry.team is not None and not model_allowed(entry.team.models, model)):
            raise GatewayError(403, f"This key is not allowed to use the model {model!r}.",
                               "permission_error", "model_not_allowed", "model",
                               reason=Reason.AUTH)

    def _worst_case(self, call: Call, entry: KeyEntry) -> tuple[int, int]:
        body = call.body
        if not (entry.needs_cost or entry.needs_tokens) or body is None:
            return 0, 0
        prompt_tokens = estimate_prompt_tokens(body)
        if not entry.needs_cost:
            return 0, prompt_tokens
        target = call.target
        rows = (_price_row(target),) if target is not None else self._price_rows(call)
        requested = _requested_output_tokens(body)
        default = self._default_max_output
        worst = 0
        for per_request, input_per_mtok, output_per_mtok, model_limit in rows:
            # worst_case_nano's sum, inline (a unit test holds the two equal)
            usd = (per_request + prompt_tokens * input_per_mtok / 1e6
                   + (requested or model_limit or default) * output_per_mtok / 1e6)
            nano = math.ceil(usd * 1e9 - 1e-6)
            worst = max(worst, nano)
        return worst, prompt_tokens

    def _price_rows(self, call: Call) -> tuple[_PriceRow, ...]:
        """The prices and output limits of every deployment the call may reach
        (a chain's, a larger-context fallback's): failover must not take it
        past what it held. Remembered per model (and chain)."""
        routing = self._routing
        if routing is not None and routing.generation != self._generation:
            self._prices = {}  # groups or chains changed: worst cases may have too
            self._generation = routing.generation
        chain = None
        if routing is not None and routing.has_chains:
            chain = call.request.header(FALLBACK_CHAIN_HEADER)
        cache_key = call.model if chain is None else f"{call.model}\0{chain}"
        found = self._prices.get(cache_key)
        if found is None:
            targets = (routing.possible_targets(call.model, chain) if routing is not None
                       else self._catalog.deployments(call.model))
            if not targets:
                try:
                    targets = (self._catalog.resolve(call.model),)
                except ModelNotFound:
                    targets = ()
            found = tuple(_price_row(t) for t in targets)
            if len(self._prices) < MAX_CACHED_MODELS:
                self._prices[cache_key] = found
        if not found and call.fallback_target is not None:
            return (_price_row(call.fallback_target),)
        return found


def _limit_error(refusal: Refusal) -> GatewayError:
    scope = refusal.scope
    who = SCOPE_NAMES[scope.kind]
    reason = refusal.reason
    if reason == "budget":
        return GatewayError(429, f"Budget exceeded for this {who}: the call's worst-case "
                                 f"cost does not fit in what remains of its "
                                 f"{scope.limits.budget_period} budget.",
                            code="budget_exceeded", reason=Reason.LIMIT)
    if reason == "parallel":
        return GatewayError(429, f"Too many requests in flight for this {who} "
                                 f"(max_parallel_requests {refusal.limit}).",
                            code="max_parallel_requests_exceeded", reason=Reason.LIMIT)
    unit = "requests" if reason == "rpm" else "tokens"
    return GatewayError(429, f"Rate limit reached for this {who}: {refusal.limit} {unit} "
                             f"per minute.", code="rate_limit_exceeded", reason=Reason.LIMIT)


class SettleStage(Stage):
    slot = "post_call"

    def __init__(self, keys: KeysRuntime) -> None:
        self._settle = keys.admission.settle_later

    async def on_exit(self, call: Call) -> None:
        grant = call.reservation
        if not isinstance(grant, Grant):
            return
        cost = call.cost
        ended = call.ended_s
        elapsed_s = (ended if ended is not None else time.perf_counter()) - call.started_s
        if cost is not None and call.first_byte_s is not None:
            self._settle(grant, call.model, cost.usd, cost.prompt_tokens,
                         cost.completion_tokens, True, elapsed_s)
        else:  # nothing was billed: give the whole hold back
            self._settle(grant, call.model, 0.0, 0, 0, False, elapsed_s)

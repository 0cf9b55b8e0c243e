"""Provider keys from the vault, resolved when the deployment is known (route slot).

A deployment whose ``api_key`` is ``vault:NAME`` gets the stored key; a
virtual key made by key capture carries its own provider key, used for
deployments of that provider. The resolved key lives on the call's target
only, never in a log or an answer.
"""

from __future__ import annotations

from dataclasses import replace

from smartflow.gateway_error import GatewayError, Reason
from smartflow.keys.vault import VAULT_PREFIX, Vault, VaultEntryNotFound, VaultUnavailable
from smartflow.providers.base import Target
from smartflow.proxy.call import Call
from smartflow.proxy.pipeline import Reply, Stage
from smartflow.store.fast_client import StoreUnavailable


class VaultStage(Stage):
    slot = "route"  # after RouteStage (stages of one slot keep their order)

    def __init__(self, vault: Vault) -> None:
        self._vault = vault

    async def on_enter(self, call: Call) -> Reply | None:
        target = call.target
        if target is not None:
            call.target = await provider_key_target(call, target, self._vault)
        return None


async def provider_key_target(call: Call, target: Target, vault: Vault) -> Target:
    """``target`` with its provider key from the vault, when it names one there
    (or the caller's captured key covers its provider); else ``target`` itself."""
    reference = target.api_key
    principal = call.identity
    if principal is not None and principal.entry is not None:
        metadata = principal.entry.key.metadata
        if metadata.get("provider") == target.provider and metadata.get("provider_key_ref"):
            reference = str(metadata["provider_key_ref"])
    if not reference.startswith(VAULT_PREFIX):
        return target
    try:
        value = await vault.resolve(reference)
    except VaultEntryNotFound:
        raise GatewayError(500, f"The provider key for model {target.public_name!r} is "
                                f"not in the gateway's key vault.",
                           code="provider_key_missing", reason=Reason.INTERNAL) from None
    except (VaultUnavailable, StoreUnavailable):
        raise GatewayError(503, "The gateway's key vault is unavailable.",
                           code="vault_unavailable", reason=Reason.INTERNAL) from None
    return replace(target, api_key=value)

"""Key capture: a caller's real provider key becomes a vault entry and a virtual key.

With ``[vault] capture_provider_keys = true``, a request that carries a
provider's own key (``sk-...``, ``sk-ant-...``, ``AIza...``) instead of a
gateway key is not refused: the provider key is stored, encrypted, in the
vault; a virtual key is created for it (its ``metadata.provider_key_ref``
names the vault entry) and sent back once in ``x-smartflow-virtual-key``.
The call, and every later call with the same provider key, runs as that
virtual key, using the captured key for that provider. The caller can switch
to the virtual key and forget the provider key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from smartflow.keys.key_cache import KeyEntry
from smartflow.keys.provider_keys import captured_entry_name, provider_of_key
from smartflow.keys.records import VirtualKey
from smartflow.keys.runtime import KeysRuntime
from smartflow.store.keyspace import captured_key_index

VIRTUAL_KEY_HEADER = "x-smartflow-virtual-key"


@dataclass(frozen=True, slots=True)
class Captured:
    entry: KeyEntry
    plaintext: str | None  # the new virtual key, only the first time


async def capture(keys: KeysRuntime, presented: str) -> Captured | None:
    """The virtual key for a provider key, created on first sight; None if
    ``presented`` is not a provider key or the vault is disabled."""
    provider = provider_of_key(presented)
    if provider is None or not keys.vault.enabled:
        return None
    digest = hashlib.sha256(presented.encode()).hexdigest()
    index = captured_key_index(digest)
    client = keys.client
    key_id = await client.execute("GET", index, key=index)
    if key_id is not None:
        key = await keys.store.get_key(key_id.decode())
        entry = await keys.cache.refresh(key.key_hash) if key is not None else None
        if entry is not None:
            return Captured(entry, None)
        # The virtual key was deleted: capture afresh (a new key, sent once).
        await client.execute("DEL", index, key=index)
    name = captured_entry_name(provider, presented)
    await keys.vault.put(name, presented, provider=provider,
                         description="captured from a caller's request")
    template = VirtualKey(id="", key_hash="", key_hint="", alias=f"captured-{provider}",
                          metadata={"provider": provider, "provider_key_ref": f"vault:{name}"})
    key, plaintext = await keys.store.create_key(template)
    # Two first requests at once: the first to claim the index wins; the other
    # key is deleted so one provider key maps to one virtual key.
    claimed = await client.execute("SET", index, key.id, "NX", key=index)
    if claimed is None:
        await keys.store.delete_key(key)
        return await capture(keys, presented)
    entry = await keys.cache.refresh(key.key_hash)
    assert entry is not None
    return Captured(entry, plaintext)

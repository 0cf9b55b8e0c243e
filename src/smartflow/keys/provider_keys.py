"""Recognising a provider's own API key sent by a caller instead of a virtual key.

With ``[vault] capture_provider_keys`` on, such a key is stored in the vault
(under a name derived from its hash, so sending it again finds the same
entry) rather than rejected. Recognition is by shape only: whether the key
works is for the provider to say.
"""

from __future__ import annotations

import hashlib
import re

# keys.store.KEY_PREFIX, not imported: this module stays free of the store client.
_VIRTUAL_KEY_PREFIX = "sk-sf-"
_ANTHROPIC = re.compile(r"sk-ant-[A-Za-z0-9_-]+")
_OPENAI = re.compile(r"sk-[A-Za-z0-9_-]{20,}")  # also sk-proj-, sk-svcacct-, ...
_GEMINI = re.compile(r"AIza[A-Za-z0-9_-]{35}")


def provider_of_key(presented: str) -> str | None:
    """The provider ("anthropic", "openai", "gemini") whose key shape this is, else None."""
    if presented.startswith(_VIRTUAL_KEY_PREFIX):  # our own virtual keys look like OpenAI's
        return None
    if _ANTHROPIC.fullmatch(presented):
        return "anthropic"
    if _OPENAI.fullmatch(presented):
        return "openai"
    if _GEMINI.fullmatch(presented):
        return "gemini"
    return None


def captured_entry_name(provider: str, presented: str) -> str:
    """The vault entry name of a captured key: stable per key, revealing nothing of it."""
    return f"captured-{provider}-{hashlib.sha256(presented.encode()).hexdigest()[:16]}"

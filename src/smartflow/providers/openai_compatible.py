"""Servers that speak OpenAI's API: vLLM, Groq, Together, DeepSeek, LM Studio...

Exactly the OpenAI adapter, except that ``api_base`` is required (there is no
default host) and the bearer token is left out when no key is configured
(local servers such as LM Studio or a bare vLLM need none).
"""

from __future__ import annotations

from smartflow.providers.base import ProviderError, Target
from smartflow.providers.openai import OpenAIAdapter


class OpenAICompatibleAdapter(OpenAIAdapter):
    name = "openai_compatible"
    speaks_openai = True
    default_api_base = ""

    def api_base(self, target: Target) -> str:
        if not target.api_base:
            raise ProviderError(500, f"openai_compatible deployment {target.public_name!r} has "
                                     "no api_base", None, "provider_misconfigured")
        return target.api_base


ADAPTER = OpenAICompatibleAdapter()

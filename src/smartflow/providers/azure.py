"""Azure OpenAI: OpenAI's wire format behind per-deployment URLs.

``target.model`` is the deployment name, which goes in the path; the
``api-version`` query parameter is mandatory (``target.api_version``, else a GA
version). The body keeps a ``model`` (the deployment name, as the official SDK
sends; Azure ignores it). Auth is an ``api-key`` header; an Entra ID token can be sent instead
by putting ``authorization: Bearer ...`` in the deployment's headers (then
leave ``api_key`` empty). ``api_version = "v1"`` selects Azure's newer
``/openai/v1/...`` surface, where the model travels in the body as at OpenAI.

Azure's errors are OpenAI's shape; its content filter answers 400 with code
``content_filter`` (kept, so callers can tell a filtered prompt from a bad one).
"""

from __future__ import annotations

from urllib.parse import quote

from smartflow.providers.base import Headers, ProviderError, Target
from smartflow.providers.openai import OpenAIAdapter, openai_error_from_upstream

DEFAULT_API_VERSION = "2024-10-21"


class AzureAdapter(OpenAIAdapter):
    name = "azure"
    speaks_openai = True
    default_api_base = ""

    def auth_headers(self, target: Target) -> list[tuple[str, str]]:
        return [("api-key", target.api_key)] if target.api_key else []

    def url(self, target: Target, operation: str) -> str:
        base = target.api_base.rstrip("/")
        if not base:
            raise ProviderError(500, f"azure deployment {target.public_name!r} has no api_base",
                                None, "provider_misconfigured")
        version = target.api_version or DEFAULT_API_VERSION
        if version == "v1":
            return f"{base}/openai/v1/{operation}"
        deployment = quote(target.model, safe="")
        return (f"{base}/openai/deployments/{deployment}/{operation}"
                f"?api-version={quote(version, safe='')}")

    def error_from_upstream(self, target: Target, status: int, headers: Headers,
                            body: bytes) -> ProviderError:
        error = openai_error_from_upstream(status, headers, body, self.name)
        if error.code == "content_filter" or error.code == "ResponsibleAIPolicyViolation":
            error.status = 400
            error.type = "invalid_request_error"
            error.code = "content_filter"
        return error


ADAPTER = AzureAdapter()

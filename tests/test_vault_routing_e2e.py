"""Provider keys from the vault, through a real gateway and a recording upstream:
``api_key = "vault:NAME"`` is resolved at routing time, and key capture turns
a caller's own provider key into a virtual key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from harness.gateway import GatewayProcess
from upstreams.recording_anthropic import RequestLog
from upstreams.recording_openai import build_recording_openai
from upstreams.server import UpstreamThread

MASTER = "sk-master-vault-0123456789"
PROVIDER_SECRET = "sk-proj-" + "Q" * 40
CALLER_PROVIDER_KEY = "sk-proj-" + "C" * 40
CHAT = {"model": "vaulted", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def _config(redis_url: str, upstream: str, **vault: Any) -> dict[str, Any]:
    return {
        "auth": {"master_key": MASTER},
        "state": {"redis_url": redis_url},
        "vault": {"encryption_key": "a test vault passphrase", **vault},
        "models": [{"name": "vaulted", "provider": "openai", "model": "gpt-4o-mini",
                    "api_base": upstream + "/v1", "api_key": "vault:openai-prod"}],
    }


def _admin(url: str, method: str, path: str, body: Any = None) -> httpx.Response:
    return httpx.request(method, url + path, json=body, timeout=30,
                         headers={"authorization": f"Bearer {MASTER}"})


def test_a_vault_reference_is_resolved_per_call_and_never_shown(
        redis_url: str, gateway_factory: Callable[..., GatewayProcess]) -> None:
    log = RequestLog()
    with UpstreamThread(build_recording_openai(log, "hello")) as upstream:
        gateway = gateway_factory(_config(redis_url, upstream.url), workers=1)
        missing = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT,
                             headers={"authorization": f"Bearer {MASTER}"}, timeout=30)
        assert missing.status_code == 500
        assert missing.json()["error"]["code"] == "provider_key_missing"
        assert not log.requests  # nothing reached the provider without its key
        stored = _admin(gateway.url, "POST", "/api/keys/providers",
                        {"name": "openai-prod", "value": PROVIDER_SECRET, "provider": "openai"})
        assert stored.status_code == 201, stored.text
        assert PROVIDER_SECRET not in stored.text
        answer = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT,
                            headers={"authorization": f"Bearer {MASTER}"}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert log.requests[-1].header("authorization") == f"Bearer {PROVIDER_SECRET}"
        assert PROVIDER_SECRET not in answer.text
        listed = _admin(gateway.url, "GET", "/api/keys/providers")
        assert PROVIDER_SECRET not in listed.text
        gateway.stop()
        assert PROVIDER_SECRET not in gateway.output_text()
        assert PROVIDER_SECRET not in (gateway.data_dir / "access.log").read_text()


def test_a_captured_provider_key_becomes_a_virtual_key(
        redis_url: str, gateway_factory: Callable[..., GatewayProcess]) -> None:
    log = RequestLog()
    with UpstreamThread(build_recording_openai(log, "hello")) as upstream:
        gateway = gateway_factory(_config(redis_url, upstream.url, capture_provider_keys=True),
                                  workers=1)
        first = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, timeout=30,
                           headers={"authorization": f"Bearer {CALLER_PROVIDER_KEY}"})
        assert first.status_code == 200, first.text
        virtual = first.headers["x-smartflow-virtual-key"]
        assert virtual.startswith("sk-sf-")
        # The caller's own key was used for its call, from the vault.
        assert log.requests[-1].header("authorization") == f"Bearer {CALLER_PROVIDER_KEY}"
        again = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, timeout=30,
                           headers={"authorization": f"Bearer {CALLER_PROVIDER_KEY}"})
        assert again.status_code == 200
        assert "x-smartflow-virtual-key" not in again.headers  # sent once
        with_virtual = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, timeout=30,
                                  headers={"authorization": f"Bearer {virtual}"})
        assert with_virtual.status_code == 200
        assert log.requests[-1].header("authorization") == f"Bearer {CALLER_PROVIDER_KEY}"
        vault = _admin(gateway.url, "GET", "/api/keys/providers").json()["data"]
        assert [entry["provider"] for entry in vault] == ["openai"]
        assert CALLER_PROVIDER_KEY not in str(vault)
        keys = _admin(gateway.url, "GET", "/api/enterprise/vkeys").json()["data"]
        assert [key["alias"] for key in keys] == ["captured-openai"]

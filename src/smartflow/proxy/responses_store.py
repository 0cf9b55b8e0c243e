"""Where Responses API answers are kept between turns: Redis, with a TTL.

``POST /v1/responses`` answers are stored (unless the request says
``store: false``) so that the next turn's ``previous_response_id``, and
``GET``/``DELETE /v1/responses/{id}`` and its ``input_items``, work on any
worker of any node. One JSON value per response holds the response object,
its own input items, the conversation before it (so a chained turn needs one
read, not one per earlier turn) and its owner: a stored answer is shown only
to the key that made it, or to an admin.
Without a state store (an app built for tests) nothing is kept.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import orjson

from smartflow.gateway_error import GatewayError, Reason
from smartflow.proxy.call import Principal
from smartflow.store import keyspace
from smartflow.store.fast_client import StoreClient, StoreUnavailable

logger = logging.getLogger("smartflow.proxy")

# A turn's answer is stored just after its stream's last byte; a client that
# sends the next turn at once may get there first. Missing ids are read again.
_NOT_FOUND_RETRY_DELAYS_S = (0.05, 0.1, 0.2)


@dataclass(frozen=True, slots=True)
class StoredResponse:
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    earlier: list[dict[str, Any]]  # the turns before this one (items in and out)
    owner: str

    @property
    def conversation(self) -> list[dict[str, Any]]:
        """Earlier turns, this input, this output: what a next turn continues."""
        output = self.response.get("output")
        return [*self.earlier, *self.input_items, *(output if isinstance(output, list) else ())]


def owner_of(identity: Principal | None) -> str:
    if identity is None or identity.kind == "anonymous":
        return "anonymous"
    if identity.kind == "master":
        return "master"
    return f"key:{identity.key_id}"


def may_read(stored: StoredResponse, identity: Principal | None) -> bool:
    return (identity is not None and identity.is_admin) or stored.owner == owner_of(identity)


def unavailable_error() -> GatewayError:
    return GatewayError(503, "The gateway's state store is not answering; stored responses "
                             "cannot be read or written right now.", "server_error",
                        "state_unavailable", reason=Reason.INTERNAL)


def not_found_error(response_id: str, param: str | None = None) -> GatewayError:
    return GatewayError(404, f"Response with id '{response_id}' not found.",
                        "invalid_request_error",
                        "previous_response_not_found" if param else "not_found", param,
                        reason=Reason.CLIENT)


class ResponsesStore:
    __slots__ = ("_client", "_max_bytes", "_ttl_ms")

    def __init__(self, client: StoreClient | None, *, ttl_s: float, max_bytes: int) -> None:
        self._client = client
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._max_bytes = max_bytes

    async def save(self, response: dict[str, Any], input_items: list[dict[str, Any]],
                   earlier: list[dict[str, Any]], owner: str) -> bool:
        """Keep ``response``; False when it was too large or Redis failed (logged:
        the caller already has its answer, only a later chain on it will fail)."""
        response_id = response.get("id")
        if self._client is None or not isinstance(response_id, str) or not response_id:
            return False
        value = orjson.dumps({"response": response, "input_items": input_items,
                              "earlier": earlier, "owner": owner})
        if len(value) > self._max_bytes:
            logger.warning("response %s not stored: %d bytes is over [responses] "
                           "max_stored_bytes", response_id, len(value))
            return False
        key = keyspace.stored_response(response_id)
        try:
            await self._client.execute("SET", key, value, "PX", self._ttl_ms, key=key)
        except StoreUnavailable as exc:
            logger.warning("response %s not stored: %s", response_id, exc)
            return False
        return True

    async def load(self, response_id: str, *, wait_for_recent: bool = False
                   ) -> StoredResponse | None:
        if self._client is None:
            return None
        key = keyspace.stored_response(response_id)
        delays = _NOT_FOUND_RETRY_DELAYS_S if wait_for_recent else ()
        attempt = 0
        while True:
            try:
                raw = await self._client.execute("GET", key, key=key)
            except StoreUnavailable:
                raise unavailable_error() from None
            if raw is not None or attempt >= len(delays):
                break
            await asyncio.sleep(delays[attempt])
            attempt += 1
        if raw is None:
            return None
        try:
            value = orjson.loads(raw)
            return StoredResponse(value["response"], value["input_items"], value["earlier"],
                                  value["owner"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            logger.warning("stored response %s is unreadable; treated as missing", response_id)
            return None

    async def delete(self, response_id: str) -> None:
        if self._client is None:
            return
        key = keyspace.stored_response(response_id)
        try:
            await self._client.execute("DEL", key, key=key)
        except StoreUnavailable:
            raise unavailable_error() from None

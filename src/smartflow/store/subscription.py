"""Listening on one Redis pub/sub channel for as long as a worker lives.

Fast paths keep copies of what Redis holds (key records, leases, routing
groups and cooldowns); a change is announced on a channel so every worker
drops or reloads its copy at once. ``listen_forever`` subscribes, hands each
message's text to ``on_message``, and when the connection drops (a Redis
blip) says so (``on_lost``), waits ``retry_s`` and subscribes again;
``on_subscribed`` runs each time the subscription is in place. It returns
only when ``is_closing()`` turns true or its task is cancelled.

redis-py's pub/sub is used (not the store client, which pipelines plain
commands): one more connection per worker per channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

logger = logging.getLogger("smartflow.store")

RETRY_S = 1.0


def _never() -> bool:
    return False


async def listen_forever(url: str, channel: str, on_message: Callable[[str], None], *,
                         on_subscribed: Callable[[], None] | None = None,
                         on_lost: Callable[[], None] | None = None,
                         is_closing: Callable[[], bool] = _never,
                         retry_s: float = RETRY_S) -> None:
    from redis.asyncio import Redis

    while not is_closing():
        client: Redis = Redis.from_url(url, socket_connect_timeout=1.0, health_check_interval=10)
        try:
            pubsub = client.pubsub()
            await pubsub.subscribe(channel)
            async for message in pubsub.listen():
                if is_closing():
                    return
                kind = message.get("type")
                if kind == "subscribe":
                    if on_subscribed is not None:
                        on_subscribed()
                elif kind == "message":
                    data = message["data"]
                    on_message(data.decode() if isinstance(data, bytes) else data)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reconnect after a pause
            logger.warning("channel %s lost (%s: %s); subscribing again", channel,
                           type(exc).__name__, exc)
        finally:
            if on_lost is not None:
                on_lost()
            with contextlib.suppress(Exception):
                await client.aclose()
        await asyncio.sleep(retry_s)

"""A cached answer given back as its caller expects it, and a stream made cacheable.

The cache keeps one thing per entry: the whole answer, exactly as the
caller's dialect renders a non-streamed one (an OpenAI ``chat.completion``,
an Anthropic ``message``, a Responses ``response``). From it:

- ``replay_whole`` writes the JSON body for a caller that did not stream,
  under a fresh id and timestamp (usage as stored: it says what the answer
  cost when it was made);
- ``replay_stream`` writes the SSE events a streaming caller of that dialect
  expects, each one a whole event;
- ``new_assembler`` reads a stream as it is sent to a caller back into that
  whole answer, or None when the stream did not end cleanly (such an
  answer is never cached).

A streamed and a whole request for the same thing share one entry, so either
kind of caller can be answered from what the other kind filled. Each
dialect's wire format lives in its own ``replay_<dialect>`` module.
"""

from __future__ import annotations

from typing import Any

import orjson

from smartflow.cache import replay_anthropic, replay_openai, replay_responses
from smartflow.cache.replay_common import ReplayCodec, StreamAssembler, random_id

__all__ = ["CACHEABLE_DIALECTS", "StreamAssembler", "fresh_id", "new_assembler", "refreshed",
           "replay_stream", "replay_whole", "stream_ids"]

CACHEABLE_DIALECTS: frozenset[str] = frozenset({"openai", "anthropic", "responses"})

# How many random characters each provider's ids carry after the prefix.
_ID_LENGTHS = {"openai": 29, "anthropic": 24, "responses": 48}


def _codec(dialect: str) -> ReplayCodec:
    match dialect:
        case "openai":
            return replay_openai.CODEC
        case "anthropic":
            return replay_anthropic.CODEC
        case "responses":
            return replay_responses.CODEC
    raise ValueError(f"no replay for dialect {dialect!r}; cacheable: "
                     f"{', '.join(sorted(CACHEABLE_DIALECTS))}")


def new_assembler(dialect: str) -> StreamAssembler:
    """An assembler for one stream of ``dialect`` (ValueError for another dialect)."""
    return _codec(dialect).new_assembler()


def refreshed(dialect: str, answer: dict[str, Any], *, new_id: str,
              created: int) -> dict[str, Any]:
    """The stored ``answer`` under its new identity: ``new_id``, ``created`` as its
    timestamp (Anthropic messages have none), Responses output items renamed.
    What ``replay_whole`` sends, as a dict (e.g. to store a replayed response
    for a later ``previous_response_id``)."""
    return _codec(dialect).refresh(answer, new_id=new_id, created=created)


def replay_whole(dialect: str, answer: dict[str, Any], *, new_id: str, created: int) -> bytes:
    """The JSON body for a caller that did not ask to stream."""
    return orjson.dumps(refreshed(dialect, answer, new_id=new_id, created=created))


def replay_stream(dialect: str, answer: dict[str, Any], *, new_id: str, created: int,
                  include_usage: bool = True) -> list[bytes]:
    """The SSE events for a streaming caller, each a whole event ending in a blank line.

    ``include_usage`` is the caller's ``stream_options.include_usage`` (OpenAI
    chat only: the other dialects always stream their usage).
    """
    codec = _codec(dialect)
    answer = codec.refresh(answer, new_id=new_id, created=created)
    return codec.stream_events(answer, include_usage=include_usage)


def stream_ids(dialect: str) -> tuple[str, str]:
    """(answer id prefix, tool call id prefix) of ``dialect``:
    ``("chatcmpl-", "call_")``, ``("msg_", "toolu_")``, ``("resp_", "fc_")``."""
    codec = _codec(dialect)
    return codec.answer_prefix, codec.call_prefix


def fresh_id(dialect: str) -> str:
    """A new random answer id shaped like the provider's own."""
    return random_id(_codec(dialect).answer_prefix, _ID_LENGTHS[dialect])

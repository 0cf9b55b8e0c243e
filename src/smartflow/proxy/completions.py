"""Legacy text completions <-> chat, for adapters that only have chat.

OpenAI-speaking adapters (openai, azure, openai_compatible, mock) get the
request as is. For the others the prompt becomes one user message, the chat
answer is turned back into a ``text_completion`` (streams too, chunk by
chunk); only a single prompt can be translated that way.
"""

from __future__ import annotations

from typing import Any

from smartflow.http.errors import HTTPError

_LEGACY_ONLY_FIELDS = ("prompt", "echo", "suffix", "best_of", "logprobs")


def completions_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise HTTPError(400, "This model takes a single text prompt on /v1/completions.",
                            param="prompt", code="unsupported_prompt")
        prompt = prompt[0]
    chat = {key: value for key, value in body.items() if key not in _LEGACY_ONLY_FIELDS}
    chat["messages"] = [{"role": "user", "content": prompt}]
    return chat


def chat_to_text_completion(completion: dict[str, Any]) -> dict[str, Any]:
    choices = []
    for position, choice in enumerate(completion.get("choices") or ()):
        message = choice.get("message") if isinstance(choice, dict) else None
        text = message.get("content") if isinstance(message, dict) else None
        choices.append({"text": text if isinstance(text, str) else "",
                        "index": choice.get("index", position) if isinstance(choice, dict)
                        else position,
                        "logprobs": None,
                        "finish_reason": choice.get("finish_reason")
                        if isinstance(choice, dict) else None})
    out = {"id": completion.get("id", ""), "object": "text_completion",
           "created": completion.get("created", 0), "model": completion.get("model", ""),
           "choices": choices}
    if completion.get("usage") is not None:
        out["usage"] = completion["usage"]
    return out


def chat_chunk_to_text_chunk(chunk: dict[str, Any]) -> dict[str, Any] | None:
    choices = []
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta") or {}
        text = delta.get("content") if isinstance(delta, dict) else None
        finish = choice.get("finish_reason")
        if not text and not finish:
            continue
        choices.append({"text": text or "", "index": choice.get("index", 0), "logprobs": None,
                        "finish_reason": finish})
    usage = chunk.get("usage")
    if not choices and usage is None:
        return None
    out = {"id": chunk.get("id", ""), "object": "text_completion",
           "created": chunk.get("created", 0), "model": chunk.get("model", ""),
           "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return out

"""Text into overlapping chunks the embedding model reads whole.

Sizes are in model tokens, as OpenAI's ``chunking_strategy`` counts them.
The text is cut into pieces at whitespace (a piece is one word and never
longer than ``MAX_PIECE_CHARS``, so a base64 blob or a minified line still
splits); each piece's token count comes from the model's tokenizer when one
is given (WordPiece splits words at whitespace and punctuation, so the counts
of the pieces add up to the count of the text), else from a conservative
estimate. Windows of pieces are then taken greedily up to the size, ending
at a sentence or paragraph end when one is in the last half of the window,
and the next window starts far enough back to repeat about
``chunk_overlap_tokens`` of the previous one.

Why the default is 200/40 and not OpenAI's 800/400: all-MiniLM-L6-v2 reads at
most 256 tokens (two of them [CLS] and [SEP]) and silently drops the rest, so
a longer chunk would be stored whole but found only by its first third. A
requested size past ``MODEL_MAX_CONTENT_TOKENS`` is cut to it (the file's
``chunking_strategy`` reports what was used).

Pure functions: no I/O, safe to run in a worker thread for big texts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

# Tokens per piece, without the [CLS]/[SEP] a whole input gets.
TokenCounter = Callable[[Sequence[str]], list[int]]

MODEL_MAX_CONTENT_TOKENS = 254  # all-MiniLM-L6-v2: 256 positions less [CLS] and [SEP]
DEFAULT_CHUNK_TOKENS = 200
DEFAULT_OVERLAP_TOKENS = 40
# OpenAI's bounds for a static strategy.
MIN_CHUNK_TOKENS = 100
MAX_CHUNK_TOKENS = 4096
MAX_PIECE_CHARS = 48

_PIECE_RE = re.compile(rf"\S{{1,{MAX_PIECE_CHARS}}}")
_ASCII_WORD_RE = re.compile(r"[A-Za-z0-9]+")
_SENTENCE_END = (".", "!", "?", ":", ";", "。", "！", "？")


class ChunkingError(ValueError):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class ChunkingStrategy:
    max_chunk_size_tokens: int = DEFAULT_CHUNK_TOKENS
    chunk_overlap_tokens: int = DEFAULT_OVERLAP_TOKENS

    def as_openai(self) -> dict[str, Any]:
        return {"type": "static", "static": {
            "max_chunk_size_tokens": self.max_chunk_size_tokens,
            "chunk_overlap_tokens": self.chunk_overlap_tokens}}


@dataclass(frozen=True, slots=True)
class Chunk:
    text: str
    start: int  # character offsets of the chunk in the text it came from
    end: int
    tokens: int


def fit_to_model(strategy: ChunkingStrategy) -> ChunkingStrategy:
    """The strategy the model can embed whole: the size cut to its window,
    the overlap kept at the same share of it."""
    size = strategy.max_chunk_size_tokens
    if size <= MODEL_MAX_CONTENT_TOKENS:
        return strategy
    overlap = strategy.chunk_overlap_tokens * MODEL_MAX_CONTENT_TOKENS // size
    return ChunkingStrategy(MODEL_MAX_CONTENT_TOKENS, overlap)


def parse_strategy(spec: object, default: ChunkingStrategy,
                   param: str = "chunking_strategy") -> ChunkingStrategy:
    """OpenAI's ``{"type": "auto"}`` or ``{"type": "static", "static": {...}}``."""
    if spec is None:
        return default
    if not isinstance(spec, dict):
        raise ChunkingError(f"{param}: expected an object.", param)
    kind = spec.get("type")
    if kind == "auto":
        return default
    if kind != "static":
        raise ChunkingError(f"{param}.type: expected 'auto' or 'static', got {kind!r}.",
                            f"{param}.type")
    static = spec.get("static")
    if not isinstance(static, dict):
        raise ChunkingError(f"{param}.static: expected an object with max_chunk_size_tokens "
                            f"and chunk_overlap_tokens.", f"{param}.static")
    size = static.get("max_chunk_size_tokens")
    overlap = static.get("chunk_overlap_tokens")
    size_param = f"{param}.static.max_chunk_size_tokens"
    overlap_param = f"{param}.static.chunk_overlap_tokens"
    if not _is_int(size) or not MIN_CHUNK_TOKENS <= size <= MAX_CHUNK_TOKENS:
        raise ChunkingError(f"{size_param}: expected an integer from {MIN_CHUNK_TOKENS} to "
                            f"{MAX_CHUNK_TOKENS}, got {size!r}.", size_param)
    if not _is_int(overlap) or not 0 <= overlap <= size // 2:
        raise ChunkingError(f"{overlap_param}: expected an integer from 0 to half of "
                            f"max_chunk_size_tokens ({size // 2}), got {overlap!r}.",
                            overlap_param)
    return ChunkingStrategy(size, overlap)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def estimate_tokens(pieces: Sequence[str]) -> list[int]:
    """A WordPiece count that errs high: an ASCII word of n characters as
    ceil(n / 4) tokens (common words are one), every other non-space
    character (punctuation, CJK, accented letters) as one."""
    counts = []
    for piece in pieces:
        words = _ASCII_WORD_RE.findall(piece)
        word_chars = sum(len(word) for word in words)
        counts.append(sum((len(word) + 3) // 4 for word in words) + len(piece) - word_chars)
    return counts


def piece_counter(count_tokens: Callable[[Sequence[str]], list[int]]) -> TokenCounter:
    """A TokenCounter from a tokenizer's count of whole inputs, less what it
    adds to every input ([CLS] and [SEP]), measured on the empty string."""
    overhead = count_tokens([""])[0]

    def count(pieces: Sequence[str]) -> list[int]:
        return [max(1, n - overhead) for n in count_tokens(pieces)]

    return count


def chunk_text(text: str, strategy: ChunkingStrategy,
               count_tokens: TokenCounter = estimate_tokens) -> list[Chunk]:
    """``text`` in windows of at most ``strategy.max_chunk_size_tokens``
    tokens, each repeating about ``chunk_overlap_tokens`` of the one before."""
    spans = [(m.start(), m.end()) for m in _PIECE_RE.finditer(text)]
    if not spans:
        return []
    tokens = _piece_tokens(text, spans, count_tokens)
    size = strategy.max_chunk_size_tokens
    overlap = min(strategy.chunk_overlap_tokens, size // 2)
    chunks: list[Chunk] = []
    start = 0
    count = len(spans)
    while start < count:
        end, used = start, 0
        while end < count and (end == start or used + tokens[end] <= size):
            used += tokens[end]
            end += 1
        if end < count:
            end = _sentence_cut(text, spans, start, end)
            used = sum(tokens[start:end])
        first, last = spans[start][0], spans[end - 1][1]
        chunks.append(Chunk(text[first:last], first, last, used))
        if end >= count:
            break
        back, repeated = end, 0
        while back - 1 > start and repeated + tokens[back - 1] <= overlap:
            back -= 1
            repeated += tokens[back]
        start = back
    return chunks


def _piece_tokens(text: str, spans: list[tuple[int, int]],
                  count_tokens: TokenCounter) -> list[int]:
    # A text repeats its words; each distinct one is counted once.
    pieces = [text[a:b] for a, b in spans]
    distinct = list(dict.fromkeys(pieces))
    counted = dict(zip(distinct, count_tokens(distinct), strict=True))
    return [max(1, counted[piece]) for piece in pieces]


def _sentence_cut(text: str, spans: list[tuple[int, int]], start: int, end: int) -> int:
    """The latest piece index in the second half of [start, end) after which
    a sentence or paragraph ends; ``end`` when there is none."""
    floor = start + max(1, (end - start) // 2)
    for cut in range(end, floor, -1):
        piece_end = spans[cut - 1][1]
        gap = text[piece_end:spans[cut][0]] if cut < len(spans) else ""
        if "\n\n" in gap or text[piece_end - 1] in _SENTENCE_END:
            return cut
    return end

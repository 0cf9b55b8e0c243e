"""Coalesce concurrent embedding requests of one event loop into batches.

The model runs on one dedicated worker thread, so the event loop never
blocks on it. While a batch runs, new requests queue; when it ends, the
next batch takes everything queued (up to ``max_batch`` texts). There is no
timer: a lone request starts at once, and batching happens only because
requests arrive while the model is busy — exactly when it pays.

A request longer than ``max_batch`` is split into pieces that queue like
any others; its caller gets its rows back in order. If a batch fails, every
caller with a piece in it gets the exception; the batches after it run.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class TextEncoder(Protocol):
    """What the batcher needs of an ``Encoder`` (tests pass fakes)."""

    @property
    def dim(self) -> int: ...

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...


@dataclass(slots=True)
class _Piece:
    texts: Sequence[str]
    future: asyncio.Future[np.ndarray]


class BatcherClosed(RuntimeError):
    """``embed`` was called after ``aclose``."""


class EmbeddingBatcher:
    def __init__(self, encoder: TextEncoder, *, max_batch: int = 32) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._encoder = encoder
        self._max_batch = max_batch
        self._queue: deque[_Piece] = deque()
        # Created lazily: a batcher built but never used starts no thread.
        self._executor: ThreadPoolExecutor | None = None
        self._runner: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def dim(self) -> int:
        return self._encoder.dim

    @property
    def encoder(self) -> TextEncoder:
        return self._encoder

    @property
    def max_batch(self) -> int:
        return self._max_batch

    def _bind(self) -> asyncio.AbstractEventLoop:
        if self._closed:
            raise BatcherClosed("the embedding batcher is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("an EmbeddingBatcher serves one event loop")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="smartflow-embed")
        return loop

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 ``[len(texts), dim]``, row i for ``texts[i]``."""
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of strings, not one string")
        loop = self._bind()
        if not texts:
            return np.zeros((0, self._encoder.dim), dtype=np.float32)
        step = self._max_batch
        pieces = [_Piece(texts[i:i + step], loop.create_future())
                  for i in range(0, len(texts), step)]
        self._queue.extend(pieces)
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._drain(), name="smartflow-embed-batcher")
        try:
            if len(pieces) == 1:
                return await pieces[0].future
            return np.concatenate([await piece.future for piece in pieces])
        except BaseException:
            # Leave nothing behind: queued pieces are skipped once cancelled, and
            # a failed piece we will not await must not be logged as unretrieved.
            for piece in pieces:
                if not piece.future.done():
                    piece.future.cancel()
                elif not piece.future.cancelled():
                    piece.future.exception()
            raise

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """``Encoder.count_tokens`` on the model's thread, in line with the batches,
        so a long input's tokenization never runs on the event loop."""
        loop = self._bind()
        assert self._executor is not None
        return await loop.run_in_executor(self._executor, self._encoder.count_tokens, list(texts))

    def _take_batch(self) -> list[_Piece]:
        batch: list[_Piece] = []
        size = 0
        queue = self._queue
        while queue:
            piece = queue[0]
            if piece.future.done():  # its caller went away
                queue.popleft()
                continue
            if batch and size + len(piece.texts) > self._max_batch:
                break
            batch.append(queue.popleft())
            size += len(piece.texts)
        return batch

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        executor = self._executor
        assert executor is not None
        while self._queue:
            batch = self._take_batch()
            if not batch:
                continue
            texts = [text for piece in batch for text in piece.texts]
            try:
                vectors = await loop.run_in_executor(executor, self._encoder.encode, texts)
            except BaseException as exc:
                error = exc
                if isinstance(exc, asyncio.CancelledError):
                    error = BatcherClosed("the embedding batcher stopped mid-batch")
                for piece in batch:
                    if not piece.future.done():
                        piece.future.set_exception(error)
                if isinstance(exc, Exception):
                    continue
                self._fail_queued(BatcherClosed("the embedding batcher stopped"))
                raise
            offset = 0
            for piece in batch:
                end = offset + len(piece.texts)
                if not piece.future.done():
                    piece.future.set_result(vectors[offset:end])
                offset = end

    def _fail_queued(self, error: Exception) -> None:
        while self._queue:
            piece = self._queue.popleft()
            if not piece.future.done():
                piece.future.set_exception(error)

    async def aclose(self) -> None:
        """Refuse new requests, finish the queued ones, stop the thread."""
        self._closed = True
        runner = self._runner
        if runner is not None and not runner.done():
            # wait(), not await: the runner's own failure is its callers' to see.
            await asyncio.wait({runner})
        executor, self._executor = self._executor, None
        if executor is not None:
            # The thread is idle now: joining it does not block the loop for long.
            executor.shutdown(wait=True)

"""Tokenize and run the ONNX embedding graph: texts in, unit vectors out.

An ``Encoder`` is blocking and meant for one thread at a time (the
``EmbeddingBatcher`` gives it one); onnxruntime releases the GIL while it
runs, so the event loop thread keeps going meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from smartflow.embeddings.model_files import (
    MODEL_FILE,
    TOKENIZER_FILE,
    model_id,
    read_build_info,
)

_INPUT_IDS = "input_ids"
_ATTENTION_MASK = "attention_mask"


class Encoder:
    """all-MiniLM-L6-v2 (or any graph with the same inputs and one
    ``[batch, dim]`` output) over the files in ``model_dir``."""

    def __init__(self, model_dir: Path, *, threads: int = 1, max_length: int = 256) -> None:
        import onnxruntime as ort  # type: ignore[import-untyped]
        from tokenizers import Tokenizer

        if threads < 1:
            raise ValueError("threads must be at least 1")
        if max_length < 2:
            raise ValueError("max_length must leave room for [CLS] and [SEP]")
        self._max_length = max_length
        self._threads = threads
        tokenizer_path = str(Path(model_dir) / TOKENIZER_FILE)
        self._tokenizer = Tokenizer.from_file(tokenizer_path)
        # tokenizer.json ships with fixed padding to 128; we pad per batch ourselves.
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length)
        # A second instance, untruncated, so counts tell callers (chunkers,
        # usage) how long a text really is.
        self._counter = Tokenizer.from_file(tokenizer_path)
        self._counter.no_padding()
        self._counter.no_truncation()

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Worker processes share the cores with event loops: idle pool
        # threads must sleep, not spin.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            str(Path(model_dir) / MODEL_FILE), options, providers=["CPUExecutionProvider"]
        )
        output = self._session.get_outputs()[0]
        self._output_name = output.name
        dim = output.shape[-1]
        if not isinstance(dim, int):
            raise TypeError(f"{model_dir / MODEL_FILE}: output has no fixed width ({dim!r})")
        self._dim = dim
        self._model_id = model_id(Path(model_dir))
        # Dynamic int8 quantises activations with one scale per tensor, i.e.
        # per batch: a text's vector would shift with its batch-mates and
        # their padding, and a cache would see the same prompt embed
        # differently. Such graphs run one text per session call; on one
        # thread that costs no throughput for this model (bench/embed_bench.py).
        info = read_build_info(Path(model_dir)) or {}
        self._one_at_a_time = info.get("variant") == "int8"

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def model_id(self) -> str:
        """Which model and variant made the vectors (see ``model_files.model_id``)."""
        return self._model_id

    @property
    def max_length(self) -> int:
        return self._max_length

    def _tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if self._threads > 1:
            encodings = self._tokenizer.encode_batch(list(texts))
        else:
            # encode_batch fans out over a Rayon pool sized to every core;
            # with a one-thread budget, stay on this thread.
            encodings = [self._tokenizer.encode(text) for text in texts]
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            ids[row, :n] = encoding.ids
            mask[row, :n] = 1
        return ids, mask

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 ``[len(texts), dim]``, each row of unit length, each row
        independent of the others in the call. Texts longer than
        ``max_length`` tokens are truncated."""
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of strings, not one string")
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        if not self._one_at_a_time:
            return self._run(texts)
        vectors = np.empty((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            vectors[row] = self._run([text])[0]
        return vectors

    def _run(self, texts: Sequence[str]) -> np.ndarray:
        ids, mask = self._tokenize(texts)
        (vectors,) = self._session.run(
            [self._output_name], {_INPUT_IDS: ids, _ATTENTION_MASK: mask}
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens in each text, untruncated and without [CLS]/[SEP] — what
        OpenAI reports as prompt tokens, and what a chunker compares to
        ``max_length - 2``."""
        if isinstance(texts, str):
            raise TypeError("count_tokens takes a sequence of strings, not one string")
        return [len(self._counter.encode(text, add_special_tokens=False).ids) for text in texts]

"""A small trained linear head over sentence embeddings, loaded from a file.

The heads are trained offline (bench/train_guard_heads.py) and shipped as a
compact ``.npz`` of plain arrays (a few thousand floats), never as a pickled
scikit-learn object: loading runs no code from the file, and run time needs
no scikit-learn. Nothing is read until the first ``scores`` call or an
explicit ``load()``.
"""

from __future__ import annotations

import threading
import zipfile
from pathlib import Path

import numpy as np


class LinearHeadError(ValueError):
    """The weights file is missing or does not hold a usable head."""


class LinearHead:
    """Multinomial logistic regression: ``softmax(x @ W.T + b)`` over named classes."""

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._weights: np.ndarray | None = None
        self._bias: np.ndarray | None = None
        self._classes: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def classes(self) -> tuple[str, ...]:
        self.load()
        return self._classes

    def load(self) -> None:
        if self._weights is not None:
            return
        with self._lock:
            if self._weights is not None:
                return
            try:
                with np.load(self._path, allow_pickle=False) as data:
                    weights = np.asarray(data["weights"], dtype=np.float32)
                    bias = np.asarray(data["bias"], dtype=np.float32)
                    classes = tuple(str(c) for c in data["classes"])
            except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
                raise LinearHeadError(f"{self._path}: cannot load linear head ({exc})") from exc
            if weights.ndim != 2 or bias.shape != (weights.shape[0],) or len(classes) != len(
                    bias) or len(classes) < 2:
                raise LinearHeadError(f"{self._path}: inconsistent shapes {weights.shape}, "
                                      f"{bias.shape}, {len(classes)} classes")
            self._classes = classes
            self._bias = bias
            self._weights = weights

    @property
    def dim(self) -> int:
        self.load()
        assert self._weights is not None
        return int(self._weights.shape[1])

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """Class probabilities, shape ``(n, classes)``, for ``(n, dim)`` or ``(dim,)`` input."""
        self.load()
        assert self._weights is not None and self._bias is not None
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self._weights.shape[1]:
            raise ValueError(f"embedding has shape {tuple(np.shape(vectors))}, "
                             f"the head expects width {self._weights.shape[1]}")
        logits = x @ self._weights.T + self._bias
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return np.asarray(exp / exp.sum(axis=1, keepdims=True))


def save_head(path: Path, weights: np.ndarray, bias: np.ndarray, classes: list[str]) -> None:
    """Write a head in the format ``LinearHead`` reads (used by the training script)."""
    np.savez_compressed(path, weights=np.asarray(weights, dtype=np.float32),
                        bias=np.asarray(bias, dtype=np.float32),
                        classes=np.asarray(classes, dtype=np.str_))

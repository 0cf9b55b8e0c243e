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
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from smartflow.policy.findings import Embed

# Head probability that maps to a score of 0 (see ``head_score``).
MODEL_FLOOR = 0.6


@dataclass(frozen=True, slots=True)
class Hit:
    """One span a detector's rule or head fired on, before it becomes a Finding."""

    start: int
    end: int
    score: float
    category: str


def head_score(probability: float) -> float:
    """A head's non-benign probability on the findings' scale.

    The head alone is less precise than a rule (it has seen a few hundred
    examples), so it must be sure: ``MODEL_FLOOR`` maps to 0, probability 0.8
    to 0.5 (the default threshold, chosen on the dev split: no false
    positive there), and 1.0 to 1.0.
    """
    return min(max((probability - MODEL_FLOOR) / (1.0 - MODEL_FLOOR), 0.0), 1.0)


def packaged_head(file_name: str) -> Path:
    """A head shipped in the package's data directory."""
    return Path(str(resources.files("smartflow") / "data" / file_name))


def merge_hits(hits: list[Hit]) -> list[Hit]:
    """One hit per overlapping region: the strongest, spanning them all."""
    merged: list[Hit] = []
    for hit in sorted(hits, key=lambda h: (h.start, -h.end)):
        if merged and hit.start < merged[-1].end:
            last = merged[-1]
            best = last if last.score >= hit.score else hit
            merged[-1] = Hit(last.start, max(last.end, hit.end), best.score, best.category)
        else:
            merged.append(hit)
    return merged


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


def threshold_from_config(config: Mapping[str, Any], kind: str) -> float:
    """A head-backed guardrail's config: only ``threshold``, in (0, 1] (default
    0.5); ValueError naming the guardrail type for anything else."""
    if not isinstance(config, Mapping):
        # The contract is ValueError for any bad config, whatever its shape.
        raise ValueError(f"{kind} config must be an object")  # noqa: TRY004
    unknown = set(config) - {"threshold"}
    if unknown:
        raise ValueError(f"{kind} config: unknown key(s) {sorted(unknown)}; allowed: threshold")
    threshold = config.get("threshold", 0.5)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not (
            0.0 < float(threshold) <= 1.0):
        raise ValueError(f"{kind} config: threshold must be a number in (0, 1], "
                         f"got {threshold!r}")
    return float(threshold)


class HeadDetector:
    """What the detectors with a trained head share: the threshold a finding
    must reach, the head (read on first use) and the embedder for windows."""

    def __init__(self, embed: Embed | None, *, threshold: float, head_path: Path) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
        self._embed = embed
        self._threshold = float(threshold)
        self._head = LinearHead(head_path)

    @property
    def threshold(self) -> float:
        return self._threshold

    def load(self) -> None:
        """Read the classifier weights now rather than on the first request."""
        self._head.load()

"""Train the guardrails' linear heads offline and write them into the package.

    .venv/bin/python bench/train_guard_heads.py [injection] [toxicity]

Reads src/smartflow/data/{injection,toxicity}_train.jsonl, embeds every text
with the project's local sentence model, fits a multinomial logistic
regression (scikit-learn) per guard and writes its weights as plain arrays
(src/smartflow/data/{injection,toxicity}_head.npz, a few thousand floats).
Run time loads those arrays only: no scikit-learn object, no training.
The evaluation sets in bench/data/ are never read here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "src" / "smartflow" / "data"
sys.path.insert(0, str(REPO / "src"))

from smartflow.embeddings.encoder import Encoder
from smartflow.embeddings.model_files import ensure_model
from smartflow.policy.linear_model import save_head

# Benign rows of any flavour train one "benign" class.
_BENIGN = {"benign", "devops", "benign_doc"}


def load_rows(path: Path) -> list[dict[str, object]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def class_of(row: dict[str, object]) -> str:
    if row["label"] == 0:
        return "benign"
    category = str(row["category"])
    return "benign" if category in _BENIGN else category


def train(encoder: Encoder, name: str, c: float) -> None:
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]

    rows = load_rows(DATA / f"{name}_train.jsonl")
    texts = [str(r["text"]) for r in rows]
    labels = [class_of(r) for r in rows]
    classes = ["benign", *sorted(set(labels) - {"benign"})]
    y = np.array([classes.index(label) for label in labels])
    x = encoder.encode(texts)
    # Benign rows weigh more: a false alarm on ordinary text costs more
    # than a paraphrase the rules catch anyway.
    weights = np.where(y == 0, 2.0, 1.0)
    model = LogisticRegression(C=c, max_iter=2000)
    model.fit(x, y, sample_weight=weights)
    save_head(DATA / f"{name}_head.npz", model.coef_, model.intercept_, classes)
    accuracy = float((model.predict(x) == y).mean())
    print(f"{name}: {len(rows)} rows, classes {classes}, train accuracy {accuracy:.3f}, "
          f"{model.coef_.size + model.intercept_.size} floats -> {name}_head.npz")


GUARDS = ("injection", "toxicity")


def main() -> None:
    # Naming guards retrains only those: the other heads stay byte for byte.
    wanted = sys.argv[1:] or list(GUARDS)
    unknown = sorted(set(wanted) - set(GUARDS))
    if unknown:
        raise SystemExit(f"unknown guard(s) {unknown}; choose from {list(GUARDS)}")
    encoder = Encoder(ensure_model())
    for name in wanted:
        train(encoder, name, c=4.0)


if __name__ == "__main__":
    main()

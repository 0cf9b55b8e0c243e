"""Policy documents and their clauses, in Redis.

Per document, three values:

* ``sf:policy:docs`` (hash): document id -> JSON metadata (id, name, policy,
  clause count, characters, created_at). A document exists once it is here.
* ``sf:policy:doc:<id>:clauses``: JSON list of its clauses (text, section).
* ``sf:policy:doc:<id>:vec``: the clause embeddings, float16 row-major
  ``(clauses, dim)`` (half the bytes of float32; cosine similarity moves by
  less than 1e-3, far below any threshold's resolution).

A write stores the clauses and vectors first and the metadata last, so a
worker that sees a document also finds its vectors; a delete removes the
metadata first. Every command names one key, so any key may live in any
Redis Cluster slot. Documents never change once stored (a new version is a
new upload), so a worker caches each document's vectors by id.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from smartflow.policy.clauses import Clause
from smartflow.store.fast_client import StoreClient
from smartflow.store.keyspace import PREFIX

DOCUMENTS_KEY = PREFIX + "policy:docs"
DIM = 384


def clauses_key(doc_id: str) -> str:
    return f"{PREFIX}policy:doc:{doc_id}:clauses"


def vectors_key(doc_id: str) -> str:
    return f"{PREFIX}policy:doc:{doc_id}:vec"


@dataclass(frozen=True, slots=True)
class DocumentMeta:
    id: str
    name: str
    policy: str | None
    clauses: int
    chars: int
    created_at: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "policy": self.policy,
                "clauses": self.clauses, "chars": self.chars,
                "created_at": round(self.created_at, 3)}


def _meta_from_json(raw: bytes | str) -> DocumentMeta | None:
    try:
        value = orjson.loads(raw)
        return DocumentMeta(id=str(value["id"]), name=str(value["name"]),
                            policy=value.get("policy"), clauses=int(value["clauses"]),
                            chars=int(value.get("chars", 0)),
                            created_at=float(value.get("created_at", 0.0)))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None  # written by hand or by another version: skipped, never fatal


def new_document_id() -> str:
    return "pdoc_" + secrets.token_hex(8)


def encode_vectors(vectors: np.ndarray) -> bytes:
    return np.ascontiguousarray(vectors, dtype=np.float16).tobytes()


def decode_vectors(raw: bytes, rows: int) -> np.ndarray | None:
    """float32 ``(rows, DIM)``, or None when the stored bytes do not fit."""
    if len(raw) != rows * DIM * 2:
        return None
    return np.frombuffer(raw, dtype=np.float16).astype(np.float32).reshape(rows, DIM)


class DocumentStore:
    def __init__(self, store: StoreClient) -> None:
        self._store = store

    async def add(self, name: str, policy: str | None, chars: int, clauses: list[Clause],
                  vectors: np.ndarray) -> DocumentMeta:
        if vectors.shape != (len(clauses), DIM):
            raise ValueError(f"expected {len(clauses)} vectors of {DIM}, got {vectors.shape}")
        meta = DocumentMeta(id=new_document_id(), name=name, policy=policy,
                            clauses=len(clauses), chars=chars, created_at=time.time())
        store = self._store
        await store.execute("SET", clauses_key(meta.id),
                            orjson.dumps([clause.to_json() for clause in clauses]),
                            key=clauses_key(meta.id))
        await store.execute("SET", vectors_key(meta.id), encode_vectors(vectors),
                            key=vectors_key(meta.id))
        await store.execute("HSET", DOCUMENTS_KEY, meta.id, orjson.dumps(meta.to_json()),
                            key=DOCUMENTS_KEY)
        return meta

    async def list_all(self) -> list[DocumentMeta]:
        raw = await self._store.execute("HGETALL", DOCUMENTS_KEY, key=DOCUMENTS_KEY)
        metas = [_meta_from_json(raw[i + 1]) for i in range(0, len(raw or []), 2)]
        return sorted((meta for meta in metas if meta is not None),
                      key=lambda meta: (meta.created_at, meta.id))

    async def get(self, doc_id: str) -> DocumentMeta | None:
        raw = await self._store.execute("HGET", DOCUMENTS_KEY, doc_id, key=DOCUMENTS_KEY)
        return None if raw is None else _meta_from_json(raw)

    async def clauses(self, doc_id: str) -> list[dict[str, Any]]:
        raw = await self._store.execute("GET", clauses_key(doc_id), key=clauses_key(doc_id))
        if raw is None:
            return []
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return []
        return value if isinstance(value, list) else []

    async def vectors(self, meta: DocumentMeta) -> np.ndarray | None:
        raw = await self._store.execute("GET", vectors_key(meta.id), key=vectors_key(meta.id))
        return None if raw is None else decode_vectors(raw, meta.clauses)

    async def delete(self, doc_id: str) -> bool:
        store = self._store
        removed = await store.execute("HDEL", DOCUMENTS_KEY, doc_id, key=DOCUMENTS_KEY)
        await store.execute("DEL", clauses_key(doc_id), key=clauses_key(doc_id))
        await store.execute("DEL", vectors_key(doc_id), key=vectors_key(doc_id))
        return bool(removed)

"""Vector math of the shared index: float16 scoring and the IVF partition.

Nothing here knows about shared memory, locks or namespaces: every function
takes arrays and returns arrays, so it is tested and benchmarked on its own.

Scoring. Rows are stored as float16 (half the bytes of float32, and the
scores move by at most ~1e-3, far below any semantic threshold). numpy has
no float16 BLAS and its float16 -> float32 cast is a scalar loop (~1.3 ns
per element here, measured: 34 ms for 50k x 384 rows), which would dominate
every search. onnxruntime's Cast uses F16C/AVX and its MatMul is BLAS-class,
so ``Float16Scorer`` runs one tiny graph ``Cast(X) @ q`` over blocks of 1024
rows (blocks keep the float32 copy in L2): 5.7 ms for the same 50k rows.
onnxruntime is already a dependency (the embedding model runs on it).

IVF. Past a threshold the index stops scanning every row of a namespace:
k-means centroids (trained with sklearn's MiniBatchKMeans on a sample of the
live rows) partition the rows into ``nlist`` lists, and a query is scored
only against the rows of the ``nprobe`` lists whose centroids are nearest.
Rows are unit vectors, so the nearest centroid in Euclidean distance is the
one maximising ``x.c - |c|^2 / 2``: one matrix product, no square roots.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# Rows per onnxruntime call: small enough that the float32 block (1.5 MiB at
# dim 384) stays in L2, large enough that the ~20 us per call is amortised.
SCORE_BLOCK = 1024
# Rows per block when assigning rows to lists (a [block, nlist] float32
# product must stay a few MiB).
ASSIGN_BLOCK = 8192
MIN_NLIST = 8
# Points per centroid in the training sample: a partition gains little from
# more than a few dozen (faiss warns below 39), and training time is linear
# in the sample.
SAMPLE_PER_LIST = 32


def choose_nlist(live_rows: int, max_nlist: int) -> int:
    """Number of IVF lists for ``live_rows`` rows: about 4 * sqrt(n), capped."""
    wanted = round(4.0 * math.sqrt(max(live_rows, 1)))
    return max(1, min(max_nlist, max(MIN_NLIST, wanted), live_rows))


def train_centroids(sample: np.ndarray, nlist: int, *, seed: int = 0) -> np.ndarray:
    """k-means centroids (float32 [nlist, dim]) of the float32 rows in ``sample``."""
    from sklearn.cluster import MiniBatchKMeans  # type: ignore[import-untyped]

    # Random init, not k-means++: k-means++ costs nlist passes over the init
    # sample (tens of seconds at nlist 2048, dim 384) and a partition only
    # needs lists of similar size, which a few mini-batch epochs give.
    kmeans = MiniBatchKMeans(
        n_clusters=nlist,
        init="random",
        n_init=1,
        batch_size=max(8192, 2 * nlist),
        max_iter=4,
        max_no_improvement=3,
        reassignment_ratio=0.01,
        random_state=seed,
    )
    kmeans.fit(np.ascontiguousarray(sample, dtype=np.float32))
    return np.ascontiguousarray(kmeans.cluster_centers_, dtype=np.float32)


def half_sq_norms(centroids: np.ndarray) -> np.ndarray:
    """``|c|^2 / 2`` per centroid, the bias of the nearest-centroid product."""
    return (0.5 * np.einsum("ij,ij->i", centroids, centroids)).astype(np.float32)


def assign(rows: np.ndarray, centroids: np.ndarray, half_sq: np.ndarray) -> np.ndarray:
    """Index (int32) of the nearest centroid of every float32 row."""
    if len(rows) == 1:
        # One row (every add once trained): a matrix-vector product. As a
        # 1 x n matrix product OpenBLAS takes ~10x longer (measured).
        products = centroids @ rows[0]
        products -= half_sq
        return np.array([products.argmax()], dtype=np.int32)
    out = np.empty(len(rows), dtype=np.int32)
    for start in range(0, len(rows), ASSIGN_BLOCK):
        block = rows[start:start + ASSIGN_BLOCK]
        products = block @ centroids.T
        products -= half_sq
        out[start:start + len(block)] = products.argmax(axis=1)
    return out


def assign_f16(rows: np.ndarray, centroids: np.ndarray, half_sq: np.ndarray) -> np.ndarray:
    """``assign`` for float16 rows, converting one block at a time (no full float32 copy)."""
    out = np.empty(len(rows), dtype=np.int32)
    for start in range(0, len(rows), ASSIGN_BLOCK):
        block = rows[start:start + ASSIGN_BLOCK].astype(np.float32)
        out[start:start + len(block)] = assign(block, centroids, half_sq)
    return out


def probe(query: np.ndarray, centroids: np.ndarray, half_sq: np.ndarray,
          nprobe: int) -> np.ndarray:
    """The ``nprobe`` lists (int64, any order) whose centroids are nearest ``query``."""
    products = centroids @ query
    products -= half_sq
    if nprobe >= len(products):
        return np.arange(len(products), dtype=np.int64)
    return np.argpartition(-products, nprobe - 1)[:nprobe].astype(np.int64)


# ---------------------------------------------------------------- scoring graph
#
# The graph is two nodes; it is encoded by hand (field numbers from onnx.proto)
# because `import onnx` alone takes ~1 s, paid by every worker's first search.

_FLOAT = 1     # TensorProto.DataType
_FLOAT16 = 10
_ATTR_INT = 2  # AttributeProto.AttributeType


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _bytes_field(number: int, payload: bytes | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _tensor_info(name: str, elem_type: int, dims: tuple[int | str, ...]) -> bytes:
    """ValueInfoProto: name, TypeProto.tensor_type {elem_type, shape}."""
    shape = b"".join(
        _bytes_field(1, _bytes_field(2, d) if isinstance(d, str) else _int_field(1, d))
        for d in dims
    )
    tensor = _int_field(1, elem_type) + _bytes_field(2, shape)
    return _bytes_field(1, name) + _bytes_field(2, _bytes_field(1, tensor))


def _node(op_type: str, inputs: tuple[str, ...], output: str, attribute: bytes = b"") -> bytes:
    """NodeProto: input*, output, op_type, attribute?"""
    body = b"".join(_bytes_field(1, name) for name in inputs)
    body += _bytes_field(2, output) + _bytes_field(4, op_type)
    return body + (_bytes_field(5, attribute) if attribute else b"")


def score_model(dim: int) -> bytes:
    """ONNX model ``y[n, 1] = float(x[n, dim] as float16) @ q[dim, 1]``."""
    cast_to = _bytes_field(1, "to") + _int_field(3, _FLOAT) + _int_field(20, _ATTR_INT)
    graph = (
        _bytes_field(1, _node("Cast", ("x",), "xf", cast_to))
        + _bytes_field(1, _node("MatMul", ("xf", "q"), "y"))
        + _bytes_field(2, "score_f16")
        + _bytes_field(11, _tensor_info("x", _FLOAT16, ("n", dim)))
        # q as a [dim, 1] matrix: with a 1-D q onnxruntime's MatMul leaves
        # its GEMM path and runs ~5x slower (measured).
        + _bytes_field(11, _tensor_info("q", _FLOAT, (dim, 1)))
        + _bytes_field(12, _tensor_info("y", _FLOAT, ("n", 1)))
    )
    opset = _bytes_field(1, "") + _int_field(2, 17)
    return _int_field(1, 9) + _bytes_field(7, graph) + _bytes_field(8, opset)


class Float16Scorer:
    """Dot products of float16 rows with one float32 query, via onnxruntime.

    The session is built on first use, so an instance made before ``fork``
    carries none into the children (an onnxruntime session does not survive
    a fork); the index keeps one scorer per process.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._session: Any = None

    def _build(self) -> Any:
        import onnxruntime as ort  # type: ignore[import-untyped]

        options = ort.SessionOptions()
        # One thread: a gateway worker owns one core, and the calls are
        # short; a spinning pool would burn the core between requests.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(score_model(self.dim), options,
                                    providers=["CPUExecutionProvider"])

    def scores(self, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
        """float32 [len(rows)]: ``rows`` float16 [n, dim] (C-contiguous), ``query`` float32."""
        if self._session is None:
            self._session = self._build()
        column = query.reshape(self.dim, 1)
        n = len(rows)
        if n <= SCORE_BLOCK:
            if n == 0:
                return np.empty(0, dtype=np.float32)
            result: np.ndarray = self._session.run(None, {"x": rows, "q": column})[0]
            return result.reshape(n)
        out = np.empty(n, dtype=np.float32)
        for start in range(0, n, SCORE_BLOCK):
            block = rows[start:start + SCORE_BLOCK]
            out[start:start + len(block)] = self._session.run(
                None, {"x": block, "q": column})[0].reshape(len(block))
        return out

    def scores_of(self, matrix: np.ndarray, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
        """Scores of ``matrix[rows]`` (row indices, ascending), gathering block by block.

        A block of consecutive rows is passed as a view (no copy), which is
        the common case for a namespace written in one go.
        """
        n = len(rows)
        out = np.empty(n, dtype=np.float32)
        for start in range(0, n, SCORE_BLOCK):
            idx = rows[start:start + SCORE_BLOCK]
            first, last = int(idx[0]), int(idx[-1])
            if last - first + 1 == len(idx):
                block = matrix[first:last + 1]
            else:
                block = matrix[idx]
            out[start:start + len(idx)] = self.scores(block, query)
        return out

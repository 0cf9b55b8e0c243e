"""The node's shared-memory embedding index, as its users see it.

Processes are real: children are forked (as the supervisor forks workers)
and attach the segment by name. Only the pytest process trains IVF
partitions: scikit-learn's OpenMP runtime does not survive a fork of a
process that already used it.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import os
import traceback
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from smartflow.embeddings.shared_index import SHM_DIR, SharedIndex

DIM = 32
FORK = multiprocessing.get_context("fork")
# float16 keeps ~11 bits of mantissa: a cosine of unit vectors moves by at
# most ~dim * 2^-11 * max|x_i q_i|, well under this.
F16_TOLERANCE = 2e-3


def unit_rows(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def clustered(n: int, dim: int, clusters: int, spread: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    rows = centres[rng.integers(0, clusters, n)]
    rows += spread * rng.standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def noisy(rows: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    out = rows + sigma * np.random.default_rng(seed).standard_normal(rows.shape).astype(
        np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture
def make_index() -> Iterator[Callable[..., SharedIndex]]:
    made: list[SharedIndex] = []

    def make(**kwargs: Any) -> SharedIndex:
        kwargs.setdefault("capacity", 10_000)
        kwargs.setdefault("dim", DIM)
        index = SharedIndex.create(f"sf-idx-test-{os.getpid()}-{uuid.uuid4().hex[:8]}",
                                   **kwargs)
        made.append(index)
        return index

    yield make
    for index in made:
        index.close()
        index.unlink()


def _report(queue: Any, target: Callable[..., Any], *args: Any) -> None:
    """Child body: put ("ok", result) or ("error", traceback) so the parent never waits blind."""
    try:
        outcome = ("ok", target(*args))
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test
        outcome = ("error", traceback.format_exc())
    queue.put(outcome)
    queue.close()
    queue.join_thread()


def start_child(target: Callable[..., Any], *args: Any) -> tuple[Any, Any]:
    """Fork a child running ``target(*args)``; returns (process, queue)."""
    queue = FORK.Queue()
    child = FORK.Process(target=_report, args=(queue, target, *args))
    child.start()
    return child, queue


def child_result(child: Any, queue: Any) -> Any:
    status, value = queue.get(timeout=120)
    child.join(timeout=60)
    assert status == "ok", value
    assert child.exitcode == 0
    return value


def run_child(target: Callable[..., Any], *args: Any) -> Any:
    """Run ``target(*args)`` in a forked child; return its result."""
    return child_result(*start_child(target, *args))


# --------------------------------------------------------------------------- processes


def _child_reads_and_writes(name: str, vectors: np.ndarray) -> list[tuple[int, float]]:
    with SharedIndex.attach(name) as index:
        seen = index.search("docs", vectors[0], k=1)
        index.add("docs", 0, 2, vectors[1])
        return seen


def test_a_forked_worker_attached_by_name_shares_rows_both_ways(
        make_index: Callable[..., SharedIndex]) -> None:
    index = make_index()
    vectors = unit_rows(2)
    index.add("docs", 0, 1, vectors[0])

    seen_by_child = run_child(_child_reads_and_writes, index.name, vectors)

    assert seen_by_child[0][0] == 1
    assert seen_by_child[0][1] == pytest.approx(1.0, abs=F16_TOLERANCE)
    hits = index.search("docs", vectors[1], k=1)
    assert hits[0][0] == 2
    assert hits[0][1] == pytest.approx(1.0, abs=F16_TOLERANCE)


def _child_exits(name: str) -> int:
    index = SharedIndex.attach(name)
    live = index.live_count()
    index.close()
    return live


def test_a_worker_exiting_leaves_the_segment_to_the_others(
        make_index: Callable[..., SharedIndex]) -> None:
    index = make_index()
    index.add("docs", 0, 1, unit_rows(1)[0])

    assert run_child(_child_exits, index.name) == 1

    assert (SHM_DIR / index.name).exists()
    with SharedIndex.attach(index.name) as again:
        assert again.live_count() == 1


def _child_appends(name: str, ids: range, vectors: np.ndarray,
                   start: multiprocessing.synchronize.Event) -> int:
    with SharedIndex.attach(name) as index:
        start.wait(30)
        for entry_id in ids:
            index.add("docs", 0, entry_id, vectors[entry_id])
        return len(ids)


def test_two_processes_appending_at_once_lose_no_row(
        make_index: Callable[..., SharedIndex]) -> None:
    index = make_index()
    per_child = 2000
    vectors = unit_rows(2 * per_child, seed=1)
    start = FORK.Event()
    children = [
        start_child(_child_appends, index.name, range(i * per_child, (i + 1) * per_child),
                    vectors, start)
        for i in range(2)
    ]
    start.set()
    assert [child_result(*child) for child in children] == [per_child, per_child]

    assert index.live_count("docs") == 2 * per_child
    for entry_id in range(0, 2 * per_child, 7):
        hit = index.search("docs", vectors[entry_id], k=1)[0]
        assert hit[0] == entry_id
        assert hit[1] == pytest.approx(1.0, abs=F16_TOLERANCE)


def _child_hammers_search(name: str, vectors: np.ndarray,
                          ready: multiprocessing.synchronize.Event,
                          stop: multiprocessing.synchronize.Event) -> tuple[int, list[str]]:
    rng = np.random.default_rng(7)
    bad: list[str] = []
    searches = 0
    with SharedIndex.attach(name) as index:
        ready.set()
        while not stop.is_set() or searches < 300:
            query = vectors[rng.integers(len(vectors))] if searches % 2 else \
                unit_rows(1, seed=searches + 1000)[0]
            for entry_id, score in index.search("docs", query, k=5):
                if not 0 <= entry_id < len(vectors):
                    bad.append(f"entry {entry_id} was never added")
                elif abs(score - float(vectors[entry_id] @ query)) > F16_TOLERANCE:
                    bad.append(f"entry {entry_id}: score {score}, "
                               f"true {float(vectors[entry_id] @ query)}")
            searches += 1
    return searches, bad[:10]


def test_searches_while_a_writer_appends_compacts_and_trains_see_only_whole_rows(
        make_index: Callable[..., SharedIndex]) -> None:
    # Small capacity and IVF threshold, so the writer goes through every
    # row-moving path: compaction, eviction when full, IVF (re)training.
    index = make_index(capacity=3000, ivf_threshold=400)
    vectors = clustered(6000, DIM, clusters=20, spread=0.5, seed=3)
    ready, stop = FORK.Event(), FORK.Event()
    reader = start_child(_child_hammers_search, index.name, vectors, ready, stop)
    try:
        assert ready.wait(30)
        rng = np.random.default_rng(11)
        generation_before = index.generation()
        for round_ in range(30):
            ids = rng.choice(len(vectors), size=200, replace=False)
            index.add_many("docs", [0] * 100, ids[:100], vectors[ids[:100]])
            for entry_id in ids[100:].tolist():
                index.add("docs", 0, entry_id, vectors[entry_id])
            index.remove("docs", rng.choice(len(vectors), size=40).tolist())
            if round_ % 3 == 0:
                index.compact()
            if round_ % 10 == 9:
                index.maintain()
    finally:
        stop.set()
    searches, bad = child_result(*reader)

    assert bad == []
    assert searches >= 300
    assert index.stats()["nlist"] > 0
    assert index.stats()["evicted"] > 0
    assert index.generation() - generation_before >= 20


# --------------------------------------------------------------------------- semantics


def test_namespaces_and_groups_do_not_see_each_other(
        make_index: Callable[..., SharedIndex]) -> None:
    index = make_index()
    v = unit_rows(3)
    index.add("cache", 10, 1, v[0])
    index.add("cache", 20, 2, v[1])
    index.add("store", 0, 1, v[2])

    assert [e for e, _ in index.search("cache", v[0], k=5)] == [1, 2]
    assert [e for e, _ in index.search("cache", v[0], k=5, group=20)] == [2]
    assert [e for e, _ in index.search("cache", v[1], k=5, group=10)] == [1]
    assert index.search("cache", v[0], k=5, group=30) == []
    assert [e for e, _ in index.search("store", v[0], k=5)] == [1]
    assert index.search("nothing", v[0], k=5) == []
    assert index.live_count("cache") == 2
    assert index.live_count("store") == 1
    assert index.live_count() == 3


def test_results_come_best_first_and_honour_k_min_score_and_where(
        make_index: Callable[..., SharedIndex]) -> None:
    index = make_index()
    v = unit_rows(50, seed=5)
    index.add_many("docs", [0] * 50, range(50), v)
    query = v[7]

    hits = index.search("docs", query, k=10)
    truth = np.argsort(-(v @ query))[:10]
    assert [e for e, _ in hits] == truth.tolist()
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    for entry_id, score in hits:
        assert score == pytest.approx(float(v[entry_id] @ query), abs=F16_TOLERANCE)

    assert [e for e, _ in index.search("docs", query, k=10, min_score=0.99)] == [7]
    even = index.search("docs", query, k=3, where=lambda ids: ids % 2 == 0)
    assert [e for e, _ in even] == [e for e in np.argsort(-(v @ query)).tolist()
                                    if e % 2 == 0][:3]


def test_re_adding_an_entry_replaces_its_vector(make_index: Callable[..., SharedIndex]) -> None:
    index = make_index()
    old, new = unit_rows(2, seed=9)
    index.add("docs", 0, 42, old)
    index.add("docs", 0, 42, new)

    assert index.live_count("docs") == 1
    entry_id, score = index.search("docs", old, k=5)[0]
    assert entry_id == 42
    assert score == pytest.approx(float(old @ new), abs=F16_TOLERANCE)
    # The same id in another namespace is another entry.
    index.add("other", 0, 42, old)
    assert index.live_count() == 2


def test_add_many_keeps_the_last_vector_of_a_repeated_id(
        make_index: Callable[..., SharedIndex]) -> None:
    index = make_index()
    v = unit_rows(3, seed=2)
    index.add_many("docs", [0, 0, 0], [5, 6, 5], v)

    assert index.live_count("docs") == 2
    assert index.search("docs", v[2], k=1)[0][0] == 5
    assert index.search("docs", v[2], k=1)[0][1] == pytest.approx(1.0, abs=F16_TOLERANCE)


def test_remove_and_clear(make_index: Callable[..., SharedIndex]) -> None:
    index = make_index()
    v = unit_rows(10, seed=4)
    index.add_many("a", [0] * 10, range(10), v)
    index.add_many("b", [0] * 10, range(10), v)

    assert index.remove("a", [1, 2, 999]) == 2
    assert index.remove("a", [1]) == 0
    assert {e for e, _ in index.search("a", v[1], k=10)} == set(range(10)) - {1, 2}
    assert index.live_count("b") == 10

    assert index.clear("a") == 8
    assert index.search("a", v[0], k=10) == []
    assert index.live_count("b") == 10
    index.add("a", 0, 1, v[1])
    assert index.search("a", v[1], k=10)[0][0] == 1

    assert index.clear() == 11
    assert index.live_count() == 0
    assert index.search("b", v[0], k=10) == []
    index.add("b", 0, 3, v[3])
    assert [e for e, _ in index.search("b", v[3], k=10)] == [3]


def test_compaction_drops_dead_rows_and_keeps_every_live_entry(
        make_index: Callable[..., SharedIndex]) -> None:
    index = make_index()
    v = unit_rows(1000, seed=6)
    index.add_many("docs", [0] * 1000, range(1000), v)
    index.remove("docs", list(range(0, 1000, 2)))
    for entry_id in range(1, 100, 2):       # replaced rows leave dead rows behind too
        index.add("docs", 0, entry_id, v[entry_id])
    generation = index.generation()

    index.compact()

    assert index.generation() == generation + 2
    assert index.stats()["rows"] == index.live_count() == 500
    for entry_id in range(1, 1000, 2):
        hit = index.search("docs", v[entry_id], k=1)[0]
        assert hit[0] == entry_id
    assert index.search("docs", v[0], k=1)[0][0] != 0
    # The key table was rebuilt: replacing and removing by id still work.
    index.add("docs", 0, 1, v[0])
    assert index.live_count("docs") == 500
    assert index.remove("docs", [3]) == 1


def test_a_full_index_reuses_dead_rows_before_evicting(
        make_index: Callable[..., SharedIndex]) -> None:
    index = make_index(capacity=100)
    v = unit_rows(200, seed=8)
    index.add_many("docs", [0] * 100, range(100), v[:100])
    index.remove("docs", list(range(50)))

    for entry_id in range(100, 140):
        index.add("docs", 0, entry_id, v[entry_id])

    assert index.stats()["evicted"] == 0
    assert index.live_count("docs") == 90


def test_a_full_index_evicts_its_oldest_entries(make_index: Callable[..., SharedIndex]) -> None:
    index = make_index(capacity=100)
    v = unit_rows(250, seed=8)
    for entry_id in range(250):
        index.add("docs", 0, entry_id, v[entry_id])

    live = index.live_count("docs")
    assert 80 <= live <= 100
    assert index.stats()["evicted"] == 250 - live
    present = {e for e, _ in index.search("docs", v[0], k=250)}
    assert present == set(range(250 - live, 250))


def test_a_batch_larger_than_the_index_keeps_its_newest_rows(
        make_index: Callable[..., SharedIndex]) -> None:
    index = make_index(capacity=100)
    v = unit_rows(300, seed=12)
    index.add_many("docs", [0] * 300, range(300), v)

    assert index.live_count("docs") <= 100
    assert index.search("docs", v[299], k=1)[0][0] == 299


def test_ivf_search_agrees_with_brute_force(make_index: Callable[..., SharedIndex]) -> None:
    dim, n = 64, 20_000
    index = make_index(capacity=30_000, dim=dim, ivf_threshold=5_000)
    assert index.stats()["nlist"] == 0
    rows = clustered(n, dim, clusters=200, spread=0.35, seed=21)
    index.add_many("docs", [0] * n, range(n), rows)
    index.add_many("small", [0] * 100, range(100), rows[:100])

    index.maintain()
    assert index.stats()["nlist"] > 0
    # Past the threshold a search scores only the probed lists, not every row.
    assert len(index.search("docs", rows[0], k=n)) < n // 10
    # Rows written after training land in their list at once (searched as
    # the unsorted tail), and maintain() later sorts them in.
    late = clustered(3000, dim, clusters=200, spread=0.35, seed=22)
    index.add_many("docs", [0] * 3000, range(n, n + 3000), late)
    stored = np.concatenate([rows, late])
    queries = noisy(stored[::41], sigma=0.02, seed=23)
    truth = (queries @ stored.T).argmax(axis=1)

    found = np.array([index.search("docs", q, k=1)[0][0] for q in queries])
    assert (found == truth).mean() >= 0.99
    generation = index.generation()
    index.maintain()
    assert index.generation() == generation + 2
    found = np.array([index.search("docs", q, k=1)[0][0] for q in queries])
    assert (found == truth).mean() >= 0.99

    # A namespace below the threshold is still searched exhaustively.
    assert len(index.search("small", rows[0], k=1000)) == 100
    random_queries = unit_rows(20, dim=dim, seed=24)
    for q in random_queries:
        assert index.search("small", q, k=1)[0][0] == int((rows[:100] @ q).argmax())


def test_vectors_are_checked(make_index: Callable[..., SharedIndex]) -> None:
    index = make_index()
    with pytest.raises(ValueError):
        index.add("docs", 0, 1, np.zeros(DIM, dtype=np.float32))
    with pytest.raises(ValueError):
        index.add("docs", 0, 1, np.ones(DIM + 1, dtype=np.float32))
    with pytest.raises(ValueError):
        index.search("docs", np.full(DIM, np.nan, dtype=np.float32))
    # Not unit length: stored normalised, so scores stay cosines.
    index.add("docs", 0, 1, np.full(DIM, 3.0, dtype=np.float32))
    assert index.search("docs", np.ones(DIM, dtype=np.float32))[0][1] == pytest.approx(
        1.0, abs=F16_TOLERANCE)


# --------------------------------------------------------------------------- lifetime


def test_attach_refuses_a_segment_that_is_not_an_index() -> None:
    name = f"sf-idx-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path = SHM_DIR / name
    path.write_bytes(b"\0" * 4096)
    try:
        with pytest.raises(ValueError):
            SharedIndex.attach(name)
    finally:
        path.unlink()
        (SHM_DIR / f"{name}.lock").unlink(missing_ok=True)


def test_create_refuses_an_existing_name(make_index: Callable[..., SharedIndex]) -> None:
    index = make_index()
    with pytest.raises(FileExistsError):
        SharedIndex.create(index.name, capacity=10, dim=DIM)


def test_unlink_leaves_nothing_in_dev_shm() -> None:
    name = f"sf-idx-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    index = SharedIndex.create(name, capacity=1000, dim=DIM)
    index.add("docs", 0, 1, unit_rows(1)[0])
    index.search("docs", unit_rows(1)[0])
    index.close()
    index.unlink()

    assert [p.name for p in SHM_DIR.iterdir() if p.name.startswith(name)] == []
    with pytest.raises(FileNotFoundError):
        SharedIndex.attach(name)


def test_segments_of_dead_supervisors_are_swept_and_live_ones_kept() -> None:
    prefix = f"sf-idx-sweep{uuid.uuid4().hex[:6]}-"
    child = FORK.Process(target=os._exit, args=(0,))
    child.start()
    child.join(timeout=60)
    dead = SharedIndex.create(f"{prefix}{child.pid}", capacity=10, dim=DIM)
    alive = SharedIndex.create(f"{prefix}{os.getpid()}", capacity=10, dim=DIM)
    dead.close()
    try:
        assert SharedIndex.unlink_stale(prefix) == [dead.name]
        assert not (SHM_DIR / dead.name).exists()
        assert not (SHM_DIR / f"{dead.name}.lock").exists()
        assert (SHM_DIR / alive.name).exists()
    finally:
        alive.close()
        alive.unlink()
        dead.unlink()


def _child_dies_while_moving_rows(name: str) -> None:
    index = SharedIndex.attach(name)
    # What a writer killed in the middle of a compaction leaves behind.
    with index._locked() as views, index._rearranging(views):
        os._exit(0)


def test_a_writer_dying_mid_compaction_empties_the_index_for_a_rebuild(
        make_index: Callable[..., SharedIndex]) -> None:
    index = make_index()
    v = unit_rows(3, seed=13)
    index.add_many("docs", [0, 0], [1, 2], v[:2])
    index.save_feed_position((0, 0), (1700000000000, 3))

    child = FORK.Process(target=_child_dies_while_moving_rows, args=(index.name,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0

    assert index.generation() % 2 == 1
    # Readers do not hang on the odd generation; the next write repairs.
    assert index.search("docs", v[0], k=1) == []
    assert index.feed_position() == (0, 0)
    index.add("docs", 0, 3, v[2])
    assert [e for e, _ in index.search("docs", v[2], k=5)] == [3]

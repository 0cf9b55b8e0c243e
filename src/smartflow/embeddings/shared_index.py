"""One embedding matrix per node, in POSIX shared memory, searched by every worker.

The supervisor ``create``s the segment before it forks; each worker
``attach``es it by name, so the rows exist once per node whatever the worker
count. Redis is the system of record: this is a per-node cache of it, fed by
``index_feed.IndexFeed``.

Segment (``/dev/shm/<name>``), every part 64-byte aligned::

    header     int64 [32]          magic, version, capacity, dim, count,
                                   generation, IVF state, feed position, ...
    vectors    float16 [capacity, dim]   L2-normalised rows
    ns         int64 [capacity]    blake2b-64 of the namespace string
    group      int64 [capacity]    caller's partition key (0 for vector stores)
    entry      int64 [capacity]    caller's id
    alive      bool [capacity]
    list_id    int32 [capacity]    IVF list of the row (-1 before training)
    slot       int32 [capacity]    where the row's key sits in ``table``
    order      int32 [capacity]    live rows sorted by IVF list
    offsets    int64 [max_nlist+1] list l is order[offsets[l]:offsets[l+1]]
    centroids  float32 [max_nlist, dim], half_sq float32 [max_nlist]
    table      int32 [2^k >= 2 * capacity]   (namespace, entry) -> row,
                                   open addressing; -1 empty, -2 deleted

Concurrency. Writers (any process) serialise on ``flock`` of
``/dev/shm/<name>.lock`` (plus a thread lock: flock does not exclude two
threads sharing one descriptor). Readers take no lock:

* appends write a row's columns, then publish it by storing ``count``; a
  reader reads ``count`` once and never looks past it;
* removal only clears ``alive`` (one byte) and touches the key table, which
  readers never read;
* anything that moves rows or rewrites list ids (compaction, eviction, IVF
  training, clearing everything, re-sorting lists) runs inside a seqlock:
  ``generation`` odd while it works. A search reads the generation before
  and after and retries when it changed or was odd; after a few tries it
  searches under the write lock, so it always finishes.

The ordering relies on stores becoming visible in program order (x86-TSO);
the stores to publish are separated by many Python bytecodes and a syscall
follows them, which is as much as Python can do.

A writer that dies inside a seqlock leaves the generation odd and the rows
possibly half moved; the next writer to take the lock sees that, empties
the index and resets the feed position to 0-0, so the node's feed consumer
rebuilds it from Redis.

Why not ``multiprocessing.shared_memory``: on Python 3.11 every process that
opens a ``SharedMemory`` registers it with its resource tracker, which
unlinks the segment when that process exits (bpo-39959), so a worker exiting
would delete the node's index under the others. Opening ``/dev/shm/<name>``
with ``os.open`` + ``mmap`` keeps the lifetime in the supervisor's hands
(``unlink`` at exit) and attaches unrelated processes by name.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import mmap
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Self, cast

import numpy as np

from smartflow.embeddings import ivf

if TYPE_CHECKING:
    from typing_extensions import Buffer

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
MAGIC = 0x5346_4944_5831_0001  # "SFIDX1" + layout revision
VERSION = 1
DEFAULT_IVF_THRESHOLD = 50_000
DEFAULT_MAX_NLIST = 2048
DEFAULT_NPROBE = 8

# Header slots (int64).
H_MAGIC = 0
H_VERSION = 1
H_CAPACITY = 2
H_DIM = 3
H_COUNT = 4           # rows ever written since the last compaction: next free row
H_GENERATION = 5      # seqlock: odd while rows move
H_NLIST = 6           # IVF lists in use; 0 = not trained
H_TRAINED_AT = 7      # live rows when the partition was trained
H_FEED_MS = 8         # last stream id applied by the feed consumer
H_FEED_SEQ = 9
H_MAX_NLIST = 10
H_IVF_THRESHOLD = 11
H_ORDERED = 12        # rows below this are in ``order``; rows above are the tail
H_ORDER_LEN = 13
H_TABLE_SIZE = 14
H_NPROBE = 15
H_EVICTED = 16        # live rows dropped to make room, ever
HEADER_SLOTS = 32

EMPTY = -1
DELETED = -2
_ALIGN = 64
_M64 = (1 << 64) - 1
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
# Seqlock retries before a search falls back to the write lock (and so waits
# for the writer): the sleeps between them add up to ~30 ms, which covers
# re-sorting ~100k rows; longer moves (compaction, training's final swap at
# 1M rows) make searches wait on the lock instead of spinning.
_READ_ATTEMPTS = 6
# Fraction of capacity freed when the index is full and must evict: a
# compaction per added row would cost O(capacity) each time.
_EVICT_FRACTION = 10
# maintain() compacts once this share of the written rows is dead.
_COMPACT_DEAD_FRACTION = 4


def namespace_key(namespace: str) -> int:
    """The int64 a namespace string is stored as (blake2b, 8 bytes): stable across processes."""
    digest = hashlib.blake2b(namespace.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def _mix(ns_key: int, entry_id: int) -> int:
    """splitmix64 of the key pair: the home slot of a key in the table."""
    x = (ns_key * 0x9E3779B97F4A7C15 + entry_id) & _M64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _mix_many(ns_keys: np.ndarray, entry_ids: np.ndarray) -> np.ndarray:
    """``_mix`` over arrays (uint64 arithmetic wraps like the masked ints above)."""
    with np.errstate(over="ignore"):
        x = ns_keys.view(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + entry_ids.view(np.uint64)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    dtype: type[np.generic]
    shape: tuple[int, ...]
    offset: int

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def _layout(capacity: int, dim: int, max_nlist: int) -> tuple[list[_Field], int, int]:
    """Fields, total size and table size of a segment with these dimensions."""
    table_size = 1 << max(4, (2 * capacity - 1).bit_length())
    specs: list[tuple[str, type[np.generic], tuple[int, ...]]] = [
        ("header", np.int64, (HEADER_SLOTS,)),
        ("vectors", np.float16, (capacity, dim)),
        ("ns", np.int64, (capacity,)),
        ("group", np.int64, (capacity,)),
        ("entry", np.int64, (capacity,)),
        ("alive", np.bool_, (capacity,)),
        ("list_id", np.int32, (capacity,)),
        ("slot", np.int32, (capacity,)),
        ("order", np.int32, (capacity,)),
        ("offsets", np.int64, (max_nlist + 1,)),
        ("centroids", np.float32, (max_nlist, dim)),
        ("half_sq", np.float32, (max_nlist,)),
        ("table", np.int32, (table_size,)),
    ]
    fields: list[_Field] = []
    offset = 0
    for name, dtype, shape in specs:
        field = _Field(name, dtype, shape, offset)
        fields.append(field)
        offset = -(-(offset + field.nbytes) // _ALIGN) * _ALIGN
    return fields, offset, table_size


class _Views:
    """numpy and memoryview views of one mapping; dropped before the mapping closes."""

    def __init__(self, buffer: mmap.mmap, fields: list[_Field]) -> None:
        arrays: dict[str, np.ndarray] = {}
        for field in fields:
            count = int(np.prod(field.shape, dtype=np.int64))
            arrays[field.name] = np.frombuffer(
                buffer, dtype=field.dtype, count=count, offset=field.offset
            ).reshape(field.shape)
        self.header = arrays["header"]
        self.vectors = arrays["vectors"]
        self.ns = arrays["ns"]
        self.group = arrays["group"]
        self.entry = arrays["entry"]
        self.alive = arrays["alive"]
        self.list_id = arrays["list_id"]
        self.slot = arrays["slot"]
        self.order = arrays["order"]
        self.offsets = arrays["offsets"]
        self.centroids = arrays["centroids"]
        self.half_sq = arrays["half_sq"]
        self.table = arrays["table"]
        # The key table is probed one slot at a time from Python; memoryview
        # indexing returns plain ints several times faster than numpy scalars.
        # (ndarray only declares the buffer protocol to type checkers on 3.12+.)
        self.table_mv = memoryview(cast("Buffer", self.table)).cast("B").cast("i")
        self.ns_mv = memoryview(cast("Buffer", self.ns)).cast("B").cast("q")
        self.entry_mv = memoryview(cast("Buffer", self.entry)).cast("B").cast("q")

    def release(self) -> None:
        for view in (self.table_mv, self.ns_mv, self.entry_mv):
            view.release()


class SharedIndex:
    """One numpy matrix per node in POSIX shared memory: created by the
    supervisor before it forks, attached by every worker (no per-worker copy).

    Rows are (namespace, group, entry_id, unit vector). ``search`` returns
    (entry_id, cosine) pairs, best first, from the live rows of a namespace
    (and group). Writes are cheap appends; ``maintain`` does the heavy work
    (compaction, IVF training) and is meant to run off the event loop.
    """

    def __init__(self, name: str, buffer: mmap.mmap, fd: int, lock_fd: int) -> None:
        self.name = name
        self._buffer = buffer
        self._fd = fd
        self._lock_fd = lock_fd
        self._pid = os.getpid()
        self._thread_lock = threading.Lock()
        # A copy, not a view: a view alive in a traceback would keep the
        # mapping from closing when the segment is refused.
        header = np.frombuffer(buffer[: HEADER_SLOTS * 8], dtype=np.int64)
        if len(header) < HEADER_SLOTS or int(header[H_MAGIC]) != MAGIC \
                or int(header[H_VERSION]) != VERSION:
            raise ValueError(f"/dev/shm/{name} is not a Smartflow index segment")
        self.capacity = int(header[H_CAPACITY])
        self.dim = int(header[H_DIM])
        self.max_nlist = int(header[H_MAX_NLIST])
        self.ivf_threshold = int(header[H_IVF_THRESHOLD])
        self.nprobe = int(header[H_NPROBE])
        fields, size, _ = _layout(self.capacity, self.dim, self.max_nlist)
        if len(buffer) < size:
            raise ValueError(f"/dev/shm/{name} is {len(buffer)} bytes, expected {size}")
        self._views: _Views | None = _Views(buffer, fields)
        self._scorer = ivf.Float16Scorer(self.dim)

    # ------------------------------------------------------------------ lifetime

    @staticmethod
    def _paths(name: str) -> tuple[Path, Path]:
        if not _NAME.match(name):
            raise ValueError(f"invalid shared index name {name!r}")
        return SHM_DIR / name, SHM_DIR / f"{name}.lock"

    @classmethod
    def create(cls, name: str, *, capacity: int, dim: int,
               ivf_threshold: int = DEFAULT_IVF_THRESHOLD,
               max_nlist: int = DEFAULT_MAX_NLIST,
               nprobe: int = DEFAULT_NPROBE) -> SharedIndex:
        """Create the segment (fails if it exists). Pages are allocated on first write."""
        if not 0 < capacity < 2**30 or dim <= 0 or max_nlist <= 0 or nprobe <= 0:
            raise ValueError("capacity, dim, max_nlist and nprobe must be positive "
                             "(capacity below 2^30)")
        path, lock_path = cls._paths(name)
        fields, size, table_size = _layout(capacity, dim, max_nlist)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            buffer = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        views = _Views(buffer, fields)
        views.table.fill(EMPTY)
        views.list_id.fill(-1)
        header = views.header
        header[H_CAPACITY] = capacity
        header[H_DIM] = dim
        header[H_MAX_NLIST] = max_nlist
        header[H_IVF_THRESHOLD] = ivf_threshold
        header[H_NPROBE] = nprobe
        header[H_TABLE_SIZE] = table_size
        header[H_VERSION] = VERSION
        # Magic last: a process attaching while this runs refuses the segment
        # instead of reading a half-initialised header.
        header[H_MAGIC] = MAGIC
        views.release()
        del views, header
        return cls(name, buffer, fd, lock_fd)

    @classmethod
    def attach(cls, name: str) -> SharedIndex:
        """Map an existing segment by name (any process on the node)."""
        path, lock_path = cls._paths(name)
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            buffer = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except BaseException:
            os.close(fd)
            raise
        try:
            return cls(name, buffer, fd, lock_fd)
        except BaseException:
            buffer.close()
            os.close(fd)
            os.close(lock_fd)
            raise

    def close(self) -> None:
        """Detach: unmap and close the descriptors (the segment stays for others)."""
        if self._views is None:
            return
        self._views.release()
        self._views = None
        try:
            self._buffer.close()
        except BufferError:
            # An array of ours is still referenced (a traceback being
            # handled, say): the mapping goes when that is collected.
            pass
        os.close(self._fd)
        os.close(self._lock_fd)

    def unlink(self) -> None:
        """Remove the segment's names (supervisor, at exit); mappings stay valid until closed."""
        path, lock_path = self._paths(self.name)
        path.unlink(missing_ok=True)
        lock_path.unlink(missing_ok=True)

    @staticmethod
    def unlink_stale(prefix: str = "sf-idx-") -> list[str]:
        """Remove segments named ``<prefix><pid>`` whose creating process is gone.

        A supervisor killed with SIGKILL never runs ``unlink``; the next one
        calls this before ``create``. A live pid (even a reused one) keeps
        its segment: only certainly-dead owners are swept.
        """
        removed: list[str] = []
        for path in SHM_DIR.glob(f"{prefix}*"):
            pid = path.name[len(prefix):]
            if not pid.isdigit():
                continue
            try:
                os.kill(int(pid), 0)
                continue
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            path.unlink(missing_ok=True)
            (SHM_DIR / f"{path.name}.lock").unlink(missing_ok=True)
            removed.append(path.name)
        return removed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _v(self) -> _Views:
        if self._views is None:
            raise ValueError(f"shared index {self.name} is closed")
        return self._views

    # ------------------------------------------------------------------ locking

    def _after_fork(self) -> None:
        """A child that inherited this object gets its own lock description and scorer.

        flock locks belong to the open file description, which a fork shares:
        parent and child holding the inherited descriptor would not exclude
        each other.
        """
        path = SHM_DIR / f"{self.name}.lock"
        inherited = self._lock_fd
        self._lock_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(inherited)
        self._thread_lock = threading.Lock()
        self._scorer = ivf.Float16Scorer(self.dim)
        self._pid = os.getpid()

    @contextmanager
    def _locked(self) -> Iterator[_Views]:
        if os.getpid() != self._pid:
            self._after_fork()
        views = self._v
        with self._thread_lock:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                if int(views.header[H_GENERATION]) & 1:
                    self._repair_locked(views)
                yield views
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    @contextmanager
    def _rearranging(self, views: _Views) -> Iterator[None]:
        """Seqlock write side (caller holds the write lock). Left odd on error: see repair."""
        views.header[H_GENERATION] += 1
        yield
        views.header[H_GENERATION] += 1

    def _repair_locked(self, views: _Views) -> None:
        log.warning("shared index %s: a writer died while moving rows; emptying it so the "
                    "feed rebuilds it from Redis", self.name)
        header = views.header
        views.alive[: int(header[H_COUNT])] = False
        views.table.fill(EMPTY)
        for slot in (H_COUNT, H_NLIST, H_TRAINED_AT, H_ORDERED, H_ORDER_LEN,
                     H_FEED_MS, H_FEED_SEQ):
            header[slot] = 0
        header[H_GENERATION] += 1

    # ------------------------------------------------------------------ header

    def generation(self) -> int:
        return int(self._v.header[H_GENERATION])

    def feed_position(self) -> tuple[int, int]:
        """Last stream id (ms, seq) the node's feed consumer applied; (0, 0) on a fresh segment."""
        header = self._v.header
        return int(header[H_FEED_MS]), int(header[H_FEED_SEQ])

    def save_feed_position(self, expected: tuple[int, int], new: tuple[int, int]) -> bool:
        """Store ``new`` if the position is still ``expected`` (a repair may have reset it)."""
        with self._locked() as views:
            header = views.header
            if (int(header[H_FEED_MS]), int(header[H_FEED_SEQ])) != expected:
                return False
            header[H_FEED_MS], header[H_FEED_SEQ] = new
            return True

    def stats(self) -> dict[str, int]:
        """Counters for metrics: rows written, live rows, capacity, IVF lists, evictions."""
        views = self._v
        header = views.header
        count = int(header[H_COUNT])
        return {
            "capacity": self.capacity,
            "rows": count,
            "live": int(np.count_nonzero(views.alive[:count])),
            "generation": int(header[H_GENERATION]),
            "nlist": int(header[H_NLIST]),
            "evicted": int(header[H_EVICTED]),
            "segment_bytes": len(self._buffer),
        }

    # ------------------------------------------------------------------ writes

    def _unit_rows(self, vectors: np.ndarray) -> np.ndarray:
        rows = np.asarray(vectors, dtype=np.float32)
        if rows.ndim == 1:
            rows = rows.reshape(1, -1)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"vectors must have {self.dim} columns, got shape {rows.shape}")
        norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
        if not np.all(np.isfinite(norms)) or np.any(norms == 0):
            raise ValueError("vectors must be finite and non-zero")
        # Normalised here as well as by the caller: a cosine only holds for unit rows.
        return rows / norms[:, None]

    def add(self, namespace: str, group: int, entry_id: int, vector: np.ndarray) -> int:
        """Store one row; re-adding (namespace, entry_id) replaces the old row. Returns the row."""
        unit = self._unit_rows(vector)
        if unit.shape[0] != 1:
            raise ValueError("add takes one vector; use add_many")
        key = namespace_key(namespace)
        with self._locked() as views:
            self._reserve_locked(views, 1)
            return self._append_locked(views, key, np.array([group], dtype=np.int64),
                                       np.array([entry_id], dtype=np.int64), unit)

    def add_many(self, namespace: str, groups: Sequence[int], entry_ids: Sequence[int],
                 vectors: np.ndarray, *, skip_unchanged: bool = False) -> None:
        """Store many rows of one namespace under one lock (a later duplicate id wins).

        ``skip_unchanged`` leaves an entry alone when the index already holds
        its key with the same group and vector (the feed replaying entries
        this node already applied).
        """
        unit = self._unit_rows(vectors)
        group_arr = np.asarray(groups, dtype=np.int64).reshape(-1)
        id_arr = np.asarray(entry_ids, dtype=np.int64).reshape(-1)
        if not len(group_arr) == len(id_arr) == len(unit):
            raise ValueError("groups, entry_ids and vectors must have the same length")
        # Only the last row of an id matters; dropping the others up front
        # saves dead rows and makes the unchanged-check below order-free.
        _, last_from_end = np.unique(id_arr[::-1], return_index=True)
        if len(last_from_end) < len(id_arr):
            keep = np.sort(len(id_arr) - 1 - last_from_end)
            unit, group_arr, id_arr = unit[keep], group_arr[keep], id_arr[keep]
        key = namespace_key(namespace)
        with self._locked() as views:
            if skip_unchanged:
                changed = self._changed_locked(views, key, group_arr, id_arr, unit)
                unit, group_arr, id_arr = unit[changed], group_arr[changed], id_arr[changed]
            step = max(1, self.capacity // _EVICT_FRACTION)
            for start in range(0, len(id_arr), step):
                stop = start + step
                self._reserve_locked(views, len(id_arr[start:stop]))
                self._append_locked(views, key, group_arr[start:stop], id_arr[start:stop],
                                    unit[start:stop])

    def _changed_locked(self, views: _Views, key: int, groups: np.ndarray,
                        entry_ids: np.ndarray, unit: np.ndarray) -> np.ndarray:
        """Mask of the rows whose key is absent or stored with another group or vector."""
        halves = unit.astype(np.float16)
        changed = np.ones(len(entry_ids), dtype=bool)
        for i, (group, entry_id) in enumerate(zip(groups.tolist(), entry_ids.tolist())):
            row = self._lookup(views, key, entry_id)[1]
            if row >= 0 and int(views.group[row]) == group \
                    and np.array_equal(views.vectors[row], halves[i]):
                changed[i] = False
        return changed

    def _append_locked(self, views: _Views, key: int, groups: np.ndarray,
                       entry_ids: np.ndarray, unit: np.ndarray) -> int:
        header = views.header
        start = int(header[H_COUNT])
        stop = start + len(entry_ids)
        views.vectors[start:stop] = unit
        views.ns[start:stop] = key
        views.group[start:stop] = groups
        views.entry[start:stop] = entry_ids
        nlist = int(header[H_NLIST])
        if nlist:
            views.list_id[start:stop] = ivf.assign(unit, views.centroids[:nlist],
                                                   views.half_sq[:nlist])
        else:
            views.list_id[start:stop] = -1
        views.alive[start:stop] = True
        # Publish: from here on searches see the rows. The key table (and so
        # the death of a replaced row) follows, so a reader may briefly see
        # both versions of a key, never neither.
        header[H_COUNT] = stop
        for offset, entry_id in enumerate(entry_ids.tolist()):
            self._index_key_locked(views, key, entry_id, start + offset)
        return start

    def _lookup(self, views: _Views, key: int, entry_id: int) -> tuple[int, int]:
        """(slot, row) of a key in the table; row -1 if absent (slot: where to insert)."""
        table, ns, entry = views.table_mv, views.ns_mv, views.entry_mv
        mask = len(table) - 1
        slot = _mix(key, entry_id) & mask
        first_free = -1
        while True:
            row = table[slot]
            if row == EMPTY:
                return (slot if first_free < 0 else first_free), -1
            if row == DELETED:
                if first_free < 0:
                    first_free = slot
            elif ns[row] == key and entry[row] == entry_id:
                return slot, row
            slot = (slot + 1) & mask

    def _index_key_locked(self, views: _Views, key: int, entry_id: int, row: int) -> None:
        slot, old = self._lookup(views, key, entry_id)
        if old >= 0:
            views.alive[old] = False
        views.table_mv[slot] = row
        views.slot[row] = slot

    def _reserve_locked(self, views: _Views, needed: int) -> None:
        """Make room for ``needed`` appends: compact, evicting the oldest rows if that is not enough."""
        header = views.header
        count = int(header[H_COUNT])
        if self.capacity - count >= needed:
            return
        live = np.flatnonzero(views.alive[:count])
        want_free = max(needed, self.capacity // _EVICT_FRACTION)
        evict = len(live) - (self.capacity - want_free)
        if evict > 0:
            # Rows are in write order (compaction keeps it), so the first
            # live rows are the oldest.
            views.alive[live[:evict]] = False
            header[H_EVICTED] += evict
            log.info("shared index %s full: evicted the %d oldest rows", self.name, evict)
        self._compact_locked(views)

    def remove(self, namespace: str, entry_ids: Sequence[int] | np.ndarray) -> int:
        """Drop these entries of the namespace; returns how many were live."""
        key = namespace_key(namespace)
        removed = 0
        with self._locked() as views:
            for entry_id in np.asarray(entry_ids, dtype=np.int64).reshape(-1).tolist():
                slot, row = self._lookup(views, key, entry_id)
                if row >= 0:
                    removed += bool(views.alive[row])
                    views.alive[row] = False
                    views.table_mv[slot] = DELETED
        return removed

    def clear(self, namespace: str | None = None) -> int:
        """Drop every row of a namespace (None: of the whole index); returns how many were live."""
        with self._locked() as views:
            header = views.header
            count = int(header[H_COUNT])
            if namespace is None:
                live = int(np.count_nonzero(views.alive[:count]))
                # Rows will be rewritten from 0: readers holding the old count
                # must notice, hence the seqlock.
                with self._rearranging(views):
                    views.alive[:count] = False
                    views.table.fill(EMPTY)
                    for slot in (H_COUNT, H_NLIST, H_TRAINED_AT, H_ORDERED, H_ORDER_LEN):
                        header[slot] = 0
                return live
            rows = np.flatnonzero((views.ns[:count] == namespace_key(namespace))
                                  & views.alive[:count])
            views.alive[rows] = False
            views.table[views.slot[rows]] = DELETED
            return len(rows)

    # ------------------------------------------------------------------ compaction

    def compact(self) -> None:
        """Drop dead rows (under the write lock, bumping the generation)."""
        with self._locked() as views:
            self._compact_locked(views)

    def _compact_locked(self, views: _Views) -> None:
        header = views.header
        count = int(header[H_COUNT])
        keep = np.flatnonzero(views.alive[:count])
        kept = len(keep)
        with self._rearranging(views):
            if kept < count:
                for column in (views.vectors, views.ns, views.group, views.entry,
                               views.list_id):
                    _move_rows(column, keep)
                views.alive[:kept] = True
                views.alive[kept:count] = False
                header[H_COUNT] = kept
            self._rebuild_table_locked(views, kept)
            if int(header[H_NLIST]):
                self._rebuild_order_locked(views)

    def _rebuild_table_locked(self, views: _Views, count: int) -> None:
        """Re-insert rows [0, count) (all live, keys unique) into an empty table, vectorised.

        Linear probing in rounds: every pending row tries its current slot;
        of those landing on an empty slot one per slot wins, the rest move on.
        """
        table = views.table
        table.fill(EMPTY)
        mask = np.uint64(len(table) - 1)
        pending = np.arange(count, dtype=np.int64)
        slots = (_mix_many(views.ns[:count], views.entry[:count]) & mask).astype(np.int64)
        size_mask = len(table) - 1
        while len(pending):
            free = table[slots] == EMPTY
            won_slots, first = np.unique(slots[free], return_index=True)
            winners = pending[free][first]
            table[won_slots] = winners
            views.slot[winners] = won_slots
            lost = np.ones(len(pending), dtype=bool)
            lost[np.flatnonzero(free)[first]] = False
            pending = pending[lost]
            slots = (slots[lost] + 1) & size_mask

    def _rebuild_order_locked(self, views: _Views) -> None:
        """Sort the live rows by IVF list (caller holds the lock, inside the seqlock)."""
        header = views.header
        count = int(header[H_COUNT])
        nlist = int(header[H_NLIST])
        live = np.flatnonzero(views.alive[:count])
        lists = views.list_id[live]
        order = np.argsort(lists, kind="stable")
        views.order[: len(live)] = live[order]
        views.offsets[0] = 0
        views.offsets[1: nlist + 1] = np.cumsum(np.bincount(lists, minlength=nlist)[:nlist])
        header[H_ORDER_LEN] = len(live)
        header[H_ORDERED] = count

    # ------------------------------------------------------------------ IVF

    def maintain(self) -> None:
        """Compact when a quarter of the rows are dead; (re)train the IVF partition
        once a namespace passed ``ivf_threshold`` live rows (again when the live
        rows doubled since the last training); re-sort the lists when the
        unsorted tail grew. Seconds of CPU at a million rows: run it off the
        event loop (a thread or a separate process); adds wait only for the
        final swap."""
        views = self._v
        header = views.header
        count = int(header[H_COUNT])
        live = int(np.count_nonzero(views.alive[:count]))
        if count > 1024 and count - live > count // _COMPACT_DEAD_FRACTION:
            self.compact()
            count = int(header[H_COUNT])
        nlist = int(header[H_NLIST])
        due = nlist == 0 or live >= 2 * int(header[H_TRAINED_AT])
        if live >= self.ivf_threshold and due \
                and self._largest_namespace() >= self.ivf_threshold:
            self._train()
            return
        tail = count - int(header[H_ORDERED])
        if nlist and tail > max(1024, int(header[H_ORDER_LEN]) // 10):
            with self._locked() as locked, self._rearranging(locked):
                self._rebuild_order_locked(locked)

    def _largest_namespace(self) -> int:
        views = self._v
        count = int(views.header[H_COUNT])
        keys = views.ns[:count][views.alive[:count]]
        if not len(keys):
            return 0
        return int(np.unique(keys, return_counts=True)[1].max())

    def _train(self) -> bool:
        """Train centroids on a snapshot without the lock; swap them in under it.

        Rows below the snapshot's count keep their vectors unless the
        generation moves, so the expensive assignment runs unlocked too;
        only rows appended meanwhile are assigned under the lock.
        """
        views = self._v
        header = views.header
        generation = int(header[H_GENERATION])
        if generation & 1:
            return False
        count = int(header[H_COUNT])
        live = np.flatnonzero(views.alive[:count])
        nlist = ivf.choose_nlist(len(live), self.max_nlist)
        rng = np.random.default_rng(count)
        size = min(len(live), nlist * ivf.SAMPLE_PER_LIST)
        sample_rows = np.sort(rng.choice(live, size=size, replace=False))
        started = time.perf_counter()
        centroids = ivf.train_centroids(views.vectors[sample_rows].astype(np.float32), nlist)
        half_sq = ivf.half_sq_norms(centroids)
        lists = ivf.assign_f16(views.vectors[:count], centroids, half_sq)
        with self._locked() as locked:
            header = locked.header
            if int(header[H_GENERATION]) != generation:
                log.info("shared index %s: rows moved during IVF training; retrying later",
                         self.name)
                return False
            now = int(header[H_COUNT])
            late = ivf.assign_f16(locked.vectors[count:now], centroids, half_sq)
            with self._rearranging(locked):
                locked.centroids[:nlist] = centroids
                locked.half_sq[:nlist] = half_sq
                locked.list_id[:count] = lists
                locked.list_id[count:now] = late
                header[H_NLIST] = nlist
                header[H_TRAINED_AT] = len(live)
                self._rebuild_order_locked(locked)
        log.info("shared index %s: IVF trained, %d lists over %d rows in %.1f s",
                 self.name, nlist, len(live), time.perf_counter() - started)
        return True

    # ------------------------------------------------------------------ reads

    def live_count(self, namespace: str | None = None) -> int:
        views = self._v
        key = None if namespace is None else namespace_key(namespace)
        for _ in range(_READ_ATTEMPTS):
            generation = int(views.header[H_GENERATION])
            count = int(views.header[H_COUNT])
            alive = views.alive[:count]
            if key is None:
                live = int(np.count_nonzero(alive))
            else:
                live = int(np.count_nonzero(alive & (views.ns[:count] == key)))
            if not generation & 1 and int(views.header[H_GENERATION]) == generation:
                return live
            time.sleep(0.001)
        return live

    def search(self, namespace: str, query: np.ndarray, *, group: int | None = None,
               k: int = 1, min_score: float = -1.0,
               where: Callable[[np.ndarray], np.ndarray] | None = None,
               ) -> list[tuple[int, float]]:
        """The ``k`` best (entry_id, cosine) of the namespace's live rows, best first.

        ``group`` None searches every group of the namespace. ``where`` gets
        the candidates' entry ids (int64 array) and returns a boolean mask of
        those allowed; it may be called more than once per search.
        """
        if k <= 0:
            return []
        unit = self._unit_rows(query)[0]
        key = namespace_key(namespace)
        views = self._v
        if os.getpid() != self._pid:
            self._after_fork()
        header = views.header
        for attempt in range(_READ_ATTEMPTS):
            generation = int(header[H_GENERATION])
            if generation & 1:
                time.sleep(0.0005 * 2**attempt)
                continue
            try:
                hits = self._search_once(views, key, unit, group, k, min_score, where)
            except (IndexError, ValueError):
                # Torn read while rows moved: only an error if nothing moved.
                if int(header[H_GENERATION]) == generation:
                    raise
                continue
            if int(header[H_GENERATION]) == generation:
                return hits
        with self._locked() as locked:
            return self._search_once(locked, key, unit, group, k, min_score, where)

    def _search_once(self, views: _Views, key: int, query: np.ndarray, group: int | None,
                     k: int, min_score: float,
                     where: Callable[[np.ndarray], np.ndarray] | None,
                     ) -> list[tuple[int, float]]:
        header = views.header
        count = int(header[H_COUNT])
        mask = views.ns[:count] == key
        mask &= views.alive[:count]
        if group is not None:
            mask &= views.group[:count] == group
        nlist = int(header[H_NLIST])
        if nlist and np.count_nonzero(mask) >= self.ivf_threshold:
            rows = self._ivf_candidates(views, query, mask, count, nlist)
        else:
            rows = np.flatnonzero(mask)
        if not len(rows):
            return []
        scores = self._scorer.scores_of(views.vectors, rows, query)
        return _best(views.entry, rows, scores, k, min_score, where)

    def _ivf_candidates(self, views: _Views, query: np.ndarray, mask: np.ndarray,
                        count: int, nlist: int) -> np.ndarray:
        """Rows of the ``nprobe`` nearest lists (sorted list part + unsorted tail) passing ``mask``."""
        header = views.header
        probes = ivf.probe(query, views.centroids[:nlist], views.half_sq[:nlist], self.nprobe)
        ordered = int(header[H_ORDERED])
        offsets = views.offsets
        parts = [views.order[offsets[p]:offsets[p + 1]] for p in probes.tolist()]
        if ordered < count:
            tail = np.flatnonzero(np.isin(views.list_id[ordered:count], probes)) + ordered
            parts.append(tail)
        candidates = np.concatenate(parts).astype(np.int64)
        candidates = candidates[mask[candidates]]
        candidates.sort()
        return candidates


def _move_rows(column: np.ndarray, keep: np.ndarray) -> None:
    """column[:len(keep)] = column[keep] in place, in blocks (no full-size temporary).

    ``keep`` ascends and keep[i] >= i, so a block's sources lie at or after
    its destination and after every earlier block's: nothing is overwritten
    before it is read.
    """
    block = 65536
    for start in range(0, len(keep), block):
        idx = keep[start:start + block]
        column[start:start + len(idx)] = column[idx]


def _best(entries: np.ndarray, rows: np.ndarray, scores: np.ndarray, k: int,
          min_score: float, where: Callable[[np.ndarray], np.ndarray] | None,
          ) -> list[tuple[int, float]]:
    if min_score > -1.0:
        passing = scores >= min_score
        rows, scores = rows[passing], scores[passing]
    ids = entries[rows]
    if where is not None and len(ids):
        allowed = np.asarray(where(ids), dtype=bool)
        ids, scores = ids[allowed], scores[allowed]
    if not len(ids):
        return []
    # A key being replaced may show up twice for a moment: take a few extra.
    want = min(len(scores), k + 2)
    top = np.argpartition(-scores, want - 1)[:want] if want < len(scores) else np.arange(len(scores))
    top = top[np.argsort(-scores[top], kind="stable")]
    hits: list[tuple[int, float]] = []
    seen: set[int] = set()
    for entry_id, score in zip(ids[top].tolist(), np.clip(scores[top], -1.0, 1.0).tolist()):
        if entry_id in seen:
            continue
        seen.add(entry_id)
        hits.append((entry_id, score))
        if len(hits) == k:
            break
    return hits

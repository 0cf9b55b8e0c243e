"""The learning engine: clause matching plus a per-policy online classifier that
reviewers' feedback trains, shared by every worker through Redis.

Scoring (``PolicyModel.probability``). The classifier is an online logistic
regression over ``[embedding (384), SIM_SCALE * (s - CLAUSE_THRESHOLD)]``
where ``s`` is the request's best cosine similarity to a policy clause. It
starts as the clause rule itself: every embedding weight 0, the similarity
weight 1, bias 0, so ``p = sigmoid(SIM_SCALE * (s - CLAUSE_THRESHOLD))`` and
``p >= 0.5`` exactly when ``s >= CLAUSE_THRESHOLD``. Feedback then moves the
embedding weights (which wordings violate, whatever the clause wording) and
the similarity weight (how far to trust clause matching). The update is
Bayesian (a Gaussian over the weights, see ``PolicyModel``), with the clause
rule as the prior mean, so a few reviews cannot swing it far.
Before a policy has any feedback, the clause similarity alone decides with
the clause threshold (the detector's configured one, or the default).

Threshold (``PolicyModel.recalibrate``). After each update the last
``HISTORY`` reviewed samples are scored by the current model with each
sample's own contribution removed (approximate leave-one-out, see
``PolicyModel.held_out_scores``): in-sample scores are optimistic, so a
threshold placed on them came out too low and raised false positives on new
requests (bench: FP 7 -> 12 to 25). Once there are at least ``MIN_EACH``
violations and ``MIN_EACH`` allowed examples, the threshold is the one that
minimises ``FP_COST * FP + FN_COST * FN`` among the midpoints between
neighbouring scores (ties: the one nearest 0.5), subject to flagging no more
of the reviewed allowed samples than the clause rule itself did (learning
may trade nothing in false positives for fewer misses), clamped to
``[THRESHOLD_FLOOR, THRESHOLD_CEILING]``.

Labels: ``correct_block`` and ``missed_violation`` are violations (1),
``false_positive`` is allowed (0). ``correct_allow`` (0) extends the
contract's three outcomes: a reviewer confirming an allowed call, from a
random audit of allowed calls. Without it the model only ever sees the
allowed requests it wrongly flagged, a sample biased toward the boundary,
and learning lowers misses but raises false positives. With an audit of
about half the allowed calls, both fall (bench/learning_bench.py; with a
quarter, the false-positive cap holds but misses barely move).

Sharing (no lost update). Feedback is appended to one Redis list,
``sf:policy:learning:feedback`` (RPUSH is atomic, so two workers' feedback
both land, in one order). The model state is a pure function of that list:
a worker replays the entries it has not applied yet, in list order. So that
a worker (or a new one) does not replay from the start, the state after the
first ``applied`` entries is stored in ``sf:policy:learning:state``
(weights' mean and covariance, threshold, sample counts, the reviewed
samples' embeddings as float16), and
a Lua compare-and-set replaces it only with a state of larger ``applied``;
whichever worker writes last, the stored state covers every entry up to
its ``applied``, and the entries after it are in the list. After a change
the revision ``sf:policy:learning:rev`` is bumped and
``sf:policy:learning:changed`` is published; every worker reloads its
snapshot on the message, and checks the revision every ``POLL_S`` seconds
in case a message was lost while its subscription reconnected. Document
uploads and deletions use the same revision and channel.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from smartflow.policy.clauses import split_clauses
from smartflow.policy.decision_log import MAX_CALLS, TTL_S, DecisionLog, RememberedCall
from smartflow.policy.documents import DIM, DocumentMeta, DocumentStore
from smartflow.store.fast_client import Script, StoreClient
from smartflow.store.keyspace import PREFIX

logger = logging.getLogger("smartflow.policy")

AsyncEmbed = Callable[[Sequence[str]], Awaitable[np.ndarray]]

FEEDBACK_LOG = PREFIX + "policy:learning:feedback"  # list: one JSON entry per feedback
STATE_KEY = PREFIX + "policy:learning:state"  # hash: applied, blob
REVISION_KEY = PREFIX + "policy:learning:rev"  # counter
CHANGED_CHANNEL = PREFIX + "policy:learning:changed"  # pub/sub

DEFAULT_POLICY = "default"
CORRECT_BLOCK = "correct_block"
FALSE_POSITIVE = "false_positive"
MISSED_VIOLATION = "missed_violation"
CORRECT_ALLOW = "correct_allow"  # an extension to the contract's three outcomes
OUTCOME_LABELS: Mapping[str, int] = {CORRECT_BLOCK: 1, FALSE_POSITIVE: 0, MISSED_VIOLATION: 1,
                                     CORRECT_ALLOW: 0}

CLAUSE_THRESHOLD = 0.5  # cosine similarity; chosen on the bench's training part only
SIM_SCALE = 12.0
FEATURES = DIM + 2  # the embedding, the scaled clause similarity, the bias
# Prior variances of the weights: how far reviews may move each from the
# clause rule (embedding weights start at 0, the similarity weight at 1).
PRIOR_VAR_EMBEDDING = 4.0
PRIOR_VAR_SIMILARITY = 0.25
PRIOR_VAR_BIAS = 1.0
HISTORY = 300
MIN_EACH = 3
FP_COST = 1.0
FN_COST = 1.0
THRESHOLD_FLOOR = 0.2
THRESHOLD_CEILING = 0.9
POLL_S = 2.0
REPLAY_LIMIT = 200  # entries a worker replays rather than read the stored state
EMBED_BATCH = 64
MAX_DOCUMENT_CHARS = 1_000_000
MAX_NAME_CHARS = 200
MAX_NOTE_CHARS = 1000

# Replace the stored state only with one that covers more of the feedback log.
_STORE_STATE = Script("""
local current = tonumber(redis.call('HGET', KEYS[1], 'applied') or '0')
if current < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'applied', ARGV[1], 'blob', ARGV[2])
  return 1
end
return 0
""")


class FeedbackError(ValueError):
    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value"
                 ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class UnknownCall(LookupError):
    """The call id is not in the decision log (never seen, or older than its TTL)."""


def _b64(array: np.ndarray, dtype: type[np.generic]) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode()


def _unb64(value: str, dtype: type[np.generic]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(value), dtype=dtype).astype(np.float64)


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def features(embedding: np.ndarray, similarity: float) -> np.ndarray:
    x = np.empty(FEATURES, dtype=np.float64)
    x[:DIM] = embedding
    x[DIM] = SIM_SCALE * (similarity - CLAUSE_THRESHOLD)
    x[DIM + 1] = 1.0  # the bias
    return x


def _prior_mean() -> np.ndarray:
    mean = np.zeros(FEATURES, dtype=np.float64)
    mean[DIM] = 1.0
    return mean


def _prior_covariance() -> np.ndarray:
    return np.diag(np.concatenate([np.full(DIM, PRIOR_VAR_EMBEDDING),
                                   [PRIOR_VAR_SIMILARITY, PRIOR_VAR_BIAS]]))


def _history_from_json(value: Mapping[str, Any]) -> list[tuple[np.ndarray, float, int]]:
    similarities, labels = list(value["hs"]), list(value["hy"])
    embeddings = np.frombuffer(base64.b64decode(value["hx"]), dtype=np.float16)
    if embeddings.size != len(labels) * DIM or len(similarities) != len(labels):
        raise ValueError("stored history has the wrong shape")
    rows = embeddings.reshape(len(labels), DIM)
    return [(rows[i].copy(), float(similarities[i]), int(labels[i])) for i in range(len(labels))]


@dataclass(slots=True)
class PolicyModel:
    """One policy's classifier and threshold (mutated only while replaying feedback).

    Online Bayesian logistic regression (Laplace / extended-Kalman update):
    a Gaussian over the weights, ``mean`` and ``covariance``, updated per
    sample with one Newton step, the covariance by Sherman-Morrison. Unlike
    plain SGD it needs no learning rate and learns from tens of reviews, not
    thousands: each update moves the weights most in the directions the
    model is still unsure about. O(d^2) per sample (d = 386), ~0.2 ms.
    """

    mean: np.ndarray = field(default_factory=_prior_mean)
    covariance: np.ndarray = field(default_factory=_prior_covariance)
    threshold: float = 0.5
    samples: int = 0
    positives: int = 0
    negatives: int = 0
    # The latest reviewed samples (embedding as float16, similarity, label),
    # re-scored by the current model to place the threshold.
    history: list[tuple[np.ndarray, float, int]] = field(default_factory=list)

    def probability(self, embedding: np.ndarray, similarity: float) -> float:
        return _sigmoid(float(self.mean @ features(embedding, similarity)))

    def learn(self, embedding: np.ndarray, similarity: float, label: int) -> float:
        """One Bayesian update; the score before it (for the threshold history)."""
        x = features(embedding, similarity)
        before = _sigmoid(float(self.mean @ x))
        curvature = max(before * (1.0 - before), 1e-4)
        sx = self.covariance @ x
        self.covariance -= np.outer(sx, sx) * (curvature / (1.0 + curvature * float(x @ sx)))
        self.mean += (self.covariance @ x) * (label - before)
        self.samples += 1
        if label:
            self.positives += 1
        else:
            self.negatives += 1
        self.history.append((embedding.astype(np.float16), similarity, label))
        if len(self.history) > HISTORY:
            del self.history[:len(self.history) - HISTORY]
        self.recalibrate()
        return before

    def recalibrate(self) -> None:
        labels = [label for _x, _s, label in self.history]
        if labels.count(1) < MIN_EACH or labels.count(0) < MIN_EACH:
            return
        scores = self.held_out_scores()
        truth = np.array(labels)
        similarities = np.array([h[1] for h in self.history])
        # The clause rule's false positives on the same reviewed samples: a
        # learned threshold that flags more allowed requests than the rule did
        # is not taken, whatever it gains in misses.
        budget = float(np.sum((similarities >= CLAUSE_THRESHOLD) & (truth == 0)))
        order = np.argsort(scores, kind="stable")
        scores, truth = scores[order], truth[order]
        candidates = np.unique(np.concatenate([(scores[1:] + scores[:-1]) / 2,
                                               [scores[0] - 1e-6, scores[-1] + 1e-6]]))
        # With threshold t: flagged = score >= t.
        best_t, best_cost = self.threshold, math.inf
        for t in candidates:
            flagged = scores >= t
            fp = float(np.sum(flagged & (truth == 0)))
            if fp > budget:
                continue
            cost = FP_COST * fp + FN_COST * float(np.sum(~flagged & (truth == 1)))
            if cost < best_cost - 1e-12 or (abs(cost - best_cost) <= 1e-12
                                             and abs(t - 0.5) < abs(best_t - 0.5)):
                best_t, best_cost = float(t), cost
        self.threshold = min(THRESHOLD_CEILING, max(THRESHOLD_FLOOR, best_t))

    def _history_features(self) -> np.ndarray:
        x = np.empty((len(self.history), FEATURES), dtype=np.float64)
        if self.history:
            x[:, :DIM] = np.stack([h[0] for h in self.history])
            x[:, DIM] = SIM_SCALE * (np.array([h[1] for h in self.history]) - CLAUSE_THRESHOLD)
            x[:, DIM + 1] = 1.0
        return x

    def scores(self) -> np.ndarray:
        """The current model's probabilities for the samples in the history."""
        return 1.0 / (1.0 + np.exp(-(self._history_features() @ self.mean)))

    def held_out_scores(self) -> np.ndarray:
        """Approximate leave-one-out probabilities for the samples in the history.

        A sample's in-sample score is optimistic (the model was fitted to it);
        removing its Laplace term from the posterior by Sherman-Morrison gives
        the logit the model would give it had it never seen it:
        ``z_-i = z_i - v_i (y_i - p_i) / (1 - c_i v_i)``, ``v_i = x_i' S x_i``,
        ``c_i = p_i (1 - p_i)``.
        """
        x = self._history_features()
        z = x @ self.mean
        p = 1.0 / (1.0 + np.exp(-z))
        v = np.sum((x @ self.covariance) * x, axis=1)
        c = p * (1.0 - p)
        y = np.array([h[2] for h in self.history], dtype=np.float64)
        z_out = z - v * (y - p) / np.maximum(1.0 - c * v, 0.05)
        return 1.0 / (1.0 + np.exp(-z_out))

    def to_json(self) -> dict[str, Any]:
        embeddings = (np.stack([h[0] for h in self.history]) if self.history
                      else np.zeros((0, DIM), dtype=np.float16))
        return {"m": _b64(self.mean, np.float64), "c": _b64(self.covariance, np.float32),
                "t": self.threshold, "n": self.samples, "pos": self.positives,
                "neg": self.negatives, "hx": _b64(embeddings, np.float16),
                "hs": [h[1] for h in self.history], "hy": [h[2] for h in self.history]}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> PolicyModel:
        mean = _unb64(value["m"], np.float64)
        covariance = _unb64(value["c"], np.float32)
        if mean.shape != (FEATURES,) or covariance.shape != (FEATURES * FEATURES,):
            raise ValueError("stored model has the wrong shape")
        return cls(mean=mean.copy(), covariance=covariance.reshape(FEATURES, FEATURES).copy(),
                   threshold=float(value["t"]), samples=int(value["n"]),
                   positives=int(value["pos"]), negatives=int(value["neg"]),
                   history=_history_from_json(value))

    def copy(self) -> PolicyModel:
        return PolicyModel(self.mean.copy(), self.covariance.copy(), self.threshold,
                           self.samples, self.positives, self.negatives, list(self.history))

    def summary(self) -> dict[str, Any]:
        return {"threshold": round(self.threshold, 4), "samples": self.samples,
                "positives": self.positives, "negatives": self.negatives,
                "similarity_weight": round(float(self.mean[DIM]), 4),
                "bias": round(float(self.mean[DIM + 1]), 4)}


@dataclass(slots=True)
class LearningState:
    applied: int = 0  # feedback log entries folded in
    policies: dict[str, PolicyModel] = field(default_factory=dict)

    def apply(self, entry: Mapping[str, Any]) -> None:
        policy = str(entry["p"])
        embedding = _unb64(entry["e"], np.float16)
        model = self.policies.get(policy)
        if model is None:
            model = self.policies[policy] = PolicyModel()
        if embedding.shape == (DIM,):
            model.learn(embedding, float(entry["s"]), int(entry["y"]))
        self.applied += 1

    def encode(self) -> bytes:
        return orjson.dumps({"applied": self.applied,
                             "policies": {k: v.to_json() for k, v in self.policies.items()}})

    @classmethod
    def decode(cls, raw: bytes) -> LearningState:
        value = orjson.loads(raw)
        return cls(applied=int(value["applied"]),
                   policies={str(k): PolicyModel.from_json(v)
                             for k, v in value["policies"].items()})

    def copy(self) -> LearningState:
        return LearningState(self.applied, {k: v.copy() for k, v in self.policies.items()})


@dataclass(frozen=True, slots=True)
class ClauseRef:
    doc_id: str
    n: int


class LearningSnapshot:
    """What a worker scores with: immutable once built, swapped whole on a change."""

    def __init__(self, revision: int, documents: Sequence[DocumentMeta],
                 vectors: Mapping[str, np.ndarray], models: Mapping[str, PolicyModel],
                 applied: int) -> None:
        self.revision = revision
        self.documents = {doc.id: doc for doc in documents if doc.id in vectors}
        self.models = dict(models)
        self.applied = applied
        refs: list[ClauseRef] = []
        blocks: list[np.ndarray] = []
        self._doc_rows: dict[str, np.ndarray] = {}
        for doc in self.documents.values():
            start = len(refs)
            refs.extend(ClauseRef(doc.id, n) for n in range(doc.clauses))
            blocks.append(vectors[doc.id])
            self._doc_rows[doc.id] = np.arange(start, len(refs))
        self.clause_refs = refs
        self.clauses = (np.ascontiguousarray(np.concatenate(blocks), dtype=np.float32)
                        if blocks else np.zeros((0, DIM), dtype=np.float32))
        self._selections: dict[tuple[tuple[str, ...], str | None], np.ndarray] = {}

    @classmethod
    def empty(cls) -> LearningSnapshot:
        return cls(0, (), {}, {}, 0)

    def rows_for(self, documents: tuple[str, ...], policy: str | None) -> np.ndarray:
        """Clause rows a check matches against: the documents named (by id or
        name) when any; else the policy's documents; else every document."""
        key = (documents, policy)
        rows = self._selections.get(key)
        if rows is None:
            if documents:
                wanted = set(documents)
                chosen = [d for d in self.documents.values()
                          if d.id in wanted or d.name in wanted]
            else:
                chosen = [d for d in self.documents.values()
                          if policy is not None and d.policy == policy]
                if not chosen:
                    chosen = list(self.documents.values())
            rows = (np.concatenate([self._doc_rows[d.id] for d in chosen]) if chosen
                    else np.zeros(0, dtype=np.int64))
            self._selections[key] = rows
        return rows

    def best_clause(self, embedding: np.ndarray, rows: np.ndarray
                    ) -> tuple[float, ClauseRef | None]:
        if rows.size == 0:
            return 0.0, None
        if rows.size == len(self.clause_refs):
            similarities = self.clauses @ embedding
        else:
            similarities = self.clauses[rows] @ embedding
        best = int(np.argmax(similarities))
        row = int(rows[best]) if rows.size != len(self.clause_refs) else best
        return float(similarities[best]), self.clause_refs[row]

    def model(self, policy: str) -> PolicyModel | None:
        return self.models.get(policy)


def _valid_name(value: object, param: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise FeedbackError(f"{param}: must be a non-empty string.", param)
    if len(value) > MAX_NAME_CHARS:
        raise FeedbackError(f"{param}: at most {MAX_NAME_CHARS} characters.", param)
    return value.strip()


def _learning_policy(call: RememberedCall, guardrail: str | None) -> str:
    """Which policy's model a call's feedback trains, when the reviewer did not say."""
    decisions = call.decisions
    if guardrail is not None:
        decisions = [d for d in decisions if d.get("guardrail") == guardrail]
    for decision in decisions:
        named = decision.get("learning_policy")
        if isinstance(named, str) and named:
            return named
    return DEFAULT_POLICY


class LearningRuntime:
    """One worker's view of the learning engine.

    ``store``: the worker's StoreClient (every command names its key, so a
    cluster client works); ``embed``: async batch embedder for document
    ingestion; ``redis_url``: for the pub/sub subscription (its own
    connection, see store.subscription).
    """

    def __init__(self, store: StoreClient, embed: AsyncEmbed, *, redis_url: str,
                 poll_s: float = POLL_S, decisions_ttl_s: int = TTL_S,
                 decisions_max: int = MAX_CALLS) -> None:
        self._store = store
        self._embed = embed
        self._redis_url = redis_url
        self._poll_s = poll_s
        self.documents = DocumentStore(store)
        self.decision_log = DecisionLog(store, ttl_s=decisions_ttl_s, max_calls=decisions_max)
        self._snapshot = LearningSnapshot.empty()
        self._state = LearningState()
        self._vectors: dict[str, np.ndarray] = {}
        self._refresh_lock = asyncio.Lock()
        self._refresh_again = False
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    @property
    def snapshot(self) -> LearningSnapshot:
        return self._snapshot

    async def start(self) -> None:
        from smartflow.store.subscription import listen_forever

        try:
            await self.refresh()
        except Exception as exc:  # noqa: BLE001 - the poll retries; never stop a worker
            logger.warning("policy learning state not loaded yet (%s: %s)",
                           type(exc).__name__, exc)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(listen_forever(
            self._redis_url, CHANGED_CHANNEL, lambda _data: self._refresh_soon(),
            on_subscribed=self._refresh_soon, is_closing=lambda: self._closing)))
        self._tasks.append(loop.create_task(self._poll()))

    async def aclose(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.decision_log.drain()

    # -- keeping the snapshot current ----------------------------------------

    def _refresh_soon(self) -> None:
        if self._closing:
            return
        task = asyncio.get_running_loop().create_task(self._refresh_logged())
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(task)

    async def _refresh_logged(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # noqa: BLE001 - the next message or poll retries
            logger.warning("policy learning refresh failed (%s: %s)", type(exc).__name__, exc)

    async def _poll(self) -> None:
        while not self._closing:
            await asyncio.sleep(self._poll_s)
            try:
                raw = await self._store.execute("GET", REVISION_KEY, key=REVISION_KEY)
                if int(raw or 0) != self._snapshot.revision:
                    await self.refresh()
            except Exception as exc:  # noqa: BLE001 - Redis blip: try at the next tick
                logger.warning("policy learning poll failed (%s: %s)", type(exc).__name__, exc)

    async def refresh(self) -> None:
        """Reload documents and fold in feedback not yet applied."""
        if self._refresh_lock.locked():
            self._refresh_again = True  # one more pass once the running one ends
            async with self._refresh_lock:
                return
        async with self._refresh_lock:
            while True:
                self._refresh_again = False
                await self._refresh_once()
                if not self._refresh_again:
                    return

    async def _refresh_once(self) -> None:
        store = self._store
        revision = int(await store.execute("GET", REVISION_KEY, key=REVISION_KEY) or 0)
        metas = await self.documents.list_all()
        vectors: dict[str, np.ndarray] = {}
        for meta in metas:
            cached = self._vectors.get(meta.id)
            if cached is None:
                cached = await self.documents.vectors(meta)
            if cached is not None:
                vectors[meta.id] = cached
        self._vectors = vectors
        await self._catch_up()
        state = self._state
        self._snapshot = LearningSnapshot(revision, metas, vectors,
                                          {k: v.copy() for k, v in state.policies.items()},
                                          state.applied)

    async def _catch_up(self) -> bool:
        """Fold the feedback log into ``self._state``; True when it moved."""
        store = self._store
        length = int(await store.execute("LLEN", FEEDBACK_LOG, key=FEEDBACK_LOG))
        stored_applied = int(await store.execute("HGET", STATE_KEY, "applied", key=STATE_KEY)
                             or 0)
        state = self._state
        if length < state.applied or stored_applied > state.applied + REPLAY_LIMIT or (
                state.applied == 0 and stored_applied > 0):
            # Far behind (a new worker), or the log was reset: start from the stored
            # state (about 1 MB a policy) rather than replay; a few entries behind,
            # replaying them is cheaper than reading it.
            blob = await store.execute("HGET", STATE_KEY, "blob", key=STATE_KEY)
            try:
                state = LearningState.decode(blob) if blob and stored_applied <= length \
                    else LearningState()
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                logger.warning("stored policy learning state is unreadable; replaying the log")
                state = LearningState()
        moved = state is not self._state
        if length > state.applied:
            entries = await store.execute("LRANGE", FEEDBACK_LOG, state.applied, length - 1,
                                          key=FEEDBACK_LOG)
            state = state.copy() if state is self._state else state
            for raw in entries:
                try:
                    state.apply(orjson.loads(raw))
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    state.applied += 1  # an unreadable entry still takes its place
            moved = True
            if state.applied > stored_applied:
                await store.run_script(_STORE_STATE, [STATE_KEY],
                                       [state.applied, state.encode()])
        self._state = state
        return moved

    async def _announce(self) -> int:
        revision = int(await self._store.execute("INCR", REVISION_KEY, key=REVISION_KEY))
        await self._store.execute("PUBLISH", CHANGED_CHANNEL, str(revision),
                                  key=CHANGED_CHANNEL)
        return revision

    # -- documents -----------------------------------------------------------

    async def add_document(self, name: str, text: str, policy: str | None = None
                           ) -> DocumentMeta:
        """Split, embed and store a document; ValueError for bad input."""
        name = _valid_name(name, "name")
        if policy is not None:
            policy = _valid_name(policy, "policy")
        if not isinstance(text, str) or not text.strip():
            raise FeedbackError("text: the document is empty.", "text")
        if len(text) > MAX_DOCUMENT_CHARS:
            raise FeedbackError(f"text: at most {MAX_DOCUMENT_CHARS} characters.", "text")
        loop = asyncio.get_running_loop()
        clauses = await loop.run_in_executor(None, split_clauses, text)
        if not clauses:
            raise FeedbackError("text: no clauses found (the document has no sentences).",
                                "text")
        parts = []
        for start in range(0, len(clauses), EMBED_BATCH):
            batch = [c.text for c in clauses[start:start + EMBED_BATCH]]
            parts.append(np.asarray(await self._embed(batch), dtype=np.float32))
        meta = await self.documents.add(name, policy, len(text), clauses, np.concatenate(parts))
        await self._announce()
        await self.refresh()
        return meta

    async def delete_document(self, doc_id: str) -> bool:
        removed = await self.documents.delete(doc_id)
        if removed:
            await self._announce()
            await self.refresh()
        return removed

    # -- feedback ------------------------------------------------------------

    async def feedback(self, call_id: str, outcome: str, guardrail: str | None = None,
                       policy: str | None = None, note: str | None = None) -> dict[str, Any]:
        """Teach the policy's model from a reviewer's outcome for one call.

        UnknownCall when the call is not remembered; FeedbackError for bad input.
        """
        if outcome not in OUTCOME_LABELS:
            raise FeedbackError(f"outcome: must be one of {', '.join(OUTCOME_LABELS)}.",
                                "outcome")
        if guardrail is not None:
            guardrail = _valid_name(guardrail, "guardrail")
        if policy is not None:
            policy = _valid_name(policy, "policy")
        if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE_CHARS):
            raise FeedbackError(f"note: a string of at most {MAX_NOTE_CHARS} characters.",
                                "note")
        call = await self.decision_log.recall(call_id)
        if call is None:
            raise UnknownCall(call_id)
        if call.embedding is None or call.embedding.shape != (DIM,):
            raise FeedbackError("This call has no request embedding to learn from.", None,
                                "no_embedding")
        learning_policy = policy or _learning_policy(call, guardrail)
        snapshot = self._snapshot
        rows = snapshot.rows_for((), learning_policy)
        similarity, clause = snapshot.best_clause(call.embedding, rows)
        before = snapshot.model(learning_policy) or PolicyModel()
        label = OUTCOME_LABELS[outcome]
        entry = {"c": call_id, "p": learning_policy, "o": outcome, "y": label,
                 "s": round(similarity, 6), "e": _b64(call.embedding, np.float16),
                 "g": guardrail, "note": note, "t": round(time.time(), 3)}
        await self._store.execute("RPUSH", FEEDBACK_LOG, orjson.dumps(entry), key=FEEDBACK_LOG)
        async with self._refresh_lock:
            await self._catch_up()
        revision = await self._announce()
        await self.refresh()
        after = self._snapshot.model(learning_policy) or PolicyModel()
        return {
            "call_id": call_id, "outcome": outcome, "label": label, "policy": learning_policy,
            "guardrail": guardrail, "similarity": round(similarity, 4),
            "clause": f"{clause.doc_id}:{clause.n}" if clause else None,
            "score_before": round(before.probability(call.embedding, similarity), 4),
            "score_after": round(after.probability(call.embedding, similarity), 4),
            "threshold_before": round(before.threshold, 4),
            "threshold": round(after.threshold, 4),
            "samples": after.samples, "positives": after.positives,
            "negatives": after.negatives, "revision": revision,
        }

    def summary(self) -> dict[str, Any]:
        snapshot = self._snapshot
        return {"revision": snapshot.revision, "feedback_applied": snapshot.applied,
                "documents": len(snapshot.documents), "clauses": len(snapshot.clause_refs),
                "default_clause_threshold": CLAUSE_THRESHOLD,
                "policies": {k: v.summary() for k, v in sorted(snapshot.models.items())}}

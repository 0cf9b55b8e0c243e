"""What the supervisor sets up before its first fork, one step a function.

Each step either returns what it made or raises StartupError carrying the
exit status `smartflow serve` ends with (2: config, 3: port, 1: the rest).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smartflow.config import Settings, encoder_wanted, index_wanted, policy_models_on_every_call
from smartflow.process.binding import bind_listener, is_something_listening
from smartflow.process.exit_codes import EXIT_BIND_FAILED, EXIT_CONFIG_ERROR, StartupError
from smartflow.process.tls import build_server_ssl_context

if TYPE_CHECKING:
    from smartflow.store.embedded_redis import EmbeddedRedis


def with_server(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, server=dataclasses.replace(settings.server, **changes))


def prepare_data_dir(settings: Settings) -> Settings:
    """Create server.data_dir; `settings` with it made absolute, so nothing
    a worker does depends on its cwd."""
    data_dir = Path(settings.server.data_dir).resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"server.data_dir: cannot create {data_dir}: {exc}") from None
    return with_server(settings, data_dir=str(data_dir))


def check_tls(settings: Settings) -> None:
    """Load the certificate once here, rather than fail in every worker."""
    server = settings.server
    try:
        build_server_ssl_context(server)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(
            f"server.tls_cert_file: cannot load the certificate and key "
            f"({server.tls_cert_file}, {server.tls_key_file}): {exc}",
            EXIT_CONFIG_ERROR,
        ) from None


def hold_port(settings: Settings) -> tuple[socket.socket, Settings]:
    """A non-listening socket holding server.port; `settings` with the
    concrete port (port 0: every worker must bind the port picked here)."""
    server = settings.server
    if server.port and is_something_listening(server.host, server.port):
        raise StartupError(
            f"server.port: {server.host}:{server.port} is already in use by another process",
            EXIT_BIND_FAILED,
        )
    try:
        holder = bind_listener(server.host, server.port, listen=False)
    except OSError as exc:
        raise StartupError(
            f"server.port: cannot bind {server.host}:{server.port}: {exc.strerror or exc}",
            EXIT_BIND_FAILED,
        ) from None
    port = holder.getsockname()[1]
    if port != server.port:
        settings = with_server(settings, port=port)
    return holder, settings


def launch_embedded_redis(settings: Settings) -> EmbeddedRedis:
    """Start redis-server in the data dir (not waiting for it to be ready).

    Refuses a data dir another running gateway owns, before touching it."""
    from smartflow.store.embedded_redis import EmbeddedRedis, EmbeddedRedisError

    redis = EmbeddedRedis(Path(settings.server.data_dir), settings.state.redis_server_bin)
    try:
        redis.launch()
    except EmbeddedRedisError as exc:
        raise StartupError(f"embedded redis: {exc}") from None
    return redis


def wait_embedded_redis(redis: EmbeddedRedis) -> None:
    from smartflow.store.embedded_redis import EmbeddedRedisError

    try:
        redis.wait_ready()
    except EmbeddedRedisError as exc:
        raise StartupError(f"embedded redis: {exc}") from None


def prepare_metrics_dir(settings: Settings) -> str:
    """A fresh prometheus multiprocess dir, announced in the environment.

    Must happen before anything imports prometheus_client: it chooses its
    value class (mmap files or in-memory) once, at import. The children
    inherit the variable.
    """
    from smartflow.telemetry.metrics import MULTIPROC_ENV, prepare_multiprocess_dir

    metrics_dir = str(prepare_multiprocess_dir(Path(settings.server.data_dir)))
    os.environ[MULTIPROC_ENV] = metrics_dir
    return metrics_dir


def create_node_index(settings: Settings, supervisor_pid: int) -> str:
    """The node's shared-memory embedding index, made before the first fork so
    every worker attaches the same one; its name, or "" when nothing needs it."""
    from smartflow.embeddings.runtime import create_node_index as create

    if not index_wanted(settings):
        return ""
    name = f"sf-idx-{supervisor_pid}"
    index = create(settings, name)
    index.close()  # the segment stays until remove_node_index
    return name


def preload_encoder(settings: Settings) -> object | None:
    """With the semantic cache, or the guardrails' model checks on every call,
    the embedding model, loaded before the first fork: its ~110 MB of weights are then
    shared by every worker instead of copied into each. (onnxruntime runs on
    the calling thread with one intra-op thread, so a forked child inherits no
    thread pool.) None when nothing embeds on the request path: a worker that
    needs the model loads it itself."""
    if not encoder_wanted(settings):
        return None
    from pathlib import Path

    from smartflow.embeddings.encoder import Encoder
    from smartflow.embeddings.model_files import ModelUnavailable, ensure_model

    embeddings = settings.embeddings
    try:
        model_dir = ensure_model(Path(embeddings.model_dir) if embeddings.model_dir else None,
                                 quantized=embeddings.quantized)
        encoder = Encoder(model_dir, threads=embeddings.threads)
        encoder.encode(["warm-up"])  # the first run allocates what every later run reuses
    except (ModelUnavailable, OSError) as exc:
        from smartflow.process.json_log import log_event

        log_event("warning", "embedding_model_unavailable", message=str(exc))
        return None
    return encoder


def preload_ner(settings: Settings) -> object | None:
    """With the guardrails' model checks on for every call, the NER model
    (names, addresses), loaded before the first fork for the same reason as
    the embedding model. None otherwise (a worker loads it when a policy
    first needs it) or when it is not installed (names and addresses are then
    not detected; every other check works)."""
    if not policy_models_on_every_call(settings):
        return None
    from smartflow.policy.ner import NerUnavailable, load_ner

    try:
        return load_ner()
    except (NerUnavailable, OSError) as exc:
        from smartflow.process.json_log import log_event

        log_event("warning", "ner_model_unavailable", message=str(exc))
        return None


def remove_node_index(name: str) -> None:
    from smartflow.embeddings.shared_index import SharedIndex

    try:
        index = SharedIndex.attach(name)
    except (OSError, ValueError):
        return
    index.unlink()
    index.close()

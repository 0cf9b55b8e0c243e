"""A worker's audit state: the record builder, the stream writer, their metrics."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING

from smartflow.audit.record import RecordBuilder
from smartflow.audit.redact import Redactor
from smartflow.audit.stream_writer import AuditStreamWriter
from smartflow.keys.vault import VAULT_PREFIX

if TYPE_CHECKING:
    from smartflow.config import Settings
    from smartflow.store.fast_client import StoreClient

METRICS_INTERVAL_S = 1.0
DRAIN_TIMEOUT_S = 5.0


class AuditRuntime:
    __slots__ = ("_metrics_task", "builder", "writer")

    def __init__(self, builder: RecordBuilder, writer: AuditStreamWriter) -> None:
        self.builder = builder
        self.writer = writer
        self._metrics_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._metrics_task = asyncio.get_running_loop().create_task(self._export_metrics())

    async def _export_metrics(self) -> None:
        from prometheus_client import Counter, Gauge

        appended = Counter("smartflow_audit_records_appended",
                           "Audit records appended to the Redis stream by gateway workers.",
                           registry=None)
        dropped = Counter("smartflow_audit_records_dropped",
                          "Audit records a worker dropped because its buffer was full "
                          "(Redis unreachable for long at full load).", registry=None)
        failures = Counter("smartflow_audit_append_failures",
                           "Batches of audit records Redis did not take (each is retried).",
                           registry=None)
        buffered = Gauge("smartflow_audit_records_buffered",
                         "Audit records waiting in workers' memory for the stream.",
                         multiprocess_mode="livesum", registry=None)
        writer = self.writer
        while True:
            await asyncio.sleep(METRICS_INTERVAL_S)
            for counter, name in ((appended, "appended"), (dropped, "dropped"),
                                  (failures, "failures")):
                count = getattr(writer, name)
                if count:
                    setattr(writer, name, 0)
                    counter.inc(count)
            buffered.set(writer.buffered)

    async def aclose(self) -> None:
        task = self._metrics_task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.writer.drain(DRAIN_TIMEOUT_S)


def known_secrets(settings: Settings) -> list[str]:
    """Every secret the configuration holds, for redaction."""
    secrets = [settings.auth.master_key, settings.vault.encryption_key]
    # "env:NAME" keys were resolved when the config was loaded; a vault reference
    # is no secret (the vault key a call used is redacted per call).
    secrets += [model.api_key for model in settings.models
                if not model.api_key.startswith(VAULT_PREFIX)]
    secrets += [value for name, value in settings.provider_env.items()
                if any(word in name for word in ("KEY", "TOKEN", "SECRET"))]
    return [s for s in secrets if s]


def build_audit_runtime(settings: Settings, client: StoreClient) -> AuditRuntime:
    audit = settings.audit
    builder = RecordBuilder(capture_bodies=audit.capture_bodies,
                            max_body_bytes=audit.max_body_bytes,
                            redactor=Redactor(known_secrets(settings)),
                            node=socket.gethostname())
    writer = AuditStreamWriter(client, builder.build_batch, max_len=audit.stream_max_len)
    return AuditRuntime(builder, writer)

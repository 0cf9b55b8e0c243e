"""The audit log end to end: real gateway processes (workers and the shipper
under the supervisor), a real PostgreSQL, the query API.

The outage test is the issue's proof at test size: calls at concurrency 16
while PostgreSQL is stopped and started again and the shipper is killed with
SIGKILL mid-batch; every answered call's record lands exactly once (the
50,000-call run is ``bench/audit_bench.py``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from harness.gateway import GatewayProcess, titled_child
from harness.postgres import PostgresServer

MASTER = "sk-master-audit-0123456789"
PROVIDER_KEY = "sk-provider-audit-abcdefghijklmnop"
MCP_SECRET = "mcp-credential-4242424242"
SHIPPER_TITLE = "smartflow: shipper"


def _wait_shipper(gateway: GatewayProcess, *, not_pid: int | None = None,
                  timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid = titled_child(gateway.pid, SHIPPER_TITLE)
        if pid is not None and pid != not_pid:
            return pid
        time.sleep(0.05)
    raise AssertionError(f"no shipper process; output:\n{gateway.output_tail()}")


async def _rows(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn, timeout=5)
    try:
        return await connection.fetch(query, *args)
    finally:
        await connection.close()


async def _wait_count(dsn: str, expected: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    count = -1
    while time.monotonic() < deadline:
        try:
            count = (await _rows(dsn, "SELECT count(*) AS n FROM vas_log"))[0]["n"]
        except (OSError, asyncpg.PostgresError):
            count = -1
        if count >= expected:
            return count
        await asyncio.sleep(0.2)
    return count


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL this test may stop and start (the session one is shared)."""
    server = PostgresServer()  # in its own temp dir: pytest's are closed to the postgres user
    server.start()
    try:
        yield server
    finally:
        server.close()


def _config(dsn: str, **audit: Any) -> dict[str, Any]:
    return {"audit": {"postgres_dsn": dsn, "claim_idle": 5.0, **audit},
            "supervisor": {"restart_backoff_max": 0.5}}


async def test_every_answered_call_lands_exactly_once_through_outages(
        own_postgres: PostgresServer, tmp_path: Path) -> None:
    gateway = GatewayProcess(_config(own_postgres.dsn), workers=2, directory=tmp_path / "gw")
    gateway.start()
    try:
        first_shipper = _wait_shipper(gateway)
        total, concurrency = 2000, 16
        answered: list[str] = []
        failures: list[str] = []
        queue: asyncio.Queue[int] = asyncio.Queue()
        for n in range(total):
            queue.put_nowait(n)

        async def caller(client: httpx.AsyncClient) -> None:
            while not queue.empty():
                n = queue.get_nowait()
                body = {"model": "mock-gpt", "stream": n % 5 == 0,
                        "messages": [{"role": "user", "content": f"question {n}"}]}
                response = await client.post("/v1/chat/completions", json=body)
                await response.aread()
                if response.status_code == 200:
                    answered.append(response.headers["x-smartflow-call-id"])
                else:
                    failures.append(f"{response.status_code} {response.text[:200]}")

        async def disrupt() -> None:
            loop = asyncio.get_running_loop()
            while len(answered) < 300:
                await asyncio.sleep(0.01)
            await loop.run_in_executor(None, own_postgres.stop)
            while len(answered) < 900:
                await asyncio.sleep(0.01)
            # PostgreSQL is down: the shipper holds a batch it read and cannot commit.
            os.kill(first_shipper, signal.SIGKILL)
            while len(answered) < 1300:
                await asyncio.sleep(0.01)
            await loop.run_in_executor(None, own_postgres.start)
            second = await loop.run_in_executor(
                None, lambda: _wait_shipper(gateway, not_pid=first_shipper))
            while len(answered) < 1700:
                await asyncio.sleep(0.01)
            os.kill(second, signal.SIGKILL)  # and once more while it is shipping

        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30, limits=limits) as client:
            await asyncio.gather(disrupt(), *(caller(client) for _ in range(concurrency)))
        assert not failures, failures[:3]
        assert len(answered) == total
        count = await _wait_count(own_postgres.dsn, total, timeout_s=90)
        rows = await _rows(own_postgres.dsn,
                           "SELECT count(*) AS n, count(DISTINCT call_id) AS d FROM vas_log")
        assert (rows[0]["n"], rows[0]["d"]) == (total, total), count
        stored = {row["call_id"] for row in await _rows(own_postgres.dsn,
                                                         "SELECT call_id FROM vas_log")}
        assert stored == set(answered)
        assert "Traceback" not in gateway.output_text()
        assert len(gateway.log_events("worker_died")) >= 2  # both kills were seen and survived
    finally:
        gateway.close()


async def test_the_record_carries_the_call_and_the_query_api_serves_it(
        postgres_database: str, tmp_path: Path) -> None:
    dsn = postgres_database
    config = _config(dsn)
    config["auth"] = {"master_key": MASTER}
    config["models"] = [{"name": "gpt-audit", "provider": "mock", "model": "mock-gpt",
                         "api_key": PROVIDER_KEY, "price_per_request": 0.002,
                         "input_price_per_mtok": 0.0, "output_price_per_mtok": 0.0}]
    gateway = GatewayProcess(config, workers=2, directory=tmp_path / "gw")
    gateway.start()
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            master = {"authorization": f"Bearer {MASTER}"}
            created = await client.post("/api/enterprise/vkeys", headers=master, json={
                "alias": "audit-bot", "user_id": "u-audit", "team_id": "t-audit"})
            assert created.status_code == 201, created.text
            vkey = created.json()["key"]
            caller = {"authorization": f"Bearer {vkey}", "x-mcp-github-token": MCP_SECRET,
                      "x-smartflow-tags": "nightly"}
            plain = await client.post("/v1/chat/completions", headers=caller, json={
                "model": "gpt-audit",
                "messages": [{"role": "user", "content": f"What is the key {vkey}?"}]})
            assert plain.status_code == 200
            streamed = await client.post("/v1/chat/completions", headers=caller, json={
                "model": "gpt-audit", "stream": True,
                "messages": [{"role": "user", "content": "Tell me a story"}]})
            assert streamed.status_code == 200
            refused = await client.post("/v1/chat/completions", json={
                "model": "gpt-audit", "messages": [{"role": "user", "content": "hi"}]},
                headers={"authorization": "Bearer sk-sf-" + "0" * 48})
            assert refused.status_code == 401
            ids = [plain.headers["x-smartflow-call-id"], streamed.headers["x-smartflow-call-id"],
                   refused.headers["x-smartflow-call-id"]]
            assert await _wait_count(dsn, 3, timeout_s=30) == 3

            rows = {row["call_id"]: row for row in await _rows(dsn, "SELECT * FROM vas_log")}
            first = rows[ids[0]]
            assert (first["kind"], first["status"], first["model"], first["provider"]) == (
                "llm", 200, "gpt-audit", "mock")
            assert (first["key_alias"], first["user_id"], first["team_id"]) == (
                "audit-bot", "u-audit", "t-audit")
            assert first["cost_usd"] == pytest.approx(0.002)
            assert first["prompt_tokens"] > 0 and first["completion_tokens"] > 0
            assert first["latency_ms"] > 0 and first["energy_wh"] > 0
            assert first["tags"] == ["nightly"]
            assert first["question"].startswith("What is the key [REDACTED]")
            assert first["answer"].startswith("Mock response to:")
            story = rows[ids[1]]
            assert story["stream"] is True and story["ttfb_ms"] is not None
            # Exactly the text the caller was sent (the default policy's output
            # guard read it as it passed, and the record took it from there).
            sent = "".join(
                orjson.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                for line in streamed.text.splitlines()
                if line.startswith("data: {") and orjson.loads(line[6:])["choices"])
            assert story["answer"] == sent and sent.startswith("Mock response to: Tell me a story")
            assert story["response_body"] is None  # the assembled text, not the SSE bytes
            denied = rows[ids[2]]
            assert (denied["status"], denied["error_phase"]) == (401, "before_send")

            # Secrets never enter the sink: grep every column of every row.
            dump = orjson.dumps([dict(row) for row in rows.values()], default=str).decode()
            for secret in (vkey, MASTER, PROVIDER_KEY, MCP_SECRET):
                assert secret not in dump

            listed = await client.get("/api/logs", headers=master,
                                      params={"key_alias": "audit-bot"})
            assert listed.status_code == 200, listed.text
            assert [row["call_id"] for row in listed.json()["data"]] == [ids[1], ids[0]]
            full = await client.get(f"/api/logs/{ids[0]}", headers=master)
            assert full.status_code == 200
            assert full.json()["replay"]["answer"].startswith("Mock response to:")
            # A virtual key is not an admin credential.
            assert (await client.get("/api/logs", headers=caller)).status_code == 401
            # The shipper measures its backlog about once a second, after the
            # writes it counts: wait for its first figure rather than race it.
            deadline = time.monotonic() + 15
            metrics = (await client.get("/metrics")).text
            while "smartflow_audit_backlog 0.0" not in metrics and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                metrics = (await client.get("/metrics")).text
            assert 'smartflow_audit_shipped_total{sink="postgres"} 3.0' in metrics
            assert "smartflow_audit_backlog 0.0" in metrics
    finally:
        gateway.close()


async def test_records_survive_a_gateway_stopped_mid_load(
        postgres_database: str, tmp_path: Path) -> None:
    """Stopped (SIGTERM) while calls are in flight: the workers finish them and
    drain their audit buffers into the stream on the way out (kept by the
    embedded Redis's append-only file); the next start ships what was left."""
    dsn = postgres_database
    directory = tmp_path / "gw"
    gateway = GatewayProcess(_config(dsn), workers=2, directory=directory)
    gateway.start()
    answered: list[str] = []
    stopping = asyncio.Event()
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            async def caller() -> None:
                n = 0
                while not stopping.is_set() or n == 0:
                    n += 1
                    try:
                        response = await client.post("/v1/chat/completions", json={
                            "model": "mock-gpt", "messages": [{"role": "user", "content": "q"}]})
                    except httpx.HTTPError:
                        return  # the gateway is gone
                    if response.status_code != 200:
                        return
                    answered.append(response.headers["x-smartflow-call-id"])

            async def stop_midway() -> None:
                while len(answered) < 200:
                    await asyncio.sleep(0.005)
                stopping.set()
                await asyncio.get_running_loop().run_in_executor(None, gateway.close)

            await asyncio.gather(stop_midway(), *(caller() for _ in range(16)))
    finally:
        gateway.close()
    restarted = GatewayProcess(_config(dsn), workers=2, directory=directory)
    restarted.start()
    try:
        await _wait_count(dsn, len(answered), timeout_s=60)
        rows = await _rows(dsn, "SELECT count(*) AS n, count(DISTINCT call_id) AS d, "
                                "array_agg(call_id) AS ids FROM vas_log")
        assert rows[0]["n"] == rows[0]["d"]  # no duplicates
        assert set(answered) <= set(rows[0]["ids"])  # every answered call is there
        assert "Traceback" not in gateway.output_text() + restarted.output_text()
    finally:
        restarted.close()

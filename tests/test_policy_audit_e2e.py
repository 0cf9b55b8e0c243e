"""Guardrail decisions in the audit log, and the compliance API over it.

A real gateway (workers and the shipper), a real PostgreSQL and Redis: the
calls' decisions reach ``vas_log`` (policies, guardrails, verdict) and the
compliance reports, score and violations read them back, without the text.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
from harness.gateway import GatewayProcess

MASTER = "sk-master-policy-audit-0123456789"
ADMIN = {"authorization": f"Bearer {MASTER}"}
CARD = "4111 1111 1111 1111"
EMAIL = "li.wei@fabrikam-mail.com"


async def _rows(dsn: str, query: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn, timeout=5)
    try:
        return await connection.fetch(query)
    finally:
        await connection.close()


async def _wait_rows(dsn: str, call_ids: set[str], timeout_s: float = 30.0
                     ) -> dict[str, asyncpg.Record]:
    """The log's rows by call id, once every one of ``call_ids`` has landed (the
    calls made while the policy was still loading land too, in any order)."""
    deadline = time.monotonic() + timeout_s
    rows: dict[str, asyncpg.Record] = {}
    while time.monotonic() < deadline:
        try:
            rows = {row["call_id"]: row for row in await _rows(dsn, "SELECT * FROM vas_log")}
        except (OSError, asyncpg.PostgresError):
            rows = {}
        if call_ids <= set(rows):
            return rows
        await asyncio.sleep(0.2)
    return rows


def _config(dsn: str) -> dict[str, Any]:
    return {
        "auth": {"master_key": MASTER},
        "audit": {"postgres_dsn": dsn},
        "models": [{"name": "pay-gpt", "provider": "mock", "model": "mock-gpt",
                    "price_per_request": 0.0},
                   {"name": "chat-gpt", "provider": "mock", "model": "mock-gpt",
                    "price_per_request": 0.0}],
    }


async def test_decisions_reach_the_audit_log_and_the_compliance_api(
        postgres_database: str, tmp_path: Path) -> None:
    dsn = postgres_database
    gateway = GatewayProcess(_config(dsn), workers=1, directory=tmp_path / "gw")
    gateway.start()
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            for path, body in (
                    ("/api/guardrails", {"name": "no-cards", "type": "pii", "action": "block",
                                         "config": {"entities": ["CREDIT_CARD"]}}),
                    ("/api/policies", {"name": "pci", "guardrails": ["no-cards"]}),
                    ("/api/policies/attachments", {"policy": "pci", "scope_type": "model",
                                                   "scope": "pay-*"})):
                made = await client.post(path, headers=ADMIN, json=body)
                assert made.status_code == 201, made.text

            async def ask(model: str, text: str) -> httpx.Response:
                return await client.post("/v1/chat/completions", headers=ADMIN, json={
                    "model": model, "messages": [{"role": "user", "content": text}]})

            deadline = time.monotonic() + 10
            blocked = await ask("pay-gpt", f"charge {CARD} for the order")
            while blocked.status_code != 400 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)  # the worker's policies reload on the change message
                blocked = await ask("pay-gpt", f"charge {CARD} for the order")
            assert blocked.status_code == 400, blocked.text
            flagged = await ask("chat-gpt", f"write to {EMAIL} please")
            clean = await ask("chat-gpt", "what is a monad?")
            assert flagged.status_code == clean.status_code == 200
            ids = {name: answer.headers["x-smartflow-call-id"] for name, answer in
                   (("blocked", blocked), ("flagged", flagged), ("clean", clean))}

            rows = await _wait_rows(dsn, set(ids.values()))
            assert set(ids.values()) <= set(rows)
            row = rows[ids["blocked"]]
            assert row["policies"] == ["pci"]
            assert row["verdict"] == "blocked"
            decisions = orjson.loads(row["guardrails"])
            assert [(d["guardrail"], d["outcome"], d["phase"]) for d in decisions] == [
                ("no-cards", "blocked", "input")]
            assert decisions[0]["findings"][0]["type"] == "CREDIT_CARD"
            row = rows[ids["flagged"]]
            assert row["policies"] == ["default"] and row["verdict"] == "flagged"
            pii = [d for d in orjson.loads(row["guardrails"]) if d["guardrail"] == "pii"]
            assert pii[0]["outcome"] == "flagged" and pii[0]["findings"][0]["type"] == "EMAIL"
            assert rows[ids["clean"]]["verdict"] == "pass"
            # No offsets, and the sensitive values are nowhere in the decisions.
            dump = orjson.dumps([orjson.loads(r["guardrails"]) for r in rows.values()
                                 if r["guardrails"]]).decode()
            assert "start" not in dump and CARD not in dump and EMAIL not in dump

            violations = await client.get("/api/compliance/violations", headers=ADMIN,
                                          params={"framework": "pci_dss"})
            assert violations.status_code == 200, violations.text
            found = [item["call_id"] for item in violations.json()["data"]]
            assert ids["blocked"] in found and ids["clean"] not in found
            assert CARD not in violations.text
            score = await client.get("/api/compliance/score", headers=ADMIN,
                                     params={"framework": "pci_dss"})
            assert score.status_code == 200, score.text
            report = await client.get("/api/compliance/reports/gdpr", headers=ADMIN)
            assert report.status_code == 200, report.text
            assert EMAIL not in report.text
    finally:
        gateway.close()

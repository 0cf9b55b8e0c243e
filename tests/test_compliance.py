"""``/api/compliance``: framework mappings, reports, scores and violations over
``vas_log`` (``compliance.*``, ``admin.compliance_routes``), and the compliance
API as its own process (``compliance.server``).

Against a real PostgreSQL: each test's database gets the audit schema from the
shipper's own sink (its migrations, its daily partitions), and the calls are
written through that sink as the shipper writes them. The routes run on a
real in-process HTTP server; the caller's role, user and teams come from test
headers (role resolution itself is tested in test_admin_roles). The expected
figures below are worked out by hand from the calls in ``CALLS``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from _admin_helpers import serving
from harness.ports import free_port
from test_audit_logs_api import as_caller, principal_admin

from smartflow.admin.compliance_routes import register_compliance_routes
from smartflow.audit.entry import AuditEntry
from smartflow.audit.log_query import LogReader, encode_cursor
from smartflow.audit.postgres_sink import PostgresSink
from smartflow.compliance.frameworks import FrameworkError, load_frameworks, parse_frameworks
from smartflow.compliance.server import serve_compliance
from smartflow.config import AuditSettings, AuthSettings, ServerSettings, Settings, StateSettings
from smartflow.http.router import Router
from smartflow.identity.roles import INTERNAL_USER, ORG_ADMIN, VIEWER

NOW = datetime.now(UTC).replace(microsecond=0)
SECRET = "4111 1111 1111 1111 belongs to jane.doe@corp.example"  # must never be answered


def decision(guardrail: str, gtype: str, outcome: str, *findings: str,
             action: str = "flag", phase: str = "input") -> dict[str, Any]:
    return {"guardrail": guardrail, "type": gtype, "policy": "default", "phase": phase,
            "action": action, "outcome": outcome,
            "findings": [{"type": t, "score": 0.99, "start": 0, "end": 4} for t in findings]}


def call(call_id: str, age: timedelta, team: str | None, user: str | None,
         decisions: list[dict[str, Any]] | None, verdict: str | None) -> AuditEntry:
    return AuditEntry(call_id=call_id, ts=NOW - age, record={
        "kind": "llm", "status": 200, "team_id": team, "user_id": user,
        "key_alias": f"{team}-key", "model": "gpt-4o", "provider": "openai",
        "policies": ["default"] if decisions else [], "guardrails": decisions,
        "verdict": verdict, "question": SECRET, "request_body": SECRET, "answer": SECRET})


MINUTE = timedelta(minutes=1)
CALLS = [
    # A card and an email, blocked on input.
    call("c1", 70 * MINUTE, "team-a", "u1", [
        decision("pii", "pii", "blocked", "CREDIT_CARD", "EMAIL", action="block"),
        decision("prompt_injection", "prompt_injection", "pass")], "blocked"),
    # Two emails and a name, masked.
    call("c2", 60 * MINUTE, "team-a", "u2", [
        decision("pii", "pii", "masked", "EMAIL", "EMAIL", "PERSON", action="mask")], "masked"),
    # An SSN, only flagged.
    call("c3", 50 * MINUTE, "team-b", "u3", [
        decision("pii", "pii", "flagged", "US_SSN"),
        decision("prompt_injection", "prompt_injection", "pass")], "flagged"),
    # An instruction override, blocked.
    call("c4", 40 * MINUTE, "team-b", "u1", [
        decision("prompt_injection", "prompt_injection", "blocked", "PROMPT_INJECTION",
                 action="block")], "blocked"),
    # Checked, nothing found.
    call("c5", 30 * MINUTE, "team-a", "u2", [
        decision("pii", "pii", "pass"),
        decision("prompt_injection", "prompt_injection", "pass")], "pass"),
    # No guardrail ran.
    call("c6", 20 * MINUTE, "team-a", "u2", None, None),
    # An API key only logged (output); toxicity blocked without listing findings.
    call("c7", 10 * MINUTE, "team-c", "u3", [
        decision("secrets", "pii", "logged", "API_KEY", action="log", phase="output"),
        decision("toxicity", "toxicity", "blocked", action="block")], "blocked"),
    # Outside the default 30-day window.
    call("old", timedelta(days=40), "team-a", "u1", [
        decision("pii", "pii", "flagged", "CREDIT_CARD")], "flagged"),
]


# -- fixtures ---------------------------------------------------------------------------

@pytest.fixture
async def audit_dsn(postgres_database: str) -> str:
    """A database with the shipper's schema, holding ``CALLS`` as the sink wrote them."""
    sink = PostgresSink(postgres_database, retention_days=0)
    try:
        await sink.open()  # the shipper's migrations
        await sink.write(CALLS)
    finally:
        await sink.aclose()
    return postgres_database


@pytest.fixture
async def reader(audit_dsn: str) -> AsyncIterator[LogReader]:
    log_reader = LogReader(audit_dsn, query_timeout=10.0)
    try:
        yield log_reader
    finally:
        await log_reader.aclose()


@pytest.fixture
async def http(reader: LogReader) -> AsyncIterator[httpx.AsyncClient]:
    router = Router()
    register_compliance_routes(router, principal_admin(), reader)
    async with serving(router) as client:
        yield client


async def get_json(http: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None,
                   **params: Any) -> Any:
    answer = await http.get(path, params=params, headers=headers or {})
    assert answer.status_code == 200, answer.text
    assert SECRET not in answer.text and "4111" not in answer.text
    return answer.json()


def control(report: dict[str, Any], control_id: str) -> dict[str, Any]:
    return next(c for c in report["controls"] if c["id"] == control_id)


def ids(page: dict[str, Any]) -> list[str]:
    return [item["call_id"] for item in page["data"]]


def assert_error(answer: httpx.Response, status: int, code: str, param: str | None = None
                 ) -> None:
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error


# -- the mappings -----------------------------------------------------------------------

def test_packaged_mappings_cover_the_four_frameworks() -> None:
    frameworks = load_frameworks()
    assert [f.name for f in frameworks.all] == ["gdpr", "hipaa", "pci_dss", "soc2"]
    pci = frameworks.get("PCI-DSS")
    assert pci is not None and pci.control("3.4") is not None
    assert "CREDIT_CARD" in pci.control("3.4").finding_types  # type: ignore[union-attr]
    soc2 = frameworks.get("SOC 2")
    assert soc2 is not None
    assert {"PROMPT_INJECTION", "API_KEY"} <= set(soc2.control("cc6.1").finding_types)  # type: ignore[union-attr]
    hipaa = frameworks.get("hipaa")
    assert hipaa is not None and hipaa.control("164.312(e)(1)") is not None


def one_framework(controls: str) -> str:
    return "[[frameworks]]\nname='x'\ntitle='X'\n" + controls


def one_control(fields: str, control_id: str = "1") -> str:
    return f"[[frameworks.controls]]\nid='{control_id}'\ntitle='t'\n{fields}\n"


@pytest.mark.parametrize(("text", "complaint"), [
    ("frameworks = 1", "expected [[frameworks]]"),
    (one_framework(one_control("guardrail_types=['pii']\nfinding_types=['CREDITCARD']")),
     "unknown CREDITCARD"),
    (one_framework(one_control("guardrail_types=['regex']")), "unknown regex"),
    (one_framework(one_control("guardrail_types=['pii']\nweight=9")), "weight"),
    (one_framework(one_control("guardrail_types=['pii']")
                   + one_control("guardrail_types=['pii']")), "share an id"),
    (one_framework("controls=[]"), "at least one control"),
    ("[[frameworks", "compliance_frameworks.toml"),
])
def test_malformed_mappings_are_refused_naming_the_place(text: str, complaint: str) -> None:
    with pytest.raises(FrameworkError, match=complaint.replace("[", r"\[")):
        parse_frameworks(text)


async def test_frameworks_routes_list_and_find(http: httpx.AsyncClient) -> None:
    listed = await get_json(http, "/api/compliance/frameworks")
    assert [f["name"] for f in listed["data"]] == ["gdpr", "hipaa", "pci_dss", "soc2"]
    pci = await get_json(http, "/api/compliance/frameworks/pci-dss")
    assert pci["name"] == "pci_dss"
    assert {c["id"] for c in pci["controls"]} >= {"3.4", "4.2"}
    assert_error(await http.get("/api/compliance/frameworks/iso27001"), 404, "not_found")


# -- reports ----------------------------------------------------------------------------

async def test_gdpr_report_counts_per_control_in_the_default_window(
        http: httpx.AsyncClient) -> None:
    report = await get_json(http, "/api/compliance/reports/gdpr")
    assert report["framework"] == "gdpr"
    assert report["calls"] == 7  # "old" is outside the last 30 days
    art5f = control(report, "Art. 5(1)(f)")
    assert {k: art5f[k] for k in ("calls_in_scope", "calls_with_findings", "findings",
                                  "blocked", "masked", "flagged", "logged", "passed",
                                  "enforced", "allowed_through")} == {
        "calls_in_scope": 5, "calls_with_findings": 3, "findings": 6, "blocked": 1,
        "masked": 1, "flagged": 1, "logged": 0, "passed": 0, "enforced": 2,
        "allowed_through": 1}
    assert art5f["top_finding_types"][0] == {"type": "EMAIL", "count": 3}
    assert {t["type"] for t in art5f["top_finding_types"]} == {
        "EMAIL", "PERSON", "CREDIT_CARD", "US_SSN"}
    # Art. 32: card (c1), SSN (c3), injection (c4), API key (c7).
    art32 = control(report, "Art. 32")
    assert (art32["calls_in_scope"], art32["calls_with_findings"], art32["blocked"],
            art32["flagged"], art32["logged"]) == (6, 4, 2, 1, 1)
    totals = report["totals"]
    assert (totals["calls_in_scope"], totals["calls_with_findings"], totals["findings"],
            totals["enforced"], totals["allowed_through"]) == (6, 5, 8, 3, 2)
    since = datetime.fromisoformat(report["window"]["since"])
    until = datetime.fromisoformat(report["window"]["until"])
    assert until - since == timedelta(days=30)


async def test_report_window_is_honoured(http: httpx.AsyncClient) -> None:
    older = (NOW - timedelta(days=45)).isoformat()
    pci = await get_json(http, "/api/compliance/reports/pci_dss", since=older)
    card = control(pci, "3.4")
    assert (card["calls_with_findings"], card["blocked"], card["flagged"]) == (2, 1, 1)
    only_old = await get_json(http, "/api/compliance/reports/pci_dss", since=older,
                              until=(NOW - timedelta(days=1)).isoformat())
    assert only_old["calls"] == 1
    assert control(only_old, "3.4")["flagged"] == 1
    assert control(only_old, "3.4")["blocked"] == 0


async def test_toxicity_without_findings_counts_under_soc2_monitoring(
        http: httpx.AsyncClient) -> None:
    soc2 = await get_json(http, "/api/compliance/reports/soc2")
    cc72 = control(soc2, "CC7.2")
    assert {t["type"] for t in cc72["top_finding_types"]} == {"PROMPT_INJECTION", "TOXICITY"}
    assert (cc72["calls_with_findings"], cc72["blocked"]) == (2, 2)


async def test_reports_are_scoped_like_the_logs(http: httpx.AsyncClient) -> None:
    mine = await get_json(http, "/api/compliance/reports/gdpr",
                          headers=as_caller(INTERNAL_USER, "u1"))
    assert mine["calls"] == 2  # c1 and c4 ("old" is u1's too, but out of the window)
    assert control(mine, "Art. 5(1)(f)")["findings"] == 2
    team_b = await get_json(http, "/api/compliance/reports/gdpr",
                            headers=as_caller(ORG_ADMIN, "boss", admin_of="team-b"))
    assert team_b["calls"] == 2
    assert control(team_b, "Art. 5(1)(f)")["flagged"] == 1
    viewer = await get_json(http, "/api/compliance/reports/gdpr", headers=as_caller(VIEWER))
    assert viewer["calls"] == 7


# -- score ------------------------------------------------------------------------------

async def test_score_is_explained_by_its_inputs(http: httpx.AsyncClient) -> None:
    answer = await get_json(http, "/api/compliance/score", framework="pci_dss")
    (pci,) = answer["frameworks"]
    # 3.4 and 4.2 (weight 3 each): the card was blocked; 8.2.1 (weight 1): the
    # API key was only logged.
    assert pci["score"] == round(100 * (3 + 3 + 0) / 7, 1)
    shares = {c["id"]: c["enforced_share"] for c in pci["controls"]}
    assert shares == {"3.4": 1.0, "4.2": 1.0, "8.2.1": 0.0}
    assert answer["overall"] == pci["score"]
    everything = await get_json(http, "/api/compliance/score")
    scores = {f["framework"]: f["score"] for f in everything["frameworks"]}
    assert set(scores) == {"gdpr", "hipaa", "pci_dss", "soc2"}
    assert everything["overall"] == round(sum(scores.values()) / 4, 1)
    assert all(0 <= value <= 100 for value in scores.values())


async def test_score_is_100_when_nothing_sensitive_was_seen(http: httpx.AsyncClient) -> None:
    # Only c6 (no guardrails) and c5 (nothing found) in this window.
    answer = await get_json(http, "/api/compliance/score",
                            since=(NOW - 35 * MINUTE).isoformat(),
                            until=(NOW - 15 * MINUTE).isoformat())
    assert answer["overall"] == 100.0
    assert all(f["score"] == 100.0 for f in answer["frameworks"])


# -- violations -------------------------------------------------------------------------

async def test_violations_list_matching_decisions_newest_first(
        http: httpx.AsyncClient) -> None:
    page = await get_json(http, "/api/compliance/violations", framework="gdpr")
    assert ids(page) == ["c7", "c4", "c3", "c2", "c1"]
    assert page["has_more"] is False and page["next_cursor"] is None
    c2 = page["data"][3]
    assert (c2["team_id"], c2["key_alias"], c2["user_id"], c2["model"], c2["verdict"],
            c2["policies"]) == ("team-a", "team-a-key", "u2", "gpt-4o", "masked", ["default"])
    (masked,) = c2["decisions"]
    assert masked["guardrail"] == "pii" and masked["outcome"] == "masked"
    assert masked["findings"] == [{"type": "EMAIL", "count": 2}, {"type": "PERSON", "count": 1}]
    assert "gdpr Art. 5(1)(f)" in masked["controls"]
    # c1's prompt-injection decision passed with no findings: not a matching decision.
    assert [d["guardrail"] for d in page["data"][4]["decisions"]] == ["pii"]


async def test_violation_filters(http: httpx.AsyncClient) -> None:
    async def listed(**params: Any) -> list[str]:
        return ids(await get_json(http, "/api/compliance/violations", **params))

    assert await listed(framework="pci_dss", control="3.4") == ["c1"]
    assert await listed(framework="pci_dss", control="3.4",
                        since=(NOW - timedelta(days=45)).isoformat()) == ["c1", "old"]
    assert await listed(framework="gdpr", outcome="masked") == ["c2"]
    assert await listed(framework="gdpr", type="US_SSN") == ["c3"]
    assert await listed(framework="gdpr", team="team-a") == ["c2", "c1"]
    assert await listed(framework="gdpr", user="u3") == ["c7", "c3"]
    assert await listed(framework="gdpr", key_alias="team-b-key") == ["c4", "c3"]
    assert await listed(framework="soc2", guardrail="toxicity") == ["c7"]
    assert await listed(guardrail_type="prompt_injection") == ["c4"]
    assert await listed(model="claude") == []
    # c1's blocked decision also held an email: evidence for transmission security.
    assert await listed(framework="hipaa", control="164.312(e)(1)", outcome="blocked") == ["c1"]
    assert await listed(framework="hipaa", control="164.312(e)(1)", outcome="logged") == []


async def test_violations_paginate_by_cursor(http: httpx.AsyncClient) -> None:
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params: dict[str, Any] = {"framework": "gdpr", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = await get_json(http, "/api/compliance/violations", **params)
        seen += ids(page)
        cursor = page["next_cursor"]
        assert page["has_more"] is (cursor is not None)
        if cursor is None:
            break
    assert seen == ["c7", "c4", "c3", "c2", "c1"]


async def test_violations_are_scoped_like_the_logs(http: httpx.AsyncClient) -> None:
    async def listed(headers: dict[str, str]) -> list[str]:
        return ids(await get_json(http, "/api/compliance/violations", headers, framework="gdpr"))

    assert await listed(as_caller(INTERNAL_USER, "u1")) == ["c4", "c1"]
    assert await listed(as_caller(ORG_ADMIN, "boss", teams="team-c")) == ["c7"]
    assert await listed(as_caller(ORG_ADMIN, "u2", admin_of="team-b")) == ["c4", "c3", "c2"]
    assert await listed(as_caller(INTERNAL_USER)) == []  # no user id: nothing to see by
    # A filter cannot widen the scope.
    assert ids(await get_json(http, "/api/compliance/violations",
                              as_caller(INTERNAL_USER, "u1"), user="u3")) == []


# -- bad input and no database ----------------------------------------------------------

@pytest.mark.parametrize(("path", "params", "status", "code", "param"), [
    ("/api/compliance/reports/gdpr", {"since": "yesterday"}, 400, "invalid_field", "since"),
    ("/api/compliance/reports/gdpr", {"since": "2025-03-02", "until": "2025-03-01"}, 400,
     "invalid_field", "until"),
    ("/api/compliance/reports/gdpr", {"framework": "gdpr"}, 400, "invalid_field", "framework"),
    ("/api/compliance/reports/sox", {}, 404, "not_found", None),
    ("/api/compliance/score", {"framework": "sox"}, 400, "invalid_field", "framework"),
    ("/api/compliance/violations", {"limit": "0"}, 400, "invalid_field", "limit"),
    ("/api/compliance/violations", {"limit": "501"}, 400, "invalid_field", "limit"),
    ("/api/compliance/violations", {"cursor": "not-a-cursor!"}, 400, "invalid_field", "cursor"),
    ("/api/compliance/violations", {"control": "3.4"}, 400, "invalid_field", "control"),
    ("/api/compliance/violations", {"framework": "gdpr", "control": "3.4"}, 400,
     "invalid_field", "control"),
    ("/api/compliance/violations", {"outcome": "denied"}, 400, "invalid_field", "outcome"),
    ("/api/compliance/violations", {"guardrail_type": "regex"}, 400, "invalid_field",
     "guardrail_type"),
    ("/api/compliance/violations", {"team": "a\x00b"}, 400, "invalid_field", "team"),
    ("/api/compliance/violations", {"team": ["a", "b"]}, 400, "invalid_field", "team"),
])
async def test_bad_input_is_a_clear_error(http: httpx.AsyncClient, path: str,
                                          params: dict[str, Any], status: int, code: str,
                                          param: str | None) -> None:
    assert_error(await http.get(path, params=params), status, code, param)


async def test_a_cursor_from_another_listing_still_pages(http: httpx.AsyncClient) -> None:
    # Cursors are positions (ts, call_id): one naming c3 starts the page after it.
    cursor = encode_cursor(CALLS[2].ts, "c3")
    page = await get_json(http, "/api/compliance/violations", framework="gdpr", cursor=cursor)
    assert ids(page) == ["c2", "c1"]


async def test_without_an_audit_database_the_routes_say_so() -> None:
    router = Router()
    register_compliance_routes(router, principal_admin(), None)
    async with serving(router) as http:
        for path in ("/api/compliance/reports/gdpr", "/api/compliance/score",
                     "/api/compliance/violations"):
            assert_error(await http.get(path), 503, "audit_unavailable")
        # The mappings need no database.
        assert (await http.get("/api/compliance/frameworks")).status_code == 200


# -- its own process ------------------------------------------------------------------------

async def test_compliance_runs_as_its_own_process_role(audit_dsn: str, redis_url: str) -> None:
    settings = dataclasses.replace(
        Settings(), audit=AuditSettings(postgres_dsn=audit_dsn),
        auth=AuthSettings(master_key="sk-master-compliance"),
        state=StateSettings(redis_url=redis_url),
        server=ServerSettings(access_log=False, shutdown_timeout=2.0))
    port = free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(serve_compliance(settings, "127.0.0.1", port, stop=stop))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            for _ in range(200):
                try:
                    health = await http.get("/healthz")
                    break
                except httpx.ConnectError:
                    assert not task.done(), task
                    await asyncio.sleep(0.05)
            assert health.status_code == 200
            assert_error(await http.get("/api/compliance/score"), 401, "missing_credentials")
            assert_error(await http.get("/api/compliance/score",
                                        headers={"authorization": "Bearer wrong"}),
                         401, "invalid_credentials")
            master = {"authorization": "Bearer sk-master-compliance"}
            answer = await http.get("/api/compliance/violations", headers=master,
                                    params={"framework": "pci_dss"})
            assert answer.status_code == 200, answer.text
            assert ids(answer.json()) == ["c7", "c1"]
            # Only the compliance API is served here.
            assert (await http.get("/api/logs", headers=master)).status_code == 404
            assert (await http.post("/v1/chat/completions", headers=master)).status_code == 404
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def test_the_cli_serves_the_compliance_api_alone_and_stops_on_sigterm(
        audit_dsn: str, redis_url: str, tmp_path: Any) -> None:
    import signal
    import subprocess
    import sys
    import time

    port = free_port()
    config = tmp_path / "compliance.toml"
    config.write_text(f'[auth]\nmaster_key = "sk-master-cli"\n[state]\nredis_url = "{redis_url}"\n'
                      f'[audit]\npostgres_dsn = "{audit_dsn}"\n')
    process = subprocess.Popen([sys.executable, "-m", "smartflow.cli", "compliance", "--config",
                                str(config), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        health = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert health is not None and health.status_code == 200, process.poll()
        frameworks = httpx.get(f"http://127.0.0.1:{port}/api/compliance/frameworks",
                               headers={"authorization": "Bearer sk-master-cli"}, timeout=10)
        assert frameworks.status_code == 200
        assert {f["name"] for f in frameworks.json()["data"]} >= {"gdpr", "hipaa"}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_supervisor_runs_the_compliance_api_as_a_role_and_restarts_it(
        audit_dsn: str, redis_url: str, gateway_factory: Any) -> None:
    """``[compliance] port``: ``smartflow serve`` forks a ``smartflow: compliance``
    process that answers on its own port (the gateway's port answers the same
    routes too), and brings it back when it dies."""
    import os
    import signal
    import time

    from harness.gateway import titled_child

    port = free_port()
    gateway = gateway_factory({
        "auth": {"master_key": "sk-master-role"}, "state": {"redis_url": redis_url},
        "audit": {"postgres_dsn": audit_dsn}, "compliance": {"port": port}}, workers=1)
    master = {"authorization": "Bearer sk-master-role"}

    def serving_pid(not_pid: int | None = None) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pid = titled_child(gateway.pid, "smartflow: compliance")
            if pid is not None and pid != not_pid:
                try:
                    answer = httpx.get(f"http://127.0.0.1:{port}/api/compliance/frameworks",
                                       headers=master, timeout=5)
                except httpx.TransportError:
                    answer = None
                if answer is not None and answer.status_code == 200:
                    assert {f["name"] for f in answer.json()["data"]} >= {"gdpr", "pci_dss"}
                    return pid
            time.sleep(0.1)
        raise AssertionError(f"no compliance process answering on {port}:\n"
                             f"{gateway.output_tail()}")

    first = serving_pid()
    # Only the compliance API on its port; the gateway's port has it as well.
    assert httpx.get(f"http://127.0.0.1:{port}/api/logs", headers=master,
                     timeout=5).status_code == 404
    assert httpx.get(f"{gateway.url}/api/compliance/frameworks", headers=master,
                     timeout=5).status_code == 200
    os.kill(first, signal.SIGKILL)
    second = serving_pid(not_pid=first)
    assert second != first
    assert gateway.is_running

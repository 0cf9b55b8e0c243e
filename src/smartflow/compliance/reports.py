"""Compliance reports, scores and violation listings: SQL over ``vas_log``.

Each call's ``guardrails`` column is a list of decisions (``{"guardrail",
"type", "policy", "phase", "action", "outcome", "findings": [{"type", ...}]}``).
A control of a framework (``compliance.frameworks``) is evidenced by them so:

* a decision is **in scope** of a control when its guardrail type is one of
  the control's ``guardrail_types``; a call is in scope when one of its
  decisions is;
* a finding of an in-scope decision **counts against** the control when its
  type is one of the control's ``finding_types`` (any type when that list is
  empty). A decision that acted (outcome other than ``pass``) but lists no
  findings counts as one finding named after its guardrail type, upper-case;
* a call **with findings** for a control is **enforced** when the strongest
  outcome among those decisions is ``blocked`` or ``masked``, and **allowed
  through** when it is ``flagged``, ``logged`` or ``pass``.

Everything is aggregated in PostgreSQL (the log is large, the answers small);
values are always bind parameters. Who sees what is ``audit.log_query``'s
scope condition, AND-ed in, exactly as ``GET /api/logs`` applies it.

The score (0-100) of a framework is the weighted mean, over its controls
with findings in the window, of each control's enforced share::

    score = 100 * sum(w_c * enforced_c / with_findings_c) / sum(w_c)

and 100 when no control has findings (nothing sensitive went through). The
overall score is the mean of the frameworks' scores. Answers carry every
input, so a score can be checked by hand.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import orjson

from smartflow.audit.log_query import (
    TABLE,
    Conditions,
    Cursor,
    add_scope,  # see the module docstring: the scope /api/logs applies
    encode_cursor,
)
from smartflow.compliance.frameworks import Control, Framework
from smartflow.identity.roles import AdminPrincipal

OUTCOMES = ("pass", "logged", "flagged", "masked", "blocked")  # weakest to strongest
ENFORCED = frozenset(("blocked", "masked"))
TOP_FINDING_TYPES = 5


class RowSource(Protocol):
    """Runs one read-only statement: what ``LogReader`` offers the log routes."""

    async def fetch(self, sql: str, args: Sequence[Any]) -> list[Any]: ...


@dataclass(frozen=True, slots=True)
class Window:
    since: datetime  # inclusive
    until: datetime  # exclusive

    def to_json(self) -> dict[str, str]:
        return {"since": iso(self.since), "until": iso(self.until)}


@dataclass(frozen=True, slots=True)
class ViolationFilters:
    window: Window
    control: str | None = None  # a control id of the (single) framework asked for
    guardrail: str | None = None  # the decision's guardrail name
    guardrail_type: str | None = None
    finding_type: str | None = None
    outcome: str | None = None
    team_id: str | None = None
    key_alias: str | None = None
    user_id: str | None = None
    model: str | None = None
    limit: int = 50
    cursor: Cursor | None = None


def iso(ts: datetime) -> str:
    return ts.isoformat(timespec="microseconds").replace("+00:00", "Z")


# -- SQL -------------------------------------------------------------------------------

_RANK = ("CASE {0} WHEN 'blocked' THEN 4 WHEN 'masked' THEN 3 WHEN 'flagged' THEN 2 "
         "WHEN 'logged' THEN 1 ELSE 0 END")


def _mapping_ctes(where: Conditions, mapped: Sequence[tuple[Framework, Control]]) -> str:
    """``scope_map(framework, control, gtype)`` and ``finding_map(framework, control,
    ftype)`` ('*': any finding) as CTEs over bound parallel arrays."""
    scope = [(f.name, c.id, g) for f, c in mapped for g in c.guardrail_types]
    finding = [(f.name, c.id, t) for f, c in mapped for t in (c.finding_types or ("*",))]

    def table(rows: list[tuple[str, str, str]], columns: str) -> str:
        arrays = ", ".join(f"{where.bind([row[i] for row in rows])}::text[]" for i in range(3))
        return f"SELECT * FROM unnest({arrays}) AS m({columns})"

    return (f"scope_map AS ({table(scope, 'framework, control, gtype')}), "
            f"finding_map AS ({table(finding, 'framework, control, ftype')})")


def _decisions(guardrails: str) -> str:
    """The decisions of one call's ``guardrails`` value, numbered from 1; anything
    but a list of objects yields none rather than an error."""
    return (f"SELECT d.n, d.value AS decision, d.value->>'type' AS gtype, "
            f"coalesce(d.value->>'outcome', 'pass') AS outcome "
            f"FROM jsonb_array_elements(CASE WHEN jsonb_typeof({guardrails}) = 'array' "
            f"THEN {guardrails} ELSE '[]'::jsonb END) WITH ORDINALITY AS d(value, n) "
            f"WHERE jsonb_typeof(d.value) = 'object'")


# A decision's findings, numbered; one named after its type when it acted without any.
_FINDINGS = (
    "SELECT x.fidx, coalesce(x.value->>'type', 'UNKNOWN') AS ftype "
    "FROM jsonb_array_elements(CASE "
    "WHEN jsonb_typeof({d}.decision->'findings') = 'array' "
    "AND jsonb_array_length({d}.decision->'findings') > 0 THEN {d}.decision->'findings' "
    "WHEN {d}.outcome <> 'pass' THEN jsonb_build_array(jsonb_build_object('type', "
    "upper(coalesce({d}.gtype, 'UNKNOWN')))) "
    "ELSE '[]'::jsonb END) WITH ORDINALITY AS x(value, fidx)"
)

_HIT = ("JOIN scope_map s ON s.gtype = {d}.gtype "
        "JOIN finding_map m ON m.framework = s.framework AND m.control = s.control "
        "AND (m.ftype = '*' OR m.ftype = f.ftype)")


def report_query(mapped: Sequence[tuple[Framework, Control]], window: Window,
                 principal: AdminPrincipal) -> tuple[str, list[Any]]:
    """Rows ``(part, framework, control, key, n)``: the counts a report is built from."""
    where = Conditions()
    maps = _mapping_ctes(where, mapped)
    add_scope(where, principal)
    where.add(f"ts >= {where.bind(window.since)}")
    where.add(f"ts < {where.bind(window.until)}")
    rank = _RANK.format("h.outcome")
    # Calls get a cheap number (cid) for distinct counts; scope is counted per
    # set of guardrail types a call ran (a handful of sets), not per call.
    sql = f"""
WITH {maps},
calls AS MATERIALIZED (
    SELECT row_number() OVER () AS cid, guardrails FROM {TABLE} WHERE {where.sql()}),
decisions AS MATERIALIZED (
    SELECT c.cid, d.* FROM calls c CROSS JOIN LATERAL ({_decisions('c.guardrails')}) d),
signatures AS (
    SELECT gtypes, count(*) AS n FROM (
        SELECT cid, array_agg(DISTINCT gtype) FILTER (WHERE gtype IS NOT NULL) AS gtypes
        FROM decisions GROUP BY cid) per_call_types
    WHERE gtypes IS NOT NULL GROUP BY gtypes),
control_types AS (
    SELECT framework, control, array_agg(gtype) AS gtypes FROM scope_map
    GROUP BY framework, control),
framework_types AS (
    SELECT framework, array_agg(DISTINCT gtype) AS gtypes FROM scope_map GROUP BY framework),
hits AS MATERIALIZED (
    SELECT s.framework, s.control, d.cid, d.n, f.fidx, f.ftype, d.outcome
    FROM decisions d CROSS JOIN LATERAL ({_FINDINGS.format(d='d')}) f {_HIT.format(d='d')}),
per_call AS MATERIALIZED (
    SELECT h.framework, h.control, h.cid, max({rank}) AS worst
    FROM hits h GROUP BY h.framework, h.control, h.cid)
SELECT 'scope' AS part, t.framework, t.control, NULL::text AS key, sum(s.n)::bigint AS n
    FROM control_types t JOIN signatures s ON s.gtypes && t.gtypes GROUP BY t.framework, t.control
UNION ALL SELECT 'outcome', framework, control, worst::text, count(*)
    FROM per_call GROUP BY framework, control, worst
UNION ALL SELECT 'finding', framework, control, ftype, count(*)
    FROM hits GROUP BY framework, control, ftype
UNION ALL SELECT 'total_scope', t.framework, NULL, NULL, sum(s.n)::bigint
    FROM framework_types t JOIN signatures s ON s.gtypes && t.gtypes GROUP BY t.framework
UNION ALL SELECT 'total_outcome', framework, NULL, worst::text, count(*) FROM (
    SELECT framework, cid, max(worst) AS worst FROM per_call
    GROUP BY framework, cid) t GROUP BY framework, worst
UNION ALL SELECT 'total_findings', framework, NULL, NULL, count(*) FROM (
    SELECT DISTINCT framework, cid, n, fidx FROM hits) t GROUP BY framework
UNION ALL SELECT 'calls', NULL, NULL, NULL, count(*) FROM calls"""
    return sql, where.args


def violations_query(mapped: Sequence[tuple[Framework, Control]], filters: ViolationFilters,
                     principal: AdminPrincipal) -> tuple[str, list[Any]]:
    """One page of calls with a decision counting against a mapped control (and
    matching the decision filters), newest first, plus one row to tell whether
    another page follows. ``matched``: ``[{"n", "control"}]`` per row."""
    where = Conditions()
    maps = _mapping_ctes(where, mapped)
    add_scope(where, principal)
    for column, value in (("team_id", filters.team_id), ("key_alias", filters.key_alias),
                          ("user_id", filters.user_id), ("model", filters.model)):
        if value is not None:
            where.add(f"v.{column} = {where.bind(value)}")
    where.add(f"v.ts >= {where.bind(filters.window.since)}")
    where.add(f"v.ts < {where.bind(filters.window.until)}")
    if filters.cursor is not None:
        ts, call_id = where.bind(filters.cursor.ts), where.bind(filters.cursor.call_id)
        where.add(f"(v.ts, v.call_id) < ({ts}, {call_id})")
    hit = ["TRUE"]
    if filters.guardrail is not None:
        hit.append(f"d.decision->>'guardrail' = {where.bind(filters.guardrail)}")
    if filters.guardrail_type is not None:
        hit.append(f"d.gtype = {where.bind(filters.guardrail_type)}")
    if filters.finding_type is not None:
        hit.append(f"f.ftype = {where.bind(filters.finding_type)}")
    if filters.outcome is not None:
        hit.append(f"d.outcome = {where.bind(filters.outcome)}")
    matched = (f"SELECT jsonb_agg(DISTINCT jsonb_build_object('n', d.n, 'control', "
               f"s.framework || ' ' || s.control)) "
               f"FROM ({_decisions('v.guardrails')}) d "
               f"CROSS JOIN LATERAL ({_FINDINGS.format(d='d')}) f {_HIT.format(d='d')} "
               f"WHERE {' AND '.join(hit)}")
    limit = where.bind(filters.limit + 1)
    sql = f"""
WITH {maps}
SELECT v.call_id, v.ts, v.team_id, v.key_alias, v.user_id, v.model, v.policies, v.verdict,
       v.guardrails, hits.matched
FROM {TABLE} v CROSS JOIN LATERAL ({matched}) AS hits(matched)
WHERE {where.sql()} AND hits.matched IS NOT NULL
ORDER BY v.ts DESC, v.call_id DESC LIMIT {limit}"""
    return sql, where.args


# -- answers ---------------------------------------------------------------------------

def _outcome_name(rank: str | None) -> str:
    return OUTCOMES[int(rank or 0)]


def _tally(counts: Mapping[str, int], scope: int, findings: int,
           top: Iterable[tuple[str, int]] | None) -> dict[str, Any]:
    by_outcome = {name: counts.get(name, 0) for name in reversed(OUTCOMES)}
    enforced = sum(by_outcome[name] for name in ENFORCED)
    with_findings = sum(by_outcome.values())
    out: dict[str, Any] = {
        "calls_in_scope": scope,
        "calls_with_findings": with_findings,
        "findings": findings,
        "blocked": by_outcome["blocked"],
        "masked": by_outcome["masked"],
        "flagged": by_outcome["flagged"],
        "logged": by_outcome["logged"],
        "passed": by_outcome["pass"],
        "enforced": enforced,
        "allowed_through": with_findings - enforced,
    }
    if top is not None:
        out["top_finding_types"] = [{"type": t, "count": n} for t, n in top]
    return out


def build_reports(frameworks: Sequence[Framework], rows: Iterable[Mapping[str, Any]],
                  window: Window) -> dict[str, dict[str, Any]]:
    """Framework name -> its report, from ``report_query``'s rows."""
    scope: dict[tuple[str, str | None], int] = defaultdict(int)
    outcomes: dict[tuple[str, str | None], Counter[str]] = defaultdict(Counter)
    finding_types: dict[tuple[str, str | None], Counter[str]] = defaultdict(Counter)
    total_findings: dict[str, int] = defaultdict(int)
    calls = 0
    for row in rows:
        part, key, n = row["part"], (row["framework"], row["control"]), int(row["n"])
        if part in ("scope", "total_scope"):
            scope[key] = n
        elif part in ("outcome", "total_outcome"):
            outcomes[key][_outcome_name(row["key"])] += n
        elif part == "finding":
            finding_types[key][row["key"]] += n
        elif part == "total_findings":
            total_findings[row["framework"]] = n
        elif part == "calls":
            calls = n
    reports = {}
    for framework in frameworks:
        controls = []
        for control in framework.controls:
            key = (framework.name, control.id)
            types = finding_types[key]
            top = sorted(types.items(), key=lambda item: (-item[1], item[0]))[:TOP_FINDING_TYPES]
            controls.append({"id": control.id, "title": control.title,
                             "weight": control.weight,
                             **_tally(outcomes[key], scope[key], sum(types.values()), top)})
        total = (framework.name, None)
        reports[framework.name] = {
            "framework": framework.name, "title": framework.title,
            "window": window.to_json(), "calls": calls,
            "totals": _tally(outcomes[total], scope[total], total_findings[framework.name],
                             None),
            "controls": controls,
        }
    return reports


def score(report: Mapping[str, Any]) -> dict[str, Any]:
    """The framework's score with its inputs (formula in the module docstring)."""
    inputs = []
    weighted = weights = 0.0
    for control in report["controls"]:
        with_findings, enforced = control["calls_with_findings"], control["enforced"]
        share = enforced / with_findings if with_findings else None
        inputs.append({"id": control["id"], "weight": control["weight"],
                       "calls_with_findings": with_findings, "enforced": enforced,
                       "allowed_through": control["allowed_through"],
                       "enforced_share": None if share is None else round(share, 4)})
        if share is not None:
            weighted += control["weight"] * share
            weights += control["weight"]
    value = 100.0 * weighted / weights if weights else 100.0
    return {"framework": report["framework"], "score": round(value, 1), "controls": inputs}


def matching_decisions(guardrails: Any, matched: Any) -> list[dict[str, Any]]:
    """The decisions ``matched`` names, as shown in a violation: names, types,
    outcome and finding type counts, never any text of the call."""
    if isinstance(guardrails, str):  # a connection without the jsonb codec
        guardrails = orjson.loads(guardrails)
    if isinstance(matched, str):
        matched = orjson.loads(matched)
    controls: dict[int, list[str]] = defaultdict(list)
    for item in matched or ():
        controls[int(item["n"])].append(item["control"])
    shown = []
    for n in sorted(controls):
        decision = guardrails[n - 1]
        findings = decision.get("findings")
        counted = Counter(str(f.get("type", "UNKNOWN")) for f in findings
                          if isinstance(f, dict)) if isinstance(findings, list) else Counter()
        shown.append({
            "guardrail": decision.get("guardrail"), "type": decision.get("type"),
            "policy": decision.get("policy"), "phase": decision.get("phase"),
            "action": decision.get("action"), "outcome": decision.get("outcome", "pass"),
            "findings": [{"type": t, "count": c} for t, c in sorted(counted.items())],
            "controls": sorted(controls[n]),
        })
    return shown


def violations_page(records: Sequence[Mapping[str, Any]], limit: int) -> dict[str, Any]:
    has_more = len(records) > limit
    page = records[:limit]
    last = page[-1] if has_more else None
    return {
        "data": [{"call_id": r["call_id"], "ts": iso(r["ts"]), "team_id": r["team_id"],
                  "key_alias": r["key_alias"], "user_id": r["user_id"], "model": r["model"],
                  "policies": list(r["policies"] or []), "verdict": r["verdict"],
                  "decisions": matching_decisions(r["guardrails"], r["matched"])}
                 for r in page],
        "next_cursor": encode_cursor(last["ts"], last["call_id"]) if last else None,
        "has_more": has_more,
    }


# -- the queries, run --------------------------------------------------------------------

def _mapped(frameworks: Sequence[Framework], control: Control | None = None
            ) -> list[tuple[Framework, Control]]:
    return [(f, c) for f in frameworks for c in f.controls if control is None or c is control]


async def reports(rows: RowSource, frameworks: Sequence[Framework], window: Window,
                  principal: AdminPrincipal) -> dict[str, dict[str, Any]]:
    records = await rows.fetch(*report_query(_mapped(frameworks), window, principal))
    return build_reports(frameworks, records, window)


async def scores(rows: RowSource, frameworks: Sequence[Framework], window: Window,
                 principal: AdminPrincipal) -> dict[str, Any]:
    built = await reports(rows, frameworks, window, principal)
    each = [{**score(report), "totals": report["totals"]} for report in built.values()]
    overall = sum(item["score"] for item in each) / len(each) if each else 100.0
    return {"window": window.to_json(), "overall": round(overall, 1), "frameworks": each,
            "formula": "per framework: 100 * sum(weight * enforced / calls_with_findings) / "
                       "sum(weight) over controls with findings (100 when none); "
                       "overall: the mean of the frameworks' scores"}


async def violations(rows: RowSource, frameworks: Sequence[Framework],
                     control: Control | None, filters: ViolationFilters,
                     principal: AdminPrincipal) -> dict[str, Any]:
    sql, args = violations_query(_mapped(frameworks, control), filters, principal)
    return violations_page(await rows.fetch(sql, args), filters.limit)

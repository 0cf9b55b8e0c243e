"""A call's VAS record, as appended to the audit stream.

Taken in the record slot once the call is over (``snapshot``), built a
moment later with the other calls of a flush (``build_batch``).
The record is one JSON array (``WIRE_FIELDS``); the captured bodies travel
beside it as raw bytes, so the worker never decodes, parses or re-encodes
them (a stream's text is picked out of its SSE bytes by
``dialects.stream_text``). The shipper turns the array into the ``vas_log``
columns (``record_fields``) and pulls the question and the answer's text out
of the bodies, off the request path.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

from smartflow.audit.energy import EnergyModel
from smartflow.audit.redact import Redactor
from smartflow.dialects.stream_text import escaped_text
from smartflow.http.request import first_header
from smartflow.proxy.headers import TAGS_HEADER

if TYPE_CHECKING:
    from smartflow.proxy.call import Call

RECORD_VERSION = 2
# A stream's SSE framing is many times its text: the chunks kept get this much
# more room than the cap, which then applies to the text picked out of them.
STREAM_CAPTURE_FACTOR = 8

# The record on the wire is a JSON array in this order (no key names: half the
# bytes, and the worker builds a tuple instead of a dict). ``record_fields``
# turns it back into named fields in the shipper, where what can be derived
# later is derived: kind, milliseconds, tags, energy and CO2e.
WIRE_FIELDS: tuple[str, ...] = (
    "v", "call_id", "ts", "kind", "trace_id", "method", "route", "dialect", "operation",
    "model", "status", "stream", "cache_outcome", "latency_s", "ttfb_s", "attempts",
    "upstream_model", "provider", "deployment", "fallback_chain", "auth", "key_id",
    "key_alias", "user_id", "team_id", "prompt_tokens", "completion_tokens", "cached_tokens",
    "cost_usd", "cost_estimated", "finish_reason", "error_phase", "error_code",
    "error_reason", "error_message", "policies", "guardrails", "verdict", "tags_header",
    "node", "bodies_truncated",
)


_NO_TARGET = (None, None)
_NO_PRINCIPAL = (None,) * 5
_NO_COST = (None,) * 5
_NO_ERROR = (None,) * 4


# What ``snapshot`` keeps of a call until the flush builds its record: the
# call's own values and references to the small objects it points at (the
# request's headers, the target, the principal, the cost), in the order
# ``build_batch`` unpacks them, and last the bytes of body it keeps (the
# stream writer flushes early when many are waiting). The bodies are already
# cut to the cap (so a buffer of snapshots stays small); an error or a route
# plan is read at once (an exception holds its traceback, and with it the
# frames of the call). A stream's answer is its text, still JSON-escaped,
# read out of the events the relay kept (or the pieces of text a stage
# read, ``Call.answer_text``).
Snapshot = tuple[Any, ...]


class RecordBuilder:
    """Built once per worker. A call pays for ``snapshot(call)`` once it is
    over; ``build_batch`` turns the snapshots of a flush into records.

    Split so because the costly part (reading the objects a call points at,
    JSON, redaction) runs several times faster over a batch in one loop than
    once per call between requests: measured in the worker, the code is no
    longer in the CPU's caches by the end of a call, and in a batch it is. So
    the snapshot reads only the call's own fields (the call was just written
    to) and keeps references; and it is one flat tuple, where the call is a
    graph of objects (its parsed body among them) that, kept until the
    flush, the cyclic GC would walk.

    A stream's text is the exception: it is read at the snapshot. One regular
    expression over the events costs the same there as in the flush's loop
    (about 15 us a call for the bench's 5.4 KB stream, in a loaded worker,
    either way), and the snapshot then keeps the ~100 bytes of text instead
    of the events: a worker's buffer fills (``MAX_HELD_BYTES``) and is
    flushed every ~70 streamed calls instead of every ~12.
    """

    __slots__ = ("_capture", "_max_body", "_node", "_redactor", "_wall_offset",
                 "answer_text_cap", "stream_capture_cap")

    def __init__(self, *, capture_bodies: bool, max_body_bytes: int, redactor: Redactor,
                 node: str) -> None:
        self._capture = capture_bodies and max_body_bytes > 0
        self._max_body = max_body_bytes
        self._redactor = redactor
        self._node = node
        # started_s is on the monotonic clock: this offset turns it into wall
        # time. Refreshed at every batch, so after a step of the wall clock
        # only the calls snapshotted before the next flush keep the old one.
        self._wall_offset = time.time() - time.perf_counter()
        self.stream_capture_cap = max_body_bytes * STREAM_CAPTURE_FACTOR if self._capture else 0
        # Characters of a stream's text a stage keeps for the record
        # (``Call.answer_text``): more than fits, so that a cut shows and a
        # secret across the cap is seen whole (``Redactor.cut``).
        self.answer_text_cap = max_body_bytes + redactor.longest + 1 if self._capture else 0

    def build(self, call: Call) -> tuple[bytes, bytes, bytes]:
        """(record JSON, request body, answer) — the bodies empty when not captured."""
        return self.build_batch((self.snapshot(call),))[0]

    def snapshot(self, call: Call) -> Snapshot:
        """What the record needs of a finished call (see ``Snapshot``)."""
        ended = call.ended_s
        request = call.request
        error = call.error
        route = call.route_plan
        question = answer = b""
        truncated = False
        held = 0
        if self._capture:
            cap = self._max_body
            question = call.raw_body
            if len(question) > cap:
                question, truncated = self._redactor.cut(question, cap, _secret(call)), True
            chunks = call.answer_chunks  # bounded by the relay (stream_capture_cap)
            if chunks is not None:  # a stream's events: its text, still escaped
                answer = escaped_text(call.dialect.name, call.operation, b"".join(chunks))
            elif call.answer_text is not None:  # the text a stage read
                answer = _escaped("".join(call.answer_text))
            else:
                answer = call.answer_body or b""
            if len(answer) > cap:
                answer, truncated = self._redactor.cut(answer, cap, _secret(call)), True
            held = len(question) + len(answer)
        return (
            call.call_id, call.started_s, ended if ended is not None else time.perf_counter(),
            call.first_byte_s, call.trace_id, request.method,
            request.path,  # never the query string: it may carry key=
            request.headers, call.dialect, call.operation, call.model, call.status,
            call.is_stream, call.cache_outcome, call.attempts, call.target,
            call.deployment_id or None,
            (route.chain or None) if route is not None else None,
            call.identity, call.cost, call.finish_reason,
            _NO_ERROR if error is None else (
                error.phase.value, error.code or call.dialect.error_type(error.status),
                error.reason.value, error.message[:1000]),
            call.policies, call.guardrails, call.verdict, question, answer, truncated, held,
        )

    def build_batch(self, snapshots: Iterable[Snapshot]) -> list[tuple[bytes, bytes, bytes]]:
        """The records of the snapshots, in one loop (the flush's)."""
        self._wall_offset = offset = time.time() - time.perf_counter()
        dumps = orjson.dumps
        node = self._node
        redact_text = self._redactor.redact_text
        records: list[bytes] = []
        bodies: list[bytes] = []  # each record's question and answer, in turn
        secrets: set[str] = set()
        for (call_id, started, ended, first_byte, trace_id, method, path, headers, dialect,
             operation, model, status, is_stream, cache_outcome, attempts, target, deployment,
             chain, principal, cost, finish_reason, error, policies, guardrails, verdict,
             question, answer, truncated, _held) in snapshots:
            secret = ""
            if target is not None:
                model = target.public_name
                secret = target.api_key
                secrets.add(secret)
            if error is not _NO_ERROR and error[3]:  # a message can quote a key
                error = (*error[:3], redact_text(error[3], secret))
            record = (
                RECORD_VERSION, call_id, started + offset, "llm", trace_id, method, path,
                dialect.name, operation, model, status, is_stream, cache_outcome,
                ended - started, first_byte - started if first_byte is not None else None,
                attempts,
                *(_NO_TARGET if target is None else (target.model, target.provider)),
                deployment, chain,
                # ids and the alias, never the key
                *(_NO_PRINCIPAL if principal is None else (
                    principal.kind, principal.key_id, principal.key_alias, principal.user_id,
                    principal.team_id)),
                *(_NO_COST if cost is None else (
                    cost.prompt_tokens, cost.completion_tokens, cost.cached_tokens, cost.usd,
                    cost.is_estimated)),
                finish_reason, *error, policies, guardrails, verdict,
                first_header(headers, _TAGS_HEADER), node, truncated)
            records.append(dumps(record))
            bodies += (question, answer)
        # Redacted together: one search over all of them when none holds a
        # secret (the usual case), not a few per call.
        bodies = self._redactor.redact_batch(bodies, secrets)
        return list(zip(records, bodies[0::2], bodies[1::2], strict=True))


_TAGS_HEADER = TAGS_HEADER.encode()  # header names are kept lower-case bytes


def _secret(call: Call) -> str:
    """The provider key the call was sent with (a vault key is per call)."""
    target = call.target
    return target.api_key if target is not None else ""


def _escaped(text: str) -> bytes:
    """``text`` JSON-escaped, without its quotes: what ``escaped_text`` reads
    out of a stream, and the shipper unescapes."""
    try:
        return orjson.dumps(text)[1:-1]
    except orjson.JSONEncodeError:  # a lone surrogate
        return orjson.dumps(text.encode("utf-8", "replace").decode())[1:-1]


def snapshot_call_id(snapshot: Snapshot) -> str:
    """The id of the call a snapshot was taken of (for logging)."""
    return str(snapshot[0])


def _tags(header: str | None) -> list[str]:
    if not header:
        return []
    return [tag for tag in (t.strip() for t in header.split(",")[:32]) if tag]


def _ms(seconds: object) -> float | None:
    return round(seconds * 1000.0, 3) if isinstance(seconds, int | float) else None


def record_fields(wire: list[Any], energy: EnergyModel) -> dict[str, Any]:
    """The named fields of a record as ``build`` sent it (the shipper's side);
    ValueError when ``wire`` is not such a record."""
    if len(wire) != len(WIRE_FIELDS) or wire[0] != RECORD_VERSION:
        raise ValueError(f"not a version {RECORD_VERSION} record of {len(WIRE_FIELDS)} fields")
    fields = dict(zip(WIRE_FIELDS, wire, strict=True))
    del fields["v"]
    fields["latency_ms"] = _ms(fields.pop("latency_s"))
    fields["ttfb_ms"] = _ms(fields.pop("ttfb_s"))
    fields["tags"] = _tags(fields.pop("tags_header"))
    prompt, completion = fields["prompt_tokens"], fields["completion_tokens"]
    if isinstance(prompt, int) and isinstance(completion, int) and (prompt or completion):
        model = fields["upstream_model"] or fields["model"]
        fields["energy_wh"], fields["co2e_g"] = energy.estimate(str(model), prompt, completion)
    return fields

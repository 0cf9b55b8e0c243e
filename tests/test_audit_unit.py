"""The audit record's pieces without I/O: energy coefficients, redaction, the
record a call leaves, and what the shipper reads back out of a stream entry."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest

from smartflow.audit.energy import load_energy_model
from smartflow.audit.framing import pack, unpack
from smartflow.audit.record import RecordBuilder, record_fields
from smartflow.audit.redact import REDACTED, Redactor, scrub_key_formats
from smartflow.audit.replay import answer_of_body, question_of
from smartflow.audit.shipper import decode_record
from smartflow.dialects import anthropic as anthropic_dialect
from smartflow.dialects import openai as openai_dialect
from smartflow.dialects.stream_text import escaped_text, unescape
from smartflow.gateway_error import GatewayError, Phase
from smartflow.http.request import Request
from smartflow.providers.base import Target, Usage
from smartflow.proxy.call import Call, Principal
from smartflow.proxy.cost import Cost

VKEY = "sk-sf-" + "ab" * 24


def _call(body: bytes = b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}',
          *, query: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None) -> Call:
    request = Request("POST", "/v1/chat/completions", query, headers or [], None, "1.1")
    call = Call(request, openai_dialect.DIALECT, "chat")
    call.raw_body = body
    call.model = "gpt-4o"
    call.target = Target(public_name="gpt-4o", provider="openai", model="gpt-4o-2024",
                         api_base="https://api.openai.com/v1", api_key="sk-provider-secret-123456")
    call.status = 200
    call.first_byte_s = call.started_s + 0.010
    call.ended_s = call.started_s + 0.050
    call.usage = Usage(12, 30)
    call.cost = Cost(0.00042, 12, 30)
    call.attempts = 1
    call.identity = Principal(kind="virtual_key", key_id="k1", key_alias="ci-bot",
                              user_id="u1", team_id="t1")
    return call


def _builder(*, capture: bool = True, cap: int = 1000, secrets: tuple[str, ...] = ()
             ) -> RecordBuilder:
    return RecordBuilder(capture_bodies=capture, max_body_bytes=cap,
                         redactor=Redactor(secrets), node="node-a")


def _fields(raw: bytes) -> dict:
    return record_fields(orjson.loads(raw), load_energy_model())


def test_energy_classes_and_formula_follow_the_data_file() -> None:
    model = load_energy_model("""
pue = 2.0
grid_gco2e_per_kwh = 500
[default]
input_wh_per_1k = 1.0
output_wh_per_1k = 10.0
[[classes]]
name = "tiny"
patterns = ["*-mini"]
input_wh_per_1k = 0.5
output_wh_per_1k = 1.0
""")
    assert model.class_of("GPT-4O-MINI").name == "tiny"
    assert model.class_of("other").name == "default"
    # (1000 * 1.0 + 500 * 10.0) / 1000 Wh * pue 2 = 12 Wh; 12 Wh at 500 g/kWh = 6 g
    assert model.estimate("other", 1000, 500) == (12.0, 6.0)
    packaged = load_energy_model()
    small, _ = packaged.estimate("gpt-4o-mini", 1000, 1000)
    large, _ = packaged.estimate("claude-3-opus", 1000, 1000)
    assert 0 < small < large


def test_secrets_are_redacted_in_the_worker_and_key_formats_in_the_shipper() -> None:
    redactor = Redactor(["provider-key-0123456789", "short"])
    text = (f"use {VKEY} and provider-key-0123456789 and sk-ant-api03-abcdefghijklmnopqrstuv "
            "and AKIAABCDEFGHIJKLMNOP and vault-key-abcdefgh; a short word; kill the process; "
            "task-force")
    out = redactor.redact(text.encode(), extra_secret="vault-key-abcdefgh")
    for gone in (VKEY, "provider-key-0123456789", "vault-key-abcdefgh"):
        assert gone.encode() not in out
    assert b"a short word; kill the process; task-force" in out  # 'short' is too short a secret
    assert b"sk-ant-api03" in out  # other issuers' formats: the shipper's job
    scrubbed = scrub_key_formats(out)
    assert b"sk-ant-api03" not in scrubbed and b"AKIAABCDEFGHIJKLMNOP" not in scrubbed
    assert scrubbed.count(REDACTED) == 5
    assert b"kill the process; task-force" in scrubbed
    plain = b"nothing secret here"
    assert redactor.redact(plain) is plain and scrub_key_formats(plain) is plain


@pytest.mark.parametrize(("secrets", "by_substrings"), [
    # secrets that open alike ("sk-"): one expression does the search
    (["sk-master-0123456789", "sk-provider-abcdefghij", "sk-provider-abcdefghij-longer"], False),
    # secrets that open differently: each is searched for as a substring first
    (["sk-master-0123456789", "AIzaProviderKey-abcdefgh", "vault-0123456789abcdef",
      "provider-abcdefghij", "provider-abcdefghij-longer"], True),
])
def test_redaction_finds_every_secret_whichever_search_it_takes(
        secrets: list[str], by_substrings: bool) -> None:
    redactor = Redactor(secrets)
    assert (redactor._literals is not None) is by_substrings  # both searches are tested
    for secret in secrets:
        text = f"before {secret} after".encode()
        assert redactor.redact(text) == b"before " + REDACTED + b" after"
        assert redactor.redact_batch([b"plain", text, b"plain"], ()) == [
            b"plain", b"before " + REDACTED + b" after", b"plain"]
        # at the very ends, and twice
        assert redactor.redact(f"{secret}{secret}".encode()) == REDACTED * 2
    # the longer of two secrets, one containing the other, goes whole
    longer = secrets[-1]
    assert redactor.redact(f"x {longer} y".encode()) == b"x " + REDACTED + b" y"
    # a virtual key is found whatever the configured secrets
    assert redactor.redact(f"key {VKEY}.".encode()) == b"key " + REDACTED + b"."
    # the opening of a virtual key alone, and text much like a secret, stay
    for plain in (b"sk-sf-notakey and sk-master-012345678 and provider-abcdefghi",
                  b"kill the process, drop the test table, bypass the cache " * 40):
        assert redactor.redact(plain) is plain
        bodies = [plain, plain]
        assert redactor.redact_batch(bodies, ()) is bodies


def test_a_batch_is_redacted_of_every_calls_secret_and_only_where_one_is() -> None:
    redactor = Redactor(["provider-key-0123456789"])
    vault_a, vault_b = "vault-key-aaaaaaaa", "vault-key-bbbbbbbb-longer"
    bodies = [b"question one", f"answer with {vault_a}".encode(), b"plain",
              f"{vault_b} and provider-key-0123456789 and {VKEY}".encode(), b"", b"end"]
    out = redactor.redact_batch(bodies, [vault_a, vault_b, "", "provider-key-0123456789"])
    assert out == [b"question one", b"answer with " + REDACTED, b"plain",
                   REDACTED + b" and " + REDACTED + b" and " + REDACTED, b"", b"end"]
    assert out[0] is bodies[0] and out[2] is bodies[2]  # a clean body is not copied
    # A secret is never assembled across two bodies (the first ends as a
    # secret starts, the second goes on): both stay as they are.
    halves = [b"provider-key-", b"0123456789", b"vault-key-", b"aaaaaaaa"]
    assert redactor.redact_batch(halves, [vault_a]) is halves


def test_the_worker_redacts_each_record_of_a_batch_as_it_would_alone() -> None:
    # One search over a batch's bodies decides; a record is redacted the same
    # whether the other records of its flush held secrets or not.
    builder = _builder(cap=4096, secrets=("provider-key-0123456789",))
    calls = []
    for index, body in enumerate((b'{"q": "plain one"}', b'{"q": "my key provider-key-0123456789"}',
                                  b'{"q": "plain two"}')):
        call = _call(body)
        call.answer_body = f'{{"answer": "text {index}"}}'.encode()
        calls.append(call)
    alone = [builder.build(call) for call in calls]
    together = builder.build_batch([builder.snapshot(call) for call in calls])
    assert [entry[1:] for entry in together] == [entry[1:] for entry in alone]
    assert together[1][1] == b'{"q": "my key ' + REDACTED + b'"}'
    assert together[0][1] == b'{"q": "plain one"}' and together[2][2] == b'{"answer": "text 2"}'


def test_a_stream_text_read_by_a_stage_is_the_record_answer() -> None:
    # The output guard, holding nothing back, keeps the text it read on the
    # call: the record takes it (escaped as a stream's text is) and keeps no chunk.
    builder = _builder(cap=80, secrets=("provider-key-0123456789",))
    call = _call()
    call.is_stream = True
    call.answer_text = ["He said \"hi\" \\ ", "then\nleft \u00e9\U0001F600 ",
                        "provider-key-0123456789"]
    record, _question, answer = builder.build(call)
    assert unescape(answer) == 'He said "hi" \\ then\nleft \u00e9\U0001F600 [REDACTED]'
    assert _fields(record)["bodies_truncated"] is False
    # Past the cap (a stage keeps more than fits): cut, and marked so.
    assert builder.answer_text_cap == 81 + len(VKEY)
    call.answer_text = ["x" * 81]
    record, _question, answer = builder.build(call)
    assert answer == b"x" * 80 and _fields(record)["bodies_truncated"] is True
    # No capture: nothing kept, nothing recorded.
    assert _builder(capture=False).answer_text_cap == 0
    assert _builder(capture=False).build(call)[2] == b""


def test_a_cut_body_keeps_no_part_of_a_secret_it_would_split() -> None:
    secret = "provider-key-0123456789"
    builder = _builder(cap=100, secrets=(secret,))
    for key in (secret, VKEY):
        for offset in (1, len(key) // 2, len(key) - 1):  # the cap falls inside the key
            body = ("q" * (100 - offset) + key + " and more text after it").encode()
            at = 100 - offset
            call = _call(body)
            call.answer_body = body
            record, question, answer = builder.build(call)
            assert question == body[:at] == answer  # cut before the key, not through it
            assert _fields(record)["bodies_truncated"] is True
        # cut well before or after a key: exactly the cap
        plain = b"z" * 300
        assert builder.build(_call(plain))[1] == plain[:100]


# Other issuers' keys the shipper scrubs (it needs them whole), and a vault
# key only the call knows: a cut anywhere through one keeps none of it.
_OTHER_KEYS = (
    "sk-proj-" + "Ab3" * 10,
    "AKIA" + "ABCDEFGHIJKLMNOP",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlLXBhcnQtaGVyZQ",
)
_VAULT_KEY = "vault-issued:Zq81-77xK-p0Lm"  # no issuer's format, and a ":" in it


def _sink_view(builder: RecordBuilder, call: Call) -> str:
    """Everything of the call's record that a sink would get, as one text."""
    entry = decode_record(*builder.build(call), max_text=10_000, energy=load_energy_model())
    return orjson.dumps([entry.record, entry.request_body, entry.response_body,
                         entry.question, entry.answer]).decode()


@pytest.mark.parametrize("stream", [False, True])
def test_a_cut_keeps_no_part_of_another_issuers_key_or_the_calls_vault_key(
        stream: bool) -> None:
    builder = _builder(cap=100)
    for key in (*_OTHER_KEYS, _VAULT_KEY):
        for offset in range(1, len(key)):  # the cap falls inside the key
            text = "q" * (100 - offset) + " " + key + " and more text after it"
            call = _call(text.encode())
            call.target = replace(call.target, api_key=_VAULT_KEY)
            if stream:
                call.is_stream = True
                call.answer_text = [text[:builder.answer_text_cap]]
            else:
                call.answer_body = text.encode()
            record, question, answer = builder.build(call)
            kept = text[:101 - offset].encode()  # up to the key, which starts at 101 - offset
            assert question == kept == answer, (key, offset)
            assert _fields(record)["bodies_truncated"] is True
            assert key[:3] not in _sink_view(builder, call)
    # an ordinary long word through the cut is cut at the cap as before
    call = _call(b"w" * 300)
    assert builder.build(call)[1] == b"w" * 100


def test_an_error_message_reaches_the_sink_without_a_key() -> None:
    call = _call()
    call.status = 502
    for message, gone in (
            ("upstream refused key sk-provider-secret-123456 for this model",
             "sk-provider-secret-123456"),  # the call's own provider key
            (f"echoed {_OTHER_KEYS[0]} back", _OTHER_KEYS[0])):  # another issuer's format
        call.error = GatewayError(502, message, phase=Phase.BEFORE_FIRST_BYTE)
        seen = _sink_view(_builder(), call)
        assert gone not in seen and "[REDACTED]" in seen
    call.error = GatewayError(502, "The upstream answered HTTP 502.", phase=Phase.BEFORE_FIRST_BYTE)
    assert _fields(_builder().build(call)[0])["error_message"] == "The upstream answered HTTP 502."


def test_the_shipper_finds_a_key_format_exactly_where_the_expression_does() -> None:
    """``holds_key_format`` searches only the long runs of key characters
    (the expression alone is slow on prose): it must agree with the whole
    expression on every text, keys whole, cut short, glued to other key
    characters, in prose, in code and at the ends."""
    import random

    from smartflow.audit.redact import _KEY_FORMATS, holds_key_format

    keys = [VKEY, *_OTHER_KEYS, "sk-ant-api03-" + "x" * 30, "AIza" + "S" * 35,
            "ASIA" + "ABCDEFGHIJKLMNOP", "ghp_" + "a" * 36, "xoxb-1234567890"]
    prose = b"the cache was expected to hold a desk-top session for the x-ray table " * 40
    code = b"def get_user_name(self, user_id: int) -> str:\n    return self._cache.get(u)\n" * 40
    rng = random.Random(7)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.- \"':/\n\\"
    texts = [prose, code, b"", b"x" * 14, b"k" * 15]
    for key in keys:
        raw = key.encode()
        texts += [raw, raw[:-1], b"x " + raw + b" y", b'"' + raw + b'"', b"a.b_c-" + raw + b"-z",
                  prose + raw, raw + code, code[:500] + raw + prose[:500]]
    for _ in range(3000):
        text = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        if rng.random() < 0.5:
            key = rng.choice(keys).encode()
            at = rng.randint(0, len(text))
            text = text[:at] + key[:rng.randint(len(key) - 3, len(key))] + text[at:]
        texts.append(text)
    for text in texts:
        assert holds_key_format(text) is (_KEY_FORMATS.search(text) is not None), text
        assert scrub_key_formats(text) == _KEY_FORMATS.sub(REDACTED, text)
    assert scrub_key_formats(prose) is prose  # nothing found: no copy


def test_record_carries_the_call_and_no_secret() -> None:
    body = orjson.dumps({"model": "gpt-4o", "messages": [
        {"role": "user", "content": f"my key is {VKEY} and sk-provider-secret-123456"}]})
    call = _call(body, query=b"key=AIzaSyDUMMYDUMMYDUMMYDUMMYDUMMYDUMMY12",
                 headers=[(b"x-smartflow-tags", b"team-a, batch")])
    call.answer_body = b'{"choices":[{"index":0,"message":{"role":"assistant","content":"ok"}}]}'
    raw, question, answer = _builder().build(call)
    record = _fields(raw)
    assert record["call_id"] == call.call_id and record["kind"] == "llm"
    assert record["route"] == "/v1/chat/completions"  # never the query string
    assert (record["model"], record["upstream_model"], record["provider"]) == (
        "gpt-4o", "gpt-4o-2024", "openai")
    assert (record["key_alias"], record["user_id"], record["team_id"]) == ("ci-bot", "u1", "t1")
    assert (record["prompt_tokens"], record["completion_tokens"]) == (12, 30)
    assert record["cost_usd"] == pytest.approx(0.00042)
    assert record["latency_ms"] == pytest.approx(50, abs=0.01)
    assert record["ttfb_ms"] == pytest.approx(10, abs=0.01)
    assert record["energy_wh"] > 0 and record["co2e_g"] > 0
    assert record["tags"] == ["team-a", "batch"]
    assert record["policies"] == [] and record["guardrails"] == []
    assert b"key=" not in raw
    assert VKEY.encode() not in question and b"sk-provider-secret-123456" not in question
    assert REDACTED in question
    assert answer == call.answer_body


def test_bodies_are_cut_at_the_cap_and_marked_and_not_captured_when_off() -> None:
    call = _call(b"x" * 5000)
    call.answer_body = b"y" * 5000
    raw, question, answer = _builder(cap=1000).build(call)
    assert len(question) == 1000 and len(answer) == 1000
    assert _fields(raw)["bodies_truncated"] is True
    raw, question, answer = _builder(capture=False).build(call)
    assert (question, answer) == (b"", b"")
    assert _fields(raw)["bodies_truncated"] is False


def test_a_snapshot_holds_the_record_not_the_call() -> None:
    """What waits in a worker's buffer until the flush: no call or request
    (kept alive, their objects would be walked by the GC), and bodies already
    cut to the cap; built later, it is the call's record."""
    import gc

    call = _call(b"x" * 5000, headers=[(b"x-smartflow-tags", b"team-a, hipaa-1")])
    call.answer_body = b"y" * 5000
    call.body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 5000}]}
    builder = _builder(cap=1000)
    snapshot = builder.snapshot(call)
    seen: set[int] = set()
    stack: list[object] = [snapshot]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        assert item is not call and item is not call.request and item is not call.body
        if isinstance(item, tuple | list):
            stack.extend(gc.get_referents(item))
    assert max(len(item) for item in snapshot if isinstance(item, bytes)) == 1000
    raw, question, answer = builder.build_batch([snapshot])[0]
    assert (len(question), len(answer)) == (1000, 1000)
    assert _fields(raw)["bodies_truncated"] is True
    assert _fields(raw)["tags"] == ["team-a", "hipaa-1"]
    assert _fields(raw)["call_id"] == call.call_id


def test_a_failed_call_records_its_phase_and_code() -> None:
    call = _call()
    call.status = 429
    call.cost = None
    call.error = GatewayError(429, "Budget exceeded.", code="budget_exceeded",
                              phase=Phase.BEFORE_SEND)
    record = _fields(_builder().build(call)[0])
    assert (record["status"], record["error_phase"], record["error_code"]) == (
        429, "before_send", "budget_exceeded")
    assert record["prompt_tokens"] is None and "energy_wh" not in record


def test_question_and_answer_are_read_from_each_format() -> None:
    chat = orjson.dumps({"messages": [{"role": "system", "content": "be brief"},
                                      {"role": "user", "content": [
                                          {"type": "text", "text": "What is 2+2?"}]}]})
    assert question_of(chat) == "What is 2+2?"
    assert question_of(b'{"prompt": "Say hi"}') == "Say hi"
    assert question_of(b'{"messages": [{"role": "user", "content": "cut') is None
    assert answer_of_body(b'{"choices":[{"message":{"content":"4"}}]}') == "4"
    assert answer_of_body(b'{"type":"message","content":[{"type":"text","text":"Four"}]}') == \
        "Four"
    assert answer_of_body(b'{"error":{"message":"Budget exceeded."}}') == "Budget exceeded."
    openai_sse = (b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
                  b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n'
                  b'data: {"choices":[{"index":0,"delta":{"content":"lo \\"you\\"\\n\\u00e9"}}]}'
                  b'\n\ndata: [DONE]\n\n')
    assert unescape(escaped_text("openai", "chat", openai_sse)) == 'Hello "you"\n\u00e9'
    anthropic_sse = (b'event: content_block_delta\ndata: {"type":"content_block_delta",'
                     b'"index":0,"delta":{"type":"text_delta","text":"Bon"}}\n\n'
                     b'event: content_block_delta\ndata: {"type":"content_block_delta",'
                     b'"index":0,"delta":{"type":"text_delta","text":"jour"}}\n\n'
                     b'event: content_block_delta\ndata: {"type":"content_blo')  # cut
    assert unescape(escaped_text("anthropic", "messages", anthropic_sse)) == "Bonjour"
    assert unescape(b"cut at \\u00") == "cut at "  # a capture cut inside an escape
    assert anthropic_dialect.DIALECT.name == "anthropic"


def test_a_flush_is_framed_and_each_record_decoded() -> None:
    call = _call()
    call.is_stream = True
    call.answer_chunks = [b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n',
                          b"data: [DONE]\n\n"]
    built = _builder().build(call)
    other = (b'[2, "c2"]', b"", b"")
    blob = pack([built, other])
    assert list(unpack(blob)) == [built, other]
    with pytest.raises(ValueError):
        list(unpack(blob[:-3]))
    energy = load_energy_model()
    entry = decode_record(*built, max_text=1000, energy=energy)
    assert entry.call_id == call.call_id
    assert entry.ts.tzinfo is not None
    assert entry.question == "hi" and entry.answer == "Hi"
    assert entry.response_body is None  # a stream is kept as its text, not its SSE bytes
    assert entry.value("status") == 200 and entry.value("key_alias") == "ci-bot"
    with pytest.raises(ValueError):
        decode_record(b'{"no":"id"}', b"", b"", max_text=10, energy=energy)
    with pytest.raises(ValueError):
        decode_record(other[0], b"", b"", max_text=10, energy=energy)
    with pytest.raises(orjson.JSONDecodeError):
        decode_record(b"not json", b"", b"", max_text=10, energy=energy)

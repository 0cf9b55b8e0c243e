"""The PII detector: each type with exact offsets, checksums, placeholders,
masking, config validation, the NER model, and speed on hostile input."""

from __future__ import annotations

import itertools
import time

import pytest

from smartflow.policy.findings import Finding
from smartflow.policy.masking import Masker
from smartflow.policy.ner import NerUnavailable, candidate_sentences, load_ner
from smartflow.policy.pii import PiiDetector, pii_detector_from_config

PATTERNS = PiiDetector(entities=["EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "US_SSN",
                                 "IP_ADDRESS", "API_KEY"])


def spans(text: str, detector: PiiDetector = PATTERNS) -> list[tuple[str, str]]:
    return [(f.type, text[f.start:f.end]) for f in detector.detect(text)]


@pytest.fixture(scope="module")
def ner_detector() -> PiiDetector:
    try:
        return PiiDetector(ner=load_ner())
    except NerUnavailable as exc:
        pytest.skip(f"NER model package not installed: {exc}")


@pytest.mark.parametrize(("text", "kind", "value"), [
    ("write to jane.doe@acme-corp.io today", "EMAIL", "jane.doe@acme-corp.io"),
    ("call (415) 867-5309 after 5", "PHONE", "(415) 867-5309"),
    ("mobile +44 20 7946 0958.", "PHONE", "+44 20 7946 0958"),
    ("card 4539 1488 0343 6467 exp 09/27", "CREDIT_CARD", "4539 1488 0343 6467"),
    ("IBAN GB82 WEST 1234 5698 7654 32 please", "IBAN", "GB82 WEST 1234 5698 7654 32"),
    ("iban DE89370400440532013000.", "IBAN", "DE89370400440532013000"),
    ("SSN 536-22-1234 on file", "US_SSN", "536-22-1234"),
    ("from 81.2.69.160 port 22", "IP_ADDRESS", "81.2.69.160"),
    ("peer 2a00:1450:4001:80b::200e up", "IP_ADDRESS", "2a00:1450:4001:80b::200e"),
    ("key=sk-proj-abc123DEF456ghi789JKL012mno345 end", "API_KEY",
     "sk-proj-abc123DEF456ghi789JKL012mno345"),
    ("aws AKIAZ3X9Q2L7M4N8P6RT here", "API_KEY", "AKIAZ3X9Q2L7M4N8P6RT"),
    ("token ghp_8f7Gh2Kk9Lm3Nn4Pp5Qq6Rr7Ss8Tt9Uu0Vv1Ww", "API_KEY",
     "ghp_8f7Gh2Kk9Lm3Nn4Pp5Qq6Rr7Ss8Tt9Uu0Vv1Ww"),
    ("x sk-ant-api03-Zq8Lm2Np4Rs6Tu8Vw0Xy2Za4Bc6De8Fg0Hi2Jk y", "API_KEY",
     "sk-ant-api03-Zq8Lm2Np4Rs6Tu8Vw0Xy2Za4Bc6De8Fg0Hi2Jk"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
     "API_KEY",
     "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
])
def test_each_pattern_type_with_offsets(text: str, kind: str, value: str) -> None:
    found = PATTERNS.detect(text)
    assert [(f.type, text[f.start:f.end]) for f in found] == [(kind, value)]
    assert found[0].start == text.index(value)
    assert found[0].end == text.index(value) + len(value)


def test_offsets_are_code_points_after_non_ascii() -> None:
    text = "Grüße 🙂 – mail ana.silva@proton.me"
    [f] = PATTERNS.detect(text)
    assert (f.start, f.end) == (text.index("ana"), len(text))


def test_checksums_decide_cards_and_ibans() -> None:
    assert spans("card 4539 1488 0343 6468") == []       # Luhn fails
    assert spans("card 4539148803436467") == [("CREDIT_CARD", "4539148803436467")]
    assert spans("IBAN GB83 WEST 1234 5698 7654 32") == []  # mod-97 fails
    assert spans("IBAN DE89370400440532013001") == []
    assert spans("amex 3714 496353 98431") == [("CREDIT_CARD", "3714 496353 98431")]


@pytest.mark.parametrize("text", [
    "send it to user@example.com or admin@docs.example.org or a@b.test",
    "point it at 192.0.2.44, 198.51.100.7, 203.0.113.250 or 2001:db8::7",
    "the hotline is 555-0142, or (212) 555-0187",
    "export OPENAI_API_KEY=YOUR_API_KEY",
    "api_key = \"<your-key>\"",
    "use sk-xxxxxxxxxxxxxxxxxxxxxxxx for now",
    "the docs key AKIAIOSFODNN7EXAMPLE",
    "kill the process on port 8080, version 1.2.3, build 1.4.22.7",
    "request 3f2b8c1e-9d4a-4f7e-b6a2-1c5d8e9f0a7b, commit 9fceb02d0ae598e95dc970b74767f19372d61af8",
    "order #48213377 placed 2024-03-14, listening on 0.0.0.0:8080 and 127.0.0.1",
])
def test_placeholders_and_look_alikes_are_not_pii(text: str) -> None:
    assert spans(text) == []


def test_masking_is_consistent_within_a_request() -> None:
    masker = Masker()
    a = "Mail bo.li@initech.dev and ana.silva@proton.me; again bo.li@initech.dev"
    b = "Reply to ANA.SILVA@proton.me"
    masked_a = masker.mask(a, PATTERNS.detect(a))
    masked_b = masker.mask(b, PATTERNS.detect(b))
    assert masked_a == "Mail [EMAIL_1] and [EMAIL_2]; again [EMAIL_1]"
    assert masked_b == "Reply to [EMAIL_2]"
    # A fresh request numbers from 1 again.
    assert Masker().mask(b, PATTERNS.detect(b)) == "Reply to [EMAIL_1]"


def test_masking_rejects_offsets_outside_the_text() -> None:
    with pytest.raises(ValueError, match="outside the text"):
        Masker().mask("short", [Finding("EMAIL", 2, 50, 0.9)])


def test_config_builds_detector_and_allow_list() -> None:
    det = pii_detector_from_config(
        {"entities": ["EMAIL", "IP_ADDRESS"], "min_score": 0.6,
         "allow": [r"[\w.]+@acme-corp\.io"]}, None)
    text = "ops@acme-corp.io, bo.li@initech.dev, 81.2.69.160, (415) 867-5309"
    assert spans(text, det) == [("EMAIL", "bo.li@initech.dev"), ("IP_ADDRESS", "81.2.69.160")]


@pytest.mark.parametrize(("config", "message"), [
    ({"entities": ["EMAIL", "PASSPORT"]}, "PASSPORT"),
    ({"entities": "EMAIL"}, "'entities' must be a list"),
    ({"min_score": "high"}, "'min_score' must be a number"),
    ({"min_score": 1.5}, "'min_score' must be between 0 and 1"),
    ({"allow": ["(unclosed"]}, "'allow' has a bad regex"),
    ({"allow": "x"}, "'allow' must be a list"),
    ({"threshold": 0.5}, "unknown key"),
])
def test_config_errors_name_the_bad_key(config: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pii_detector_from_config(config, None)


def test_findings_never_overlap_and_are_sorted() -> None:
    text = ("token=sk-proj-abc123DEF456ghi789JKL012mno345 mail bo.li@initech.dev "
            "ip 81.2.69.160 card 4539148803436467")
    found = PiiDetector().detect(text)
    assert [f.type for f in found] == ["API_KEY", "EMAIL", "IP_ADDRESS", "CREDIT_CARD"]
    assert all(a.end <= b.start for a, b in itertools.pairwise(found))


def test_without_model_patterns_and_street_addresses_still_work() -> None:
    det = PiiDetector(ner=None)
    text = "Ship to 4821 Oakridge Lane, Springfield, IL 62704 and mail bo.li@initech.dev"
    assert spans(text, det) == [("ADDRESS", "4821 Oakridge Lane, Springfield, IL 62704"),
                                ("EMAIL", "bo.li@initech.dev")]


def test_ner_person_names(ner_detector: PiiDetector) -> None:
    text = ("Hi, my name is Priya Raghunathan. Dr. Jean-Luc Moreau restarted Redis on the "
            "Kubernetes cluster in Berlin.\n\nThanks,\nKwame Mensah")
    assert [s for s in spans(text, ner_detector) if s[0] == "PERSON"] == [
        ("PERSON", "Priya Raghunathan"), ("PERSON", "Jean-Luc Moreau"),
        ("PERSON", "Kwame Mensah")]


@pytest.mark.parametrize("address", [
    "4821 Oakridge Lane, Apt 3B, Springfield, IL 62704",
    "Flat 4, 22 Acacia Avenue, London SW1A 2AA",
    "Hauptstraße 12, 10115 Berlin",
    "12 rue de la Paix, 75002 Paris",
    "Calle Mayor 5, 28013 Madrid",
])
def test_ner_addresses(ner_detector: PiiDetector, address: str) -> None:
    text = f"Please ship the order to {address}. Thanks!"
    assert spans(text, ner_detector) == [("ADDRESS", address)]


def test_cities_brands_and_titles_alone_are_not_pii(ner_detector: PiiDetector) -> None:
    text = ("We are hiring a Senior Engineer in Paris. Is Kafka faster than Redis? "
            "The Apple and Google outage hit Tokyo on Monday.")
    assert spans(text, ner_detector) == []


@pytest.mark.parametrize("hostile", [
    "a" * 100_000,
    "1" * 100_000,
    "1-" * 50_000,
    "a@" * 50_000,
    ("a." * 40 + " ") * 1200,
    "sk-" + "A" * 100_000,
    ":" * 50_000 + "1" * 50_000,
    "123 " * 25_000,
    ("12 Main " * 8 + "\n") * 1200,
])
def test_long_adversarial_input_stays_fast(hostile: str) -> None:
    start = time.perf_counter()
    PiiDetector(ner=None).detect(hostile)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(("text", "names"), [
    # Coordination and lists: a known first name on one side carries the list.
    ("Kofi Boateng and Sione Tupou will pair on the incident review.",
     ["Kofi Boateng", "Sione Tupou"]),
    ("Invite Ana Silva, Jun Watanabe and Omar Farouk to the retro.",
     ["Ana Silva", "Jun Watanabe", "Omar Farouk"]),
    ("Hi Priya, the build is green.", ["Priya"]),
    ("Thanks, Tomás! That fixed it.", ["Tomás"]),
    ("Ticket assigned to Lucia Moreno, reported by Kenji Tanaka.",
     ["Lucia Moreno", "Kenji Tanaka"]),
    ("cc: Freya Larsen", ["Freya Larsen"]),
    ("@Marek can you take a look?", ["Marek"]),
    ("I borrowed Hannah Cohen's charger.", ["Hannah Cohen"]),
])
def test_person_context_rules(ner_detector: PiiDetector, text: str, names: list[str]) -> None:
    assert [v for t, v in spans(text, ner_detector) if t == "PERSON"] == names


@pytest.mark.parametrize("text", [
    "Google Cloud and Amazon Web Services both had an outage.",
    "Best Practices, Release Notes and Change Log are in the wiki.",
    "New York and Los Angeles offices will close early.",
    "Ask Jira, then check Grafana and Kafka dashboards.",
])
def test_capitalised_lists_without_a_name_are_not_people(ner_detector: PiiDetector,
                                                          text: str) -> None:
    assert spans(text, ner_detector) == []


def test_coordination_needs_a_cue_even_without_the_model() -> None:
    # Without the model there is no first-name table: the structure alone
    # must not make people of two capitalised pairs.
    det = PiiDetector(ner=None)
    assert spans("Elif Kaya and Emeka Costa will review the plan.", det) == []


def test_model_sees_only_candidate_sentences() -> None:
    text = ("The payment failed. Can you retry it?\nbuild ok\n"
            "Elif Kaya will review. Thanks!\nSee the Redis docs.")
    assert [text[s:e].strip() for s, e in candidate_sentences(text)] == [
        "Elif Kaya will review.", "See the Redis docs."]


@pytest.mark.parametrize(("text", "kind", "value"), [
    ("Perth office (08) 6212 4470, ask for billing", "PHONE", "(08) 6212 4470"),
    ("reach me on +1 (646) 318-2290 ext. 14 today", "PHONE", "+1 (646) 318-2290 ext. 14"),
    ("git push https://ci-bot:Zx81Qm2Lp0Wt7Rk5@git.corp-internal.net/app.git", "API_KEY",
     "Zx81Qm2Lp0Wt7Rk5"),
    ("token github_pat_11AB7CDEF0gh1IJ2kl3MN4_op5QR6st7UV8wx9YZ0ab1CD2ef3GH4ij5", "API_KEY",
     "github_pat_11AB7CDEF0gh1IJ2kl3MN4_op5QR6st7UV8wx9YZ0ab1CD2ef3GH4ij5"),
    ("CI_TOKEN glpat-Rk3v9XqT2mWz8LpYc4Nb in settings", "API_KEY", "glpat-Rk3v9XqT2mWz8LpYc4Nb"),
    ("use hf_QpXr7TzLm2Wk9Vn4Bc8Hd1Jf6Gs3Ay5Ue0Io in the notebook", "API_KEY",
     "hf_QpXr7TzLm2Wk9Vn4Bc8Hd1Jf6Gs3Ay5Ue0Io"),
])
def test_more_phone_and_key_formats(text: str, kind: str, value: str) -> None:
    assert spans(text) == [(kind, value)]


def test_aws_secret_is_found_next_to_its_key_id_only() -> None:
    secret = "q8Rt2ZbX9mLk4Wv7Nc1Pj6Hs3Df0Ga5Ye8Ui2Ok7"
    paired = f"id AKIA4MZQ7XR2LT9WPB3N secret {secret}"
    assert spans(paired) == [("API_KEY", "AKIA4MZQ7XR2LT9WPB3N"), ("API_KEY", secret)]
    # The same string alone, or a hex digest next to a key id, is no secret.
    assert spans(f"checksum {secret}") == []
    digest = "3f786850e387550fdab836ed7e6dc881de23001b"
    assert spans(f"AKIA4MZQ7XR2LT9WPB3N commit {digest}") == [
        ("API_KEY", "AKIA4MZQ7XR2LT9WPB3N")]


def test_credentials_in_a_url_are_not_an_email() -> None:
    text = "clone https://ghp_Q7m2Xk9Lp4Rt8Wz1Nc6Vb3Hd0Js5Gf2Ay7Ue4@github.com/o/r.git"
    assert spans(text) == [("API_KEY", "ghp_Q7m2Xk9Lp4Rt8Wz1Nc6Vb3Hd0Js5Gf2Ay7Ue4")]


@pytest.mark.parametrize("address", [
    "88 Queen Street West, Toronto, ON M5H 2N2",
    "PO Box 4410, Regina, SK S4P 3W6",
    "Level 12, 300 Adelaide Street, Brisbane QLD 4000",
    "3/27 Ocean Parade, Coogee NSW 2034",
    "GPO Box 1421, Canberra ACT 2601",
    "Auf dem Berge 14, 28203 Bremen",
    "Postfach 11 02 33, 80335 München",
    "Postbus 4180, 2003 EG Haarlem",
    "Storgata 18, 0184 Oslo",
    "Unit 3, Harbour Trade Centre, Leith EH6 6QP",
    "6 Birch Ln, Dover, DE",
    "41 boulevard Voltaire, 75011 Paris",
])
def test_addresses_of_many_countries(ner_detector: PiiDetector, address: str) -> None:
    text = f"Please send the contract to {address}. Thanks!"
    assert [v for t, v in spans(text, ner_detector) if t == "ADDRESS"] == [address]


def test_multi_line_address(ner_detector: PiiDetector) -> None:
    text = "Label:\n19 Kestrel Rise\nHexham NE46 3HD\n"
    assert [v for t, v in spans(text, ner_detector) if t == "ADDRESS"] == [
        "19 Kestrel Rise\nHexham NE46 3HD"]


@pytest.mark.parametrize("text", [
    "Box 12 of 40 shipped on time.",
    "Upgrade to Windows Server 2019, then reboot.",
    "Room 4, then lunch with the team.",
])
def test_box_unit_and_product_words_alone_are_not_addresses(ner_detector: PiiDetector,
                                                            text: str) -> None:
    assert [v for t, v in spans(text, ner_detector) if t == "ADDRESS"] == []


@pytest.mark.parametrize(("text", "names"), [
    ("Beneficiary: Rangi Parata, born 1984", ["Rangi Parata"]),
    ("Could you call Ifeoma Chukwu back about the invoice?", ["Ifeoma Chukwu"]),
    ("Best regards,\n\nHelena M. Lindqvist\nHead of Legal", ["Helena M. Lindqvist"]),
    ("Approved by Dorota Wiśniewska on Friday.", ["Dorota Wiśniewska"]),
    ("Jonas Berg wrote the runbook; later Jonas Berg updated it.",
     ["Jonas Berg", "Jonas Berg"]),
])
def test_more_person_cues(ner_detector: PiiDetector, text: str, names: list[str]) -> None:
    assert [v for t, v in spans(text, ner_detector) if t == "PERSON"] == names


@pytest.mark.parametrize("text", [
    "Dr Pepper and Fanta are in the fridge.",
    "Bump Jackson to 2.17 before the release.",
])
def test_brands_and_libraries_are_not_people(ner_detector: PiiDetector, text: str) -> None:
    assert [v for t, v in spans(text, ner_detector) if t == "PERSON"] == []


def _gate_corpus() -> list[str]:
    """Texts that hit every rule: this file's examples, the dev set, and variants."""
    import json
    import pathlib

    here = pathlib.Path(__file__).resolve().parent.parent / "bench" / "data" / "pii_dev.jsonl"
    texts = [json.loads(line)["text"] for line in here.read_text().splitlines() if line]
    texts += [t.upper() for t in texts] + [t.lower() for t in texts]
    texts += ["Our new hire Ana Silva starts Monday; patient Jo Bloggs needs rest.",
              "Dear Ana Silva, signed by Jo Bloggs.\nBest regards,\nKim Lee",
              "Am Sandtorkai 73, 20457 Hamburg; Box 12, 75001 Paris; 8 bis rue X, 1 Y",
              "Unit 7, Riverside; Karl Johans gate 22; Calle Mayor 5; PO Box 44"]
    return texts


def test_every_rule_match_holds_one_of_its_gate_needles() -> None:
    # A gate skips a rule when none of its needles is in the text; that is
    # exact only if every match the rule can make contains a needle.
    from smartflow.policy import pii, pii_address, pii_patterns

    checked = 0
    for text in _gate_corpus():
        for name, needles, rx in pii_patterns._KEY_RULES:
            for m in rx.finditer(text):
                assert any(n in m.group(0) for n in needles), name
                checked += 1
        for rule, rx in pii._PERSON_RULES:
            rule_gate = pii._RULE_NEEDLES.get(rule)
            if rule_gate is None:
                continue
            needles, folded = rule_gate
            for m in rx.finditer(text):
                # role-verb's verb sits in a look-ahead just past the match.
                window = text[m.start():m.end() + 10]
                value = window.lower() if folded else window
                assert any(n in value for n in needles), rule
                checked += 1
        for rxs, gates in ((pii_address._STREET_LINES, pii_address._STREET_NEEDLES),
                           (pii_address._WEAK_LINES, pii_address._WEAK_NEEDLES)):
            for rx, line_gate in zip(rxs, gates, strict=True):
                for m in rx.finditer(text):
                    # One character past the match: a "(?=,)" look-ahead's comma.
                    seen = text[m.start():m.end() + 1]
                    assert pii_address._may_match(line_gate, seen), rx.pattern
                    checked += 1
    assert checked > 100


def test_person_rules_scanned_in_windows_find_what_a_full_scan_finds() -> None:
    # Each PERSON rule runs only in windows before its anchors (a capital after
    # a cue's last letters, "@", ":", a line break). That is exact only while
    # the anchors cover every place the rule can match: a cue added to a rule
    # without its tail in _CUE_TAILS would be missed here, not in production.
    from smartflow.policy import pii
    from smartflow.policy.pii_patterns import finditer_in_windows

    corpus = _gate_corpus()
    corpus += [t.title() for t in corpus[:200]] + [t.replace(" ", "\n") for t in corpus[:200]]
    matched = 0
    for text in corpus:
        capitals = [m.start() for m in pii._ANY_CUE_CAPITAL.finditer(text)]
        for rule, rx in pii._PERSON_RULES:
            full = [m.span() for m in rx.finditer(text)]
            windowed = [m.span() for m in finditer_in_windows(
                rx, text, pii._rule_windows(rule, text, capitals))]
            assert windowed == full, (rule, text)
            matched += len(full)
    assert matched > 100


def test_case_insensitive_cues_in_non_ascii_text_are_not_skipped() -> None:
    # "ſ" folds to "s" under IGNORECASE but not under str.lower(): the
    # lower-case gate must not skip such a text.
    det = PiiDetector(ner=None)
    assert spans("My name iſ nothing; Aſſigned to Lucia Moreno, then ok.", det) == \
        [("PERSON", "Lucia Moreno")]

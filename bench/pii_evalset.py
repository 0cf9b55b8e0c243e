"""Writes the PII evaluation sets (bench/data/pii_dev.jsonl, pii_eval.jsonl).

Records are built from templates with marked values (``[[TYPE|value]]``),
so every gold span's offsets are computed, never typed. The held-out set
uses its own templates and its own halves of the value pools (other names,
streets, cities, domains), generated with another seed: the detector was
tuned on the dev set only.

    python bench/pii_evalset.py      # rewrites both files (deterministic)
"""

from __future__ import annotations

import base64
import json
import random
import re
import string
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
DATA = Path(__file__).resolve().parent / "data"
_MARK = re.compile(r"\[\[([A-Z_]+)\|(.*?)\]\]", re.DOTALL)

FIRST = ["Priya", "Kwame", "Mei", "Lars", "Fatima", "Diego", "Aoife", "Yusuf", "Ingrid", "Tomasz", "Chidi", "Sofia", "Hiroshi", "Amara", "Mateo", "Olga", "Rahul", "Leila", "Bjorn", "Nadia", "Emeka", "Chloe", "Dmitri", "Ana", "Kenji", "Zainab", "Pierre", "Lucia", "Arjun", "Sione", "Elif", "Marek", "Grace", "Tariq", "Hannah", "Luis", "Yara", "Sven", "Ines", "Oluwaseun", "Camille", "Rafael", "Anouk", "Jun", "Aylin", "Patrick", "Noor", "Matteo", "Siobhan", "Vikram", "Eva", "Kofi", "Marta", "Daniel", "Lina", "Ahmed", "Julia", "Wei", "Bianca", "Omar", "Freya"]
LAST = ["Raghunathan", "Mensah", "Zhang", "Andersen", "Haddad", "Fernandez", "Byrne", "Demir", "Johansson", "Kowalski", "Okafor", "Rossi", "Tanaka", "Diallo", "Gonzalez", "Petrova", "Sharma", "Nasser", "Lindqvist", "Volkova", "Eze", "Martin", "Ivanov", "Silva", "Watanabe", "Abubakar", "Dubois", "Moreno", "Patel", "Tupou", "Yilmaz", "Novak", "Thompson", "Qureshi", "Schmidt", "Alvarez", "Khoury", "Nilsson", "Costa", "Adeyemi", "Laurent", "Oliveira", "Bakker", "Chen", "Kaya", "O'Brien", "Siddiqui", "Bianchi", "Murphy", "Iyer", "Horvath", "Boateng", "Nowak", "Cohen", "Weber", "Hassan", "Fischer", "Li", "Romano", "Farouk", "Larsen"]
US_CITIES = (("Springfield", "IL"), ("Austin", "TX"), ("Portland", "OR"), ("Columbus", "OH"),
             ("Denver", "CO"), ("Raleigh", "NC"), ("Madison", "WI"), ("Boise", "ID"),
             ("Tucson", "AZ"), ("Albany", "NY"), ("Savannah", "GA"), ("Omaha", "NE"),
             ("Spokane", "WA"), ("Richmond", "VA"), ("Tampa", "FL"), ("Fresno", "CA"))
STREETS = ["Oakridge", "Maple", "Cedar", "Willow", "Highland", "Lincoln", "Jefferson", "Sunset", "Riverside", "Elm", "Park", "Harbor", "Chestnut", "Meadow", "Franklin", "Walnut", "Lakeview", "Birch", "Washington", "Hillcrest"]
US_SUFFIX = ["Street", "St", "Avenue", "Ave", "Road", "Rd", "Lane", "Drive", "Dr", "Boulevard", "Blvd", "Court", "Way", "Place"]
UK = (("London", "SW1A 2AA"), ("Manchester", "M1 1AE"), ("Leeds", "LS1 4DY"),
      ("Bristol", "BS1 5TR"), ("Glasgow", "G2 3JD"), ("Cardiff", "CF10 1EP"),
      ("Oxford", "OX1 2JD"), ("York", "YO1 7HH"))
UK_SUFFIX = ["Road", "Street", "Lane", "Avenue", "Close", "Crescent", "Gardens", "Grove", "Terrace"]
DE = (("Berlin", "10115"), ("München", "80331"), ("Hamburg", "20095"), ("Köln", "50667"),
      ("Leipzig", "04109"), ("Stuttgart", "70173"))
DE_STREETS = ["Haupt", "Linden", "Garten", "Schiller", "Goethe", "Bahnhof", "Kirch", "Mozart", "Berg", "Wald"]
DE_SUFFIX = ["straße", "weg", "platz", "allee", "gasse"]
FR = (("Paris", "75002"), ("Lyon", "69001"), ("Marseille", "13001"), ("Toulouse", "31000"),
      ("Nantes", "44000"), ("Bordeaux", "33000"))
FR_STREETS = ["rue de la Paix", "avenue Victor Hugo", "rue des Lilas", "boulevard Voltaire", "rue du Moulin", "place de la République", "rue Saint-Honoré", "avenue Jean Jaurès"]
ES = (("Madrid", "28013"), ("Barcelona", "08001"), ("Sevilla", "41001"), ("Valencia", "46001"))
ES_STREETS = ["Calle Mayor", "Calle de Alcalá", "Avenida de la Constitución", "Calle Real", "Calle del Sol", "Avenida del Puerto"]
NL = (("Amsterdam", "1015 CJ"), ("Utrecht", "3511 LN"), ("Rotterdam", "3011 AD"),
      ("Leiden", "2311 EZ"))
NL_STREETS = ["Prinsen", "Keizers", "Heren", "Oude", "Nieuwe", "Singel"]
NL_SUFFIX = ["gracht", "straat", "laan", "weg"]
DOMAINS = ["gmail.com", "outlook.com", "acme-corp.io", "uni-heidelberg.de", "proton.me", "fastmail.fm", "northwind.co.uk", "contoso.com", "yahoo.fr", "webmail.es", "globex.net", "initech.dev", "hooli.xyz", "mail.ru", "icloud.com", "zoho.eu"]
BRANDS = ["Kubernetes", "Redis", "PostgreSQL", "Apple", "Google", "Tesla", "Slack", "GitHub", "Docker", "Terraform", "Grafana", "Kafka", "Nginx", "Ansible", "Jenkins", "Stripe", "Shopify", "Salesforce", "Jira", "Confluence", "Python", "Django", "Flask", "React", "Angular"]
CITIES = ["Paris", "Berlin", "Tokyo", "Lagos", "Toronto", "Sydney", "Mumbai", "Chicago", "Madrid", "Nairobi", "Oslo", "Dublin", "Seoul", "Lima", "Cairo"]
JOBS = ["Senior Engineer", "Head of Sales", "Product Manager", "Site Reliability Engineer", "CFO", "Data Scientist", "Support Lead", "VP Engineering", "Staff Engineer", "Account Executive"]


def _half(pool: Sequence[T], part: int) -> list[T]:
    # Dev draws from even positions, holdout from odd ones.
    return list(pool)[part::2]


class Values:
    def __init__(self, rng: random.Random, part: int) -> None:
        self.r = rng
        self.first = _half(FIRST, part)
        self.last = _half(LAST, part)
        self.us = _half(US_CITIES, part)
        self.streets = _half(STREETS, part)
        self.uk = _half(UK, part)
        self.de = _half(DE, part)
        self.fr = _half(FR, part)
        self.es = _half(ES, part)
        self.nl = _half(NL, part)
        self.domains = _half(DOMAINS, part)

    def c(self, seq: Sequence[T]) -> T:
        return self.r.choice(seq)

    def person(self) -> str:
        first, last = self.c(self.first), self.c(self.last)
        return f"{first} {last}"

    def email(self, name: str | None = None) -> str:
        first, last = (name or self.person()).lower().replace("'", "").split()[:2]
        style = self.r.randrange(4)
        local = (f"{first}.{last}", f"{first[0]}{last}", f"{first}_{last}{self.r.randrange(99)}",
                 f"{first}+orders")[style]
        return f"{local}@{self.c(self.domains)}"

    def nanp(self) -> str:
        r = self.r
        a, e, n = (f"{r.randrange(2, 10)}{r.randrange(10)}{r.randrange(10)}",
                   f"{r.randrange(2, 10)}{r.randrange(10)}{r.randrange(10)}",
                   f"{r.randrange(10000):04d}")
        if e == "555":
            e = "556"
        return self.c([f"({a}) {e}-{n}", f"{a}-{e}-{n}", f"+1 {a} {e} {n}", f"{a}.{e}.{n}",
                       f"+1-{a}-{e}-{n}"])

    def intl(self) -> str:
        r = self.r
        return self.c([f"+44 20 {r.randrange(7000, 8999)} {r.randrange(10000):04d}",
                       f"+49 30 {r.randrange(1000000, 9999999)}",
                       (f"+33 6 {r.randrange(10, 99)} {r.randrange(10, 99)} "
                        f"{r.randrange(10, 99)} {r.randrange(10, 99)}"),
                       (f"+34 91 {r.randrange(100, 999)} {r.randrange(10, 99)} "
                        f"{r.randrange(10, 99)}"),
                       f"+91 98{r.randrange(10000000, 99999999)}",
                       f"+81 3-{r.randrange(1000, 9999)}-{r.randrange(1000, 9999)}"])

    def phone(self) -> str:
        return self.nanp() if self.r.random() < 0.6 else self.intl()

    def card(self, valid: bool = True) -> str:
        r = self.r
        kind = r.randrange(3)
        prefix, length = (("4", 16), ("5" + str(r.randrange(1, 6)), 16),
                          ("3" + r.choice("47"), 15))[kind]
        body = prefix + "".join(str(r.randrange(10)) for _ in range(length - len(prefix) - 1))
        for check in range(10):
            d = body + str(check)
            if _luhn(d) == valid:
                break
        if length == 15:
            return self.c([f"{d[:4]} {d[4:10]} {d[10:]}", d])
        sep = self.c([" ", "-", ""])
        return sep.join(d[i:i + 4] for i in range(0, 16, 4))

    def iban(self, valid: bool = True) -> str:
        r = self.r
        country, n = r.choice((("DE", 18), ("GB", 18), ("FR", 23), ("NL", 14), ("ES", 20),
                               ("IT", 23)))
        if country == "GB":
            bban = r.choice(["WEST", "NWBK", "BARC", "MIDL"]) + "".join(
                str(r.randrange(10)) for _ in range(14))
        elif country == "NL":
            bban = r.choice(["ABNA", "RABO", "INGB"]) + "".join(
                str(r.randrange(10)) for _ in range(10))
        elif country == "IT":
            bban = r.choice(string.ascii_uppercase) + "".join(
                str(r.randrange(10)) for _ in range(22))
        else:
            bban = "".join(str(r.randrange(10)) for _ in range(n))
        check = 98 - int("".join(str(int(c, 36)) for c in bban + country + "00")) % 97
        if not valid:
            check = (check + r.randrange(1, 90)) % 97 or 3
        iban = f"{country}{check:02d}{bban}"
        if r.random() < 0.5:
            return " ".join(iban[i:i + 4] for i in range(0, len(iban), 4))
        return iban

    def ssn(self) -> str:
        r = self.r
        return f"{r.randrange(1, 665):03d}-{r.randrange(1, 99):02d}-{r.randrange(1, 9999):04d}"

    def ip(self) -> str:
        r = self.r
        return self.c([
            f"{r.randrange(11, 99)}.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}",
            f"10.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}",
            f"172.{r.randrange(16, 32)}.{r.randrange(256)}.{r.randrange(1, 255)}",
            f"2a02:{r.randrange(4096, 65535):x}:{r.randrange(65535):x}::{r.randrange(1, 65535):x}",
            f"{r.randrange(100, 223)}.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}"])

    def rand(self, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
        return "".join(self.r.choice(alphabet) for _ in range(n))

    def api_key(self) -> str:
        up = string.ascii_uppercase + string.digits
        kind = self.r.randrange(9)
        if kind == 0:
            return "sk-proj-" + self.rand(48)
        if kind == 1:
            return "sk-ant-api03-" + self.rand(80, string.ascii_letters + string.digits + "_-")
        if kind == 2:
            return "AKIA" + self.rand(16, up)
        if kind == 3:
            return "ghp_" + self.rand(36)
        if kind == 4:
            return f"xoxb-{self.r.randrange(10**11, 10**12)}-{self.r.randrange(10**12, 10**13)}-" \
                + self.rand(24)
        if kind == 5:
            return "AIza" + self.rand(35, string.ascii_letters + string.digits + "_-")
        if kind == 6:
            head = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
            body = base64.urlsafe_b64encode(json.dumps(
                {"sub": str(self.r.randrange(10**6)), "iat": 1716239022}).encode()).rstrip(b"=")
            return f"{head.decode()}.{body.decode()}.{self.rand(43, string.ascii_letters + '_-')}"
        if kind == 7:
            return "hf_" + self.rand(34)
        return "glpat-" + self.rand(20)

    def street_us(self) -> str:
        return f"{self.r.randrange(1, 9999)} {self.c(self.streets)} {self.c(US_SUFFIX)}"

    def address(self) -> str:
        r = self.r
        kind = r.randrange(6)
        if kind == 0:
            city, st = self.c(self.us)
            unit = self.c(["", f", Apt {r.randrange(1, 40)}{r.choice('ABC')}",
                           f", Suite {r.randrange(100, 900)}"])
            return f"{self.street_us()}{unit}, {city}, {st} {r.randrange(10000, 99999)}"
        if kind == 1:
            city, pc = self.c(self.uk)
            flat = self.c(["", f"Flat {r.randrange(1, 12)}, "])
            return f"{flat}{r.randrange(1, 300)} {self.c(self.streets)} {self.c(UK_SUFFIX)}, " \
                f"{city} {pc}"
        if kind == 2:
            city, pc = self.c(self.de)
            return f"{self.c(DE_STREETS)}{self.c(DE_SUFFIX)} {r.randrange(1, 120)}, {pc} {city}"
        if kind == 3:
            city, pc = self.c(self.fr)
            return f"{r.randrange(1, 150)} {self.c(FR_STREETS)}, {pc} {city}"
        if kind == 4:
            city, pc = self.c(self.es)
            return f"{self.c(ES_STREETS)} {r.randrange(1, 200)}, {pc} {city}"
        city, pc = self.c(self.nl)
        return f"{self.c(NL_STREETS)}{self.c(NL_SUFFIX)} {r.randrange(1, 400)}, {pc} {city}"


def _luhn(d: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(d)):
        n = int(ch) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def _m(kind: str, value: str) -> str:
    return f"[[{kind}|{value}]]"


def _dev_positive(v: Values) -> str:
    p = v.person()
    t = v.r.randrange(16)
    if t == 0:
        return f"Hi, my name is {_m('PERSON', p)} and my email is {_m('EMAIL', v.email(p))}. " \
            "I can't log in to the dashboard since yesterday."
    if t == 1:
        return f"Please update my shipping address to {_m('ADDRESS', v.address())}. " \
            f"Order #{v.r.randrange(10**6, 10**7)} hasn't shipped yet."
    if t == 2:
        return f"Customer {_m('PERSON', p)} called from {_m('PHONE', v.phone())} about a " \
            "duplicate charge on the March invoice."
    if t == 3:
        return f"The payment failed for card {_m('CREDIT_CARD', v.card())}, exp 09/27. " \
            "Can you retry it?"
    if t == 4:
        return f"Wire the refund to IBAN {_m('IBAN', v.iban())} (account holder " \
            f"{_m('PERSON', p)})."
    if t == 5:
        return f"Applicant SSN: {_m('US_SSN', v.ssn())}, DOB 1988-04-12. Please verify."
    if t == 6:
        return f"2024-05-14T10:22:31Z WARN auth failed for user id=4821 from " \
            f"{_m('IP_ADDRESS', v.ip())} after 3 attempts"
    if t == 7:
        return f"```python\nclient = OpenAI(api_key=\"{_m('API_KEY', v.api_key())}\")\n```\n" \
            "Why does this return 401?"
    if t == 8:
        return f"Thanks for the quick fix!\n\nBest regards,\n{_m('PERSON', p)}\n" \
            f"{v.c(JOBS)}, Northwind"
    if t == 9:
        return f"Dr. {_m('PERSON', p)} asked us to move the meeting; reach her at " \
            f"{_m('EMAIL', v.email(p))} or {_m('PHONE', v.phone())}."
    if t == 10:
        return f"export GITHUB_TOKEN={_m('API_KEY', v.api_key())}\nnpm run deploy -- --prod"
    if t == 11:
        return f"Ship the replacement router to {_m('PERSON', p)}, " \
            f"{_m('ADDRESS', v.address())}."
    if t == 12:
        q = v.person()
        return f"{_m('PERSON', p)} and {_m('PERSON', q)} will review the {v.c(BRANDS)} " \
            "migration plan on Thursday."
    if t == 13:
        return f"curl -H 'Authorization: Bearer {_m('API_KEY', v.api_key())}' " \
            "https://api.internal/v1/users"
    if t == 14:
        return f"nginx upstream timed out (110: Connection timed out) while connecting to " \
            f"upstream, client: {_m('IP_ADDRESS', v.ip())}, server: api"
    return f"Hello {_m('PERSON', p.split()[0])},\nyour package to {_m('ADDRESS', v.address())} " \
        "is delayed. Call us back if needed."


def _holdout_positive(v: Values) -> str:
    p = v.person()
    t = v.r.randrange(16)
    if t == 0:
        return f"I'm {_m('PERSON', p)}, the new {v.c(JOBS)}. You can write to me at " \
            f"{_m('EMAIL', v.email(p))} anytime."
    if t == 1:
        return f"Our office moved. New address: {_m('ADDRESS', v.address())}. " \
            "Parking is at the back."
    if t == 2:
        return f"Can someone call {_m('PERSON', p)} back? Number is {_m('PHONE', v.phone())}, " \
            "she's waiting on the license key."
    if t == 3:
        return f"Charge declined: {_m('CREDIT_CARD', v.card())} (billing zip on file). " \
            "Customer wants to try again tomorrow."
    if t == 4:
        return f"Bank details for the supplier: {_m('IBAN', v.iban())}, BIC DEUTDEFF, " \
            "reference INV-20931."
    if t == 5:
        return f"W-2 form attached. Employee {_m('PERSON', p)}, social security number " \
            f"{_m('US_SSN', v.ssn())}."
    if t == 6:
        return f"sshd[2231]: Failed password for root from {_m('IP_ADDRESS', v.ip())} " \
            "port 52144 ssh2"
    if t == 7:
        return f"anthropic_client = Anthropic(api_key=\"{_m('API_KEY', v.api_key())}\")  " \
            "# TODO move to vault"
    if t == 8:
        return f"Appreciate the help on the outage.\n\nCheers,\n{_m('PERSON', p)}"
    if t == 9:
        return f"Prof. {_m('PERSON', p)} will present the results; questions to " \
            f"{_m('EMAIL', v.email(p))}."
    if t == 10:
        return f"I accidentally committed {_m('API_KEY', v.api_key())} to the repo, how do I " \
            "rotate it?"
    if t == 11:
        return f"Deliver to: {_m('PERSON', p)}\n{_m('ADDRESS', v.address())}"
    if t == 12:
        q = v.person()
        return f"Meeting notes: {_m('PERSON', p)} owns the rollout, {_m('PERSON', q)} handles " \
            f"comms with the {v.c(BRANDS)} team."
    if t == 13:
        return f"The webhook secret leaked in the logs: secret={_m('API_KEY', v.api_key())}"
    if t == 14:
        return f"Blocked {_m('IP_ADDRESS', v.ip())} at the firewall after the credential " \
            "stuffing attempt."
    return f"Dear {_m('PERSON', p)},\nthe contract for {_m('ADDRESS', v.address())} is ready " \
        "to sign. Contact me on " + _m('PHONE', v.phone()) + "."


def _negative(v: Values, part: int) -> str:
    r = v.r
    uuid = "-".join(v.rand(n, "0123456789abcdef") for n in (8, 4, 4, 4, 12))
    sha = v.rand(40, "0123456789abcdef")
    dev = [
        "How do I kill the process that is holding port 8080?",
        f"Upgrade from version 2.{r.randrange(10)}.{r.randrange(20)} to 3.0.1 broke the build.",
        f"The request id is {uuid}, can you check the logs?",
        f"Commit {sha} introduced the regression in {v.c(BRANDS)}.",
        f"Order #{r.randrange(10**7, 10**8)} was placed on 2024-03-{r.randrange(10, 28)}.",
        "Send it to user@example.com and copy admin@example.org for the docs.",
        "Point the test client at 192.0.2.44 or 2001:db8::7 (documentation ranges).",
        "Call the fictional hotline 555-0142 in the screenplay.",
        "Set OPENAI_API_KEY=YOUR_API_KEY before running the script.",
        "Replace sk-xxxxxxxxxxxxxxxxxxxxxxxx with your own key.",
        f"The card {v.card(valid=False)} was rejected as invalid.",
        f"That IBAN {v.iban(valid=False)} fails validation.",
        f"We are hiring a {v.c(JOBS)} in {v.c(CITIES)}.",
        f"{v.c(BRANDS)} and {v.c(BRANDS)} outage reported in {v.c(CITIES)} this morning.",
        "Drop the test table and bypass the cache for the benchmark.",
        "Run kubectl rollout restart deployment/api -n prod and watch the pods.",
        f"Listening on 0.0.0.0:{r.randrange(1024, 65535)}, health on 127.0.0.1:9090.",
        "Build 1.4.22.7 is ready; the netmask is 255.255.255.0.",
    ]
    holdout = [
        "Please terminate the zombie workers and purge the queue.",
        f"Bump the dependency to v{r.randrange(1, 9)}.{r.randrange(30)}.{r.randrange(30)}.",
        f"Trace {uuid} shows a 504 from the gateway.",
        f"sha256:{v.rand(64, '0123456789abcdef')} is the image digest.",
        f"Invoice INV-{r.randrange(10**5, 10**6)} due 15/07/2025, total EUR 1,240.50.",
        "Email noreply@example.net or team@demo.test for the sample.",
        "Example: curl http://198.51.100.23/health or http://203.0.113.9/",
        "In the demo, the agent dials (212) 555-0187.",
        "api_key = \"<your-key>\"  # paste your key here",
        "token: sk-ant-xxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        f"Test with {v.card(valid=False)}, it should fail the checksum.",
        f"The IBAN {v.iban(valid=False)} was mistyped by the customer.",
        f"The {v.c(JOBS)} from {v.c(CITIES)} joined the call.",
        f"Is {v.c(BRANDS)} faster than {v.c(BRANDS)} for this workload?",
        "Nuke the build cache and force push to the feature branch.",
        "SELECT id, email FROM users WHERE created_at > now() - interval '7 days';",
        f"Timeout after {r.randrange(10, 99)}.5s on step 3 of 7.",
        "AWS example key AKIAIOSFODNN7EXAMPLE from the docs does not work.",
    ]
    return v.c(dev if part == 0 else holdout)


def _record(marked: str, split: str) -> dict[str, object]:
    spans = []
    out: list[str] = []
    pos = 0
    length = 0
    for m in _MARK.finditer(marked):
        piece = marked[pos:m.start()]
        out.append(piece)
        length += len(piece)
        value = m.group(2)
        spans.append({"type": m.group(1), "start": length, "end": length + len(value)})
        out.append(value)
        length += len(value)
        pos = m.end()
    out.append(marked[pos:])
    return {"text": "".join(out), "spans": spans, "split": split}


def build(part: int, n_pos: int, n_neg: int, seed: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    v = Values(rng, part)
    make = _dev_positive if part == 0 else _holdout_positive
    split = "dev" if part == 0 else "holdout"
    records = [_record(make(v), split) for _ in range(n_pos)]
    records += [_record(_negative(v, part), split) for _ in range(n_neg)]
    rng.shuffle(records)
    return records


def main() -> None:
    DATA.mkdir(exist_ok=True)
    for part, name, seed in ((0, "pii_dev.jsonl", 1301), (1, "pii_eval.jsonl", 7919)):
        with open(DATA / name, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(rec, ensure_ascii=False) + "\n" for rec in build(part, 260, 90, seed))


if __name__ == "__main__":
    main()

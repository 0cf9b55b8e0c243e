"""The semantic cache's verifier: may a stored answer serve this new prompt?

A candidate reaches the verifier because its prompt embeds close to the
query's. Sentence embeddings are blind to exactly the words that change an
answer: "200mg" and "800mg", "enable" and "disable", "A vs B" and "B vs A",
"in Python" and "in Rust", "today" and "in 2020" all score as high as true
paraphrases. So each check below extracts one normalised *signature* from
both prompts and refuses when they differ. A wrong hit serves someone else's
answer; a refusal only costs one upstream call. Every check therefore leans
towards refusing, but stays blind to what paraphrases change (word choice,
order of clauses, question vs imperative, register, case, punctuation,
typos).

The checks, in the order they run (``CHECKS``):

``numbers``   quantities with their units ("200 mg" = "200mg", "1,000" = "1000",
              "five" = "5", "$80" = "80 USD", "3-day", "15 %"), unit and
              currency words on their own ("in pounds"/"in euros"), rates
              ("per day" vs "per week", only in prompts that hold a number).
``negation``  a negation on one side only (not, no, never, n't, without,
              except, avoid, prevent…), or one side using a word and the other
              its antonym (enable/disable, allow/deny, add/remove, min/max,
              before/after, up/down…), or "X" against "unX"/"nonX"/"disX".
``entities``  names, acronyms, quoted strings, code identifiers, URLs and
              e-mail addresses of either prompt must appear in the other
              (case-insensitively; one typo allowed in long names).
``order``     the operands of a comparison or a direction must not be swapped
              ("A vs B", "A or B", "A better than B", "difference between A
              and B", "from X to Y", "convert USD to EUR").
``time``      time references must match (today, tomorrow, now/current,
              this/last/next week…, weekdays, months, years, quarters,
              holidays), and the tense of a question ("who is" vs "who was").
``language``  the natural language of the answer (asked for, or the prompt's
              own language when not English) and the set of programming
              languages.
``format``    the requested output format (JSON, YAML, table, bullet list,
              haiku, essay…), length ("in 50 words", "3 sentences") and
              brevity ("brief" vs "detailed").

``analyse(text)`` computes a prompt's :class:`Signature` once; the cache may
keep the stored prompt's signature and call :func:`verify_signatures`, so a
lookup analyses only the new prompt. Everything is regex and set work:
``analyse`` takes about 35 µs for a typical prompt, comparing two signatures
about 7 µs, ``verify`` (both analyses) about 80 µs
(bench/cache_quality_bench.py measures it). Prompts longer than
``_MAX_ANALYSED`` characters are analysed up to there and must be equal
beyond it (the refusal then names the check ``"length"``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

__all__ = ["CHECKS", "Signature", "Verdict", "analyse", "verify", "verify_signatures"]


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    check: str = ""  # the check that refused: one of CHECKS, or "length"
    detail: str = ""  # what differed, for logs and the bench's false-hit list


CHECKS: tuple[str, ...] = ("numbers", "negation", "entities", "order", "time", "language",
                           "format")

# Beyond this many characters a prompt is not analysed; the tails must then be
# equal, since nothing else would notice a changed number in them.
_MAX_ANALYSED = 6000
_WORD = re.compile(r"[a-z0-9à-öø-ÿœ]+")

# --------------------------------------------------------------------------- lexicon

_NUMBER_WORDS: dict[str, int] = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000,
    "dozen": 12, "once": 1, "twice": 2, "thrice": 3,
    "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8, "ninth": 9,
    "tenth": 10,
}
_NUMBER_WORD_SET = frozenset(_NUMBER_WORDS)
_SCALE_WORDS: dict[str, int] = {"hundred": 100, "thousand": 1000, "million": 10**6,
                                "billion": 10**9, "trillion": 10**12}

_UNIT_FORMS: dict[str, tuple[str, ...]] = {
    # mass
    "mg": ("mg", "milligram", "milligrams"),
    "mcg": ("mcg", "µg", "μg", "ug", "microgram", "micrograms"),
    "g": ("g", "gram", "grams", "gr"),
    "kg": ("kg", "kgs", "kilo", "kilos", "kilogram", "kilograms"),
    "lb": ("lb", "lbs", "pound", "pounds"),
    "oz": ("oz", "ounce", "ounces"),
    "t": ("tonne", "tonnes", "ton", "tons"),
    "iu": ("iu",),
    # length
    "mm": ("mm", "millimeter", "millimeters", "millimetre", "millimetres"),
    "cm": ("cm", "centimeter", "centimeters", "centimetre", "centimetres"),
    "m": ("m", "meter", "meters", "metre", "metres"),
    "km": ("km", "kms", "kilometer", "kilometers", "kilometre", "kilometres"),
    "mi": ("mi", "mile", "miles"),
    "ft": ("ft", "foot", "feet"),
    "inch": ("inch", "inches"),
    "yd": ("yd", "yard", "yards"),
    # volume
    "ml": ("ml", "milliliter", "milliliters", "millilitre", "millilitres"),
    "l": ("l", "liter", "liters", "litre", "litres"),
    "cup": ("cup", "cups"),
    "tbsp": ("tbsp", "tablespoon", "tablespoons"),
    "tsp": ("tsp", "teaspoon", "teaspoons"),
    "gal": ("gal", "gallon", "gallons"),
    # temperature
    "°c": ("°c", "celsius", "centigrade"),
    "°f": ("°f", "fahrenheit"),
    "k_temp": ("kelvin",),
    "deg": ("deg", "degree", "degrees", "°"),
    # time
    "ms": ("ms", "millisecond", "milliseconds"),
    "s": ("s", "sec", "secs", "second", "seconds"),
    "min": ("min", "mins", "minute", "minutes"),
    "h": ("h", "hr", "hrs", "hour", "hours"),
    "day": ("d", "day", "days"),
    "week": ("wk", "wks", "week", "weeks"),
    "month": ("mo", "month", "months"),
    "year": ("y", "yr", "yrs", "year", "years"),
    "night": ("night", "nights"),
    # data
    "b": ("byte", "bytes"),
    "kb": ("kb", "kilobyte", "kilobytes"),
    "mb": ("mb", "megabyte", "megabytes"),
    "gb": ("gb", "gigabyte", "gigabytes"),
    "tb": ("tb", "terabyte", "terabytes"),
    "pb": ("pb", "petabyte", "petabytes"),
    "kib": ("kib",), "mib": ("mib",), "gib": ("gib",), "tib": ("tib",),
    "kbps": ("kbps",), "mbps": ("mbps",), "gbps": ("gbps",),
    "mb/s": ("mb/s",), "gb/s": ("gb/s",),
    # money
    "usd": ("$", "usd", "dollar", "dollars", "bucks"),
    "eur": ("€", "eur", "euro", "euros"),
    "gbp": ("£", "gbp", "quid", "sterling"),
    "jpy": ("¥", "jpy", "yen"),
    "chf": ("chf", "franc", "francs"),
    "inr": ("₹", "inr", "rupee", "rupees"),
    "cny": ("cny", "rmb", "yuan"),
    "cad": ("cad",), "aud": ("aud",), "mxn": ("mxn", "peso", "pesos"), "btc": ("btc",),
    # other
    "%": ("%", "percent", "pct"),
    "times": ("times", "x"),
    "kcal": ("kcal", "calorie", "calories", "cal"),
    "mmhg": ("mmhg",), "bpm": ("bpm",),
    "hz": ("hz",), "khz": ("khz",), "mhz": ("mhz",), "ghz": ("ghz",),
    "w": ("w", "watt", "watts"), "kw": ("kw",), "kwh": ("kwh",), "mah": ("mah",),
    "px": ("px", "pixel", "pixels"), "tokens": ("token", "tokens"),
    "k_res": ("4k", "8k"),
}
_UNITS: dict[str, str] = {form: canon for canon, forms in _UNIT_FORMS.items() for form in forms}
# Units that name a thing on their own ("in pounds", "per mile"); time units are
# left out because "a few minutes" or "a week in Rome" carry no quantity.
_STANDALONE_UNITS = frozenset(
    form for canon, forms in _UNIT_FORMS.items() for form in forms
    if len(form) > 2 and canon not in {"s", "min", "h", "day", "week", "month", "year", "night",
                                       "times", "kcal", "deg", "tokens", "px", "w", "cup", "g",
                                       "m", "l"}
) | {"usd", "eur", "gbp", "jpy", "chf", "inr", "cny", "cad", "aud", "mxn", "km", "kg", "mg",
     "ml", "lb", "oz", "gb", "mb", "tb", "kb", "mcg", "iu", "°c", "°f"}
_TIME_UNITS = frozenset({"ms", "s", "min", "h", "day", "week", "month", "year", "night"})
_RATE_UNITS = frozenset({"s", "min", "h", "day", "week", "month", "year", "night", "km", "mi",
                         "kg", "lb", "m", "ft", "g", "oz", "l", "ml", "cup", "gal", "usd",
                         "eur", "gbp"})
_RATE_ADVERBS = {"hourly": "h", "daily": "day", "nightly": "night", "weekly": "week",
                 "monthly": "month", "yearly": "year", "annually": "year", "annual": "year"}

_NEGATION_WORDS = frozenset({
    "not", "no", "never", "none", "nothing", "nobody", "nowhere", "neither", "nor", "without",
    "cannot", "cant", "dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "wont",
    "shouldnt", "wouldnt", "couldnt", "havent", "hasnt", "hadnt", "mustnt", "neednt", "aint",
    "except", "excluding", "unable", "avoid", "avoiding", "prevent", "preventing", "non",
    "unless", "lack", "lacking", "free",
})

# (positive forms, negative forms): one prompt using only one side and the
# other prompt only the other side asks a different question. Forms are
# stemmed like the prompts, so inflections need not be listed.
_POLARITY_GROUPS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("enable", "activate", "turn on", "switch on", "unmute"),
     ("disable", "deactivate", "turn off", "switch off", "mute")),
    (("allow", "permit", "whitelist", "allowlist", "grant", "accept", "approve", "unblock"),
     ("deny", "block", "blacklist", "blocklist", "forbid", "reject", "revoke", "prohibit", "ban",
      "refuse", "disallow", "decline")),
    (("include", "inclusive"), ("exclude", "exclusive", "except")),
    (("add", "insert", "append", "attach", "plus"),
     ("remove", "delete", "drop", "erase", "detach", "subtract", "minus")),
    (("install",), ("uninstall",)),
    (("create",), ("delete", "destroy")),
    (("increase", "raise", "boost", "grow", "more", "bigger", "larger", "maximize", "maximise"),
     ("decrease", "reduce", "lower", "lessen", "shrink", "less", "fewer", "smaller", "minimize",
      "minimise")),
    (("high", "higher", "highest"), ("low", "lower", "lowest")),
    (("before", "prior", "earlier", "within", "pre"), ("after", "later", "afterwards", "post")),
    (("min", "minimum", "smallest", "least", "lowest", "shortest", "fewest", "cheapest"),
     ("max", "maximum", "largest", "biggest", "most", "highest", "longest", "priciest")),
    (("first", "earliest", "oldest", "beginning"),
     ("last", "latest", "newest", "final", "recent", "end")),
    (("start", "begin", "launch", "boot", "resume", "started", "began"),
     ("stop", "stopped", "end", "finish", "terminate", "kill", "halt", "shut down", "shutdown",
      "pause", "paused", "quit", "exit", "cancel")),
    (("open", "opened"), ("close", "closed", "shut")),
    (("ascending", "asc", "increasing"), ("descending", "desc", "decreasing")),
    (("encrypt",), ("decrypt",)),
    (("encode",), ("decode",)),
    (("compress", "zip"), ("decompress", "unzip", "uncompress")),
    (("serialize", "serialise", "marshal"), ("deserialize", "deserialise", "unmarshal")),
    (("upload",), ("download",)),
    (("push",), ("pull",)),
    (("send", "sent"), ("receive", "received")),
    (("import",), ("export",)),
    (("inbound", "ingress", "incoming"), ("outbound", "egress", "outgoing")),
    (("login", "log in", "sign in", "signin"), ("logout", "log out", "sign out", "signout")),
    (("lock", "locked"), ("unlock", "unlocked")),
    (("mount",), ("unmount",)),
    (("subscribe",), ("unsubscribe",)),
    (("follow",), ("unfollow",)),
    (("buy", "bought", "purchase"), ("sell", "sold")),
    (("deposit",), ("withdraw", "withdrawal")),
    (("credit",), ("debit",)),
    (("profit", "gain", "win", "won"), ("loss", "lose", "lost", "losing")),
    (("uppercase", "upper", "capitalize", "capitalise"), ("lowercase", "lower")),
    (("public",), ("private",)),
    (("sync", "synchronous", "synchronously"), ("async", "asynchronous", "asynchronously")),
    (("true",), ("false",)),
    (("success", "successful", "succeed", "pass", "passing"),
     ("failure", "fail", "failing", "unsuccessful")),
    (("show", "display", "unhide", "visible", "reveal"), ("hide", "hidden", "invisible")),
    (("expand",), ("collapse",)),
    (("safe", "safely", "secure", "harmless"),
     ("unsafe", "dangerous", "insecure", "harmful", "risky", "toxic")),
    (("good", "great", "best", "better"), ("bad", "worst", "worse", "poor")),
    (("benefit", "advantage", "pro", "upside", "positive"),
     ("risk", "disadvantage", "con", "downside", "drawback", "danger", "negative")),
    (("hot", "warm", "heat", "warmer", "hotter"), ("cold", "cool", "colder", "cooler", "chill")),
    (("fast", "faster", "fastest", "quick", "quicker", "speed up"),
     ("slow", "slower", "slowest", "slowly", "slow down")),
    (("up",), ("down",)),
    (("left",), ("right",)),
    (("north", "northern"), ("south", "southern")),
    (("east", "eastern"), ("west", "western")),
    (("horizontal", "horizontally"), ("vertical", "vertically")),
    (("input",), ("output",)),
    (("always", "often", "frequently", "usually", "commonly"), ("never", "rarely", "seldom")),
    (("male", "man", "men", "boy"), ("female", "woman", "women", "girl")),
    (("adult", "adults", "grown"),
     ("child", "children", "kid", "kids", "baby", "babies", "infant", "toddler", "teen",
      "teenager", "pediatric", "paediatric")),
    (("over", "above", "exceed", "greater", "beyond", "more than"),
     ("under", "below", "beneath", "less than")),
    (("top",), ("bottom",)),
    (("inner",), ("outer",)),
    (("internal",), ("external",)),
    (("permanent", "permanently"), ("temporary", "temporarily")),
    (("online",), ("offline",)),
    (("manual", "manually"), ("automatic", "automatically")),
    (("absolute",), ("relative",)),
    (("optional",), ("required", "mandatory")),
    (("dark",), ("light",)),
    (("heavy",), ("light",)),
    (("even number",), ("odd number",)),
    (("legal",), ("illegal",)),
    (("valid",), ("invalid",)),
    (("correct",), ("incorrect", "wrong")),
    (("empty",), ("full",)),
    (("accept",), ("decline",)),
    (("like",), ("dislike",)),
    (("agree",), ("disagree",)),
    (("connect",), ("disconnect",)),
    (("pack",), ("unpack",)),
    (("freeze",), ("unfreeze", "thaw")),
    (("arrival", "arrive", "arriving", "inbound flight"), ("departure", "depart", "departing")),
    (("import",), ("export",)),
)

# "unX"/"disX"/"nonX" against "X": only these prefixes, and never for words
# whose prefix is not a negation.
_NEG_PREFIXES = ("un", "non", "dis")
_NEG_PREFIX_EXCEPTIONS = frozenset({
    "discount", "discover", "display", "dispatch", "discharge", "dispose", "dissolve", "dissent",
    "discuss", "dismiss", "distill", "disgust", "dispute", "disperse", "distance", "district",
    "distribute", "unless", "until", "under", "universe", "universal", "uniform", "union",
    "unique", "unity", "unite", "united", "disk", "dish", "discord", "discipline",
})
# "in/im/il/ir" negate adjectives only: "invalid", "insecure", "impossible".
_IN_PREFIXES = ("in", "im", "il", "ir")
_ADJ_SUFFIXES = ("able", "ible", "al", "ent", "ant", "ive", "ure", "id", "ect", "ate", "ular",
                 "ete", "ite", "ional", "ous", "ic", "per", "ed")
_IN_PREFIX_EXCEPTIONS = frozenset({"inform", "income", "intake", "invoice", "imprint", "improve",
                                   "inline", "input", "import", "invest", "instead", "inside",
                                   "intend", "intent", "install", "infinite", "inhibit",
                                   "intended", "informed", "inflated", "invested", "imposed",
                                   "imported", "installed", "inclined", "indent", "indented"})

_PROGRAMMING_LANGUAGES: dict[str, str] = {
    "python": "python", "py": "python", "python3": "python", "rust": "rust",
    "golang": "go", "javascript": "javascript", "js": "javascript", "typescript": "typescript",
    "ts": "typescript", "java": "java", "c++": "c++", "cpp": "c++", "c#": "c#",
    "csharp": "c#", "f#": "f#", "ruby": "ruby", "php": "php", "kotlin": "kotlin",
    "scala": "scala", "haskell": "haskell", "elixir": "elixir", "erlang": "erlang",
    "perl": "perl", "lua": "lua", "dart": "dart", "julia": "julia", "matlab": "matlab",
    "clojure": "clojure", "ocaml": "ocaml", "zig": "zig", "nim": "nim", "fortran": "fortran",
    "cobol": "cobol", "objective-c": "objective-c", "groovy": "groovy", "vba": "vba",
    "bash": "bash", "shell": "bash", "sh": "bash", "zsh": "bash", "powershell": "powershell",
    "sql": "sql", "tsql": "sql", "plsql": "sql", "css": "css", "scss": "css", "sass": "css",
    "solidity": "solidity", "assembly": "assembly", "asm": "assembly", "prolog": "prolog",
    "lisp": "lisp", "scheme": "scheme", "racket": "racket", "crystal": "crystal",
    "swift": "swift", "r": "r", "c": "c", "go": "go",
}
# Words that are also ordinary English: a language only when written as one
# (capitalised) or next to a programming word.
_AMBIGUOUS_LANGUAGES = frozenset({"go", "c", "r", "swift", "rust", "dart", "julia", "crystal",
                                  "shell", "scheme", "racket", "assembly", "ruby", "java", "sh",
                                  "ts", "js", "py"})
_CODE_WORDS = frozenset({"code", "program", "programs", "function", "functions", "script",
                         "scripts", "snippet", "library", "package", "module", "language",
                         "struct", "class", "method", "compiler", "developer",
                         "developers", "project", "app", "binding", "bindings", "idiom",
                         "lang", "syntax", "implementation", "example", "examples",
                         "dataframe", "vector", "loop", "array", "macro", "crate", "gem",
                         "goroutine", "routine", "routines", "channel", "channels",
                         "service", "server", "backend", "cli", "tool", "file", "files", "test"})
_VERSUS = frozenset({"vs", "versus", "v"})
_CODE_PREPOSITIONS = frozenset({"in", "using", "with", "to", "into", "from", "for"})

_NATURAL_LANGUAGES: dict[str, str] = {
    "english": "english", "french": "french", "français": "french", "francais": "french",
    "francés": "french", "französisch": "french", "spanish": "spanish", "español": "spanish",
    "espanol": "spanish", "castellano": "spanish", "german": "german", "deutsch": "german",
    "alemán": "german", "italian": "italian", "italiano": "italian", "portuguese": "portuguese",
    "português": "portuguese", "portugues": "portuguese", "dutch": "dutch", "nederlands": "dutch",
    "russian": "russian", "chinese": "chinese", "mandarin": "chinese", "cantonese": "cantonese",
    "japanese": "japanese", "korean": "korean", "arabic": "arabic", "hindi": "hindi",
    "bengali": "bengali", "urdu": "urdu", "turkish": "turkish", "polish": "polish",
    "swedish": "swedish", "norwegian": "norwegian", "danish": "danish", "finnish": "finnish",
    "greek": "greek", "hebrew": "hebrew", "vietnamese": "vietnamese", "thai": "thai",
    "indonesian": "indonesian", "malay": "malay", "ukrainian": "ukrainian", "czech": "czech",
    "romanian": "romanian", "hungarian": "hungarian", "persian": "persian", "farsi": "persian",
    "swahili": "swahili", "tagalog": "tagalog", "filipino": "tagalog", "catalan": "catalan",
    "latin": "latin", "irish": "irish", "welsh": "welsh", "tamil": "tamil", "telugu": "telugu",
    "punjabi": "punjabi", "croatian": "croatian", "serbian": "serbian", "slovak": "slovak",
    "bulgarian": "bulgarian", "esperanto": "esperanto",
}
# A prompt written in another language asks for an answer in it. Scripts
# decide outright; Latin-script languages by their commonest short words and
# accents, compared with English's.
_SCRIPTS: tuple[tuple[str, str], ...] = (
    ("[\u3040-\u30ff]", "japanese"), ("[\uac00-\ud7af]", "korean"),
    ("[\u4e00-\u9fff]", "chinese"), ("[\u0400-\u04ff]", "russian"),
    ("[\u0600-\u06ff]", "arabic"), ("[\u0590-\u05ff]", "hebrew"),
    ("[\u0900-\u097f]", "hindi"), ("[\u0e00-\u0e7f]", "thai"), ("[\u0370-\u03ff]", "greek"),
)
_LATIN_LANGUAGE_WORDS: dict[str, frozenset[str]] = {
    "spanish": frozenset({"el", "los", "las", "es", "qué", "que", "cuál", "cual", "cómo",
                          "como", "para", "por", "una", "un", "con", "del", "se", "mi", "mis",
                          "puedo", "está", "están", "hay", "y", "en", "lo", "tu", "su", "sus",
                          "cuánto", "dónde", "explica", "escribe", "dime"}),
    "french": frozenset({"le", "les", "est", "que", "quel", "quelle", "comment", "pour", "une",
                         "des", "du", "et", "je", "vous", "tu", "qu", "ce", "cette", "dans",
                         "sur", "avec", "explique", "expliquez", "écris", "écrivez", "pourquoi",
                         "où", "mon", "ma", "mes", "il", "elle", "sont", "faire"}),
    "german": frozenset({"der", "die", "das", "ist", "was", "wie", "und", "ich", "nicht", "ein",
                         "eine", "einen", "erkläre", "erklären", "für", "mit", "zu", "den",
                         "dem", "warum", "wo", "schreibe", "mein", "meine", "kann", "sind",
                         "auf", "auch", "es"}),
    "portuguese": frozenset({"o", "os", "as", "é", "que", "como", "para", "um", "uma", "não",
                             "você", "eu", "meu", "minha", "em", "do", "da", "dos", "das",
                             "explique", "escreva", "qual", "onde", "porque", "posso"}),
    "italian": frozenset({"il", "lo", "gli", "è", "che", "come", "per", "un", "una", "non",
                          "sono", "di", "del", "della", "mio", "mia", "perché", "dove",
                          "spiega", "scrivi", "qual", "quale", "posso", "ciao"}),
}
_ENGLISH_WORDS = frozenset({"the", "is", "are", "what", "how", "why", "do", "does", "i", "you",
                            "a", "an", "of", "to", "in", "and", "for", "my", "can", "with",
                            "it", "this", "that", "on", "be", "should", "which", "me", "your",
                            "explain", "write", "give", "tell", "about", "from", "or", "at",
                            "as", "was", "will", "would", "could", "there", "when", "where"})
_ACCENTS: dict[str, str] = {"ñ": "spanish", "¿": "spanish", "¡": "spanish", "ç": "french",
                            "è": "french", "ê": "french", "à": "french", "ß": "german",
                            "ä": "german", "ö": "german", "ü": "german", "ã": "portuguese",
                            "õ": "portuguese"}

_FORMAT_FORMS: dict[str, tuple[str, ...]] = {
    "json": ("json",), "yaml": ("yaml", "yml"), "csv": ("csv",), "tsv": ("tsv",),
    "xml": ("xml",), "toml": ("toml",), "html": ("html",), "markdown": ("markdown", "md"),
    "table": ("table", "tables", "tabular"),
    "bullets": ("bullet", "bullets", "bulleted", "bullet-point", "bullet-points"),
    "numbered": ("numbered",), "checklist": ("checklist",),
    "diagram": ("diagram", "flowchart", "mermaid", "chart"),
    "haiku": ("haiku", "haikus"), "poem": ("poem", "poems", "poetry", "verse"),
    "sonnet": ("sonnet",), "limerick": ("limerick",), "song": ("song", "lyrics"),
    "rap": ("rap",), "essay": ("essay",), "story": ("story", "tale", "fable"),
    "tweet": ("tweet", "thread"), "email": ("email", "e-mail"), "letter": ("letter",),
    "memo": ("memo",), "slides": ("slide", "slides", "presentation"),
    "outline": ("outline",), "script": ("screenplay", "dialogue"),
    "press_release": ("press release",), "blog": ("blog", "blog post", "article"),
    "post": ("post",), "pdf": ("pdf",), "latex": ("latex",), "regex": ("regex", "regexp"),
    "code_only": ("code only", "only code", "just the code", "just code"),
    "plain": ("plain text", "prose"), "one_liner": ("one-liner", "one liner", "oneliner"),
    "single_line": ("single line", "one line"), "step_by_step": ("step by step",
                                                                  "step-by-step"),
    "faq": ("faq",), "quiz": ("quiz",), "recipe_card": ("recipe card",),
}
_FORMATS: dict[str, str] = {form: canon for canon, forms in _FORMAT_FORMS.items()
                            for form in forms}
_PHRASE_FORMATS = tuple((form, canon) for form, canon in _FORMATS.items()
                        if not form.isalnum())
# Format words that are also verbs; after these words they are the verb.
_VERB_FORMATS = frozenset({"outline", "post", "tweet", "email", "chart", "table", "letter",
                           "thread", "script", "verse", "article"})
_VERB_CONTEXT = frozenset({"to", "i", "you", "we", "they", "please", "can", "could", "would",
                           "should", "will", "and", "then", "how", "just", "me", "not", "t"})
_LENGTH_UNITS: dict[str, str] = {
    "word": "word", "words": "word", "sentence": "sentence", "sentences": "sentence",
    "paragraph": "paragraph", "paragraphs": "paragraph", "line": "line", "lines": "line",
    "point": "point", "points": "point", "bullet": "point", "bullets": "point",
    "item": "item", "items": "item", "tweet": "tweet", "tweets": "tweet", "page": "page",
    "pages": "page", "character": "char", "characters": "char", "chars": "char",
    "stanza": "stanza", "stanzas": "stanza", "verse": "stanza", "verses": "stanza",
    "slide": "slide", "slides": "slide",
}  # counts of other things ("5 ideas") are the numbers check's
_BRIEF = frozenset({"brief", "briefly", "short", "shorter", "concise", "concisely", "succinct",
                    "succinctly", "tl;dr", "tldr", "eli5", "nutshell", "quick version",
                    "quick answer", "quick overview", "quick explanation", "quick summary",
                    "terse", "one-liner", "few words", "short answer"})
_DETAILED = frozenset({"detailed", "detail", "depth", "in-depth", "thorough", "thoroughly",
                       "comprehensive", "comprehensively", "long", "longer", "lengthy",
                       "elaborate", "extensive", "extensively", "exhaustive", "step by step",
                       "step-by-step", "complete guide", "deep dive", "deep-dive"})

_BRIEF_PHRASES = tuple(" " + " ".join(_WORD.findall(p)) + " " for p in _BRIEF
                       if not p.isalnum())
_DETAILED_PHRASES = tuple(" " + " ".join(_WORD.findall(p)) + " " for p in _DETAILED
                          if not p.isalnum())
# Every format, length or brevity phrase contains one of these words.
_FORMAT_VOCABULARY = (frozenset(_FORMATS) | frozenset(_LENGTH_UNITS) | _BRIEF | _DETAILED
                      | frozenset(max(_WORD.findall(p), key=len)
                                  for p in (*_FORMATS, *_BRIEF, *_DETAILED))
                      | {"list"})
_WEEKDAYS = frozenset({"monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
                       "sunday", "weekend", "weekday", "weekdays", "weekends"})
_MONTHS: dict[str, str] = {
    "january": "january", "jan": "january", "february": "february", "feb": "february",
    "march": "march", "mar": "march", "april": "april", "apr": "april", "may": "may",
    "june": "june", "jun": "june", "july": "july", "jul": "july", "august": "august",
    "aug": "august", "september": "september", "sep": "september", "sept": "september",
    "october": "october", "oct": "october", "november": "november", "nov": "november",
    "december": "december", "dec": "december",
}
# Month names that are also English words count only when capitalised.
_AMBIGUOUS_MONTHS = frozenset({"march", "mar", "may", "august", "jan", "jun", "jul", "sep",
                               "oct", "nov", "dec", "feb", "apr", "aug", "sept"})
_HOLIDAYS = frozenset({"christmas", "xmas", "easter", "thanksgiving", "halloween", "hanukkah",
                       "diwali", "ramadan", "eid", "valentine", "valentines", "new year",
                       "new years", "new year's"})
_SEASONS = frozenset({"spring", "summer", "autumn", "winter", "fall"})
# "latest"/"newest"/"recent" are not here: "the last commit" and "the most
# recent commit" are one question; the first/last antonym group still tells
# "latest version" from "first version".
_NOW_WORDS = frozenset({"now", "currently", "nowadays", "lately", "presently"})
_CURRENT_NOUNS = frozenset({"price", "prices", "rate", "rates", "weather", "news", "president",
                            "ceo", "leader", "version", "release", "time", "date", "year",
                            "month", "score", "scores", "status", "value", "exchange",
                            "events", "inflation", "champion", "record", "population",
                            "prime", "standings", "ranking", "rankings", "situation",
                            "government", "minister", "chancellor", "king", "queen",
                            "temperature", "forecast", "market", "stock", "stocks", "trends",
                            "odds", "holder", "owner", "state"})
_TIME_SPANS = frozenset({"hour", "day", "week", "weekend", "month", "year", "quarter",
                         "season", "decade", "century", "morning", "afternoon", "evening",
                         "night", "semester", "term", "sprint", "spring", "summer", "fall",
                         "autumn", "winter", "fortnight"}) | _WEEKDAYS
_TIME_MODIFIERS = {"this": "this", "next": "next", "last": "last", "past": "last",
                   "previous": "last", "coming": "next", "upcoming": "next",
                   "following": "next", "current": "this", "tomorrow": "tomorrow",
                   "yesterday": "yesterday"}
_DAY_WORDS = frozenset({"today", "tonight", "tomorrow", "yesterday"})
# Any time reference contains one of these words: prompts without one skip the scan.
_TIME_VOCABULARY = (frozenset(_TIME_MODIFIERS) | _DAY_WORDS | _WEEKDAYS | _NOW_WORDS | _HOLIDAYS
                    | _SEASONS | frozenset(_MONTHS)
                    | frozenset({"current", "ago", "right", "these", "moment", "present", "new",
                                 "far", "date", "past", "previous", "coming"}))

# Capitalised words that name nothing: greetings, pronouns, and the words
# prompts begin with. A sentence-initial capital is an entity only when the
# word is not here.
_COMMON_WORDS = frozenset(["a", "about", "above", "according", "across", "actually", "add", "advice", "after", "again", "against", "all", "allocate", "also", "although", "always", "am", "an", "and", "another", "any", "anyone", "anything", "are", "as", "ask", "at", "average", "avoid", "back", "bake", "based", "be", "because", "before", "being", "below", "best", "better", "between", "both", "brief", "briefly", "bring", "bro", "build", "but", "by", "calculate", "can", "cancel", "capital", "change", "check", "choose", "clear", "compare", "compute", "configure", "consider", "convert", "cost", "could", "create", "currently", "day", "dear", "debug", "deep", "define", "delete", "deploy", "describe", "design", "detail", "detailed", "determine", "did", "do", "does", "doing", "done", "draft", "dude", "during", "each", "easy", "either", "email", "enable", "end", "enumerate", "error", "estimate", "even", "every", "everything", "example", "excuse", "explain", "export", "extract", "fast", "few", "find", "first", "fix", "flight", "follow", "following", "for", "format", "free", "from", "fyi", "generate", "get", "give", "go", "good", "great", "greetings", "guide", "had", "has", "have", "having", "he", "hello", "help", "her", "here", "hey", "hi", "his", "how", "however", "i", "i'd", "i'll", "i'm", "i've", "if", "implement", "import", "improve", "in", "include", "instead", "is", "isn't", "it", "it's", "its", "just", "keep", "kind", "kindly", "know", "last", "latest", "learn", "let", "let's", "like", "list", "look", "lol", "make", "many", "may", "maybe", "me", "might", "migrate", "more", "most", "move", "much", "must", "my", "name", "need", "new", "next", "no", "normal", "not", "note", "now", "of", "off", "oh", "ok", "okay", "omg", "on", "once", "one", "only", "or", "order", "other", "our", "out", "output", "over", "parse", "pick", "plan", "please", "plot", "pls", "plz", "pray", "prepare", "price", "print", "pros", "provide", "put", "quick", "quickly", "rank", "read", "recommend", "refactor", "remind", "remove", "rename", "reply", "respectfully", "respond", "return", "review", "rewrite", "run", "say", "schedule", "search", "see", "select", "send", "set", "shall", "she", "short", "should", "show", "simple", "since", "sir", "so", "solve", "some", "someone", "something", "sort", "still", "stop", "suggest", "summarize", "summarise", "sup", "suppose", "sure", "take", "teach", "tell", "than", "thank", "thanks", "that", "the", "their", "them", "then", "there", "these", "they", "this", "those", "though", "thx", "tips", "to", "today", "tomorrow", "top", "train", "transfer", "translate", "try", "turn", "ugh", "under", "understand", "unless", "until", "up", "update", "upgrade", "use", "using", "validate", "very", "via", "walk", "want", "was", "we", "well", "were", "what", "what's", "whats", "when", "where", "whether", "which", "while", "who", "whom", "whose", "why", "will", "with", "within", "without", "would", "write", "yes", "yet", "yo", "you", "your"]) | frozenset(["abridge", "activate", "adjust", "advise", "aggregate", "alert", "allow", "analyse", "analyze", "annotate", "answer", "apply", "approximate", "archive", "arrange", "assess", "assign", "assist", "audit", "automate", "backup", "bake", "become", "begin", "bike", "block", "boil", "book", "brainstorm", "brew", "browse", "buy", "cache", "call", "categorize", "chart", "choose", "classify", "clean", "clone", "collect", "combine", "commit", "complete", "compose", "compress", "condense", "connect", "contact", "continue", "cook", "copy", "correct", "count", "craft", "crop", "cut", "decode", "decrypt", "deny", "derive", "detect", "diagnose", "differentiate", "disable", "divide", "download", "draw", "drive", "edit", "elaborate", "email", "encode", "encrypt", "ensure", "escape", "evaluate", "expand", "extend", "factor", "fetch", "figure", "fill", "filter", "finish", "fly", "forecast", "fork", "fry", "grade", "graph", "grant", "grill", "group", "guess", "handle", "hash", "hike", "host", "identify", "illustrate", "inspect", "install", "integrate", "interpret", "investigate", "join", "label", "lint", "load", "locate", "log", "lookup", "mail", "manage", "map", "measure", "memorize", "merge", "message", "mock", "monitor", "multiply", "name", "notify", "offer", "optimise", "optimize", "organize", "outline", "pack", "paraphrase", "paste", "patch", "pause", "pay", "pivot", "polish", "practice", "practise", "predict", "proofread", "propose", "prove", "provision", "publish", "pull", "purge", "push", "query", "rate", "rebase", "reboot", "recall", "record", "redo", "reduce", "reject", "release", "remember", "rephrase", "repair", "repeat", "replace", "reserve", "reset", "resize", "restart", "restore", "resume", "revert", "revise", "roast", "rollback", "round", "save", "scale", "scan", "score", "search", "sell", "serve", "share", "shorten", "sign", "simplify", "simulate", "sketch", "split", "start", "state", "store", "structure", "study", "subtract", "sum", "summarize", "support", "swim", "sync", "tag", "test", "text", "track", "transcribe", "transform", "trim", "troubleshoot", "truncate", "tune", "uninstall", "unzip", "upload", "verify", "visit", "visualize", "watch", "weigh", "work", "advice", "age", "antonyms", "array", "average", "baby", "beginners", "benefits", "best", "bug", "cars", "cats", "causes", "cheap", "cheapest", "children", "code", "command", "config", "configuration", "cons", "cost", "costs", "crypto", "customers", "data", "database", "date", "definition", "diet", "difference", "differences", "dinner", "directory", "distance", "dogs", "dosage", "dose", "drinks", "easy", "effects", "employees", "error", "errors", "essay", "example", "examples", "exercise", "exercises", "facts", "file", "files", "flights", "folder", "food", "foods", "fun", "guide", "healthy", "height", "history", "hotel", "hotels", "how-to", "ideas", "insurance", "integer", "interest", "intro", "introduction", "investment", "issue", "jokes", "kids", "length", "loan", "loans", "lunch", "meal", "meals", "meaning", "message", "mortgage", "movies", "names", "number", "numbers", "overview", "people", "places", "poem", "population", "problem", "problems", "question", "questions", "quote", "quotes", "reasons", "recipe", "recipes", "remedies", "report", "restaurant", "restaurants", "riddle", "salary", "savings", "server", "side", "signs", "simple", "size", "snacks", "songs", "speed", "steps", "stock", "stocks", "story", "string", "students", "summary", "symptoms", "synonyms", "table", "tax", "taxes", "things", "time", "treatment", "treatments", "tutorial", "users", "ways", "weather", "weight", "words", "workout", "workouts"])
# Capitalised tokens that are never entities, wherever they stand.
_NON_ENTITIES = frozenset({"i", "i'm", "i've", "i'd", "i'll", "im", "ok", "okay", "hi", "hey",
                           "hello", "please", "thanks", "thank", "dear", "mr", "mrs", "ms",
                           "dr", "sir", "madam", "yes", "no", "pls", "plz", "btw", "fyi",
                           "lol", "omg", "am", "pm", "eta", "asap", "q", "a", "tl;dr", "tldr",
                           "eli5", "faq", "diy", "etc", "ie", "eg", "vs"})

_STOPWORDS = frozenset(["a", "an", "the", "is", "are", "was", "were", "be", "been", "being", "am", "do", "does", "did", "doing", "have", "has", "had", "having", "i", "me", "my", "mine", "we", "our", "you", "your", "he", "she", "it", "its", "they", "them", "their", "this", "that", "these", "those", "there", "here", "what", "which", "who", "whom", "whose", "how", "why", "when", "where", "to", "of", "in", "on", "at", "by", "for", "with", "about", "as", "into", "onto", "from", "up", "out", "over", "under", "again", "further", "then", "once", "so", "than", "too", "very", "can", "could", "will", "would", "should", "shall", "may", "might", "must", "just", "also", "any", "some", "all", "each", "both", "few", "more", "most", "other", "such", "only", "own", "same", "not", "no", "nor", "s", "t", "don", "now", "if", "or", "and", "but", "because", "until", "while", "please", "kindly"])
# Tokens that end an operand of a comparison on the right.
_RIGHT_STOPS = frozenset({"for", "in", "on", "at", "when", "which", "if", "because", "so",
                          "while", "during", "by", "using", "via", "to", "into", "from", "than",
                          "vs", "versus", "or", "and", "with", "without", "given", "is",
                          "are", "do", "does", "should", "would", "could", "can", "will"})
_LEFT_STOPS = frozenset({"from", "between", "compare", "compared", "comparing", "is", "are",
                         "was", "were", "do", "does", "did", "should", "would", "could", "can",
                         "will", "which", "what", "whether", "than", "vs", "versus", "or",
                         "and", "with", "to", "into", "of", "for", "in", "on", "at", "by",
                         "difference", "differences"})
_DIRECTION_VERBS = frozenset({"convert", "converting", "converted", "translate", "translating",
                              "translated", "migrate", "migrating", "migration", "switch",
                              "switching", "move", "moving", "port", "porting", "change",
                              "changing", "transfer", "transferring", "redirect",
                              "redirecting", "map", "mapping", "cast", "casting", "exchange",
                              "upgrade", "upgrading", "downgrade", "downgrading", "send",
                              "sending", "ship", "shipping", "fly", "flying", "drive",
                              "driving", "flight", "flights", "train", "trains", "bus",
                              "rewrite", "rewriting", "turn", "go", "going", "travel",
                              "traveling", "travelling", "commute", "route", "wire"})
_COMPARE_TRIGGERS = frozenset({"compare", "compared", "comparing", "comparison", "between",
                               "contrast", "contrasting"})
_PREFER_TRIGGERS = frozenset({"prefer", "preferred", "prefers", "choose", "choosing", "pick",
                              "picking", "recommend", "use", "using"})

_PAST_AUX = frozenset({"was", "were", "did", "had"})
_PRESENT_AUX = frozenset({"is", "are", "am", "does", "do", "has", "have", "will", "can"})
_PAST_IDIOMS = re.compile(
    r"\b(?:was|were) (?:wondering|hoping|thinking|told|asked|advised|given|diagnosed|"
    r"prescribed|trying|looking|going)\b|\bhad (?:a|an|the|my|some|to)\b|\bdid you\b")

# --------------------------------------------------------------------------- regexes

_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                         "\u00b4": "'", "\u2032": "'", "\u00a0": " ", "\u2013": "-",
                         "\u2014": " - ", "\u2212": "-"})
_URL = re.compile(r"\b(?:https?://|www\.)[^\s'\"<>`]+[^\s'\"<>`.,;:!?)]")
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_QUOTED = re.compile(r"(?<![\w'])'([^'\n]{1,100}?)'(?![\w'])|\"([^\"\n]{1,160}?)\"|"
                     r"`([^`\n]{1,160}?)`")
_QUANTITY = re.compile(
    r"(?<![\w.])(?P<cur>[$€£¥₹])?\s?"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)*|\.\d+)"
    r"(?P<mult>\s?(?:[kK]|M|B|bn|million|billion|thousand|trillion)(?![a-zA-Z]))?"
    r"(?P<ord>st|nd|rd|th)?"
    r"(?:\s?-?\s?(?P<unit>%|°\s?[cCfF]\b|°|[a-zA-Zµμ$€£¥]+(?:/[a-zA-Z]+)?))?"
    r"(?:[\s-](?P<unit2>celsius|fahrenheit|[cCfF]\b))?")
_NUMBER_WORD_RE = re.compile(
    r"\b(?P<w>" + "|".join(sorted(_NUMBER_WORDS, key=len, reverse=True)) + r")"
    r"(?:[\s-](?P<scale>hundred|thousand|million|billion))?"
    r"(?:[\s-](?P<unit>[a-zµμ%]+))?\b")
_DIGIT = re.compile(r"\d")
_PER_SLASH = re.compile(r"/\s?([a-z]+)\b")  # "mg/kg", "$/month"
_PAREN_LETTER = re.compile(r"(\d)\(([a-z])\)", re.IGNORECASE)
_YEAR = re.compile(r"(?<![\w.$€£])(1[89]\d\d|20\d\d)(s)?(?![\w.%])")
_QUARTER = re.compile(r"\b([qQ][1-4]|[hH][12])\b")
_CONTRACTION_NEG = re.compile(r"\b\w+n't\b|\bcan ?not\b")
_STOP_FROM = re.compile(r"\b(?:stop|stops|stopping|keep|keeps)\b[^.?!]{0,40}\bfrom\b")
_OPERAND_TOKEN = re.compile(r"[a-z0-9à-ÿ][a-z0-9à-ÿ+#./'\-]*[a-z0-9à-ÿ+#]|[a-z0-9à-ÿ]|[,;:?!()]"
                            r"|\.(?=\s|$)")
_CAMEL = re.compile(r"[a-z][A-Z]|[A-Z]{2}[a-z]")
_ACRONYM = re.compile(r"[A-Z][A-Z0-9&+]*[A-Z0-9]+(?:-[A-Z0-9]+)*s?")
_CAPITALISED = re.compile(r"[A-Z][a-zà-ÿ'-]*[a-zà-ÿ]")
_DROP_UPPER = str.maketrans("", "", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DROP_LOWER = str.maketrans("", "", "abcdefghijklmnopqrstuvwxyz")
_CAPITAL_START = re.compile(r"(?:^|\s)[\"'(`]?[A-Z]")
_ENTITY_CANDIDATE = re.compile(r"(?<!\S)(?:[^\sA-Z_/:.]*(?:[A-Z_/:]|\w\.\w|\.\w)|"
                               r"[`'\"(]?--\w)\S*")
_DOTTED_OR_PATH = re.compile(r"[a-zA-Z][./][a-zA-Z]")
_OPENERS = frozenset("\"'([-")
_CLOSERS = frozenset(".?!:;")

# Words another check owns: the entity check leaves them alone so that each
# check measures one thing.
_OWNED_WORDS = (frozenset(_PROGRAMMING_LANGUAGES) | frozenset(_NATURAL_LANGUAGES)
                | frozenset(_FORMATS) | frozenset(_UNITS) | frozenset(_MONTHS) | _WEEKDAYS
                | _HOLIDAYS | _DAY_WORDS)

_Comparer = Callable[["Signature", "Signature"], str]


# --------------------------------------------------------------------------- signature


@dataclass(frozen=True, slots=True)
class Signature:
    """What the checks compare, computed once per prompt by :func:`analyse`."""

    flat: str  # " w1 w2 … " lower-case words, for phrase look-ups
    words: frozenset[str]
    tail: str  # the part beyond _MAX_ANALYSED, compared verbatim
    quantities: frozenset[str]
    units: frozenset[str]
    rates: frozenset[str]
    negated: bool
    polarity: frozenset[tuple[int, int]]  # (index in _POLARITY_GROUPS, 0 positive / 1 negative)
    entities: tuple[tuple[str, str], ...]  # (kind, lower-case value)
    raw_lower: str
    operands: tuple[tuple[frozenset[str], frozenset[str]], ...]
    times: frozenset[str]
    past: bool
    present: bool
    natural_languages: frozenset[str]
    programming_languages: frozenset[str]
    formats: frozenset[str]
    lengths: frozenset[str]
    brevity: int  # bit 1: brief, bit 2: detailed


def analyse(text: str) -> Signature:
    """Extract every check's signature from one prompt."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text).translate(_QUOTES)
    if "(" in text:
        text = _PAREN_LETTER.sub(r"\1\2", text)
    tail = text[_MAX_ANALYSED:]
    text = text[:_MAX_ANALYSED]
    lower = text.lower()
    word_list = _WORD.findall(lower)
    flat = " " + " ".join(word_list) + " "
    words = frozenset(word_list)
    stems = [_stem(w) if w[:3] in _POLARITY_PREFIXES else w for w in word_list]
    quantities, units, rates = _quantities(text, lower, word_list, words)
    naturals, programming = _languages(text, lower, word_list)
    formats, lengths, brevity = _formats(lower, flat, word_list)
    past, present = _tense(lower, words)
    return Signature(
        flat=flat, words=words, tail=tail, quantities=quantities, units=units, rates=rates,
        negated=_negated(lower, words),
        polarity=_polarity(stems),
        entities=_entities(text), raw_lower=lower, operands=_operands(lower, words),
        times=_times(text, lower, word_list), past=past, present=present,
        natural_languages=naturals, programming_languages=programming, formats=formats,
        lengths=lengths, brevity=brevity)


def verify(query: str, candidate: str, *, checks: Collection[str] | None = None) -> Verdict:
    """May the answer stored for ``candidate`` serve ``query``? ``checks``: a subset of CHECKS
    (None runs them all; the bench uses subsets to measure each one)."""
    return verify_signatures(analyse(query), analyse(candidate), checks=checks)


def verify_signatures(query: Signature, candidate: Signature, *,
                      checks: Collection[str] | None = None) -> Verdict:
    """:func:`verify` on signatures already computed by :func:`analyse`."""
    if checks is not None:
        unknown = set(checks) - set(CHECKS)
        if unknown:
            raise ValueError(f"unknown verifier checks: {sorted(unknown)}")
    if query.tail != candidate.tail:
        return Verdict(False, "length", "the prompts differ beyond the analysed length")
    for name, compare in _COMPARERS:
        if checks is not None and name not in checks:
            continue
        detail = compare(query, candidate)
        if detail:
            return Verdict(False, name, detail)
    return Verdict(True)


# --------------------------------------------------------------------------- numbers


def _canonical_number(literal: str, multiplier: float) -> str:
    literal = literal.replace(",", "")
    if multiplier != 1 or literal.count(".") <= 1:
        try:
            value = float(literal) * multiplier
        except ValueError:
            return literal
        if value == int(value) and (multiplier != 1 or "." not in literal):
            return str(int(value))
        if multiplier != 1:
            return repr(value)
    # "3.10" and "3.1" are different versions: dotted literals stay as written.
    return literal


def _quantities(text: str, lower: str, word_list: list[str],
                words: frozenset[str]) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    found: set[str] = set()
    units: set[str] = set()
    has_digit = _DIGIT.search(text) is not None
    for match in _QUANTITY.finditer(text) if has_digit else ():
        if match["unit"] and match["unit"].lower() in _LENGTH_UNITS:
            continue  # "in 50 words" is the format check's
        literal = match["num"]
        mult_text = (match["mult"] or "").strip()
        multiplier = {"k": 1e3, "K": 1e3, "thousand": 1e3, "M": 1e6, "million": 1e6,
                      "B": 1e9, "bn": 1e9, "billion": 1e9, "trillion": 1e12}.get(mult_text, 1)
        unit = None
        for raw in (match["cur"], match["unit2"], match["unit"]):
            if raw:
                key = raw.lower().replace(" ", "")
                if key in ("c", "f"):
                    key = "°" + key
                unit = _UNITS.get(key, unit) if unit is None or key.startswith("°") else unit
        if match["ord"]:
            unit = unit or "ord"
        if unit is None and match["unit"] and match["unit"].lower() == "year":
            unit = "year"
        value = _canonical_number(literal, multiplier)
        if unit is None and _YEAR.fullmatch(literal):
            continue  # a bare year is the time check's business
        if unit is None and value == "1":
            continue  # "a" and "one" are interchangeable in paraphrases
        if value == "1":
            if unit is not None and unit not in _TIME_UNITS:
                units.add(unit)  # "1 cup" vs "1 kg"; but "one-week trip" = "a week"
            continue
        if unit is not None:
            units.add(unit)
        found.add(f"{value}|{unit or ''}")
    for match in _NUMBER_WORD_RE.finditer(lower) if words & _NUMBER_WORD_SET else ():
        value_int = _NUMBER_WORDS[match["w"]]
        if match["scale"]:
            value_int *= _SCALE_WORDS[match["scale"]]
        raw_unit = match["unit"]
        if raw_unit in _LENGTH_UNITS:
            continue
        unit = _UNITS.get(raw_unit) if raw_unit else None
        if match["w"] in ("once", "twice", "thrice"):
            unit = "times"
        if value_int == 1:
            if unit is not None and unit not in _TIME_UNITS:
                units.add(unit)
            continue
        found.add(f"{value_int}|{unit or ''}")
    units.update(_UNITS[word] for word in words & _STANDALONE_UNITS)
    if not lower.isascii() or "$" in lower:
        units.update(_UNITS[symbol] for symbol in ("$", "€", "£", "¥", "°c", "°f")
                     if symbol in lower)
    rates: set[str] = set()
    if found:
        for i, word in enumerate(word_list[:-1]):
            if word == "per" or (word in ("a", "an", "each", "every") and i > 0
                                 and (word_list[i - 1] in _UNITS
                                      or word_list[i - 1][0].isdigit()
                                      or word_list[i - 1] in ("times", "twice", "once"))):
                unit = _UNITS.get(word_list[i + 1])
                if unit in _RATE_UNITS:
                    rates.add(unit)
        rates.update(_RATE_ADVERBS[w] for w in words if w in _RATE_ADVERBS)
        rates.update(_UNITS[m] for m in _PER_SLASH.findall(lower)
                     if _UNITS.get(m) in _RATE_UNITS)
    return frozenset(found), frozenset(units), frozenset(rates)


def _compare_numbers(a: Signature, b: Signature) -> str:
    if a.quantities != b.quantities:
        return _diff("quantities", a.quantities, b.quantities)
    if a.units != b.units:
        return _diff("units", a.units, b.units)
    if a.rates != b.rates:
        return _diff("rates", a.rates, b.rates)
    return ""


# --------------------------------------------------------------------------- negation


def _stem(word: str) -> str:
    # Crude, but applied alike to prompts and to the lexicon, which is all
    # a comparison of inflections needs.
    for suffix in ("ing", "ed", "es", "s", "e"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _stem_phrase(phrase: str) -> str:
    return " ".join(_stem(w) for w in phrase.split())


def _polarity_index() -> dict[str, frozenset[tuple[int, int]]]:
    index: dict[str, set[tuple[int, int]]] = {}
    for group, sides in enumerate(_POLARITY_GROUPS):
        for side, forms in enumerate(sides):
            for form in forms:
                index.setdefault(_stem_phrase(form), set()).add((group, side))
                # stop words are looked up unstemmed ("more", "under")
                index.setdefault(form, set()).add((group, side))
    return {form: frozenset(entries) for form, entries in index.items()}


# stemmed word or two-word phrase -> the (group, side) entries it stands for
_POLARITY_INDEX = _polarity_index()


# Only words that begin like a lexicon form can stem to one.
_POLARITY_PREFIXES = frozenset(form[:3] for form in _POLARITY_INDEX)
_POLARITY_HEADS = frozenset(form.split()[0] for form in _POLARITY_INDEX if " " in form)


def _polarity(stems: list[str]) -> frozenset[tuple[int, int]]:
    found: set[tuple[int, int]] = set()
    for stem in _POLARITY_INDEX.keys() & stems:
        found.update(_POLARITY_INDEX[stem])
    if not _POLARITY_HEADS.isdisjoint(stems):
        for i in range(len(stems) - 1):
            if stems[i] in _POLARITY_HEADS:
                found.update(_POLARITY_INDEX.get(stems[i] + " " + stems[i + 1], ()))
    return frozenset(found)


def _negated(lower: str, words: frozenset[str]) -> bool:
    if not _NEGATION_WORDS.isdisjoint(words):
        return True
    if ("n't" in lower or "not" in lower) and _CONTRACTION_NEG.search(lower):
        return True
    return ("stop" in lower or "keep" in lower) and _STOP_FROM.search(lower) is not None


def _prefix_negation(a: Signature, b: Signature) -> str:
    for word in a.words - b.words:
        for prefix in _NEG_PREFIXES:
            base = word[len(prefix):]
            if (word.startswith(prefix) and len(base) >= 4 and base in b.words
                    and word not in _NEG_PREFIX_EXCEPTIONS):
                return f"{word!r} against {base!r}"
        for prefix in _IN_PREFIXES:
            base = word[len(prefix):]
            if (word.startswith(prefix) and len(base) >= 4 and base in b.words
                    and base.endswith(_ADJ_SUFFIXES) and word not in _IN_PREFIX_EXCEPTIONS):
                return f"{word!r} against {base!r}"
    return ""


def _compare_negation(a: Signature, b: Signature) -> str:
    if a.negated != b.negated:
        return "a negation on one side only"
    if a.polarity != b.polarity:
        for group in sorted({g for g, _ in a.polarity ^ b.polarity}):
            a_sides = {side for g, side in a.polarity if g == group}
            b_sides = {side for g, side in b.polarity if g == group}
            if len(a_sides) == 1 and len(b_sides) == 1 and a_sides != b_sides:
                pos, neg = _POLARITY_GROUPS[group]
                return f"antonyms: {pos[0]} / {neg[0]}"
    return _prefix_negation(a, b) or _prefix_negation(b, a)


# --------------------------------------------------------------------------- entities


def _entities(text: str) -> tuple[tuple[str, str], ...]:
    found: list[tuple[str, str]] = []
    rest = text
    for regex, kind, marker in ((_URL, "url", "://"), (_URL, "url", "www."),
                                (_EMAIL, "email", "@")):
        if marker in rest:
            found.extend((kind, match.group(0).lower().rstrip("/"))
                         for match in regex.finditer(rest))
            rest = regex.sub(" ", rest)
    if "'" in rest or '"' in rest or "`" in rest:
        for match in _QUOTED.finditer(rest):
            quoted = next(g for g in match.groups() if g is not None)
            if quoted.strip():
                found.append(("quote", quoted.lower()))
    upper = len(rest) - len(rest.translate(_DROP_UPPER))
    shouting = False
    if upper >= 6:
        lower_count = len(rest) - len(rest.translate(_DROP_LOWER))
        shouting = upper > 2.3 * lower_count  # over 70% of the letters
    title_case = False
    if upper >= 3:
        count = len(rest.split())
        title_case = count >= 4 and len(_CAPITAL_START.findall(rest)) >= 0.7 * count
    # Plain lower-case words name nothing: only tokens with a capital or an
    # identifier character are looked at.
    for match in _ENTITY_CANDIDATE.finditer(rest):
        raw = match.group(0)
        j = match.start() - 1
        while j >= 0 and rest[j].isspace():
            j -= 1
        starts = j < 0 or rest[j] in _CLOSERS or raw[0] in _OPENERS
        token = raw.lstrip("\"'`([{<*").rstrip("\"'`)]}>,.;:!?*")
        if not token or not any(c.isalpha() for c in token):
            continue
        entity = _token_entity(token, starts, shouting, title_case)
        if entity is not None:
            found.append(entity)
    return tuple(dict.fromkeys(found))


def _token_entity(token: str, sentence_start: bool, shouting: bool,
                  title_case: bool) -> tuple[str, str] | None:
    lower = token.lower()
    if lower.endswith("'s"):
        lower = lower[:-2]
        token = token[:-2]
    if lower in _NON_ENTITIES or _owned_by_other_check(lower):
        return None
    is_identifier = ("_" in token or "::" in token or token.startswith(("--", "."))
                     or (not shouting and _CAMEL.search(token) is not None)
                     or _DOTTED_OR_PATH.search(token) is not None)
    if is_identifier:
        if lower.endswith(".js") and lower.count(".") == 1:
            lower = lower[:-3]  # "Node.js" is what people call "node"
            return ("name", lower) if not _owned_by_other_check(lower) else None
        return ("code", lower)
    if shouting:
        return None
    if _ACRONYM.fullmatch(token) and sum(c.isalpha() for c in token) >= 1 and len(token) >= 2:
        return ("name", lower.rstrip("s") if token.endswith("s") and token[:-1].isupper()
                else lower)
    if title_case or not _CAPITALISED.fullmatch(token):
        return None
    if sentence_start and lower in _COMMON_WORDS:
        return None
    if not sentence_start and lower in _STOPWORDS:
        return None
    return ("name", lower)


def _owned_by_other_check(lower: str) -> bool:
    return lower in _OWNED_WORDS


def _damerau_one(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` differ by one edit or one adjacent transposition."""
    if abs(len(a) - len(b)) > 1 or a == b:
        return a == b
    if len(a) == len(b):
        diffs = [i for i in range(len(a)) if a[i] != b[i]]
        if len(diffs) == 1:
            return not (a[diffs[0]].isdigit() or b[diffs[0]].isdigit())
        return (len(diffs) == 2 and diffs[1] == diffs[0] + 1
                and a[diffs[0]] == b[diffs[1]] and a[diffs[1]] == b[diffs[0]])
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    for i in range(len(long_)):
        if long_[:i] + long_[i + 1:] == short:
            return True
    return False


def _entity_present(kind: str, value: str, other: Signature) -> bool:
    if kind in ("url", "email", "code"):
        start = other.raw_lower.find(value)
        while start >= 0:
            end = start + len(value)
            before = other.raw_lower[start - 1] if start else " "
            after = other.raw_lower[end] if end < len(other.raw_lower) else " "
            if not (before.isalnum() or before in "_-./@") and not (
                    after.isalnum() or after in "_-/@" or (after == "." and end + 1 < len(
                        other.raw_lower) and other.raw_lower[end + 1].isalnum())):
                return True
            start = other.raw_lower.find(value, start + 1)
        return False
    words = _WORD.findall(value)
    if not words:
        return True
    if " " + " ".join(words) + " " in other.flat:
        return True
    if len(words) == 1 and len(words[0]) >= 5:
        return any(_damerau_one(words[0], w) for w in other.words
                   if abs(len(w) - len(words[0])) <= 1)
    return False


def _compare_entities(a: Signature, b: Signature) -> str:
    for this, other in ((a, b), (b, a)):
        for kind, value in this.entities:
            if not _entity_present(kind, value, other):
                return f"{kind} {value!r} on one side only"
    return ""


# --------------------------------------------------------------------------- order


def _operands(lower: str,
              words: frozenset[str]) -> tuple[tuple[frozenset[str], frozenset[str]], ...]:
    if _ORDER_VOCABULARY.isdisjoint(words):
        return ()  # no comparison word and no unit or language to point "to"
    tokens = _OPERAND_TOKEN.findall(lower)
    pairs: list[tuple[frozenset[str], frozenset[str]]] = []
    for i, token in enumerate(tokens):
        if token not in _PIVOT_WORDS or not _is_pivot(tokens, i, token):
            continue
        left = _walk(tokens, i, -1)
        right = _walk(tokens, i, 1)
        if left and right:
            pairs.append((frozenset(left), frozenset(right)))
    return tuple(pairs)


def _clause_before(tokens: list[str], i: int, limit: int = 8) -> list[str]:
    before: list[str] = []
    for token in reversed(tokens[max(0, i - limit):i]):
        if token in ",;:?!.()":
            break
        before.append(token)
    return before


def _is_pivot(tokens: list[str], i: int, token: str) -> bool:
    if token in ("vs", "vs.", "versus", "v.", "than"):
        return True
    if token == "or":
        return True
    before = _clause_before(tokens, i)
    if token in ("and", "with", "to") and any(t in _COMPARE_TRIGGERS for t in before):
        return True
    if token in ("to", "into"):
        if any(t == "from" or t in _DIRECTION_VERBS for t in before):
            return True
        prev = tokens[i - 1] if i else ""
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if _is_directional_operand(prev) and _is_directional_operand(nxt):
            return True
    if token == "in" and i and i + 1 < len(tokens):
        prev, nxt = tokens[i - 1], tokens[i + 1]
        if prev in _UNITS and nxt in _UNITS and _UNITS[prev] != _UNITS[nxt]:
            return True
    return token == "over" and any(t in _PREFER_TRIGGERS for t in before)


_ORDER_VOCABULARY = (frozenset({"vs", "versus", "v", "than", "or", "between", "over"})
                     | _COMPARE_TRIGGERS | _DIRECTION_VERBS | frozenset(_UNITS)
                     | frozenset(_NATURAL_LANGUAGES) | frozenset(_PROGRAMMING_LANGUAGES))
_PIVOT_WORDS = frozenset({"vs", "vs.", "versus", "v.", "than", "or", "and", "with", "to", "into",
                          "in", "over"})


def _is_directional_operand(token: str) -> bool:
    return token in _UNITS or token in _NATURAL_LANGUAGES or token in _PROGRAMMING_LANGUAGES


def _walk(tokens: list[str], i: int, step: int) -> list[str]:
    stops = _LEFT_STOPS if step < 0 else _RIGHT_STOPS
    # "convert X to Y": the verb ends X; in "Go vs Python" the same word is X.
    verb_stops = step < 0 and tokens[i] in ("to", "into")
    found: list[str] = []
    j = i + step
    while 0 <= j < len(tokens) and len(found) < 3:
        token = tokens[j]
        if token in ",;:?!.()" or token in stops:
            break
        if verb_stops and token in _DIRECTION_VERBS:
            break
        if token not in _STOPWORDS:
            found.append(token)
        j += step
    return found


def _compare_order(a: Signature, b: Signature) -> str:
    for a_left, a_right in a.operands:
        a_l, a_r = a_left - a_right, a_right - a_left
        for b_left, b_right in b.operands:
            b_l, b_r = b_left - b_right, b_right - b_left
            swapped_in = a_l & b_r
            swapped_out = a_r & b_l
            if swapped_in and swapped_out:
                return f"operands swapped: {min(swapped_in)} / {min(swapped_out)}"
    return ""


# --------------------------------------------------------------------------- time


def _times(text: str, lower: str, word_list: list[str]) -> frozenset[str]:
    found: set[str] = set()
    if _DIGIT.search(text):
        found.update("y" + match.group(0) for match in _YEAR.finditer(text))
        found.update(match.group(1).lower() for match in _QUARTER.finditer(text))
    if _TIME_VOCABULARY.isdisjoint(word_list):
        return frozenset(found)
    consumed: set[int] = set()
    for i, word in enumerate(word_list):
        nxt = word_list[i + 1] if i + 1 < len(word_list) else ""
        if word in _TIME_MODIFIERS and nxt in _TIME_SPANS:
            found.add(f"{_TIME_MODIFIERS[word]} {nxt}")
            consumed.update((i, i + 1))
        elif word in ("last", "past", "previous", "next", "coming") and nxt[:1].isdigit():
            found.add(f"{_TIME_MODIFIERS[word]} n")
            consumed.add(i)
        elif word == "ago":
            found.add("ago")
    for i, word in enumerate(word_list):
        if i in consumed:
            continue
        if word in _DAY_WORDS or word in _WEEKDAYS:
            found.add(word)
        elif word == "current" and i + 1 < len(word_list) and (
                word_list[i + 1] in _CURRENT_NOUNS) or word in _NOW_WORDS:
            found.add("now")
        elif word in _HOLIDAYS or word in ("spring", "summer", "autumn", "winter") and not (
                i + 1 < len(word_list) and word_list[i + 1] in ("boot", "framework", "roll",
                                                                "rolls", "onion", "water")):
            found.add(word)
    joined = " " + " ".join(word_list) + " "
    for phrase in ("right now", "these days", "at the moment", "at present", "new year",
                   "so far", "up to date"):
        if f" {phrase} " in joined:
            found.add("new year" if phrase == "new year" else "now")
    for name in _MONTHS.keys() & set(word_list):
        if name not in _AMBIGUOUS_MONTHS:
            found.add(_MONTHS[name])
            continue
        # "may", "march", "aug": a month only when capitalised mid-sentence.
        for match in re.finditer(r"(?<=[^.?!\s]) +" + name.capitalize() + r"\b", text):
            if match:
                found.add(_MONTHS[name])
                break
    return frozenset(found)


def _tense(lower: str, words: frozenset[str]) -> tuple[bool, bool]:
    present = not _PRESENT_AUX.isdisjoint(words)
    if _PAST_AUX.isdisjoint(words):
        return False, present
    cleaned = _PAST_IDIOMS.sub(" ", lower)  # "I was wondering" asks nothing about the past
    if cleaned == lower:
        return True, present
    cleaned_words = frozenset(_WORD.findall(cleaned))
    return not _PAST_AUX.isdisjoint(cleaned_words), not _PRESENT_AUX.isdisjoint(cleaned_words)


def _compare_time(a: Signature, b: Signature) -> str:
    if a.times != b.times:
        return _diff("time", a.times, b.times)
    if a.past != b.past:
        other = b if a.past else a
        if other.present and not other.past:
            return "past tense on one side only"
    return ""


# --------------------------------------------------------------------------- language


def _languages(text: str, lower: str,
               word_list: list[str]) -> tuple[frozenset[str], frozenset[str]]:
    naturals = {_NATURAL_LANGUAGES[w] for w in word_list if w in _NATURAL_LANGUAGES}
    for phrase, name in (("en français", "french"), ("en español", "spanish"),
                         ("auf deutsch", "german"), ("in italiano", "italian"),
                         ("em português", "portuguese")):
        if phrase in lower:
            naturals.add(name)
    naturals.discard("english")  # the default: asking for it changes nothing
    if not naturals:
        own = _prompt_language(text, lower, word_list)
        if own != "english":
            naturals.add(own)
    return frozenset(naturals), _programming_languages(text, word_list)


def _prompt_language(text: str, lower: str, word_list: list[str]) -> str:
    if text.isascii() and len(_ENGLISH_WORDS.intersection(word_list)) * 3 >= len(
            set(word_list)):
        return "english"  # the common case, decided without the other vocabularies
    unquoted = _QUOTED.sub(" ", text)
    if not unquoted.isascii():
        for pattern, name in _SCRIPTS:
            if len(re.findall(pattern, unquoted)) >= 2:
                return name
    unquoted_words = _WORD.findall(unquoted.lower())
    if not unquoted_words:
        return "english"
    english = sum(w in _ENGLISH_WORDS for w in unquoted_words)
    best, best_score = "english", english
    for name, vocabulary in _LATIN_LANGUAGE_WORDS.items():
        score = sum(w in vocabulary and w not in _ENGLISH_WORDS for w in unquoted_words)
        score += 2 * sum(1 for ch, lang in _ACCENTS.items() if lang == name and ch in unquoted)
        if score > best_score and score >= 2:
            best, best_score = name, score
    return best


_PROGRAMMING_KEYS = frozenset(_PROGRAMMING_LANGUAGES)
_PROG_TOKEN = re.compile(r"(?<![\w.#+-])(c\+\+|c#|f#|objective-c|[a-z][a-z0-9]*)(?![\w#+-])",
                         re.IGNORECASE)


def _programming_languages(text: str, word_list: list[str]) -> frozenset[str]:
    named = _PROGRAMMING_KEYS.intersection(word_list)
    found = {_PROGRAMMING_LANGUAGES[key] for key in named - _AMBIGUOUS_LANGUAGES}
    if not (named & _AMBIGUOUS_LANGUAGES or "#" in text or "+" in text or "objective" in named):
        return frozenset(found)
    # Ambiguous names ("Go", "C", "R", "Swift") and "C++"/"C#" need their neighbours.
    matches = list(_PROG_TOKEN.finditer(text))
    for index, match in enumerate(matches):
        raw = match.group(1)
        key = raw.lower()
        name = _PROGRAMMING_LANGUAGES.get(key)
        if name is None or name in found:
            continue
        if key in _AMBIGUOUS_LANGUAGES:
            prev = matches[index - 1].group(1).lower() if index else ""
            nxt = matches[index + 1].group(1).lower() if index + 1 < len(matches) else ""
            prev_char = text[:match.start()].rstrip()[-1:]
            capital = raw[0].isupper() and prev_char not in ("", ".", "?", "!")
            in_code_context = nxt in _CODE_WORDS or nxt in _VERSUS or prev in _VERSUS or (
                prev in _CODE_PREPOSITIONS and (match.end() >= len(text.rstrip(" .?!"))
                                                or text[match.end():match.end() + 1] in ",.?!:;"))
            if key in ("c", "r", "go"):
                if not raw.isupper() and key != "go":
                    continue
                if key == "go" and not raw[0].isupper() and not in_code_context:
                    continue
                if key in ("c", "r") and prev in ("vitamin", "plan", "type", "grade", "class",
                                                   "section", "drive", "option", "part",
                                                   "model", "series", "usb", "hepatitis",
                                                   "step", "row", "column"):
                    continue
                if key == "go" and prev in ("let", "to", "i", "we", "you", "they", "can",
                                             "should", "will", "and") and not in_code_context:
                    continue
                if not (capital or in_code_context or prev in _CODE_PREPOSITIONS):
                    continue
                if key in ("c", "r") and not (in_code_context or prev in _CODE_PREPOSITIONS):
                    continue
            elif not (capital or in_code_context):
                continue
        found.add(name)
    return frozenset(found)


def _natural_fuzzy(names: Iterable[str], other_words: frozenset[str]) -> set[str]:
    return {n for n in names if not any(_damerau_one(n, w) for w in other_words if len(w) >= 5)}


def _misspelt_nowhere(names: Iterable[str], other_words: frozenset[str]) -> set[str]:
    return {n for n in names if len(n) < 5 or n in _AMBIGUOUS_LANGUAGES
            or not any(_damerau_one(n, w) for w in other_words if len(w) >= 4)}


def _compare_language(a: Signature, b: Signature) -> str:
    if a.natural_languages != b.natural_languages:
        # A misspelt language name ("Spansih") is still that language.
        only_a = _natural_fuzzy(a.natural_languages - b.natural_languages, b.words)
        only_b = _natural_fuzzy(b.natural_languages - a.natural_languages, a.words)
        if only_a or only_b:
            return _diff("answer language", a.natural_languages, b.natural_languages)
    if a.programming_languages != b.programming_languages:
        # "Pyhton" is Python: a name on one side only may be misspelt on the other.
        only_a = _misspelt_nowhere(a.programming_languages - b.programming_languages, b.words)
        only_b = _misspelt_nowhere(b.programming_languages - a.programming_languages, a.words)
        if only_a or only_b:
            return _diff("programming language", a.programming_languages,
                         b.programming_languages)
    return ""


# --------------------------------------------------------------------------- format


def _formats(lower: str, flat: str,
             word_list: list[str]) -> tuple[frozenset[str], frozenset[str], int]:
    if _FORMAT_VOCABULARY.isdisjoint(word_list):
        return frozenset(), frozenset(), 0
    formats = {_FORMATS[w] for w in word_list if w in _FORMATS}
    formats.update(canon for form, canon in _PHRASE_FORMATS if form in lower)
    for i, word in enumerate(word_list):
        # "outline the steps", "email my boss", "post it": the verb names no format.
        if word in _VERB_FORMATS and (i == 0 or word_list[i - 1] in _VERB_CONTEXT):
            formats.discard(_FORMATS[word])
    if "list" in word_list and ({"numbered", "bulleted", "bullet"} & set(word_list)) == set():
        for phrase in (" as a list ", " in a list ", " list format ", " as list "):
            if phrase in flat:
                formats.add("list")
    lengths: set[str] = set()
    for i, word in enumerate(word_list[1:], start=1):
        unit = _LENGTH_UNITS.get(word)
        if unit is None:
            continue
        count = word_list[i - 1]
        if i >= 2 and not (count.isdigit() or count in _NUMBER_WORDS) and (
                word_list[i - 2].isdigit() or word_list[i - 2] in _NUMBER_WORDS):
            count = word_list[i - 2]  # "3 short paragraphs"
        nxt = word_list[i + 1] if i + 1 < len(word_list) else ""
        if count in ("single", "one") or (count == "a" and (not nxt or nxt in _STOPWORDS)):
            # "in a sentence" is a length; "a Word document" is not.
            if unit in ("word", "sentence", "paragraph", "line", "tweet", "page"):
                lengths.add(f"1 {unit}")
        elif count.isdigit():
            lengths.add(f"{count} {unit}")
        elif count in _NUMBER_WORDS:
            lengths.add(f"{_NUMBER_WORDS[count]} {unit}")
        elif count in ("few", "couple", "several") and unit in ("word", "sentence", "line"):
            lengths.add(f"few {unit}")
    brevity = 0
    words = set(word_list)
    if words & _BRIEF or any(phrase in flat for phrase in _BRIEF_PHRASES):
        brevity |= 1
    if words & _DETAILED or any(phrase in flat for phrase in _DETAILED_PHRASES):
        brevity |= 2
    return frozenset(formats), frozenset(lengths), brevity


def _compare_format(a: Signature, b: Signature) -> str:
    if a.formats != b.formats:
        return _diff("format", a.formats, b.formats)
    if a.lengths != b.lengths:
        return _diff("length", a.lengths, b.lengths)
    if {a.brevity, b.brevity} == {1, 2}:
        return "brief on one side, detailed on the other"
    return ""


# --------------------------------------------------------------------------- helpers


def _diff(what: str, a: frozenset[str], b: frozenset[str]) -> str:
    return f"{what}: {sorted(a - b) or '-'} vs {sorted(b - a) or '-'}"


_COMPARERS: tuple[tuple[str, _Comparer], ...] = (
    ("numbers", _compare_numbers),
    ("negation", _compare_negation),
    ("entities", _compare_entities),
    ("order", _compare_order),
    ("time", _compare_time),
    ("language", _compare_language),
    ("format", _compare_format),
)

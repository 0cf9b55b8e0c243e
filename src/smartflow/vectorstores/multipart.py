"""Uploads: ``multipart/form-data`` bodies and the text inside a file part.

The parser is small and strict (RFC 7578): the body is already whole and
bounded by the route, so it splits on the boundary, reads each part's
headers, and keeps parts by field name. Anything malformed is a
``UploadError`` the route answers with a 400.

Text extraction decides by content first, name second: known binary formats
(PDF, images, archives and the Office formats inside them) are refused with
a message saying what to send instead, since extracting them would need new
dependencies; everything else must decode as text (UTF-8, UTF-16 with a BOM,
or Windows-1252 when it is clearly text). HTML becomes its visible text,
JSON is re-indented so that chunking finds word boundaries in it, and plain
text, Markdown and CSV are kept as they are.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import unquote

import orjson

MAX_PARTS = 32
MAX_PART_HEADER_BYTES = 8192

_BINARY_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "PDF"),
    (b"\x89PNG", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"GIF8", "GIF image"),
    (b"PK\x03\x04", "ZIP archive (also .docx, .xlsx, .pptx)"),
    (b"\x1f\x8b", "gzip archive"),
    (b"\xd0\xcf\x11\xe0", "legacy Office document"),
    (b"RIFF", "RIFF media file"),
    (b"\x7fELF", "executable"),
)
_BINARY_EXTENSIONS = frozenset({
    ".pdf", ".doc", ".docx", ".xls", ".xlsx", ".ppt", ".pptx", ".png", ".jpg", ".jpeg",
    ".gif", ".zip", ".gz", ".tar", ".exe", ".bin", ".mp3", ".mp4", ".wav",
})
_PARAM_RE = re.compile(r';\s*([A-Za-z0-9_*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
# Control characters other than tab, newline, form feed and carriage return.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_BLOCK_TAGS = frozenset({
    "p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "header",
    "footer", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "hr", "title",
})
_HIDDEN_TAGS = frozenset({"script", "style", "noscript", "template", "head"})


class UploadError(ValueError):
    def __init__(self, message: str, param: str = "file") -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class FormPart:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def _header_params(value: str) -> tuple[str, dict[str, str]]:
    """``type; a=b; c="d"`` as (type lower-cased, {a: b, c: d})."""
    main, _, _rest = value.partition(";")
    params: dict[str, str] = {}
    for match in _PARAM_RE.finditer(value[len(main):]):
        raw = match.group(2).strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[match.group(1).lower()] = raw
    return main.strip().lower(), params


def is_multipart(content_type: str | None) -> bool:
    return content_type is not None and \
        _header_params(content_type)[0] == "multipart/form-data"


def parse_form(body: bytes, content_type: str) -> dict[str, FormPart]:
    """The parts of a ``multipart/form-data`` body by field name (the first
    of a repeated name wins)."""
    _kind, params = _header_params(content_type)
    boundary = params.get("boundary", "")
    if not 1 <= len(boundary) <= 200:
        raise UploadError("Content-Type: multipart/form-data needs a boundary parameter.",
                          "content-type")
    delimiter = b"--" + boundary.encode("latin-1")
    sections = body.split(delimiter)
    if len(sections) < 3:
        raise UploadError("The multipart body has no parts, or is not closed with its "
                          "boundary.", "file")
    parts: dict[str, FormPart] = {}
    for section in sections[1:]:
        if section.startswith(b"--"):
            break  # the closing delimiter; what follows is epilogue
        if len(parts) >= MAX_PARTS:
            raise UploadError(f"At most {MAX_PARTS} form fields are allowed.", "file")
        part = _parse_part(section)
        parts.setdefault(part.name, part)
    else:
        raise UploadError("The multipart body is not closed with its boundary.", "file")
    return parts


def _parse_part(section: bytes) -> FormPart:
    if section.startswith(b"\r\n"):
        section = section[2:]
    head, separator, data = section.partition(b"\r\n\r\n")
    if not separator or len(head) > MAX_PART_HEADER_BYTES:
        raise UploadError("A multipart part has no header block.", "file")
    if data.endswith(b"\r\n"):
        data = data[:-2]
    name: str | None = None
    filename: str | None = None
    content_type: str | None = None
    for line in head.decode("utf-8", "replace").split("\r\n"):
        field, _, value = line.partition(":")
        field = field.strip().lower()
        if field == "content-disposition":
            _kind, params = _header_params(value)
            name = params.get("name")
            filename = params.get("filename")
            if "filename*" in params:  # RFC 5987: charset''percent-encoded
                filename = unquote(params["filename*"].split("''", 1)[-1])
        elif field == "content-type":
            content_type = value.strip().lower() or None
    if not name:
        raise UploadError("A multipart part has no Content-Disposition name.", "file")
    return FormPart(name, filename, content_type, data)


def _extension(filename: str | None) -> str:
    if not filename or "." not in filename:
        return ""
    return "." + filename.rsplit(".", 1)[1].lower()


def _refuse_binary(data: bytes, filename: str | None, content_type: str | None) -> None:
    kind = next((label for signature, label in _BINARY_SIGNATURES
                 if data.startswith(signature)), None)
    if kind is None and (_extension(filename) in _BINARY_EXTENSIONS
                         or (content_type or "").startswith(("image/", "audio/", "video/"))
                         or content_type == "application/pdf"):
        kind = (content_type or _extension(filename)).lstrip(".").upper()
    if kind is not None:
        raise UploadError(
            f"This file looks like a {kind}, and the gateway only reads text files (plain "
            f"text, Markdown, CSV, JSON, HTML). Extract its text and upload that, or send "
            f"JSON {{\"text\": \"...\"}} instead.", "file")


def _decode(data: bytes) -> str:
    for bom, codec in ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
                       (codecs.BOM_UTF16_BE, "utf-16-be")):
        if data.startswith(bom):
            try:
                return data[len(bom):].decode(codec)
            except UnicodeDecodeError:
                break
    if b"\x00" in data:
        raise UploadError("This file holds NUL bytes: it is binary, not text. Upload a text "
                          "file (UTF-8) or send JSON {\"text\": \"...\"}.", "file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("cp1252", "replace")
    if len(_CONTROL_RE.findall(text)) > len(text) // 100:
        raise UploadError("This file is not valid UTF-8 and does not look like text. Upload "
                          "a text file (UTF-8) or send JSON {\"text\": \"...\"}.", "file")
    return text


class _VisibleText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN_TAGS:
            self._hidden_depth += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN_TAGS:
            self._hidden_depth = max(0, self._hidden_depth - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden_depth:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    parser = _VisibleText()
    parser.feed(html)
    parser.close()
    text = "".join(parser.parts)
    text = re.sub(r"[ \t\r\f\v]+", " ", text)
    return re.sub(r"\s*\n\s*\n\s*", "\n\n", text).strip()


def _looks_like_html(text: str, filename: str | None, content_type: str | None) -> bool:
    if content_type == "text/html" or _extension(filename) in (".html", ".htm", ".xhtml"):
        return True
    head = text[:512].lstrip().lower()
    return head.startswith(("<!doctype html", "<html"))


def upload_text(data: bytes, filename: str | None, content_type: str | None) -> str:
    """The text to index from an uploaded file; raises UploadError."""
    media_type = _header_params(content_type)[0] if content_type else None
    _refuse_binary(data, filename, media_type)
    text = _decode(data).replace("\r\n", "\n").replace("\r", "\n")
    if _looks_like_html(text, filename, media_type):
        return html_to_text(text)
    if media_type == "application/json" or _extension(filename) == ".json":
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError:
            return text
        return orjson.dumps(parsed, option=orjson.OPT_INDENT_2).decode()
    return text

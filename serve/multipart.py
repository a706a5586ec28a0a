"""``multipart/form-data`` bodies (RFC 7578) parsed in one pass over the buffered body.

The server holds a request's whole body anyway (bounded by ``--max-body-mb`` and ``--max-inflight-mb``), so the
parts are found with ``bytes.find`` on the boundary, in C, instead of a streaming parser's per-chunk callbacks
and a spooled temporary file per part (``bench/serve_runtimes.py`` profiles both). Header parameters are read by
one regular expression (quoted strings with escapes, and RFC 5987's ``filename*``), not by ``email.message`` as
python-multipart does, which costs more than the rest of a part's parsing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

__all__ = ["FormPart", "FormError", "parse_form"]

CRLF = b"\r\n"
# "; key=value" or '; key="quoted \\" value"' (RFC 9110 parameters)
_PARAMETER = re.compile(rb""";\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))""")
_ESCAPE = re.compile(rb"\\(.)")


@dataclass(frozen=True)
class FormPart:
    """One part: its field name, its file name (None for a text field), its Content-Type and its bytes."""

    name: str
    filename: str | None
    content_type: str  # lower-case media type, "" when the part states none
    data: bytes

    def text(self) -> str:
        return _text(self.data)


class FormError(ValueError):
    """A body that is not well-formed multipart/form-data (422), or one with too many files (413)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def _text(raw: bytes) -> str:
    """Names and values as UTF-8, falling back to Latin-1 (which decodes any bytes), as Starlette reads them."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def header_parameters(value: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """A header's lower-case main value and its parameters (lower-case names, unquoted values)."""
    main, _, rest = value.partition(b";")
    parameters = {}
    for match in _PARAMETER.finditer(b";" + rest):
        quoted, plain = match.group(2), match.group(3)
        if quoted is not None and b"\\" in quoted:
            quoted = _ESCAPE.sub(rb"\1", quoted)
        parameters[match.group(1).lower()] = plain if quoted is None else quoted
    return main.strip().lower(), parameters


def _filename(parameters: dict[bytes, bytes]) -> str | None:
    """``filename``, or RFC 5987's ``filename*=charset'lang'percent-encoded`` when that is all a part has."""
    if b"filename" in parameters:
        return _text(parameters[b"filename"])
    if b"filename*" in parameters:
        charset, _, encoded = parameters[b"filename*"].partition(b"'")
        raw = unquote_to_bytes(encoded.partition(b"'")[2])
        try:
            return raw.decode(charset.decode("ascii", "replace") or "utf-8")
        except (LookupError, UnicodeDecodeError):
            return _text(raw)
    return None


def _headers(block: bytes) -> dict[bytes, bytes]:
    headers = {}
    for line in block.split(CRLF) if block else ():
        name, colon, value = line.partition(b":")
        if not colon or not name.strip():
            raise FormError(f"a part header line is malformed ({line[:60]!r})")
        headers[name.strip().lower()] = value.strip()
    return headers


def _part(block: bytes, data: bytes) -> FormPart:
    headers = _headers(block)
    disposition, options = header_parameters(headers.get(b"content-disposition", b""))
    if disposition != b"form-data" or b"name" not in options:
        raise FormError("a part has no 'Content-Disposition: form-data; name=...' header")
    media_type = headers.get(b"content-type", b"").partition(b";")[0].strip().lower()
    return FormPart(_text(options[b"name"]), _filename(options), _text(media_type), data)


def _first_part_start(body: bytes, delimiter: bytes) -> int:
    """Where the first boundary line's delimiter ends (a preamble before it is allowed and ignored)."""
    if body.startswith(delimiter):
        return len(delimiter)
    found = body.find(CRLF + delimiter)
    if found < 0:
        raise FormError("the body holds no part opened by the boundary its Content-Type names")
    return found + len(CRLF) + len(delimiter)


def parse_form(body: bytes, content_type: str, max_files: int, max_fields: int) -> list[FormPart]:
    """The parts of ``body`` in order; files are the parts whose Content-Disposition has a ``filename``."""
    boundary = header_parameters(content_type.encode("latin-1"))[1].get(b"boundary")
    if not boundary:
        raise FormError("the Content-Type names no boundary")
    delimiter = CRLF + b"--" + boundary
    position = _first_part_start(body, delimiter[len(CRLF):])
    parts: list[FormPart] = []
    files = fields = 0
    while not body.startswith(b"--", position):  # "--" after a delimiter closes the body; an epilogue is ignored
        line_end = body.find(CRLF, position)
        if line_end < 0 or body[position:line_end].strip(b" \t"):
            raise FormError("a boundary line is malformed or the body ends before the closing boundary")
        head_end = body.find(CRLF + CRLF, line_end)
        data_end = body.find(delimiter, line_end)
        if data_end < 0:
            raise FormError("the body ends before the closing boundary")
        if head_end < 0 or head_end > data_end:
            raise FormError("a part's headers are not followed by an empty line")
        part = _part(body[line_end + len(CRLF):head_end], body[head_end + 2 * len(CRLF):data_end])
        files, fields = (files + 1, fields) if part.filename is not None else (files, fields + 1)
        if files > max_files:
            raise FormError(f"too many files, the limit is {max_files}", status=413)
        if fields > max_fields:
            raise FormError(f"too many fields, the limit is {max_fields}")
        parts.append(part)
        position = data_end + len(delimiter)
    return parts

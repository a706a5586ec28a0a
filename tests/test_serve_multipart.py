"""The server's multipart/form-data parser: the parts Starlette's own parser (python-multipart) finds in bodies that
real clients encode, the forms RFC 7578 allows beyond them, and a clear refusal of every malformed body."""
from __future__ import annotations

import asyncio

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import UploadFile
from starlette.requests import Request

from serve.multipart import FormError, FormPart, header_parameters, parse_form

BINARY = bytes(range(256)) * 3 + b"\r\n--not-the-boundary\r\n\r\n" + b"\r\n-" * 5  # bytes that look like syntax
Parts = list[tuple[str, object, object, bytes]]


def encoded(files=None, data=None) -> tuple[bytes, str]:
    """A body and its Content-Type exactly as httpx (the Hugging Face client's transport) sends them."""
    request = httpx.Request("POST", "http://x/predict", files=files, data=data)
    return request.read(), request.headers["content-type"]


def ours(body: bytes, content_type: str) -> Parts:
    return [(p.name, p.filename, p.content_type or None, p.data)
            for p in parse_form(body, content_type, max_files=100, max_fields=100)]


def starlettes(body: bytes, content_type: str) -> Parts:
    """What Starlette's form parser reads from the same body, in the same shape."""
    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def parse() -> Parts:
        scope = {"type": "http", "method": "POST", "path": "/", "query_string": b"",
                 "headers": [(b"content-type", content_type.encode("latin-1"))]}
        async with Request(scope, receive).form() as form:
            return [(key, value.filename, value.content_type, await value.read()) if isinstance(value, UploadFile)
                    else (key, None, None, value.encode()) for key, value in form.multi_items()]

    return asyncio.run(parse())


@pytest.mark.parametrize("files, data", [
    ([("files", ("a.webp", b"RIFF....WEBP", "image/webp"))], None),
    ([("files", (f"{i}.png", BINARY + bytes([i]), "image/png")) for i in range(5)], {"top_k": "3", "model": "m"}),
    ([("files", ("no type", b"\xff\xd8\xff", None)), ("files", ("empty.jpg", b"", "image/jpeg"))], None),
    ([("files", ('quote " and \\ in a name.jpg', b"x", "application/octet-stream"))], None),
    ([("files", ("r\u00e9sum\u00e9 \u20ac.webp", b"y", "image/webp"))], {"function_to_apply": "none"}),
], ids=["one file", "five binary files and fields", "untyped and empty", "quotes in a name", "non-ASCII name"])
def test_parts_equal_what_starlettes_parser_reads(files, data):
    body, content_type = encoded(files, data)
    assert ours(body, content_type) == starlettes(body, content_type)


def test_rfc_7578_forms_beyond_what_clients_usually_send():
    """A preamble and an epilogue, a quoted boundary, parameters in any case and spacing, RFC 5987 file names,
    header names in any case, a part with a Content-Type parameter, and a field part."""
    body = (b"preamble to ignore\r\n--b:1\r\n"
            b"content-disposition: FORM-DATA ;NAME = \"files\";  filename*=UTF-8''%E2%82%AC.png\r\n"
            b"CONTENT-TYPE: Image/PNG; q=1\r\n\r\n" + BINARY + b"\r\n--b:1\r\n"
            b"Content-Disposition: form-data; name=top_k\r\n\r\n7\r\n--b:1--\r\nepilogue --b:1\r\n")
    parts = parse_form(body, 'multipart/form-data; boundary="b:1"', max_files=1, max_fields=1)
    assert parts == [FormPart("files", "\u20ac.png", "image/png", BINARY), FormPart("top_k", None, "", b"7")]
    assert parts[1].text() == "7"
    assert header_parameters(b'form-data; name="a\\"b"; x=1') == (b"form-data", {b"name": b'a"b', b"x": b"1"})


@pytest.mark.parametrize("body, content_type, status, message", [
    (b"--b\r\n\r\nx\r\n--b--", "multipart/form-data", 422, "no boundary"),
    (b"no part here", "multipart/form-data; boundary=b", 422, "no part opened by the boundary"),
    (b"--b\r\nContent-Disposition: form-data; name=f; filename=a\r\n\r\ncut off", "multipart/form-data; boundary=b",
     422, "ends before the closing boundary"),
    (b"--b\r\nContent-Disposition: form-data; name=f\r\n\r\nx\r\n--b", "multipart/form-data; boundary=b", 422,
     "ends before the closing boundary"),
    (b"--b junk\r\nContent-Disposition: form-data; name=f\r\n\r\nx\r\n--b--", "multipart/form-data; boundary=b",
     422, "boundary line is malformed"),
    (b"--b\r\nContent-Type: image/png\r\n\r\nx\r\n--b--", "multipart/form-data; boundary=b", 422,
     "no 'Content-Disposition: form-data; name=...'"),
    (b"--b\r\nContent-Disposition: attachment; name=f\r\n\r\nx\r\n--b--", "multipart/form-data; boundary=b", 422,
     "no 'Content-Disposition: form-data; name=...'"),
    (b"--b\r\nno colon here\r\n\r\nx\r\n--b--", "multipart/form-data; boundary=b", 422, "header line is malformed"),
    (b"--b\r\nContent-Disposition: form-data; name=f\r\nx\r\n--b--", "multipart/form-data; boundary=b", 422,
     "not followed by an empty line"),
], ids=["no boundary", "no part", "truncated file", "no closing dashes", "junk after boundary",
        "no disposition", "not form-data", "header without colon", "no blank line"])
def test_malformed_bodies_are_refused_with_what_is_wrong(body, content_type, status, message):
    with pytest.raises(FormError, match=message) as refused:
        parse_form(body, content_type, max_files=4, max_fields=4)
    assert refused.value.status == status


def test_file_and_field_limits_are_counted_separately():
    body, content_type = encoded([("files", (f"{i}.png", b"x", "image/png")) for i in range(3)], {"top_k": "1"})
    assert len(parse_form(body, content_type, max_files=3, max_fields=1)) == 4
    with pytest.raises(FormError, match="too many files, the limit is 2") as refused:
        parse_form(body, content_type, max_files=2, max_fields=1)
    assert refused.value.status == 413
    with pytest.raises(FormError, match="too many fields, the limit is 0") as refused:
        parse_form(body, content_type, max_files=3, max_fields=0)
    assert refused.value.status == 422


part_names = st.text(st.characters(codec="utf-8", exclude_characters='\r\n"\\\x00'), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(parts=st.lists(st.tuples(part_names, st.one_of(st.none(), part_names), st.binary(max_size=300),
                                st.sampled_from([None, "image/png", "application/octet-stream"])),
                      min_size=1, max_size=6))
def test_any_body_httpx_encodes_parses_as_starlettes_parser_reads_it(parts):
    files = [(name, (filename or "f", data, content_type)) for name, filename, data, content_type in parts]
    body, content_type = encoded(files=files)
    assert ours(body, content_type) == starlettes(body, content_type)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=400), boundary=st.sampled_from(["b", "xYz", "--"]))
def test_arbitrary_bytes_either_parse_or_are_refused_with_a_form_error(body, boundary):
    for candidate in (body, b"--" + boundary.encode() + body):
        try:
            parts = parse_form(candidate, f"multipart/form-data; boundary={boundary}", max_files=8, max_fields=8)
        except FormError as refused:
            assert refused.status in (413, 422) and str(refused)
        else:
            assert all(isinstance(part, FormPart) for part in parts)

"""Schemathesis hooks for fuzzing the server from its own OpenAPI document: every schema field that holds an image
(``format: binary`` files and raw bodies, ``format: byte`` base64 strings) is generated as a real, small image, so
a request the document calls valid is one the server can answer."""
from __future__ import annotations

import base64
import io

import schemathesis
from hypothesis import strategies as st
from PIL import Image


def _encode(size, color, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format=fmt)
    return out.getvalue()


IMAGES = st.builds(_encode, st.tuples(st.integers(1, 48), st.integers(1, 48)),
                   st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)),
                   st.sampled_from(["PNG", "JPEG", "WEBP"]))

schemathesis.openapi.format("binary", IMAGES)
schemathesis.openapi.format("byte", IMAGES.map(lambda data: base64.b64encode(data).decode()))
for media_type in ("image/jpeg", "image/png", "image/webp"):
    schemathesis.openapi.media_type(media_type, IMAGES)

"""The headers of common PNG, WebP and JPEG files read straight from their first bytes.

Pillow's ``Image.open`` costs about as much as decoding a small image (it builds a file object, a plugin and its
info dictionaries); these readers only unpack a few bytes. Each returns exactly the (format, mode, size)
Pillow reports, or None for anything it does not know for sure (16-bit PNGs, animated or extended WebPs,
multi-picture or 12-bit JPEGs, a damaged header), and then Pillow reads the header as before.
"""
from __future__ import annotations

import struct

__all__ = ["Header", "read_header"]

Header = tuple[str, str, tuple[int, int]]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# (bit depth, colour type) -> Pillow's mode, for the 8-bit and palette PNGs
PNG_MODES = {(8, 0): "L", (8, 2): "RGB", (1, 3): "P", (2, 3): "P", (4, 3): "P", (8, 3): "P", (8, 4): "LA",
             (8, 6): "RGBA"}
JPEG_MODES = {1: "L", 3: "RGB"}
# start-of-frame markers (baseline, extended, progressive, lossless, arithmetic); 0xC4, 0xC8 and 0xCC are not frames
JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
JPEG_SOS, JPEG_EOI, JPEG_APP2 = 0xDA, 0xD9, 0xE2


def png_header(data: bytes) -> Header | None:
    """The IHDR chunk, which PNG requires first."""
    if len(data) < 29 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    mode = PNG_MODES.get((depth, colour))
    return ("PNG", mode, (width, height)) if mode and width and height else None


def webp_header(data: bytes) -> Header | None:
    """Simple WebP files: one lossless (VP8L) or one lossy key frame (VP8) bitstream; extended files (VP8X:
    animation, alpha beside a lossy frame, metadata) are left to Pillow."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8L" and data[20] == 0x2F:  # signature byte, then 14-bit width-1, height-1, the alpha bit
        bits = int.from_bytes(data[21:25], "little")
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        return "WEBP", "RGBA" if (bits >> 28) & 1 else "RGB", (width, height)
    if chunk == b"VP8 " and not data[20] & 1 and data[23:26] == b"\x9d\x01\x2a":  # a key frame's start code
        width, height = struct.unpack("<HH", data[26:30])
        width, height = width & 0x3FFF, height & 0x3FFF
        return ("WEBP", "RGB", (width, height)) if width and height else None
    return None


def jpeg_header(data: bytes) -> Header | None:
    """The frame header of an 8-bit JPEG, read up to the scan as Pillow does (a multi-picture APP2 segment makes
    Pillow call the file MPO, so those go to it)."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    found: Header | None = None
    at, end = 2, len(data)
    while at + 4 <= end:
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == JPEG_SOS:
            return found
        if marker == JPEG_EOI:
            return None
        length = int.from_bytes(data[at + 2:at + 4], "big")
        if marker in JPEG_SOF:
            if found is not None or at + 10 > end or data[at + 4] != 8:
                return None
            height, width = struct.unpack(">HH", data[at + 5:at + 9])
            mode = JPEG_MODES.get(data[at + 9])
            if mode is None or not width or not height:
                return None
            found = ("JPEG", mode, (width, height))
        elif marker == JPEG_APP2 and data[at + 4:at + 8] == b"MPF\x00":
            return None
        at += 2 + length
    return None


def read_header(data: bytes) -> Header | None:
    """(format, mode, (width, height)) as Pillow reports them, for the files read here; None otherwise."""
    first = data[:1]
    if first == b"\x89":
        return png_header(data)
    if first == b"R":
        return webp_header(data)
    if first == b"\xff":
        return jpeg_header(data)
    return None

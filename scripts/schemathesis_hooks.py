"""Schemathesis hooks for `smallcap serve`'s API (tests/api_schema.rs runs Schemathesis with them).

An OpenAPI schema can say that a body is binary with an image media type, but not that its bytes
decode as an image: without these hooks Schemathesis fills image fields with random bytes (or
ZIP and PDF files), which the server rightly refuses with 415. These strategies give it images
that a decoder reads: PNG and BMP files of random size, colour type and pixels.
"""

import struct
import zlib

import schemathesis
from hypothesis import strategies as st


def _png(width, height, channels, pixels):
    color_type = {1: 0, 3: 2, 4: 6}[channels]
    row = width * channels
    raw = b"".join(b"\x00" + pixels[y * row:(y + 1) * row] for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _bmp(width, height, pixels):
    row = (width * 3 + 3) & ~3
    body = b"".join(pixels[y * width * 3:(y + 1) * width * 3].ljust(row, b"\x00") for y in range(height))
    header = struct.pack("<2sIHHI", b"BM", 54 + len(body), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(body), 2835, 2835, 0, 0)
    return header + info + body


@st.composite
def images(draw):
    width = draw(st.integers(1, 48))
    height = draw(st.integers(1, 48))
    kind = draw(st.sampled_from(["png-gray", "png-rgb", "png-rgba", "bmp"]))
    channels = {"png-gray": 1, "png-rgb": 3, "png-rgba": 4, "bmp": 3}[kind]
    pixels = draw(st.binary(min_size=width * height * channels, max_size=width * height * channels))
    if kind == "bmp":
        return _bmp(width, height, pixels)
    return _png(width, height, channels, pixels)


for media_type in ["image/*", "image/png", "application/octet-stream"]:
    schemathesis.openapi.media_type(media_type, images())

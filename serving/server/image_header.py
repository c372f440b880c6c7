"""Image dimensions read from the encoded header (PNG IHDR, JPEG SOF, BMP info header), before decoding.

The server refuses an image whose decoded size would exceed `ServingLimits.max_image_pixels`
without decoding it: a 446 KB PNG of 12000x12000 one-colour pixels decodes to 432 MB of RGB
(and more for the resize), so the check must come from the header. Formats other than these
three are refused (the served contract is JPEG/PNG/BMP), as are headers that are cut short or
declare a zero size. No TensorFlow import: this runs on the event loop, in microseconds.
"""
from __future__ import annotations

import struct
from typing import Tuple

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"
BMP_MAGIC = b"BM"
# Start-of-frame markers: C0-CF but DHT (C4), JPG (C8) and DAC (CC).
JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM, RST0-7 (SOI/EOI are handled apart).
JPEG_STANDALONE = frozenset([0x01] + list(range(0xD0, 0xD8)))
JPEG_SOS, JPEG_EOI = 0xDA, 0xD9


class ImageHeaderError(ValueError):
    """The bytes are not a PNG/JPEG/BMP with a readable, non-empty size."""


def image_size(data: bytes) -> Tuple[str, int, int]:
    """Encoded image -> (format, width, height), from its header only.

    Raises:
        ImageHeaderError: unknown format, truncated header, or a zero size.
    """
    if data.startswith(PNG_SIGNATURE):
        fmt, (width, height) = "PNG", _png_size(data)
    elif data.startswith(JPEG_SOI):
        fmt, (width, height) = "JPEG", _jpeg_size(data)
    elif data.startswith(BMP_MAGIC):
        fmt, (width, height) = "BMP", _bmp_size(data)
    else:
        raise ImageHeaderError("not a PNG, JPEG or BMP image (unknown header)")
    if width <= 0 or height <= 0:
        raise ImageHeaderError(f"{fmt} header declares an empty size {width}x{height}")
    return fmt, width, height


def _png_size(data: bytes) -> Tuple[int, int]:
    # signature (8), then the first chunk: length (4), type "IHDR" (4), width (4), height (4), big-endian
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ImageHeaderError("PNG without an IHDR chunk first")
    return struct.unpack(">II", data[16:24])


def _jpeg_size(data: bytes) -> Tuple[int, int]:
    position, end = 2, len(data)
    while position < end:
        if data[position] != 0xFF:
            raise ImageHeaderError(f"JPEG: no marker at byte {position}")
        while position < end and data[position] == 0xFF:  # fill bytes before a marker
            position += 1
        if position >= end:
            break
        marker = data[position]
        position += 1
        if marker in JPEG_STANDALONE:
            continue
        if marker in (JPEG_SOS, JPEG_EOI):
            raise ImageHeaderError("JPEG: no start-of-frame before the image data")
        if position + 2 > end:
            break
        (length,) = struct.unpack(">H", data[position:position + 2])
        if marker in JPEG_SOF_MARKERS:
            if position + 7 > end:
                break
            height, width = struct.unpack(">HH", data[position + 3:position + 7])
            if height == 0:  # the height comes later in a DNL marker: cannot be checked up front
                raise ImageHeaderError("JPEG: a frame without its height (DNL) is not supported")
            return width, height
        if length < 2:
            raise ImageHeaderError(f"JPEG: segment length {length} at byte {position}")
        position += length
    raise ImageHeaderError("JPEG: header cut short before its start-of-frame")


def _bmp_size(data: bytes) -> Tuple[int, int]:
    if len(data) < 26:
        raise ImageHeaderError("BMP header cut short")
    (info_size,) = struct.unpack("<I", data[14:18])
    if info_size == 12:  # BITMAPCOREHEADER: 16-bit unsigned sizes
        return struct.unpack("<HH", data[18:22])
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)  # a negative height means rows stored top-down

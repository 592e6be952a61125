"""An image's width and height read from its header, before anything is decoded.

Decoding allocates width x height x 3 bytes whatever the file's size: a 1.2 MB PNG can claim
20000x20000 pixels and cost 1.2 GB. :func:`image_size` reads the dimensions of every format the
runtime accepts (JPEG, PNG, BMP, WebP, TIFF, PNM/PAM/PFM) with bounded work, so the caller can refuse
an image over its pixel budget without decoding it. Anything else, or a header that does not parse,
is refused: an image whose size cannot be known cannot be bounded.
"""
from __future__ import annotations

import struct
from typing import Callable

MAX_JPEG_SEGMENTS = 1024  # markers scanned before the frame header (real files: about 20)
MAX_TIFF_ENTRIES = 4096
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class ImageHeaderError(ValueError):
    """The file is not an image of a known format, or its header is corrupt."""


def _u(data: bytes | memoryview, fmt: str, pos: int) -> int:
    size = struct.calcsize(fmt)
    if pos < 0 or pos + size > len(data):
        raise ImageHeaderError(f"header truncated (read at byte {pos} of {len(data)})")
    return struct.unpack_from(fmt, data, pos)[0]


def _png(d) -> tuple[int, int]:
    if bytes(d[12:16]) != b"IHDR":
        raise ImageHeaderError("PNG without IHDR first")
    return _u(d, ">I", 16), _u(d, ">I", 20)


def _jpeg(d) -> tuple[int, int]:
    i = 2
    for _ in range(MAX_JPEG_SEGMENTS):
        if _u(d, "B", i) != 0xFF:
            raise ImageHeaderError(f"JPEG marker expected at byte {i}")
        marker = _u(d, "B", i + 1)
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):
            raise ImageHeaderError("JPEG without a frame header before its data")
        length = _u(d, ">H", i + 2)
        if length < 2:
            raise ImageHeaderError(f"JPEG segment of length {length} at byte {i}")
        if marker in _JPEG_SOF:
            return _u(d, ">H", i + 7), _u(d, ">H", i + 5)
        i += 2 + length
    raise ImageHeaderError(f"JPEG with more than {MAX_JPEG_SEGMENTS} segments before its frame header")


def _bmp(d) -> tuple[int, int]:
    header = _u(d, "<I", 14)
    if header == 12:  # OS/2 BITMAPCOREHEADER
        return _u(d, "<H", 18), _u(d, "<H", 20)
    return abs(_u(d, "<i", 18)), abs(_u(d, "<i", 22))  # negative height: rows stored top-down


def _webp(d) -> tuple[int, int]:
    chunk = bytes(d[12:16])
    if chunk == b"VP8 ":
        if bytes(d[23:26]) != b"\x9d\x01\x2a":
            raise ImageHeaderError("WebP VP8 frame without its start code")
        return _u(d, "<H", 26) & 0x3FFF, _u(d, "<H", 28) & 0x3FFF
    if chunk == b"VP8L":
        if _u(d, "B", 20) != 0x2F:
            raise ImageHeaderError("WebP lossless frame without its signature")
        bits = _u(d, "<I", 21)
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8X":
        return 1 + (_u(d, "<I", 24) & 0xFFFFFF), 1 + (_u(d, "<I", 27) & 0xFFFFFF)
    raise ImageHeaderError(f"WebP chunk {chunk!r}: VP8, VP8L or VP8X expected")


def _tiff(d) -> tuple[int, int]:
    e = "<" if bytes(d[:2]) == b"II" else ">"
    if _u(d, e + "H", 2) != 42:
        raise ImageHeaderError("BigTIFF or unknown TIFF version: classic TIFF (42) expected")
    ifd = _u(d, e + "I", 4)
    n = _u(d, e + "H", ifd)
    if n > MAX_TIFF_ENTRIES:
        raise ImageHeaderError(f"TIFF directory of {n} entries: at most {MAX_TIFF_ENTRIES} expected")
    size: dict[int, int] = {}
    for k in range(n):
        pos = ifd + 2 + 12 * k
        tag, typ = _u(d, e + "H", pos), _u(d, e + "H", pos + 2)
        if tag in (256, 257):
            size[tag] = _u(d, e + "H", pos + 8) if typ == 3 else _u(d, e + "I", pos + 8)
    if 256 not in size or 257 not in size:
        raise ImageHeaderError("TIFF without ImageWidth and ImageLength")
    return size[256], size[257]


def _tokens(d, start: int, count: int) -> list[int]:
    """``count`` integers of a Netpbm header (whitespace separated, ``#`` comments), bounded."""
    out, i, limit = [], start, min(len(d), start + 4096)
    while len(out) < count:
        while i < limit and (d[i] in b" \t\r\n" or d[i] == ord("#")):
            if d[i] == ord("#"):
                while i < limit and d[i] not in b"\r\n":
                    i += 1
            else:
                i += 1
        j = i
        while j < limit and chr(d[j]).isdigit():
            j += 1
        if j == i or j - i > 9:
            raise ImageHeaderError("Netpbm header: width and height expected")
        out.append(int(bytes(d[i:j])))
        i = j
    return out


def _pnm(d) -> tuple[int, int]:
    if d[1] == ord("7"):  # PAM: "WIDTH w" / "HEIGHT h" lines up to ENDHDR
        head = bytes(d[:4096]).split(b"ENDHDR")[0].split()
        try:
            return int(head[head.index(b"WIDTH") + 1]), int(head[head.index(b"HEIGHT") + 1])
        except (ValueError, IndexError):
            raise ImageHeaderError("PAM header without WIDTH and HEIGHT") from None
    w, h = _tokens(d, 2, 2)
    return w, h


_FORMATS: list[tuple[str, Callable[[bytes], bool], Callable]] = [
    ("JPEG", lambda d: bytes(d[:3]) == b"\xff\xd8\xff", _jpeg),
    ("PNG", lambda d: bytes(d[:8]) == b"\x89PNG\r\n\x1a\n", _png),
    ("BMP", lambda d: bytes(d[:2]) == b"BM", _bmp),
    ("WebP", lambda d: bytes(d[:4]) == b"RIFF" and bytes(d[8:12]) == b"WEBP", _webp),
    ("TIFF", lambda d: bytes(d[:4]) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), _tiff),
    ("PNM", lambda d: len(d) > 2 and d[0] == ord("P") and chr(d[1]) in "1234567fF", _pnm),
]


def image_size(data: bytes | memoryview) -> tuple[int, int, str]:
    """(width, height, format name) of an encoded image, from its header only.

    Raises:
        ImageHeaderError: not a JPEG, PNG, BMP, WebP, TIFF or Netpbm file, or a corrupt header.
    """
    for name, matches, parse in _FORMATS:
        if matches(data):
            w, h = parse(data)
            if w <= 0 or h <= 0:
                raise ImageHeaderError(f"{name} header says {w}x{h} pixels")
            return int(w), int(h), name
    raise ImageHeaderError("not a JPEG, PNG, BMP, WebP, TIFF or Netpbm image")

"""Real, decodable PNG and JPEG bytes from the standard library alone (zlib, struct).

The images are synthetic (gradients, flat 8x8 blocks or noise) but structurally valid:
any decoder reads them and reports the requested size. Output depends only on the
arguments, so the same call always returns the same bytes.
"""

from __future__ import annotations

import random
import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- PNG


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, tag, data, CRC-32 of tag + data."""
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _gradient_rows(width: int, height: int, rng: random.Random) -> bytes:
    """Scanlines (each with filter byte 0) of a seeded diagonal gradient."""
    r0, g0, b0 = rng.randrange(256), rng.randrange(256), rng.randrange(256)
    dr, dg, db = rng.randrange(1, 8), rng.randrange(1, 8), rng.randrange(1, 8)
    pixels = bytearray(3 * width)
    pixels[0::3] = bytes((r0 + x * dr) & 0xFF for x in range(width))
    pixels[1::3] = bytes((g0 + x * dg) & 0xFF for x in range(width))
    pixels[2::3] = bytes((b0 + x * db) & 0xFF for x in range(width))
    base = bytes(pixels)
    # Each row is the base row rotated by a few pixels: a diagonal pattern, no pixel loop.
    shift = 3 * rng.randrange(1, 5)
    rows = []
    for y in range(height):
        k = (y * shift) % len(base)
        rows.append(b"\x00" + base[k:] + base[:k])
    return b"".join(rows)


def _noise_rows(width: int, height: int, rng: random.Random) -> bytes:
    """Scanlines (each with filter byte 0) of pseudo-random pixels: barely compressible."""
    stride = 3 * width
    data = rng.randbytes(stride * height)
    return b"".join(b"\x00" + data[i : i + stride] for i in range(0, len(data), stride))


def png_bytes(width: int, height: int, seed: int, noisy: bool = False) -> bytes:
    """Return a valid 8-bit RGB PNG of ``width`` x ``height`` pixels.

    The pixels are a gradient chosen by ``seed`` or, with ``noisy=True``, pseudo-random
    bytes (a 1024x1024 noisy PNG is about 3 MB). Same arguments, same bytes.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    rng = random.Random(seed)
    raw = _noise_rows(width, height, rng) if noisy else _gradient_rows(width, height, rng)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"".join(
        (
            PNG_SIGNATURE,
            _png_chunk(b"IHDR", ihdr),
            _png_chunk(b"IDAT", zlib.compress(raw, 1 if noisy else 6)),
            _png_chunk(b"IEND", b""),
        )
    )


# -------------------------------------------------------------------------- JPEG
#
# Baseline JFIF, YCbCr 4:4:4 (every component 1x1, so an MCU is one 8x8 block per
# component). Every block is flat: only its DC coefficient is coded, then EOB. With a
# quantiser of 8, a flat block of sample value v has quantised DC v - 128 exactly.

_QUANT = 8
# Annex K.3 table K.3 (luminance DC): code-length counts for lengths 1..16, then symbols.
_DC_COUNTS = (0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0)
_DC_SYMBOLS = tuple(range(12))
# AC table with a single symbol, 0x00 (EOB), whose code is "0".
_AC_COUNTS = (1,) + (0,) * 15
_AC_SYMBOLS = (0x00,)


def _huffman_codes(counts: tuple[int, ...], symbols: tuple[int, ...]) -> dict[int, str]:
    """Canonical Huffman codes (as bit strings) from a DHT-style table (JPEG Annex C)."""
    codes: dict[int, str] = {}
    code = 0
    k = 0
    for length, n in enumerate(counts, start=1):
        for _ in range(n):
            codes[symbols[k]] = format(code, f"0{length}b")
            code += 1
            k += 1
        code <<= 1
    return codes


_DC_CODES = _huffman_codes(_DC_COUNTS, _DC_SYMBOLS)
_EOB = _huffman_codes(_AC_COUNTS, _AC_SYMBOLS)[0x00]


def _segment(marker: int, payload: bytes) -> bytes:
    """A marker segment: 0xFF, marker, big-endian length (including itself), payload."""
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


def _dc_bits(diff: int) -> str:
    """Huffman code of the size category plus the magnitude bits of one DC difference."""
    size = abs(diff).bit_length()
    if size == 0:
        return _DC_CODES[0]
    value = diff if diff > 0 else diff + (1 << size) - 1  # one's complement for negatives
    return _DC_CODES[size] + format(value, f"0{size}b")


# Bits of a whole flat block (DC difference, then EOB) for every possible difference.
_BLOCK_BITS = {diff: _dc_bits(diff) + _EOB for diff in range(-255, 256)}


def _entropy_data(width: int, height: int, seed: int) -> bytes:
    """Huffman-coded scan: one flat-colour block per component per MCU, byte-stuffed."""
    rng = random.Random(seed)
    bases = [rng.randrange(256) for _ in range(3)]
    steps = [(rng.randrange(-9, 10), rng.randrange(-9, 10)) for _ in range(3)]
    blocks_x, blocks_y = -(-width // 8), -(-height // 8)
    previous = [0, 0, 0]
    bits: list[str] = []
    for by in range(blocks_y):
        for bx in range(blocks_x):
            for c in range(3):
                sx, sy = steps[c]
                dc = (bases[c] + bx * sx + by * sy) % 256 - 128
                bits.append(_BLOCK_BITS[dc - previous[c]])
                previous[c] = dc
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)  # pad the last byte with 1-bits
    data = int(stream, 2).to_bytes(len(stream) // 8, "big")
    return data.replace(b"\xff", b"\xff\x00")  # byte stuffing


def jpeg_bytes(width: int, height: int, seed: int) -> bytes:
    """Return a valid baseline JFIF JPEG of ``width`` x ``height`` pixels.

    Colour (YCbCr 4:4:4); each 8x8 block is a flat colour that varies with ``seed`` and
    the block position. Any size from 1x1 to 65535x65535 (partial edge blocks are cropped
    by the decoder). Same arguments, same bytes.
    """
    if not (1 <= width <= 0xFFFF and 1 <= height <= 0xFFFF):
        raise ValueError(f"JPEG size must be within 1..65535, got {width}x{height}")
    app0 = b"JFIF\x00" + struct.pack(">BBBHHBB", 1, 1, 0, 1, 1, 0, 0)
    dqt = bytes([0x00]) + bytes([_QUANT] * 64)  # 8-bit precision, table 0
    sof0 = struct.pack(">BHHB", 8, height, width, 3) + bytes(
        [1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0]  # component id, sampling 1x1, quant table 0
    )
    dht = (
        bytes([0x00]) + bytes(_DC_COUNTS) + bytes(_DC_SYMBOLS)  # class 0 (DC), table 0
        + bytes([0x10]) + bytes(_AC_COUNTS) + bytes(_AC_SYMBOLS)  # class 1 (AC), table 0
    )  # fmt: skip
    sos = bytes([3, 1, 0x00, 2, 0x00, 3, 0x00, 0, 63, 0])  # all use DC 0 / AC 0; Ss Se AhAl
    return b"".join(
        (
            b"\xff\xd8",  # SOI
            _segment(0xE0, app0),
            _segment(0xDB, dqt),
            _segment(0xC0, sof0),
            _segment(0xC4, dht),
            _segment(0xDA, sos),
            _entropy_data(width, height, seed),
            b"\xff\xd9",  # EOI
        )
    )

"""Whether an image's bytes are whole, without decoding a pixel.

PNG: the signature, then every chunk's length, type and CRC-32 (of type + data) up to and
including IEND. JPEG: SOI first, the marker segments up to the first scan (SOS), then an
EOI (FF D9) somewhere after that scan starts: entropy-coded data holds no FF D9 (an FF
there is always followed by 00 or a restart marker), so a file cut anywhere before its
EOI has none. Bytes after IEND or EOI are allowed: phones and some tools append data
there, and the image itself is whole. Other formats are not judged.

`image_problem(data)` checks bytes in memory; `ImageCheck` takes the same bytes in pieces
(a file read in chunks) and gives the same answer.
"""

from __future__ import annotations

import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"
MAX_PNG_CHUNK = (1 << 31) - 1  # the PNG spec's limit on a chunk's length
JPEG_HEAD_LIMIT = 64 << 20  # bytes before the first scan, at most (segments are < 64 KiB)
EOI_WINDOW = 1 << 16  # the EOI search looks back from the end in windows of this size
_U32 = struct.Struct(">I")
_HEAD, _DATA, _CRC, _DONE, _BAD = range(5)

Buffer = bytes | bytearray | memoryview


def image_problem(data: Buffer, crc: bool = True) -> str | None:
    """None when the image is whole (or neither PNG nor JPEG); else one line saying why not.

    `crc=False` walks a PNG's chunk lengths only: a cut file is still found, a changed
    byte inside a chunk is not.
    """
    check = ImageCheck(crc)
    check.feed(data)
    return check.result()


class ImageCheck:
    """`image_problem`, fed the file's bytes in order, in pieces of any size."""

    def __init__(self, crc: bool = True) -> None:
        self._crc = crc
        self._start = b""  # the first 8 bytes, until the format is known
        self._walk: _PngWalk | _JpegWalk | None = None
        self._other = False

    def feed(self, data: Buffer) -> None:
        """Take the next bytes of the file."""
        if self._other:
            return
        if self._walk is not None:
            self._walk.feed(data)
            return
        had = len(self._start)
        self._start += bytes(data[: 8 - had])
        if len(self._start) < 8:
            return
        if self._start == PNG_SIGNATURE:
            self._walk, skip = _PngWalk(self._crc), 8
        elif self._start.startswith(JPEG_SOI):
            self._walk, skip = _JpegWalk(), 2
        else:
            self._other = True
            return
        if had:  # the first 8 bytes came in more than one piece
            self._walk.feed(self._start, skip)
            self._walk.feed(data, 8 - had)
        else:
            self._walk.feed(data, skip)

    def result(self) -> str | None:
        """None: whole, or not a PNG or JPEG; else what is wrong, in one line."""
        if self._walk is None:
            if self._start.startswith(JPEG_SOI) or PNG_SIGNATURE.startswith(self._start or b"-"):
                return f"image cut after {len(self._start)} bytes"
            return None
        return self._walk.result()


class _PngWalk:
    """A PNG's chunks after the signature: lengths, types and CRCs, through IEND."""

    def __init__(self, crc: bool) -> None:
        self.crc = crc
        self.phase = _HEAD
        self.part = bytearray()  # a chunk's header or CRC split between two pieces
        self.offset = 8  # in the file, of the next byte to look at
        self.chunk_at = 8
        self.ctype = b""
        self.left = 0  # data bytes of the current chunk still to come
        self.running = 0
        self.problem: str | None = None

    def feed(self, data: Buffer, pos: int = 0) -> None:
        n = len(data)
        while pos < n and self.phase < _DONE:
            if self.phase == _HEAD:
                if not self.part:
                    pos = self._whole_chunks(data, pos, n)
                    if pos >= n or self.phase != _HEAD:
                        continue
                pos = self._gather(data, pos, 8)
                if len(self.part) == 8:
                    self._start_chunk(bytes(self.part))
            elif self.phase == _DATA:
                take = min(self.left, n - pos)
                if self.crc:
                    self.running = zlib.crc32(data[pos : pos + take], self.running)
                self.left -= take
                pos += take
                self.offset += take
                if not self.left:
                    self.phase = _CRC
            else:
                pos = self._gather(data, pos, 4)
                if len(self.part) == 4:
                    self._end_chunk(_U32.unpack(self.part)[0])

    def _whole_chunks(self, data: Buffer, pos: int, n: int) -> int:
        """Check the chunks lying wholly in `data` from `pos`; where the walk stops."""
        view = memoryview(data)
        while pos + 12 <= n:
            length = _U32.unpack_from(view, pos)[0]
            end = pos + 12 + length
            if end > n:
                return pos
            self.chunk_at, self.ctype = self.offset, bytes(view[pos + 4 : pos + 8])
            if not self.ctype.isalpha():
                self._fail(f"no PNG chunk at byte {self.offset} (type {self.ctype!r})")
                return pos
            self.offset += end - pos
            if (
                self.crc
                and zlib.crc32(view[pos + 4 : end - 4]) != _U32.unpack_from(view, end - 4)[0]
            ):
                self._fail(self._crc_words())
                return end
            pos = end
            if self.ctype == b"IEND":
                self.phase = _DONE
                return pos
        return pos

    def _gather(self, data: Buffer, pos: int, size: int) -> int:
        take = min(size - len(self.part), len(data) - pos)
        self.part += data[pos : pos + take]
        self.offset += take
        return pos + take

    def _start_chunk(self, head: bytes) -> None:
        self.part.clear()
        self.chunk_at = self.offset - 8
        self.left, self.ctype = _U32.unpack_from(head)[0], head[4:]
        if not self.ctype.isalpha():
            self._fail(f"no PNG chunk at byte {self.chunk_at} (type {self.ctype!r})")
        elif self.left > MAX_PNG_CHUNK:
            self._fail(f"PNG {self._name()} chunk at byte {self.chunk_at} claims {self.left} bytes")
        else:
            self.running = zlib.crc32(self.ctype) if self.crc else 0
            self.phase = _DATA if self.left else _CRC

    def _end_chunk(self, want: int) -> None:
        self.part.clear()
        if self.crc and self.running != want:
            self._fail(self._crc_words())
        elif self.ctype == b"IEND":
            self.phase = _DONE
        else:
            self.phase = _HEAD

    def _name(self) -> str:
        return self.ctype.decode("ascii", "replace")

    def _crc_words(self) -> str:
        return f"PNG {self._name()} chunk at byte {self.chunk_at} fails its CRC"

    def _fail(self, words: str) -> None:
        self.problem = words
        self.phase = _BAD

    def result(self) -> str | None:
        if self.phase == _BAD:
            return self.problem
        if self.phase == _DONE:
            return None
        cut = f"PNG cut after {self.offset} bytes"
        if self.phase == _HEAD and not self.part:
            return f"{cut}: no IEND chunk"
        if self.phase == _HEAD:
            return f"{cut}, inside a chunk header (at byte {self.offset - len(self.part)})"
        return f"{cut}, inside its {self._name()} chunk (at byte {self.chunk_at})"


class _JpegWalk:
    """A JPEG after SOI: its marker segments up to the first SOS, then an EOI after it."""

    def __init__(self) -> None:
        self.head = bytearray()  # bytes before the first scan while it is not found yet
        self.base = 2  # file offset of the first byte not yet walked past
        self.scanning = False  # the first scan's data has begun
        self.problem: str | None = None
        self.eoi = False
        self.last = 0  # the previous piece's last byte (an FF D9 split between pieces)
        self.size = 0

    def feed(self, data: Buffer, start: int = 0) -> None:
        self.size += len(data) - start
        if self.problem is not None or self.eoi:
            return
        if not self.scanning:
            if self.head:
                self.head += data[start:]
                data, start = self.head, 0
            found = self._walk_head(data, start)
            if found is None:
                if data is not self.head:
                    self.head = bytearray(data[start:])
                return
            start, self.head = found, bytearray()
            self.scanning = True
            self.last = 0
        if start >= len(data):
            return
        if self.last == 0xFF and data[start] == 0xD9 or _has_eoi(data, start):
            self.eoi = True
        self.last = data[-1]

    def _walk_head(self, data: Buffer, pos: int) -> int | None:
        """Where the first scan's data begins in `data`, or None (not there yet, or bad)."""
        n = len(data)
        first = pos
        while pos + 4 <= n:
            at = self.base + pos - first
            if data[pos] != 0xFF:  # stray bytes before a marker: decoders skip them, so do we
                pos += 1
                continue
            marker = data[pos + 1]
            if marker == 0xFF:  # fill byte
                pos += 1
                continue
            if marker == 0x01 or 0xD0 <= marker <= 0xD7:
                pos += 2
                continue
            if marker == 0xD9:
                self.problem = f"JPEG ends (EOI) at byte {at} before any scan"
                return None
            length = data[pos + 2] << 8 | data[pos + 3]
            if length < 2:
                self.problem = f"JPEG segment at byte {at} has length {length}"
                return None
            if marker == 0xDA and pos + 2 + length <= n:
                return pos + 2 + length
            if marker == 0xDA:
                break
            pos += 2 + length
        if n - first > JPEG_HEAD_LIMIT:
            self.problem = f"JPEG has no scan in its first {JPEG_HEAD_LIMIT} bytes"
        return None

    def result(self) -> str | None:
        if self.problem is not None:
            return self.problem
        size = self.size + 2
        if not self.scanning:
            return f"JPEG cut after {size} bytes, before its first scan"
        if not self.eoi:
            return f"JPEG cut after {size} bytes: no EOI marker (FF D9) after its scan"
        return None


def _has_eoi(data: Buffer, start: int) -> bool:
    """Whether FF D9 occurs in data[start:], looked for from the end (where it usually is)."""
    end = len(data)
    while end - start >= 2:
        lo = max(start, end - EOI_WINDOW)
        if bytes(data[lo:end]).find(JPEG_EOI) >= 0:
            return True
        end = lo + 1  # the windows overlap by a byte: an FF D9 across them is seen
    return False

"""A one-line progress display on stderr for long work (quiet when stderr is not a terminal)."""

from __future__ import annotations

import sys
import time


def human_bytes(n: float) -> str:
    """Decimal units, as the Hub and `df -H` count: `512 B`, `12.60 MB`, `9.31 GB`."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


class Progress:
    """Redraws `label  42%  1.2 GB/2.9 GB  310 MB/s` at most every 0.25 s."""

    def __init__(self, label: str, total: int, unit: str = "bytes", stream=None):
        self.label = label
        self.total = max(total, 1)
        self.unit = unit
        self.stream = stream or sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self._last = 0.0

    def _fmt(self, n: float) -> str:
        return human_bytes(n) if self.unit == "bytes" else f"{n:,.0f}"

    def update(self, done: int) -> None:
        if not self.live:
            return
        now = time.monotonic()
        if now - self._last < 0.25:
            return
        self._last = now
        rate = done / max(now - self.start, 1e-6)
        speed = f"{human_bytes(rate)}/s" if self.unit == "bytes" else f"{rate:,.0f} {self.unit}/s"
        pct = 100 * done / self.total
        self.stream.write(
            f"\r{self.label}  {pct:5.1f}%  {self._fmt(done)}/{self._fmt(self.total)}  {speed}   "
        )
        self.stream.flush()

    def close(self) -> None:
        if self.live:
            self.stream.write("\r" + " " * 79 + "\r")
            self.stream.flush()

"""The build's steps, in order: the one list `doit` (default tasks) and `build()` both run.

Kept free of imports so that dodo.py can read it on a no-op run.
"""

from __future__ import annotations

STEPS = ("extract", "scan", "captions", "table", "dataloader", "summary")

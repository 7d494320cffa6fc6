"""The one batching helper: work and lookups go in lists of a bounded size."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TypeVar

T = TypeVar("T")


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """`items` in lists of at most `size` (itertools.batched arrives in Python 3.12)."""
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch

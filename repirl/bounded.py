"""An LRU bounded by the bytes its entries hold, not by how many there are (issue 22.3: a memo of 65,536 entries of
any size grew the service by 3.7 MB per refused request). The caller sizes each entry; an entry larger than a share
of the budget is not kept at all, so one huge value never flushes everything useful."""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from typing import Any, Hashable

_MISSING = object()


def str_bytes(text: str) -> int:
    """What a str object holds in CPython (header and 1, 2 or 4 bytes per character)."""
    return sys.getsizeof(text)


def ids_bytes(n: int) -> int:
    """A tuple of n token ids: 8 bytes per slot and an int object (28 bytes) per id above CPython's small ints."""
    return 56 + 36 * n


class ByteLRU:
    """Thread-safe. `put` refuses (returns False) an entry larger than `max_bytes / largest_share`."""

    def __init__(self, max_bytes: int, largest_share: int = 16):
        self.largest_share = max(1, largest_share)
        self.max_bytes = max_bytes
        self.largest = max_bytes // self.largest_share
        self.bytes = 0
        self._data: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Hashable, default: Any = None) -> Any:
        with self._lock:
            hit = self._data.get(key, _MISSING)
            if hit is _MISSING:
                return default
            self._data.move_to_end(key)
            return hit[0]

    def put(self, key: Hashable, value: Any, size: int) -> bool:
        if size > self.largest:
            return False
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._data[key] = (value, size)
            self.bytes += size
            self._evict()
        return True

    def resize(self, max_bytes: int) -> None:
        with self._lock:
            self.max_bytes, self.largest = max_bytes, max_bytes // self.largest_share
            self._evict()

    def _evict(self) -> None:
        while self.bytes > self.max_bytes:
            _, (_, evicted) = self._data.popitem(last=False)
            self.bytes -= evicted

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.bytes = 0

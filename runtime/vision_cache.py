"""A bounded LRU cache of vision rows, keyed by image content and the preprocessing that made them."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np
from PIL import Image


def image_key(image: Image.Image, preprocessing: str) -> str:
    """Same pixels + same encoder and preprocessing → same key (the file name or format do not matter)."""
    digest = hashlib.sha256()
    digest.update(preprocessing.encode())
    digest.update(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class VisionCache:
    """At most `max_entries` images and `max_bytes` of rows; least recently used leave first."""

    def __init__(self, max_entries: int = 64, max_bytes: int = 1 << 30) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._rows: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            rows = self._rows.get(key)
            if rows is None:
                self.misses += 1
                return None
            self._rows.move_to_end(key)
            self.hits += 1
            return rows

    def put(self, key: str, rows: np.ndarray) -> None:
        if self.max_entries <= 0 or rows.nbytes > self.max_bytes:
            return
        rows.setflags(write=False)  # shared between requests: nobody may edit them in place
        with self._lock:
            if key in self._rows:
                self._bytes -= self._rows.pop(key).nbytes
            self._rows[key] = rows
            self._bytes += rows.nbytes
            while len(self._rows) > self.max_entries or self._bytes > self.max_bytes:
                _, evicted = self._rows.popitem(last=False)
                self._bytes -= evicted.nbytes

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def nbytes(self) -> int:
        return self._bytes

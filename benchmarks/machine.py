"""How fast this machine can read memory with every core busy (the bound decode speed is compared with)."""

from __future__ import annotations

import threading
import time

import numpy as np


def read_bandwidth(threads: int, buffer_bytes: int = 256 << 20, seconds: float = 1.5) -> float:
    """Bytes/s read by `threads` threads at once, each summing its own buffer (numpy releases the GIL).

    One reader per core: a single-threaded loop understates what llama.cpp's threads pull together.
    The best of repeated rounds is the hardware limit we compare against.
    """
    buffers = [np.ones(buffer_bytes // 8, dtype=np.int64) for _ in range(threads)]
    for buffer in buffers:
        buffer.sum()  # fault the pages in before timing
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        barrier = threading.Barrier(threads + 1)
        workers = [threading.Thread(target=_read, args=(buffer, barrier)) for buffer in buffers]
        for worker in workers:
            worker.start()
        barrier.wait()
        start = time.perf_counter()
        for worker in workers:
            worker.join()
        best = max(best, threads * buffer_bytes / (time.perf_counter() - start))
    return best


def _read(buffer: np.ndarray, barrier: threading.Barrier) -> None:
    barrier.wait()
    np.bitwise_xor.reduce(buffer)  # integer reduction: no float dependency chain to bound it by compute

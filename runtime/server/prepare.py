"""Input preparation (fetching, PDF rendering, image decoding) under one total deadline per request.

Image work runs on its own small pool, `max_preparing` requests at a time, so a slow PDF or URL
delays only other image requests; text-only requests never come here. Files are decoded in worker
processes (exaone_edge/decode_process.py), one per preparation thread, killed at the deadline, so a
turn is given back on time even when a render could not be interrupted. A turn held by other work
that overran (a fetch block) is given back only when that work really ends, so the bound holds.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from exaone_edge.decode_process import DecodePool, ProcessLimits
from exaone_edge.errors import InputError


class DeadlineExceeded(InputError):
    """Preparing a request's images and pages took longer than its deadline (HTTP 408)."""


@dataclass(frozen=True)
class Deadline:
    """A total time budget, checked between steps (a page, a fetched block), since one step cannot be interrupted."""

    seconds: float
    at: float = field(default=0.0)

    def __post_init__(self) -> None:
        if not self.at:
            object.__setattr__(self, "at", time.monotonic() + self.seconds)

    def remaining(self) -> float:
        return max(self.at - time.monotonic(), 0.0)

    def check(self, doing: str) -> None:
        if time.monotonic() >= self.at:
            raise DeadlineExceeded(
                f"preparing the request's images took longer than the {self.seconds:g} s limit (stopped while {doing})",
                fix="Send fewer or smaller pages, or ask the operator to raise --prepare-timeout.",
            )


class Preparation:
    def __init__(self, concurrency: int, timeout_s: float, decode_limits: ProcessLimits = ProcessLimits()) -> None:
        self.timeout_s = timeout_s
        self.decoders = DecodePool(decode_limits)
        self._turns = asyncio.Semaphore(concurrency)
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="exaone-edge-prepare")
        self.running = 0

    async def run(self, function, *args):
        """`function(*args, deadline)` in the pool; DeadlineExceeded once the deadline passes, wherever it is."""
        deadline = Deadline(self.timeout_s)
        try:
            await asyncio.wait_for(self._turns.acquire(), deadline.remaining())
        except TimeoutError:
            raise DeadlineExceeded(
                f"the request waited {self.timeout_s:g} s for its turn to prepare images (other requests' images "
                "are being prepared)",
                fix="Retry later, or ask the operator to raise --max-preparing or --prepare-timeout.",
            ) from None
        self.running += 1
        future = asyncio.get_running_loop().run_in_executor(self._executor, function, *args, deadline)
        future.add_done_callback(self._done)
        try:
            return await asyncio.wait_for(asyncio.shield(future), deadline.remaining() + 0.05)
        except TimeoutError:
            deadline.check("preparing the request's images")
            raise

    def _done(self, future: asyncio.Future) -> None:
        self.running -= 1
        self._turns.release()
        if not future.cancelled():
            future.exception()  # retrieved: a late failure after the deadline answered is not logged as lost

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.decoders.close()

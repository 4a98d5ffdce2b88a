"""One engine behind a bounded queue: `parallel` generations run, `max_queue` wait, the rest get 429.

Each running generation has a worker thread (the engine batches their decode steps); chunks cross to
the event loop through an asyncio queue. When the consumer stops early (client gone), its stop event
is set: the engine notices it between images, while waiting for a slot, between prefill batches or at
the next token, and frees the slot.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from exaone_edge.runtime.generation import Chunk, GenerationParams
from exaone_edge.runtime.server.errors import QueueFull

_END = object()


class Ticket:
    """A queue slot, held from admission until the response is finished; release is idempotent."""

    def __init__(self, worker: EngineWorker) -> None:
        self._worker = worker
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._worker.admitted -= 1


class EngineWorker:
    def __init__(self, engine: Any, max_queue: int, parallel: int = 1) -> None:
        self.engine = engine
        self.parallel = parallel
        self.capacity = max_queue + parallel  # the running requests plus the waiting ones
        self.admitted = 0  # changed on the event loop thread only
        self.running = 0  # changed by the generation threads, under _count_lock
        self.started = 0  # generations that reached the engine (a request that left while queued never does)
        self._count_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="exaone-edge-generate")

    @property
    def waiting(self) -> int:
        return max(self.admitted - self.running, 0)

    def admit(self) -> Ticket:
        if self.admitted >= self.capacity:
            raise QueueFull(
                f"the server is busy ({self.capacity - self.parallel} requests already waiting)",
                fix="Retry after a few seconds.",
            )
        self.admitted += 1
        return Ticket(self)

    async def run_blocking(self, function, *args):
        """Blocking preparation (image decoding, prompt checks) off the event loop, beside generation."""
        return await asyncio.get_running_loop().run_in_executor(None, function, *args)

    async def stream(self, messages: Sequence[Mapping[str, Any]], params: GenerationParams) -> AsyncIterator[Chunk]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def put(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop has closed (server shutting down)
                stop.set()

        def work() -> None:
            if stop.is_set():  # the client left while waiting in the queue
                put(_END)
                return
            with self._count_lock:
                self.running += 1
                self.started += 1
            chunks = self.engine.generate(messages, params, cancel=stop)  # seen in vision, slot wait and prefill too
            try:
                for chunk in chunks:
                    put(chunk)
                    if stop.is_set():
                        break
            except Exception as exc:  # handed to the request, which maps it to an HTTP error
                put(exc)
            finally:
                chunks.close()
                with self._count_lock:
                    self.running -= 1
                put(_END)

        loop.run_in_executor(self._executor, work)
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            stop.set()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

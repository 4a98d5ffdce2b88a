"""Continuous batching over one llama.cpp context: each running generation owns a sequence (a slot).

A step admits waiting requests into free slots (prefill, first token sampled at once, since the next
batch overwrites the logits), then decodes the pending token of every running request in ONE
`llama_decode`, so the weights are read once for all of them, and samples each from its own row.

There is no thread of its own (lock-step): a caller that wants its request's next token and finds
none queued takes the lock and runs one step for everyone; the others' tokens wait in their queues.
A request is cancelled (its slot freed at once) when its consumer stops early.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from exaone_edge.runtime.llama import LlamaContext, PrefillStats, Sampler, Segment, prompt_keys

_DONE = object()


@dataclass(eq=False)
class Request:
    """What the scheduler decodes for one generation; after `Scheduler.tokens` ends, the outcome fields are set."""

    segments: Sequence[Segment]
    sampling: dict[str, Any] = field(default_factory=dict)  # Sampler keywords: temperature, top_k, top_p, min_p, seed
    max_tokens: int = 1
    ignore_eos: bool = False
    stop_ids: frozenset[int] = frozenset()
    logits_only: bool = False  # prefill, keep the next-token logits, generate nothing
    # -- outcome ------------------------------------------------------------------------------
    stats: PrefillStats | None = None
    prefill_s: float = 0.0
    finish_reason: str | None = None  # "stop" or "length"
    logits: np.ndarray | None = None
    # -- scheduler state ----------------------------------------------------------------------
    events: deque = field(default_factory=deque)  # tokens, then _DONE, or an exception
    slot: int | None = None
    sampler: Sampler | None = None
    pending: int | None = None  # sampled, not yet decoded
    produced: int = 0


class Scheduler:
    def __init__(self, llama: LlamaContext) -> None:
        self.llama = llama
        self._lock = threading.Lock()
        self._waiting: deque[Request] = deque()
        self._slots: list[Request | None] = [None] * llama.n_seq
        self._last_used = [0] * llama.n_seq
        self._clock = 0

    @property
    def running(self) -> int:
        return sum(request is not None for request in self._slots)

    def submit(self, request: Request) -> Request:
        with self._lock:
            self._waiting.append(request)
        return request

    def tokens(self, request: Request) -> Iterator[int]:
        """The request's tokens as they are sampled; errors from its prefill or decoding are raised here."""
        while True:
            while request.events:
                item = request.events.popleft()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
            with self._lock:
                if request.events:
                    continue
                if request.slot is None and request not in self._waiting:
                    raise RuntimeError("the request is neither waiting nor running")  # cancelled, or never submitted
                self._step()

    def cancel(self, request: Request) -> None:
        """Stop a request wherever it is; its slot is free for the next one (idempotent)."""
        with self._lock:
            if request in self._waiting:
                self._waiting.remove(request)
            self._release(request)

    def close(self) -> None:
        """Close the llama.cpp context once no step is running; requests still queued then fail."""
        with self._lock:
            self.llama.close()

    # -- one step ------------------------------------------------------------------------------

    def _step(self) -> None:
        self._admit()
        running = [r for r in self._slots if r is not None and r.pending is not None]
        if not running:
            return
        try:
            self.llama.decode_step([(r.slot, r.pending) for r in running])
        except Exception as exc:  # every sequence in the batch is lost
            for request in running:
                self._fail(request, exc)
            return
        for index, request in enumerate(running):
            self._accept(request, request.sampler.sample(index))

    def _admit(self) -> None:
        while self._waiting and None in self._slots:
            request = self._waiting.popleft()
            slot = self._choose_slot(request)
            self._slots[slot], request.slot = request, slot
            self._clock += 1
            self._last_used[slot] = self._clock
            started = time.perf_counter()
            try:
                request.stats = self.llama.prefill(request.segments, slot)
                request.prefill_s = time.perf_counter() - started
                if request.logits_only:
                    request.logits = self.llama.logits()
                    self._finish(request, None)
                    continue
                request.sampler = self.llama.sampler(**request.sampling)
                self._accept(request, request.sampler.sample())
            except Exception as exc:  # the request's own error (prompt too long, decode failed): only it fails
                self._fail(request, exc)

    def _choose_slot(self, request: Request) -> int:
        """The free slot holding most of this prompt, else the least recently used one (as llama.cpp's server).

        A short shared head (the chat template's first tokens) is not worth evicting another conversation for.
        """
        free = [slot for slot, holder in enumerate(self._slots) if holder is None]
        if len(free) == 1:
            return free[0]
        keys: list[Hashable] = prompt_keys(request.segments)
        best = max(free, key=lambda slot: self.llama.reusable(slot, keys))
        if 2 * self.llama.reusable(best, keys) >= len(keys):
            return best
        return min(free, key=lambda slot: self._last_used[slot])

    def _accept(self, request: Request, token: int) -> None:
        if not request.ignore_eos and (token in request.stop_ids or self.llama.is_end_of_generation(token)):
            self._finish(request, "stop")
            return
        request.events.append(token)
        request.produced += 1
        if request.produced >= request.max_tokens or self.llama.length(request.slot) >= self.llama.n_ctx:
            self._finish(request, "length")
        else:
            request.pending = token

    def _finish(self, request: Request, reason: str | None) -> None:
        request.finish_reason = reason
        request.events.append(_DONE)
        self._release(request)

    def _fail(self, request: Request, exc: Exception) -> None:
        request.events.append(exc)
        self._release(request)

    def _release(self, request: Request) -> None:
        if request.sampler is not None:
            request.sampler.close()
            request.sampler = None
        if request.slot is not None and self._slots[request.slot] is request:
            self._slots[request.slot] = None  # the sequence keeps its cache, for prefix reuse
        request.slot = request.pending = None

"""Continuous batching over one llama.cpp context: each running generation owns a sequence (a slot).

One decode thread owns the context. Each step it frees the slots of cancelled requests, admits
waiting requests into free slots (prefill, first token sampled at once, since the next batch
overwrites the logits), then decodes the pending token of every running request in ONE
`llama_decode`, so the weights are read once for all of them, and samples each from its own row.
With a `Speculation` (runtime/drafting.py, --draft) a step instead drafts k tokens per request and verifies them
all in that one decode. Callers submit requests and read their tokens from a queue.

Why one thread: ggml's CPU backend runs on OpenMP, which keeps a thread team per calling thread;
decoding from several threads leaves several teams spinning on the same cores (3-5x slower here).

If that thread ever dies (a bug that escapes a request's own error handling), every request gets
`DecoderDied`, `failure` is set and `died` fires: the context's state is unknown, so nothing more is
decoded; the server answers 503 and exits so that a supervisor starts a fresh process.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from exaone_edge.llama_context import LlamaContext, PrefillStats, PrefillStopped, Segment, prompt_keys
from exaone_edge.llama_sampler import Sampler
from exaone_edge.runtime.drafting import Speculation
from exaone_edge.runtime.generation import TokenLogprob

_DONE = object()
POLL_S = 0.05  # how often a waiting consumer looks at its cancel event and at the decode thread's health
log = logging.getLogger("exaone_edge.engine")


class DecoderDied(RuntimeError):
    """The decode thread is gone; this engine cannot generate any more."""


@dataclass(eq=False)
class Request:
    """What the scheduler decodes for one generation; once `Scheduler.tokens` ends, the outcome fields are set."""

    segments: Sequence[Segment]
    sampling: dict[str, Any] = field(default_factory=dict)  # Sampler keywords: temperature, top_k, top_p, min_p, seed
    max_tokens: int = 1
    ignore_eos: bool = False
    stop_ids: frozenset[int] = frozenset()
    logits_only: bool = False  # prefill, keep the next-token logits, generate nothing
    top_logprobs: int | None = None  # record each sampled token's log-probability (and the n most likely)
    # -- outcome ------------------------------------------------------------------------------
    stats: PrefillStats | None = None
    prefill_s: float = 0.0
    finish_reason: str | None = None  # "stop" or "length"
    logits: np.ndarray | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)  # appended before the token is put in `events`
    # -- scheduler state (the decode thread's, except the two flags) ---------------------------
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)  # tokens, then _DONE or an exception
    cancelled: bool = False
    released: threading.Event = field(default_factory=threading.Event)  # set once it holds no slot any more
    slot: int | None = None
    sampler: Sampler | None = None
    pending: int | None = None  # sampled, not yet decoded
    produced: int = 0
    drafted: int = 0  # draft tokens compared with the target's choice (--draft)
    accepted: int = 0  # of them, the ones it chose too


class Scheduler:
    def __init__(self, llama: LlamaContext, speculation: Speculation | None = None) -> None:
        self.llama = llama
        self.speculation = speculation
        self._lock = threading.Condition()  # guards _waiting and _closing; the decode thread sleeps on it
        self._waiting: deque[Request] = deque()
        self._closing = False
        self._thread: threading.Thread | None = None  # started by the first request
        self._slots: list[Request | None] = [None] * llama.n_seq  # the decode thread's
        self._last_used = [0] * llama.n_seq
        self._clock = 0
        self._failure: DecoderDied | None = None
        self.died = threading.Event()  # set once, when the decode thread has died

    @property
    def failure(self) -> DecoderDied | None:
        """Why the decode thread is gone (None while it is alive, or not started yet, or closed on purpose)."""
        thread = self._thread
        if self._failure is None and thread is not None and not thread.is_alive() and not self._closing:
            self._failure = DecoderDied("the decode thread stopped")
            self.died.set()
        return self._failure

    @property
    def running(self) -> int:
        return sum(request is not None for request in self._slots)

    def submit(self, request: Request) -> Request:
        with self._lock:
            if self._closing:
                raise RuntimeError("the engine is closed")
            if self.failure is not None:
                raise self.failure
            self._waiting.append(request)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="exaone-edge-decode", daemon=True)
                self._thread.start()
            self._lock.notify()
        return request

    def tokens(self, request: Request, cancel: threading.Event | None = None) -> Iterator[int]:
        """The request's tokens as they are sampled; errors from its prefill or decoding are raised here.

        Ends early, without error, once `cancel` is set (the caller then calls `cancel(request)`), and
        raises `DecoderDied` if the decode thread is gone, so no caller waits forever.
        """
        while True:
            try:
                item = request.events.get(timeout=POLL_S)
            except queue.Empty:
                if cancel is not None and cancel.is_set():
                    return
                if self.failure is not None and request.events.empty():
                    raise self.failure
                continue
            if cancel is not None and cancel.is_set():
                return
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def cancel(self, request: Request) -> None:
        """Stop a request wherever it is; returns once its slot is free (at most one step later). Idempotent."""
        with self._lock:
            if request in self._waiting:
                self._waiting.remove(request)
                return
            request.cancelled = True
        request.released.wait()

    def close(self) -> None:
        """Stop the decode thread after its current step, fail what is left, free the llama.cpp context."""
        with self._lock:
            self._closing = True
            self._lock.notify()
            left = list(self._waiting)
            self._waiting.clear()
        if self._thread is not None:
            self._thread.join()
        for request in left + [r for r in self._slots if r is not None]:
            self._fail(request, RuntimeError("the engine was closed"))
        self.llama.close()

    # -- the decode thread ---------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while True:
                with self._lock:
                    while not (self._closing or self._waiting or self.running):
                        self._lock.wait()
                    if self._closing:
                        return
                try:
                    self._step()
                except Exception as exc:  # a bug, not a request's error: fail everyone rather than hang them
                    for request in [r for r in self._slots if r is not None]:
                        self._fail(request, exc)
        except BaseException as exc:  # noqa: BLE001 — the thread is dying: tell every caller, then stop
            self._die(exc)

    def _die(self, exc: BaseException) -> None:
        log.critical("the decode thread died; no request can be decoded any more", exc_info=exc)
        failure = DecoderDied("the decoder stopped after an internal error; the server must be restarted")
        failure.__cause__ = exc
        with self._lock:
            self._failure = failure
            left = list(self._waiting)
            self._waiting.clear()
        for request in left + [r for r in self._slots if r is not None]:
            try:
                self._fail(request, failure)
            except BaseException:  # noqa: BLE001 — best effort: the others must still hear of it
                request.released.set()
                request.events.put(failure)
        self.died.set()

    def _step(self) -> None:
        for request in self._slots:
            if request is not None and request.cancelled:
                self._release(request)
        while None in self._slots:
            with self._lock:
                if not self._waiting:
                    break
                request = self._waiting.popleft()
            self._admit(request)
        running = [r for r in self._slots if r is not None]
        if not running:
            return
        try:
            if self.speculation is not None and self.speculation.step(running, self._accept):
                return
            self.llama.decode_step([(r.slot, r.pending) for r in running])
        except Exception as exc:  # every sequence in the batch is lost (its cache may hold unverified rows)
            for request in running:
                if request.slot is not None:
                    self.llama.reset(request.slot)
                    self._fail(request, exc)
            return
        for index, request in enumerate(running):
            self._accept(request, request.sampler.sample(index), index)

    def _admit(self, request: Request) -> None:
        try:
            slot = self._choose_slot(request)
        except Exception as exc:  # popped from the queue, not in a slot: fail it here or its caller waits forever
            self._fail(request, exc)
            return
        self._slots[slot], request.slot = request, slot
        self._clock += 1
        self._last_used[slot] = self._clock
        started = time.perf_counter()
        try:
            request.stats = self.llama.prefill(request.segments, slot, stop=lambda: request.cancelled)
            request.prefill_s = time.perf_counter() - started
            if request.logits_only:
                request.logits = self.llama.logits()
                self._finish(request, None)
                return
            request.sampler = self.llama.sampler(**request.sampling)
            self._accept(request, request.sampler.sample(), -1)
        except PrefillStopped:  # its caller left during the prefill
            self._finish(request, None)
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

    def _accept(self, request: Request, token: int, row: int) -> None:
        if request.top_logprobs is not None:  # now: the next batch overwrites this logits row
            request.logprobs.append(token_logprob(self.llama.logits(row), token, request.top_logprobs))
        if not request.ignore_eos and (token in request.stop_ids or self.llama.is_end_of_generation(token)):
            self._finish(request, "stop")
            return
        request.produced += 1
        if request.produced >= request.max_tokens or self.llama.length(request.slot) >= self.llama.n_ctx:
            request.events.put(token)
            self._finish(request, "length")
        else:
            request.pending = token
            request.events.put(token)

    def _finish(self, request: Request, reason: str | None) -> None:
        request.finish_reason = reason
        self._release(request)  # before _DONE: whoever sees the end sees the slot free
        request.events.put(_DONE)

    def _fail(self, request: Request, exc: Exception) -> None:
        self._release(request)
        request.events.put(exc)

    def _release(self, request: Request) -> None:
        if request.sampler is not None:
            request.sampler.close()
            request.sampler = None
        if request.slot is not None and self._slots[request.slot] is request:
            self._slots[request.slot] = None  # the sequence keeps its cache, for prefix reuse
        request.slot = request.pending = None
        request.released.set()


def token_logprob(logits: np.ndarray, token: int, top: int) -> TokenLogprob:
    """`token`'s log-probability under softmax(`logits`), and the `top` most likely tokens'."""
    row = np.asarray(logits, dtype=np.float64)
    peak = row.max()
    log_total = peak + np.log(np.exp(row - peak).sum())
    best = np.argpartition(-row, top)[:top] if 0 < top < row.size else np.arange(row.size if top else 0)
    best = best[np.argsort(-row[best], kind="stable")]
    return TokenLogprob(token, float(row[token] - log_total), tuple((int(i), float(row[i] - log_total)) for i in best))

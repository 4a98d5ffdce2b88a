"""One llama.cpp model and context, driven through llama-cpp-python's low-level API.

A prompt is a list of segments: token ids, or embedding rows (the vision encoder's output). They go
into one sequence in order, tokens and embeddings in separate batches (llama.cpp cannot mix them).
The context holds `n_seq` sequences (slots), each with its own KV cache of `n_ctx` positions (llama.cpp's
non-unified cache), so `decode_step` can advance several generations in one `llama_decode`.
Each sequence remembers what it has decoded, one key per position, so its next prompt only decodes
what differs from the longest common prefix (`llama_memory_seq_rm` drops the rest).
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exaone_edge.errors import ArtifactError, InputError

KV_TYPES = {"f32": 0, "f16": 1, "q8_0": 8, "q4_0": 2}  # ggml_type ids
_backend_lock = threading.Lock()
_backend_ready = False


@dataclass(frozen=True)
class TextSegment:
    ids: Sequence[int]


@dataclass(frozen=True)
class EmbeddingSegment:
    key: Hashable  # identifies the rows' content (image hash + preprocessing) for prefix reuse
    rows: np.ndarray  # [n, n_embd] float32


Segment = TextSegment | EmbeddingSegment


@dataclass(frozen=True)
class LlamaOptions:
    n_ctx: int = 8192
    n_gpu_layers: int = -1  # -1: every layer (when llama.cpp was built with a GPU backend)
    n_threads: int | None = None  # None: all cores
    n_batch: int = 512
    flash_attn: bool | None = None  # None: llama.cpp decides
    kv_type: str = "f16"
    swa_full: bool = False  # full-size sliding-window cache: more memory, prefix reuse at any distance
    n_seq: int = 1  # sequences decoded together; each gets its own n_ctx positions (memory grows n_seq-fold)
    verbose: bool = False


@dataclass(frozen=True)
class PrefillStats:
    positions: int  # prompt length
    reused: int  # positions kept from the previous prompt
    decoded: int  # positions decoded now


class PrefillStopped(Exception):
    """A prefill was stopped between batches because its request was cancelled."""


def _init_backend(verbose: bool) -> None:
    global _backend_ready, _log_callback
    import llama_cpp

    with _backend_lock:
        if _backend_ready:
            return
        if not verbose:
            # llama.cpp logs every tensor at load; keep stderr for our own progress lines.
            _log_callback = llama_cpp.llama_log_callback(lambda level, text, data: None)
            llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        _backend_ready = True


_log_callback = None  # kept alive: llama.cpp holds the pointer


class LlamaContext:
    def __init__(self, gguf_path: Path, options: LlamaOptions = LlamaOptions()) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self.options = options
        if not 1 <= options.n_seq <= options.n_batch:
            raise InputError(f"{options.n_seq} parallel sequences: use 1 to {options.n_batch} (the batch size)")
        if options.kv_type not in KV_TYPES:
            raise InputError(f"KV cache type {options.kv_type!r} is not one of {', '.join(KV_TYPES)}")
        _init_backend(options.verbose)
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = options.n_gpu_layers
        self._model = llama_cpp.llama_model_load_from_file(str(gguf_path).encode(), model_params)
        if not self._model:
            raise ArtifactError("llama.cpp could not load the decoder", path=gguf_path, fix="Re-create the bundle.")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.n_embd = llama_cpp.llama_model_n_embd(self._model)
        self.n_swa = llama_cpp.llama_model_n_swa(self._model)
        threads = options.n_threads or os.cpu_count() or 1
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = options.n_ctx * options.n_seq
        params.n_batch = params.n_ubatch = options.n_batch
        params.n_seq_max = options.n_seq
        params.kv_unified = False  # one cache per sequence: n_ctx each, attention reads only its own
        params.n_threads = params.n_threads_batch = threads
        params.type_k = params.type_v = KV_TYPES[options.kv_type]
        params.swa_full = options.swa_full
        params.flash_attn_type = {None: -1, False: 0, True: 1}[options.flash_attn]
        self._ctx = llama_cpp.llama_init_from_model(self._model, params)
        if not self._ctx:
            llama_cpp.llama_model_free(self._model)
            raise InputError(
                f"llama.cpp could not create a context of {options.n_seq} × {options.n_ctx} tokens",
                fix="Lower the context length or the KV cache precision, or free GPU memory.",
            )
        self.n_seq = options.n_seq
        self.n_ctx = llama_cpp.llama_n_ctx_seq(self._ctx)  # per sequence (llama.cpp rounds up to 256)
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._tokens = llama_cpp.llama_batch_init(options.n_batch, 0, 1)
        self._embeds = llama_cpp.llama_batch_init(options.n_batch, self.n_embd, 1)
        self._keys: list[list[Hashable]] = [[] for _ in range(self.n_seq)]  # what each position holds, per sequence

    # -- prompt --------------------------------------------------------------------------------

    def prefill(self, segments: Sequence[Segment], seq: int = 0, *, stop: Callable[[], bool] | None = None) -> PrefillStats:
        """Make sequence `seq` equal to `segments`, reusing the common prefix; logits end up at the last position.

        `stop` is asked before each batch: when it answers True the prefill raises `PrefillStopped` (the
        sequence is forgotten), so a request whose client left does not hold the context for its whole prompt.
        """
        self._require_open()
        keys = prompt_keys(segments)
        if not keys:
            raise InputError("the prompt is empty")
        if len(keys) >= self.n_ctx:
            from exaone_edge.runtime.generation import PromptTooLong

            raise PromptTooLong(
                f"the prompt takes {len(keys)} positions, the context holds {self.n_ctx}",
                fix="Ask about fewer pages or a shorter conversation, or load the engine with a larger context.",
            )
        keep = self.reusable(seq, keys)
        keep = min(keep, len(keys) - 1)  # the last position is always decoded again, for its logits
        keep = self._truncate(seq, keep)
        position = 0
        try:
            for segment in segments:
                length = len(segment.ids) if isinstance(segment, TextSegment) else len(segment.rows)
                start = max(keep - position, 0)
                if start < length:
                    last = position + length == len(keys)
                    if isinstance(segment, TextSegment):
                        self._decode_tokens(list(segment.ids)[start:], position + start, seq, logits_last=last, stop=stop)
                    else:
                        self._decode_embeddings(segment.rows[start:], position + start, seq, logits_last=last, stop=stop)
                position += length
        except BaseException:
            self.reset(seq)  # the cache holds part of this prompt: forget it rather than trust it
            raise
        self._keys[seq] = keys
        return PrefillStats(positions=len(keys), reused=keep, decoded=len(keys) - keep)

    def append(self, token: int, seq: int = 0) -> None:
        """Decode one generated token at the end of sequence `seq`."""
        self.decode_step([(seq, token)])

    def decode_step(self, steps: Sequence[tuple[int, int]]) -> None:
        """One token at the end of each listed sequence, all in one batch; logits row i belongs to steps[i]."""
        self._require_open()
        if any(len(self._keys[seq]) >= self.n_ctx for seq, _ in steps):
            raise InputError("the context is full")
        batch = self._tokens
        for i, (seq, token) in enumerate(steps):
            batch.token[i] = token
            self._place(batch, i, len(self._keys[seq]), seq)
            batch.logits[i] = 1
        batch.n_tokens = len(steps)
        try:
            self._decode(batch)
        except BaseException:
            for seq, _ in steps:
                self.reset(seq)
            raise
        for seq, token in steps:
            self._keys[seq].append(token)

    def length(self, seq: int = 0) -> int:
        """Positions sequence `seq` holds."""
        return len(self._keys[seq])

    @property
    def n_past(self) -> int:
        return self.length(0)

    def reusable(self, seq: int, keys: Sequence[Hashable]) -> int:
        """Positions of `keys` that sequence `seq` already holds (before any sliding-window fallback)."""
        return _common_prefix(self._keys[seq], keys)

    def reset(self, seq: int | None = None) -> None:
        """Forget sequence `seq`, or every sequence."""
        if seq is None:
            self._lib.llama_memory_clear(self._memory, True)
            self._keys = [[] for _ in range(self.n_seq)]
        else:
            self._lib.llama_memory_seq_rm(self._memory, seq, -1, -1)
            self._keys[seq] = []

    # -- output --------------------------------------------------------------------------------

    def logits(self, index: int = -1) -> np.ndarray:
        """Logits row `index` of the last batch (-1: its last)."""
        pointer = self._lib.llama_get_logits_ith(self._ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    def is_end_of_generation(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))

    def sampler(self, *, temperature: float, top_k: int, top_p: float, min_p: float, seed: int) -> Sampler:
        self._require_open()
        return Sampler(self, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed)

    def close(self) -> None:
        lib = self._lib
        if getattr(self, "_ctx", None):
            lib.llama_batch_free(self._tokens)
            lib.llama_batch_free(self._embeds)
            lib.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            lib.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may already be gone
            pass

    # -- internals -----------------------------------------------------------------------------

    def _require_open(self) -> None:
        if not getattr(self, "_ctx", None):
            raise RuntimeError("the llama.cpp context is closed")  # a programming error, not bad input

    def _truncate(self, seq: int, keep: int) -> int:
        """Drop positions ≥ keep; fall back to an empty sequence when llama.cpp cannot keep the prefix."""
        if keep == len(self._keys[seq]):
            return keep
        lib = self._lib
        # A sliding-window cache evicts old positions as the sequence grows; the next position needs
        # the n_swa before it. Ask before removing anything: afterwards an emptied cache reports -1.
        pos_min = lib.llama_memory_seq_pos_min(self._memory, seq)
        ok = not (self.n_swa > 0 and pos_min > max(0, keep - self.n_swa))
        ok = ok and keep > 0 and lib.llama_memory_seq_rm(self._memory, seq, keep, -1)
        if not ok:
            lib.llama_memory_seq_rm(self._memory, seq, -1, -1)
            keep = 0
        self._keys[seq] = self._keys[seq][:keep]
        return keep

    def _decode_tokens(self, ids: list[int], position: int, seq: int, *, logits_last: bool, stop=None) -> None:
        batch = self._tokens
        for offset in range(0, len(ids), self.options.n_batch):
            if stop is not None and stop():
                raise PrefillStopped()
            chunk = ids[offset : offset + self.options.n_batch]
            for i, token in enumerate(chunk):
                batch.token[i] = token
                self._place(batch, i, position + offset + i, seq)
            final = offset + len(chunk) == len(ids)
            batch.logits[len(chunk) - 1] = 1 if (final and logits_last) else 0
            batch.n_tokens = len(chunk)
            self._decode(batch)

    def _decode_embeddings(self, rows: np.ndarray, position: int, seq: int, *, logits_last: bool, stop=None) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.n_embd:
            raise ArtifactError(
                f"vision rows have shape {rows.shape}, the decoder expects width {self.n_embd}",
                fix="The vision encoder and the decoder come from different models; re-create the bundle.",
            )
        batch = self._embeds
        for offset in range(0, len(rows), self.options.n_batch):
            if stop is not None and stop():
                raise PrefillStopped()
            chunk = rows[offset : offset + self.options.n_batch]
            ctypes.memmove(batch.embd, chunk.ctypes.data, chunk.nbytes)
            for i in range(len(chunk)):
                self._place(batch, i, position + offset + i, seq)
            final = offset + len(chunk) == len(rows)
            batch.logits[len(chunk) - 1] = 1 if (final and logits_last) else 0
            batch.n_tokens = len(chunk)
            self._decode(batch)

    @staticmethod
    def _place(batch, i: int, position: int, seq: int) -> None:
        batch.pos[i] = position
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = 0

    def _decode(self, batch) -> None:
        status = self._lib.llama_decode(self._ctx, batch)
        if status != 0:  # the caller forgets the sequences involved: their cache is in an unknown state
            raise InputError(
                f"llama_decode failed (status {status}): out of KV cache space or memory",
                fix="Use a larger context or fewer images.",
            )


class Sampler:
    """llama.cpp's sampler chain: top-k → top-p → min-p → temperature → draw, or greedy argmax."""

    def __init__(self, llama: LlamaContext, *, temperature: float, top_k: int, top_p: float, min_p: float, seed: int):
        lib = llama._lib
        self._lib, self._ctx = lib, llama._ctx
        self._chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        stages = []
        if temperature <= 0.0:
            stages.append(lib.llama_sampler_init_greedy())
        else:
            if top_k > 0:
                stages.append(lib.llama_sampler_init_top_k(top_k))
            if top_p < 1.0:
                stages.append(lib.llama_sampler_init_top_p(top_p, 1))
            if min_p > 0.0:
                stages.append(lib.llama_sampler_init_min_p(min_p, 1))
            stages.append(lib.llama_sampler_init_temp(temperature))
            stages.append(lib.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        for stage in stages:
            lib.llama_sampler_chain_add(self._chain, stage)  # the chain owns and frees its stages

    def sample(self, index: int = -1) -> int:
        """Draw from logits row `index` of the last batch; llama_sampler_sample also accepts the token into the chain."""
        return int(self._lib.llama_sampler_sample(self._chain, self._ctx, index))

    def close(self) -> None:
        if self._chain:
            self._lib.llama_sampler_free(self._chain)
            self._chain = None

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def prompt_keys(segments: Sequence[Segment]) -> list[Hashable]:
    keys: list[Hashable] = []
    for segment in segments:
        if isinstance(segment, TextSegment):
            keys.extend(int(token) for token in segment.ids)
        else:
            keys.extend((segment.key, row) for row in range(len(segment.rows)))
    return keys


def _common_prefix(old: list[Hashable], new: list[Hashable]) -> int:
    length = min(len(old), len(new))
    for i in range(length):
        if old[i] != new[i]:
            return i
    return length

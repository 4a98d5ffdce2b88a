"""llama.cpp contexts over a `Model`: batches, segments, decode, prefix reuse and sampling.

A prompt is a list of segments: token ids, or embedding rows (the vision encoder's output). They go
into one sequence in order, tokens and embeddings in separate batches (llama.cpp cannot mix them),
positions counting on across segments (EXAONE 4.5 uses 1-D positions).
A context holds `n_seq` sequences (slots), each with its own KV cache of `n_ctx` positions (llama.cpp's
non-unified cache), so `decode_step` can advance several generations in one `llama_decode`. Each
sequence remembers what it has decoded, one key per position, so its next prompt only decodes what
differs from the longest common prefix (`llama_memory_seq_rm` drops the rest). `evaluate` instead
decodes a whole prompt from an empty sequence with logits at every position (imatrix, KL, parity).
With `mtp`, an MTP context (exaone_edge/llama_mtp.py) follows every sequence for speculative decoding: `verify`
decodes a sequence's drafts with logits on every row and `keep` removes the rows that were not accepted.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exaone_edge.budgets import UBATCH
from exaone_edge.errors import ArtifactError, InputError
from exaone_edge.interrupts import held_interrupt
from exaone_edge.llama import ALL_LAYERS, KV_TYPES, Model, Owned, log_mark, log_since
from exaone_edge.llama_mtp import MtpContext
from exaone_edge.llama_sampler import Sampler


@dataclass(frozen=True)
class TextSegment:
    ids: Sequence[int]


@dataclass(frozen=True)
class EmbeddingSegment:
    key: Hashable  # identifies the rows' content (image hash + preprocessing) for prefix reuse
    rows: np.ndarray  # [n, n_embd] float32


Segment = TextSegment | EmbeddingSegment


def _parts(segment) -> tuple[bool, Sequence[int] | np.ndarray]:
    """(is_embedding, data) of a typed segment, or of a raw one (token ids, or float rows [n, n_embd])."""
    if isinstance(segment, TextSegment):
        return False, list(segment.ids)
    if isinstance(segment, EmbeddingSegment):
        return True, segment.rows
    if isinstance(segment, np.ndarray) and segment.ndim == 2:
        return True, segment
    return False, [int(token) for token in segment]


@dataclass(frozen=True)
class LlamaOptions:
    n_ctx: int = 8192
    n_gpu_layers: int = ALL_LAYERS  # placed on the GPU only when llama.cpp has a GPU backend
    n_threads: int | None = None  # None: all cores
    n_batch: int = UBATCH
    flash_attn: bool | None = None  # None: llama.cpp decides; on CPU it computes in F16 (parity: off)
    kv_type: str = "f16"
    swa_full: bool = False  # full-size sliding-window cache: more memory, prefix reuse at any distance
    n_seq: int = 1  # sequences decoded together; each gets its own n_ctx positions (memory grows n_seq-fold)
    verbose: bool = False
    mtp: bool = False  # load the MTP head and keep an MTP context beside the target (--draft mtp)
    image_token: int = 0  # what the MTP head reads at image positions (<|image_pad|>)


# Reference runs (imatrix, KL, parity): flash attention off and an F32 KV cache (the F16 cache alone moves logits ~1e-3).
def reference_options(n_ctx: int, *, n_gpu_layers: int = 0, n_threads: int | None = None, n_batch: int = UBATCH) -> LlamaOptions:
    return LlamaOptions(n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, n_threads=n_threads, n_batch=min(n_batch, n_ctx),
                        flash_attn=False, kv_type="f32")


@dataclass(frozen=True)
class PrefillStats:
    positions: int  # prompt length
    reused: int  # positions kept from the previous prompt
    decoded: int  # positions decoded now


class PrefillStopped(Exception):
    """A prefill was stopped between batches because its request was cancelled."""


def context_params(lib, options: LlamaOptions, cb_eval=None):
    """llama_context_params for `options`; with no layer on the GPU, no op offload either (see llama.model_params)."""
    params = lib.llama_context_default_params()
    params.n_ctx = options.n_ctx * options.n_seq
    params.n_batch = params.n_ubatch = options.n_batch
    params.n_seq_max = options.n_seq
    params.kv_unified = False  # one cache per sequence: n_ctx each, attention reads only its own
    params.n_threads = params.n_threads_batch = options.n_threads or os.cpu_count() or 1
    params.type_k = params.type_v = KV_TYPES[options.kv_type].ggml_type
    params.swa_full = options.swa_full
    params.flash_attn_type = {None: -1, False: 0, True: 1}[options.flash_attn]
    params.op_offload = options.n_gpu_layers != 0
    if cb_eval is not None:
        params.cb_eval, params.cb_eval_user_data = cb_eval, None
    return params


class LlamaContext(Owned):
    """A model and one context over it; `cb_eval` (a ggml eval callback) sees every tensor computed."""

    def __init__(self, gguf_path: Path, options: LlamaOptions = LlamaOptions(), *, cb_eval=None) -> None:
        if not 1 <= options.n_seq <= options.n_batch:
            raise InputError(f"{options.n_seq} parallel sequences: use 1 to {options.n_batch} (the batch size)")
        if options.kv_type not in KV_TYPES:
            raise InputError(f"KV cache type {options.kv_type!r} is not one of {', '.join(KV_TYPES)}")
        self.options = options
        self.model = Model(gguf_path, n_gpu_layers=options.n_gpu_layers, verbose=options.verbose, load_mtp=options.mtp)
        lib = self._lib = self.model._lib
        self.n_vocab, self.n_embd, self.n_swa = self.model.n_vocab, self.model.n_embd, self.model.n_swa
        self._cb = None if cb_eval is None else lib.ggml_backend_sched_eval_callback(cb_eval)  # kept alive with us
        mark = log_mark()
        with held_interrupt():
            self._ctx = lib.llama_init_from_model(self.model._model, context_params(lib, options, self._cb))
        if not self._ctx:
            self.model.close()
            said = "".join(f" (llama.cpp: {line})" for line in log_since(mark)[-1:])
            raise InputError(f"llama.cpp could not create a context of {options.n_seq} × {options.n_ctx} tokens{said}",
                             fix="Lower the context length (or --ctx auto) or the KV cache precision, or free GPU memory.")
        self.n_seq = options.n_seq
        self.n_ctx = lib.llama_n_ctx_seq(self._ctx)  # per sequence (llama.cpp rounds up to 256)
        self._memory = lib.llama_get_memory(self._ctx)
        self._tokens = lib.llama_batch_init(options.n_batch, 0, 1)
        self._embeds = lib.llama_batch_init(options.n_batch, self.n_embd, 1)
        self._keys: list[list[Hashable]] = [[] for _ in range(self.n_seq)]  # what each position holds, per sequence
        self._verified: dict[int, tuple[int, list[int]]] = {}  # seq → (first batch row, tokens) of the last verify
        self.mtp: MtpContext | None = None
        if options.mtp:
            from llama_cpp import llama_cpp_ext

            self._ext = llama_cpp_ext
            llama_cpp_ext.llama_set_embeddings_nextn(self._ctx, True, False)  # every row's state, for the head
            try:
                self.mtp = MtpContext(self.model, context_params(lib, options), n_seq=self.n_seq,
                                      n_batch=options.n_batch, n_swa=self.n_swa, image_token=options.image_token)
            except BaseException:
                self.close()
                raise

    # -- prompts -------------------------------------------------------------------------------

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
            from exaone_edge.errors import PromptTooLong

            raise PromptTooLong(
                f"the prompt takes {len(keys)} positions, the context holds {self.n_ctx}",
                fix="Ask about fewer pages or a shorter conversation, or load the engine with a larger context.",
            )
        keep = min(self.reusable(seq, keys), len(keys) - 1)  # the last position is always decoded again, for its logits
        if self.mtp is not None:  # the head's row at `keep` reads the target's state at keep-1: decode that again
            self.mtp.flush([seq])
            keep = max(0, min(keep, self.reusable(seq, keys) - 1, self.mtp.held(seq) - 1))
        keep = self._truncate(seq, keep)
        position = 0
        try:
            for segment in segments:
                is_embd, data = _parts(segment)
                start = max(keep - position, 0)
                if start < len(data):
                    last = position + len(data) == len(keys)
                    self._decode_segment(is_embd, data[start:], position + start, seq, "last" if last else "none", stop)
                position += len(data)
        except BaseException:
            self.reset(seq)  # the cache holds part of this prompt: forget it rather than trust it
            raise
        self._keys[seq] = keys
        return PrefillStats(positions=len(keys), reused=keep, decoded=len(keys) - keep)

    def evaluate(self, segments: Sequence, on_logits: Callable[[int, np.ndarray], None] | None = None) -> int:
        """Decode a prompt into an emptied sequence 0 with logits at every position (so every layer sees every
        row); `on_logits(first_position, rows)` gets each batch's logits, a view valid during the call.
        Segments may be typed or raw (token ids, float rows). Returns the positions decoded."""
        self._require_open()
        self.reset()
        parts = [_parts(segment) for segment in segments]
        total = sum(len(data) for _, data in parts)
        if total > self.n_ctx:
            raise InputError(f"the prompt has {total} positions, the context holds {self.n_ctx}")
        position = 0
        for is_embd, data in parts:
            self._decode_segment(is_embd, data, position, 0, "all", on_logits=on_logits)
            position += len(data)
        self._keys[0] = [None] * position  # positions held; never matched by a prompt key
        return position

    def logits_all(self, segments: Sequence) -> np.ndarray:
        """Logits at every position of the prompt [n_positions, n_vocab], from an empty context."""
        out = np.empty((sum(len(data) for _, data in map(_parts, segments)), self.n_vocab), dtype=np.float32)
        self.evaluate(segments, lambda start, rows: out.__setitem__(slice(start, start + len(rows)), rows))
        return out

    def append(self, token: int, seq: int = 0) -> None:
        """Decode one generated token at the end of sequence `seq`."""
        self.decode_step([(seq, token)])

    def decode_step(self, steps: Sequence[tuple[int, int]]) -> None:
        """One token at the end of each listed sequence, all in one batch; logits row i belongs to steps[i]."""
        self.verify([(seq, [token]) for seq, token in steps])
        for seq, _ in steps:
            self.keep(seq, 1)

    def verify(self, steps: Sequence[tuple[int, Sequence[int]]]) -> list[int]:
        """Decode each listed sequence's tokens at its end in one batch with logits on every row; returns each step's
        first row. `keep(seq, n)` must follow for each. Every sequence brings as many tokens, so each lies in one
        llama.cpp micro-batch: a sliding-window cache then evicts only cells no later row of it can need."""
        self._require_open()
        if len({len(tokens) for _, tokens in steps}) != 1 or sum(len(t) for _, t in steps) > self.options.n_batch:
            raise RuntimeError("verify takes as many tokens for every sequence, a batch at most")  # a caller's bug
        if any(len(self._keys[seq]) + len(tokens) > self.n_ctx for seq, tokens in steps):
            raise InputError("the context is full")
        batch, rows, i = self._tokens, [], 0
        for seq, tokens in steps:
            rows.append(i)
            for j, token in enumerate(tokens):
                batch.token[i] = token
                _place(batch, i, len(self._keys[seq]) + j, seq, True)
                i += 1
        batch.n_tokens = i
        try:
            self._decode(batch)
        except BaseException:
            for seq, _ in steps:
                self.reset(seq)
            raise
        self._verified = {seq: (row, list(tokens)) for (seq, tokens), row in zip(steps, rows)}
        return rows

    def keep(self, seq: int, count: int) -> None:
        """Of sequence `seq`'s tokens in the last `verify`, the first `count` stay; the rest leave the KV cache
        (llama_memory_seq_rm)."""
        row, tokens = self._verified.pop(seq)
        first = len(self._keys[seq])
        if count < len(tokens) and not self._lib.llama_memory_seq_rm(self._memory, seq, first + count, -1):
            self.reset(seq)
            raise InputError("llama.cpp could not remove rejected draft tokens from the KV cache")
        self._keys[seq].extend(tokens[:count])
        if self.mtp is not None and count:
            self.mtp.follow(seq, first, tokens[:count], self._states(row, count))

    def length(self, seq: int = 0) -> int:
        """Positions sequence `seq` holds."""
        return len(self._keys[seq])

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
        if self.mtp is not None:
            self.mtp.reset(seq)

    # -- output and lifetime ---------------------------------------------------------------------

    def logits(self, index: int = -1) -> np.ndarray:
        """Logits row `index` of the last batch (-1: its last)."""
        pointer = self._lib.llama_get_logits_ith(self._ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    def is_end_of_generation(self, token: int) -> bool:
        return self.model.is_end_of_generation(token)

    def sampler(
        self, *, temperature: float, top_k: int, top_p: float, min_p: float, seed: int, grammar: str | None = None
    ) -> Sampler:
        self._require_open()
        return Sampler(self, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed, grammar=grammar)

    def check_grammar(self, grammar: str) -> None:
        """Raise InputError unless llama.cpp parses `grammar` (GBNF, rule `root`) against this vocabulary."""
        stage = self._lib.llama_sampler_init_grammar(self.model._vocab, grammar.encode("utf-8"), b"root")
        if not stage:
            raise InputError("grammar: llama.cpp could not parse it (GBNF with a 'root' rule)")
        self._lib.llama_sampler_free(stage)

    def close(self) -> None:
        if getattr(self, "mtp", None) is not None:
            self.mtp.close()
            self.mtp = None
        if getattr(self, "_ctx", None):
            self._lib.llama_batch_free(self._tokens)
            self._lib.llama_batch_free(self._embeds)
            self._lib.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "model", None) is not None:
            self.model.close()

    # -- internals -----------------------------------------------------------------------------

    def _require_open(self) -> None:
        if not getattr(self, "_ctx", None):
            raise RuntimeError("the llama.cpp context is closed")  # a programming error, not bad input

    def _truncate(self, seq: int, keep: int) -> int:
        """Drop positions ≥ keep; fall back to an empty sequence when llama.cpp cannot keep the prefix (the MTP head's
        rows too: it keeps rows up to `keep`, which read the target's states before it)."""
        keep = self._truncate_target(seq, keep)
        if self.mtp is not None and not self.mtp.truncate(seq, keep + 1) and keep > 0:
            keep = self._truncate_target(seq, 0)
        return keep

    def _truncate_target(self, seq: int, keep: int) -> int:
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

    def _decode_segment(self, is_embd: bool, data, position: int, seq: int, logits: str,
                        stop: Callable[[], bool] | None = None, on_logits=None) -> None:
        """Decode token ids or rows in batches; logits: "all" positions, the segment's "last", or "none"."""
        if is_embd:
            data = np.ascontiguousarray(data, dtype=np.float32)
            if data.ndim != 2 or data.shape[1] != self.n_embd:
                raise ArtifactError(
                    f"embedding rows have shape {data.shape}, the decoder expects width {self.n_embd}",
                    fix="The vision encoder and the decoder come from different models; re-create the bundle.",
                )
        batch = self._embeds if is_embd else self._tokens
        size = self.options.n_batch
        for offset in range(0, len(data), size):
            if stop is not None and stop():
                raise PrefillStopped()
            chunk = data[offset:offset + size]
            if is_embd:
                ctypes.memmove(batch.embd, chunk.ctypes.data, chunk.nbytes)
            final = offset + len(chunk) == len(data)
            for i in range(len(chunk)):
                if not is_embd:
                    batch.token[i] = chunk[i]
                wanted = logits == "all" or (logits == "last" and final and i == len(chunk) - 1)
                _place(batch, i, position + offset + i, seq, wanted)
            batch.n_tokens = len(chunk)
            self._decode(batch)
            if self.mtp is not None and logits != "all":  # a prompt: the head follows it batch by batch
                self.mtp.follow(seq, position + offset, None if is_embd else chunk, self._states(0, len(chunk)))
                self.mtp.flush([seq])
            if logits == "all" and on_logits is not None:
                pointer = self._lib.llama_get_logits(self._ctx)
                on_logits(position + offset, np.ctypeslib.as_array(pointer, shape=(len(chunk), self.n_vocab)))

    def _states(self, row: int, count: int) -> np.ndarray:
        """The target's post-norm states of batch rows row.., a view valid until the next decode."""
        pointer = self._ext.llama_get_embeddings_nextn(self._ctx)
        return np.ctypeslib.as_array(pointer, shape=(row + count, self.n_embd))[row:]

    def _decode(self, batch) -> None:
        with held_interrupt():  # an eval callback (imatrix) and the log callback run inside
            status = self._lib.llama_decode(self._ctx, batch)
        if status != 0:  # the caller forgets the sequences involved: their cache is in an unknown state
            raise InputError(f"llama_decode failed (status {status}): out of KV cache space or memory",
                             fix="Use a larger context or fewer images.")


def _place(batch, i: int, position: int, seq: int, logits: bool) -> None:
    batch.pos[i] = position
    batch.n_seq_id[i] = 1
    batch.seq_id[i][0] = seq
    batch.logits[i] = 1 if logits else 0


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

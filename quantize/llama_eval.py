"""Run a GGUF through llama.cpp (llama-cpp-python's low-level API) for logits over whole prompts.

The quantize stage uses it to validate conversions, measure KL divergence between levels and
collect the importance matrix (through `cb_eval`). Prompts are segments: token ids, or embedding
rows (vision output). Tokens and embeddings cannot share a llama.cpp batch, so each segment is its
own batch in one sequence, positions counting on across segments (EXAONE 4.5 uses 1-D positions).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from exaone_edge.errors import ArtifactError, InputError

Segment = Sequence[int] | np.ndarray  # token ids, or float32 rows [n, n_embd]
_KV_TYPES = {"f32": 0, "f16": 1}  # ggml_type ids
_quiet_logger = None


def _quiet(llama_cpp) -> None:
    """llama.cpp logs every tensor on load; keep stderr for our progress lines."""
    global _quiet_logger
    if _quiet_logger is None:
        _quiet_logger = llama_cpp.llama_log_callback(lambda level, text, data: None)
        llama_cpp.llama_log_set(_quiet_logger, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()


def tokenize_with_gguf(gguf_path: Path, texts: Sequence[str]) -> list[list[int]]:
    """llama.cpp's tokenization of `texts` (special tokens parsed, none added), loading only the vocabulary."""
    import llama_cpp

    _quiet(llama_cpp)
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(gguf_path).encode(), params)
    if not model:
        raise ArtifactError("llama.cpp cannot load this GGUF's vocabulary", path=gguf_path, fix="Re-create it.")
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        out = []
        for text in texts:
            data = text.encode("utf-8")
            buffer = (llama_cpp.llama_token * (len(data) + 16))()
            count = llama_cpp.llama_tokenize(vocab, data, len(data), buffer, len(buffer), False, True)
            out.append(list(buffer[:max(count, 0)]))
        return out
    finally:
        llama_cpp.llama_model_free(model)


@contextlib.contextmanager
def _deferred_interrupt():
    """Hold Ctrl-C until llama_decode returns: raised inside a Python eval callback it would be swallowed by
    ctypes (or abort the graph half-way); after the call it is an ordinary KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


class LlamaRunner:
    """One model and one context for reference runs: flash attention off (on CPU it computes in F16)
    and an F32 KV cache (llama.cpp's default F16 cache alone moves logits by ~1e-3)."""

    def __init__(self, gguf_path: Path, *, n_ctx: int = 2048, n_batch: int = 512, flash_attn: bool = False,
                 threads: int | None = None, kv_type: str = "f32", cb_eval=None) -> None:
        import llama_cpp

        self._lib = llama_cpp
        _quiet(llama_cpp)
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0
        self._model = llama_cpp.llama_model_load_from_file(str(gguf_path).encode(), params)
        if not self._model:
            raise ArtifactError("llama.cpp cannot load this GGUF", path=gguf_path, fix="Re-create it.")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.n_embd = llama_cpp.llama_model_n_embd(self._model)
        ctx_params = llama_cpp.llama_context_default_params()
        ctx_params.n_ctx = n_ctx
        ctx_params.n_batch = ctx_params.n_ubatch = min(n_batch, n_ctx)
        ctx_params.n_seq_max = 1
        ctx_params.n_threads = ctx_params.n_threads_batch = threads or os.cpu_count() or 1
        ctx_params.flash_attn_type = 1 if flash_attn else 0
        ctx_params.type_k = ctx_params.type_v = _KV_TYPES[kv_type]
        if cb_eval is not None:
            self._cb = llama_cpp.ggml_backend_sched_eval_callback(cb_eval)  # kept alive with the context
            ctx_params.cb_eval = self._cb
            ctx_params.cb_eval_user_data = None
        self._ctx = llama_cpp.llama_init_from_model(self._model, ctx_params)
        if not self._ctx:
            llama_cpp.llama_model_free(self._model)
            raise InputError(f"llama.cpp cannot create a context of {n_ctx} tokens")
        self.n_ctx = n_ctx
        self.n_batch = min(n_batch, n_ctx)

    # -- prompts -------------------------------------------------------------------------------

    def logits(self, segments: Sequence[Segment]) -> np.ndarray:
        """Logits at every position of the prompt [n_positions, n_vocab], from an empty context."""
        out = np.empty((sum(len(s) for s in segments), self.n_vocab), dtype=np.float32)
        self.run(segments, lambda start, rows: out.__setitem__(slice(start, start + len(rows)), rows))
        return out

    def run(self, segments: Sequence[Segment], on_logits: Callable[[int, np.ndarray], None] | None = None) -> int:
        """Decode a prompt from an empty context with logits at every position (so every layer sees every
        row); `on_logits(first_position, rows)` gets each batch's logits, a view valid during the call."""
        lib = self._lib
        lib.llama_memory_clear(lib.llama_get_memory(self._ctx), True)
        total = sum(len(s) for s in segments)
        if total > self.n_ctx:
            raise InputError(f"the prompt has {total} positions, the context holds {self.n_ctx}")
        position = 0
        for segment in segments:
            rows = np.asarray(segment)
            for start in range(0, len(rows), self.n_batch):
                part = rows[start:start + self.n_batch]
                self._decode(part, position)
                if on_logits is not None:
                    pointer = lib.llama_get_logits(self._ctx)
                    on_logits(position, np.ctypeslib.as_array(pointer, shape=(len(part), self.n_vocab)))
                position += len(part)
        return position

    def _decode(self, part: np.ndarray, position: int) -> None:
        lib = self._lib
        n = len(part)
        is_embd = part.ndim == 2
        if is_embd and part.shape[1] != self.n_embd:
            raise InputError(f"embedding rows have width {part.shape[1]}, the model's is {self.n_embd}")
        batch = lib.llama_batch_init(n, self.n_embd if is_embd else 0, 1)
        try:
            batch.n_tokens = n
            if is_embd:
                rows = np.ascontiguousarray(part, dtype=np.float32)
                ctypes.memmove(batch.embd, rows.ctypes.data, rows.nbytes)
            for i in range(n):
                if not is_embd:
                    batch.token[i] = int(part[i])
                batch.pos[i] = position + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = True
            with _deferred_interrupt():
                status = lib.llama_decode(self._ctx, batch)
            if status != 0:
                raise InputError(f"llama_decode failed with status {status}")
        finally:
            lib.llama_batch_free(batch)

    # -- tokenizer and metadata ------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 16
        buffer = (self._lib.llama_token * capacity)()
        count = self._lib.llama_tokenize(self._vocab, data, len(data), buffer, capacity, add_special, parse_special)
        if count < 0:
            raise InputError(f"text needs {-count} tokens, more than the buffer of {capacity}")
        return list(buffer[:count])

    def meta(self, key: str) -> str | None:
        buffer = ctypes.create_string_buffer(1 << 16)
        length = self._lib.llama_model_meta_val_str(self._model, key.encode(), buffer, len(buffer))
        return None if length < 0 else buffer.value.decode("utf-8")

    def chat_template(self) -> str | None:
        raw = self._lib.llama_model_chat_template(self._model, None)
        return raw.decode("utf-8") if raw else None

    # -- lifetime --------------------------------------------------------------------------------

    def close(self) -> None:
        if getattr(self, "_ctx", None):
            self._lib.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            self._lib.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> LlamaRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

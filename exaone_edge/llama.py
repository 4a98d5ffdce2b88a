"""The llama.cpp binding's core (llama-cpp-python's low-level API): backend, GPU offload, models, tokenization.

One process initialises the backend once (silencing llama.cpp's per-tensor load log); every model the
toolkit loads, for serving, quantization, KL, imatrix or tokenizer checks, is a `Model` from here.
Contexts, batches and decoding live in `exaone_edge.llama_context`.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from pathlib import Path

from exaone_edge.errors import ArtifactError, InputError, MissingDependency

KV_TYPES = {"f32": 0, "f16": 1, "q8_0": 8, "q4_0": 2}  # ggml_type ids
ALL_LAYERS = -1  # n_gpu_layers: llama.h reads a negative value as "every layer, output included"
_DEVICE_TYPE_GPU = 1  # enum ggml_backend_dev_type (ggml-backend.h): CPU, GPU, IGPU, ACCEL
_lock = threading.Lock()
_backend_ready = False
_log_callback = None  # kept alive: llama.cpp holds the pointer
_open: dict[int, Path] = {}  # id(model) → file, for every loaded (not vocab-only) model


def library():
    try:
        import llama_cpp
    except ImportError:
        raise MissingDependency("the decoder needs llama-cpp-python",
                                fix="pip install 'exaone-edge[runtime]' (llama-cpp-python==0.3.36)") from None
    return llama_cpp


def init_backend(verbose: bool = False) -> None:
    """Once per process: silence llama.cpp's per-tensor load log (stderr is for our progress lines), init the backend."""
    global _backend_ready, _log_callback
    lib = library()
    with _lock:
        if _backend_ready:
            return
        if not verbose:
            _log_callback = lib.llama_log_callback(lambda level, text, data: None)
            lib.llama_log_set(_log_callback, ctypes.c_void_p(0))
        lib.llama_backend_init()
        _backend_ready = True


def supports_gpu_offload() -> bool:
    """Whether this llama.cpp build has a GPU backend (False when llama-cpp-python is not installed)."""
    try:
        lib = library()
    except MissingDependency:
        return False
    init_backend()
    return bool(lib.llama_supports_gpu_offload())


def gpu_memory() -> tuple[int, int] | None:
    """(free, total) bytes of the first GPU this llama.cpp build can use; None without one."""
    if not supports_gpu_offload():
        return None
    from llama_cpp._ggml import libggml

    libggml.ggml_backend_dev_count.restype = ctypes.c_size_t
    libggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    libggml.ggml_backend_dev_get.restype = ctypes.c_void_p
    libggml.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    libggml.ggml_backend_dev_type.restype = ctypes.c_int
    libggml.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                                ctypes.POINTER(ctypes.c_size_t)]
    for index in range(libggml.ggml_backend_dev_count()):
        device = libggml.ggml_backend_dev_get(index)
        if libggml.ggml_backend_dev_type(device) == _DEVICE_TYPE_GPU:
            free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
            libggml.ggml_backend_dev_memory(device, ctypes.byref(free), ctypes.byref(total))
            return free.value, total.value
    return None


def open_models() -> list[Path]:
    """Files of the models loaded now (vocab-only loads excluded): lets tests check what is mapped at once."""
    with _lock:
        return list(_open.values())

class Owned:
    """Frees its llama.cpp object on close(), at the end of a `with` block, or when collected."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may already be gone
            pass


class Model(Owned):
    """A loaded GGUF: weights (`n_gpu_layers` of them on the GPU; -1 all, 0 none) or only its vocabulary."""

    def __init__(self, path: Path, *, n_gpu_layers: int = 0, vocab_only: bool = False, verbose: bool = False) -> None:
        lib = library()
        init_backend(verbose)
        self._lib, self.path = lib, Path(path)
        params = lib.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.vocab_only = vocab_only
        self._model = lib.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            what = "vocabulary" if vocab_only else "model"
            raise ArtifactError(f"llama.cpp cannot load this GGUF's {what}", path=path, fix="Re-create it.")
        if not vocab_only:
            with _lock:
                _open[id(self)] = self.path
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.n_vocab = lib.llama_vocab_n_tokens(self._vocab)
        self.n_embd = lib.llama_model_n_embd(self._model)
        self.n_layer = lib.llama_model_n_layer(self._model)
        self.n_swa = lib.llama_model_n_swa(self._model)

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 16
        buffer = (self._lib.llama_token * capacity)()
        count = self._lib.llama_tokenize(self._vocab, data, len(data), buffer, capacity, add_special, parse_special)
        if count < 0:
            raise InputError(f"text needs {-count} tokens, more than the buffer of {capacity}")
        return list(buffer[:count])

    def piece(self, token: int, *, special: bool) -> bytes:
        buffer = ctypes.create_string_buffer(256)
        count = self._lib.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, special)
        return buffer.raw[:max(count, 0)]

    def detokenize(self, ids: Sequence[int], *, remove_special: bool, unparse_special: bool = True) -> str:
        tokens = (self._lib.llama_token * max(len(ids), 1))(*ids)
        buffer = ctypes.create_string_buffer(8 * len(ids) + 64)
        count = self._lib.llama_detokenize(self._vocab, tokens, len(ids), buffer, len(buffer), remove_special,
                                           unparse_special)
        return buffer.raw[:max(count, 0)].decode("utf-8")

    def is_end_of_generation(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))

    def meta(self, key: str) -> str | None:
        buffer = ctypes.create_string_buffer(1 << 16)
        length = self._lib.llama_model_meta_val_str(self._model, key.encode(), buffer, len(buffer))
        return None if length < 0 else buffer.value.decode("utf-8")

    def chat_template(self) -> str | None:
        raw = self._lib.llama_model_chat_template(self._model, None)
        return raw.decode("utf-8") if raw else None

    def close(self) -> None:
        if getattr(self, "_model", None):
            self._lib.llama_model_free(self._model)
            self._model = None
            with _lock:
                _open.pop(id(self), None)


def tokenize(gguf_path: Path, texts: Sequence[str]) -> list[list[int]]:
    """llama.cpp's tokenization of `texts` (special tokens parsed, none added), loading only the vocabulary."""
    with Model(gguf_path, vocab_only=True) as model:
        return [model.tokenize(text) for text in texts]

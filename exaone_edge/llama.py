"""The llama.cpp binding's core (llama-cpp-python's low-level API): backend, GPU offload, models, tokenization.

One process initialises the backend once. llama.cpp's log goes through `LogFilter`: warnings and errors (CUDA's
included) reach stderr, the per-tensor INFO/DEBUG chatter does not, and the last few are kept so a failed load can
say why. Every model the toolkit loads, for serving, quantization, KL, imatrix or tokenizer checks, is a `Model`
from here. Contexts, batches and decoding live in `exaone_edge.llama_context`.
"""

from __future__ import annotations

import collections
import ctypes
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from exaone_edge.errors import ArtifactError, ExaoneEdgeError, InputError, MissingDependency
from exaone_edge.interrupts import held_interrupt


@dataclass(frozen=True)
class KvType:
    ggml_type: int  # enum ggml_type (ggml.h), as llama_context_params.type_k / type_v take it
    bytes_per_element: float  # q8_0 and q4_0 store 32 values in 34 and 18 bytes


# Every KV cache type the runtime accepts; `plan` sizes exactly these (one list for both).
KV_TYPES = {"f32": KvType(0, 4.0), "f16": KvType(1, 2.0), "q8_0": KvType(8, 34 / 32), "q4_0": KvType(2, 18 / 32)}
ALL_LAYERS = -1  # n_gpu_layers: llama.h reads a negative value as "every layer, output included"
_DEVICE_TYPE_GPU = 1  # enum ggml_backend_dev_type (ggml-backend.h): CPU, GPU, IGPU, ACCEL
_NOT_GPU_BACKENDS = ("CPU", "BLAS", "RPC")  # ggml backend registries that never hold a local GPU
# Warnings every EXAONE GGUF raises on load, not worth a line each time: <|endofturn|> is not in llama.cpp's list of
# end-of-generation names, so it adds the eos id to that set itself and says so (src/llama-vocab.cpp, load).
_EXPECTED_WARNINGS = ("special_eos_id is not in special_eog_ids",)
# Remembered (log_since reads them) but not written: a decoder loaded without its MTP head (every run without
# --draft) reports each head tensor as unused, and an unpatched llama.cpp does so even with load_mtp.
_QUIET_WARNINGS = ("model has unused tensor blk.",)
_lock = threading.Lock()
_backend_ready = False
_log_callback = None  # kept alive: llama.cpp holds the pointer
_open: dict[int, Path] = {}  # id(model) → file, for every loaded (not vocab-only) model


class LogFilter:
    """llama.cpp's log callback: WARN and ERROR lines (and their CONT continuations) to `write`, INFO and DEBUG
    dropped (ggml_log_level in ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5). The last `keep` lines
    passed are remembered for error messages."""

    WARN, ERROR, CONT = 3, 4, 5

    def __init__(self, write: Callable[[str], object] | None = None, keep: int = 8) -> None:
        self._write = write or (lambda text: sys.stderr.write(text))
        self.recent: collections.deque[str] = collections.deque(maxlen=keep)
        self._passing = False  # whether the message a CONT piece continues was passed
        self._quiet = False  # passed to `recent` only
        self.count = 0  # lines passed so far

    def __call__(self, level: int, text: bytes | str | None) -> None:
        line = text.decode("utf-8", "replace") if isinstance(text, bytes) else (text or "")
        if level != self.CONT:
            self._passing = level in (self.WARN, self.ERROR) and not any(w in line for w in _EXPECTED_WARNINGS)
            self._quiet = any(w in line for w in _QUIET_WARNINGS)
        if not self._passing or not line:
            return
        if not self._quiet:
            self._write(line if level == self.CONT else f"llama.cpp: {line}")
        if level == self.CONT and self.recent:
            self.recent[-1] += line.rstrip("\n")
        else:
            self.recent.append(line.rstrip("\n"))
            self.count += 1


_log = LogFilter()


def log_mark() -> int:
    """A mark for `log_since`: how many warning and error lines llama.cpp has logged so far."""
    return _log.count


def log_since(mark: int) -> list[str]:
    """llama.cpp's warning and error lines since `mark` (at most the last few)."""
    new = _log.count - mark
    return list(_log.recent)[-new:] if new > 0 else []


def library():
    try:
        import llama_cpp
    except ImportError:
        raise MissingDependency("the decoder needs llama-cpp-python",
                                fix="pip install 'exaone-edge[runtime]' (llama-cpp-python==0.3.36)") from None
    return llama_cpp


def init_backend(verbose: bool = False) -> None:
    """Once per process: route llama.cpp's log through `LogFilter` (everything when `verbose`), init the backend."""
    global _backend_ready, _log_callback
    lib = library()
    with _lock:
        if _backend_ready:
            return
        if not verbose:
            _log_callback = lib.llama_log_callback(lambda level, text, data: _log(level, text))
            lib.llama_log_set(_log_callback, ctypes.c_void_p(0))
        lib.llama_backend_init()
        _backend_ready = True


def supports_gpu_offload() -> bool:
    """Whether this llama.cpp build has a GPU backend that found a device (False without llama-cpp-python)."""
    try:
        lib = library()
    except MissingDependency:
        return False
    init_backend()
    return bool(lib.llama_supports_gpu_offload())


def ggml():
    """The one handle on libggml (llama-cpp-python's), with the signatures this project calls declared once: device
    queries here, graph tensors for the imatrix collector (symbols of libggml-base resolve through it)."""
    library()
    from llama_cpp._ggml import libggml

    libggml.ggml_op_name.restype, libggml.ggml_op_name.argtypes = ctypes.c_char_p, [ctypes.c_int]
    libggml.ggml_tensor_overhead.restype = ctypes.c_size_t
    libggml.ggml_backend_buffer_is_host.restype = ctypes.c_bool
    libggml.ggml_backend_buffer_is_host.argtypes = [ctypes.c_void_p]
    libggml.ggml_nbytes.restype, libggml.ggml_nbytes.argtypes = ctypes.c_size_t, [ctypes.c_void_p]
    libggml.ggml_backend_tensor_get.restype = None
    libggml.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    libggml.ggml_backend_dev_count.restype = ctypes.c_size_t
    libggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    libggml.ggml_backend_dev_get.restype = ctypes.c_void_p
    libggml.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    libggml.ggml_backend_dev_type.restype = ctypes.c_int
    libggml.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                                ctypes.POINTER(ctypes.c_size_t)]
    libggml.ggml_backend_reg_count.restype = ctypes.c_size_t
    libggml.ggml_backend_reg_get.argtypes = [ctypes.c_size_t]
    libggml.ggml_backend_reg_get.restype = ctypes.c_void_p
    libggml.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
    libggml.ggml_backend_reg_name.restype = ctypes.c_char_p
    return libggml


def gpu_memory() -> tuple[int, int] | None:
    """(free, total) bytes of the first GPU this llama.cpp build can use (ggml_backend_dev_memory); None without one."""
    if not supports_gpu_offload():
        return None
    libggml = ggml()
    for index in range(libggml.ggml_backend_dev_count()):
        device = libggml.ggml_backend_dev_get(index)
        if libggml.ggml_backend_dev_type(device) == _DEVICE_TYPE_GPU:
            free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
            libggml.ggml_backend_dev_memory(device, ctypes.byref(free), ctypes.byref(total))
            return free.value, total.value
    return None


def gpu_backends() -> list[str]:
    """GPU backends compiled into this llama.cpp (e.g. ["CUDA"]), whether or not they found a device: a CUDA build
    whose driver failed registers CUDA with no device, and `supports_gpu_offload` is then False."""
    try:
        library()
    except MissingDependency:
        return []
    init_backend()
    libggml = ggml()
    names = [libggml.ggml_backend_reg_name(libggml.ggml_backend_reg_get(i)).decode()
             for i in range(libggml.ggml_backend_reg_count())]
    return [name for name in names if name not in _NOT_GPU_BACKENDS]


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


def model_params(lib, *, n_gpu_layers: int, vocab_only: bool = False, load_mtp: bool = False):
    """(llama_model_params, what must outlive the load); `load_mtp` loads the MTP head's tensors (--draft mtp), which
    llama.cpp skips otherwise. With no layer on the GPU, llama.cpp gets an empty device list
    (`--device none`, common/arg.cpp): it otherwise takes every GPU it registered (src/llama.cpp,
    llama_prepare_model_devices) and its contexts offload matmuls of ≥ 32 rows over host weights to CUDA."""
    params = lib.llama_model_default_params()
    params.n_gpu_layers = n_gpu_layers
    params.vocab_only = vocab_only
    params.load_mtp = load_mtp
    devices = None
    if n_gpu_layers == 0:
        devices = (ctypes.c_void_p * 1)(None)  # NULL-terminated, nothing before the NULL
        params.devices = ctypes.cast(devices, ctypes.c_void_p)
    return params, devices


def load_failure(path: Path, *, vocab_only: bool, n_gpu_layers: int, gpu: bool, log: Sequence[str]) -> ExaoneEdgeError:
    """Why llama_model_load_from_file returned NULL, from its own last error line: with layers on a GPU, most often
    GPU memory; else the file."""
    errors = [line for line in log if "error loading model" in line] or list(log[-1:])
    said = f" (llama.cpp: {errors[-1]})" if errors else ""
    if vocab_only:
        return ArtifactError(f"llama.cpp cannot load this GGUF's vocabulary{said}", path=path, fix="Re-create it.")
    if n_gpu_layers != 0 and gpu:
        layers = "every layer" if n_gpu_layers < 0 else f"{n_gpu_layers} layers"
        return InputError(f"llama.cpp could not load the decoder with {layers} on the GPU{said}", path=path,
                          fix="GPU memory is the usual cause: lower --gpu-layers (or --gpu-layers auto), free GPU "
                              "memory held by other processes (nvidia-smi), or use --device cpu.")
    return ArtifactError(f"llama.cpp cannot load this GGUF's model{said}", path=path, fix="Re-create it.")


class Model(Owned):
    """A loaded GGUF: weights (`n_gpu_layers` of them on the GPU; -1 all, 0 none) or only its vocabulary; with
    `load_mtp` the MTP head too (an error if the file has none or this llama.cpp cannot run it)."""

    def __init__(self, path: Path, *, n_gpu_layers: int = 0, vocab_only: bool = False, verbose: bool = False,
                 load_mtp: bool = False) -> None:
        lib = library()
        init_backend(verbose)
        self._lib, self.path = lib, Path(path)
        self.params, self._devices = model_params(lib, n_gpu_layers=n_gpu_layers, vocab_only=vocab_only,
                                                  load_mtp=load_mtp)
        mark = log_mark()
        with held_interrupt():  # llama.cpp logs through a Python callback while it loads
            self._model = lib.llama_model_load_from_file(str(path).encode(), self.params)
        if not self._model:
            raise load_failure(self.path, vocab_only=vocab_only, n_gpu_layers=n_gpu_layers,
                               gpu=n_gpu_layers != 0 and supports_gpu_offload(), log=log_since(mark))
        if not vocab_only:
            with _lock:
                _open[id(self)] = self.path
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.n_vocab = lib.llama_vocab_n_tokens(self._vocab)
        self.n_embd = lib.llama_model_n_embd(self._model)
        self.n_layer = lib.llama_model_n_layer(self._model)
        self.n_swa = lib.llama_model_n_swa(self._model)
        self.n_nextn = lib.llama_model_n_layer_nextn(self._model)  # MTP heads in the file
        if load_mtp:
            self._check_mtp(log_since(mark))

    def _check_mtp(self, logged: Sequence[str]) -> None:
        if self.n_nextn == 0:
            self.close()
            raise ArtifactError("the decoder has no MTP head (drafting needs one)", path=self.path,
                                fix="Re-create the bundle with this version's quantize, which keeps the head, or "
                                    "run without --draft.")
        # An unpatched llama.cpp loads exaone4's head as unused tensors and has no graph to run it.
        if any("unused tensor blk." in line for line in logged):
            self.close()
            raise MissingDependency("llama-cpp-python is built without patches/llama.cpp (the EXAONE 4.5 MTP graph)",
                                    fix="Run scripts/setup.sh: it compiles llama-cpp-python with the patches.")

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

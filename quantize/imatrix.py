"""Importance matrix: Σx² per input column of every weight matmul, collected inside llama.cpp.

Same rule as llama.cpp's `llama-imatrix`: on each MUL_MAT whose weight is `blk.*` (and `output`),
add the squares of the F32 activations per column and count the rows. Because we drive the
decoder ourselves, calibration prompts can carry page-image rows as embeddings, which the
llama-imatrix tool (text only) cannot. Saved in llama.cpp's GGUF imatrix format.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from exaone_edge.errors import ArtifactError
from exaone_edge.llama import ggml

GGML_TYPE_F32 = 0
_MAX_DIMS, _MAX_SRC, _MAX_OP_PARAMS, _MAX_NAME = 4, 10, 64, 64


class GgmlTensor(ctypes.Structure):
    """`struct ggml_tensor` of the ggml vendored by llama-cpp-python 0.3.36 (size checked at runtime)."""


GgmlTensor._fields_ = [
    ("type", ctypes.c_int),
    ("buffer", ctypes.c_void_p),
    ("ne", ctypes.c_int64 * _MAX_DIMS),
    ("nb", ctypes.c_size_t * _MAX_DIMS),
    ("op", ctypes.c_int),
    ("op_params", ctypes.c_int32 * (_MAX_OP_PARAMS // 4)),
    ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(GgmlTensor) * _MAX_SRC),
    ("view_src", ctypes.POINTER(GgmlTensor)),
    ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p),
    ("name", ctypes.c_char * _MAX_NAME),
    ("extra", ctypes.c_void_p),
    ("padding", ctypes.c_char * 8),
]


def _mul_mat_op(lib) -> int:
    for op in range(128):
        if lib.ggml_op_name(op) == b"MUL_MAT":
            return op
    raise RuntimeError("ggml has no MUL_MAT op")


@dataclass
class Imatrix:
    """Per weight: Σx² over calibration rows (one value per input column) and the row count."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunks: int = 0  # calibration prompts seen

    def values(self) -> dict[str, np.ndarray]:
        """What llama.cpp's quantizer takes: mean x² per column."""
        return {name: (total / max(self.counts[name], 1)).astype(np.float32) for name, total in self.sums.items()}


class ImatrixCollector:
    """A `cb_eval` callback for `LlamaContext` that fills an Imatrix."""

    def __init__(self, include_output: bool = True) -> None:
        lib = ggml()
        # ggml_tensor_overhead() = sizeof(ggml_object) (32) + sizeof(ggml_tensor): guards the layout above.
        if lib.ggml_tensor_overhead() != ctypes.sizeof(GgmlTensor) + 32:
            raise RuntimeError("ggml_tensor layout differs from the pinned llama-cpp-python; imatrix cannot be read")
        self._lib = lib
        self._mul_mat = _mul_mat_op(lib)
        self._include_output = include_output
        self.imatrix = Imatrix()
        self.error: str | None = None

    def _wanted(self, name: str) -> bool:
        return name.startswith("blk.") or (self._include_output and name == "output.weight")

    def __call__(self, tensor_ptr, ask, user_data) -> bool:
        try:
            tensor = ctypes.cast(tensor_ptr, ctypes.POINTER(GgmlTensor)).contents
            if tensor.op != self._mul_mat:
                return False if ask else True
            weight, activations = tensor.src[0].contents, tensor.src[1].contents
            name = _weight_name(weight.name)
            if ask:
                return self._wanted(name) and activations.type == GGML_TYPE_F32
            self._accumulate(name, weight, activations, tensor.src[1])
        except Exception as exc:  # an exception must not cross into C; report it after decode
            self.error = f"{type(exc).__name__}: {exc}"
        return True

    def _accumulate(self, name: str, weight: GgmlTensor, x: GgmlTensor, x_ptr) -> None:
        ne, nb = list(x.ne), list(x.nb)
        if nb[0] != 4:
            raise ValueError(f"activations of {name} are not contiguous rows")
        if weight.ne[2] * weight.ne[3] != 1:
            raise ValueError(f"{name} is a stacked (expert) weight; not supported for exaone4")
        extent = (sum((n - 1) * s for n, s in zip(ne, nb)) + 4) // 4  # floats spanned (strides are multiples of 4)
        address = ctypes.cast(x_ptr, ctypes.c_void_p)
        if x.buffer and not self._lib.ggml_backend_buffer_is_host(x.buffer):
            # activations in GPU memory (a CUDA build offloading the matmul): copy them to the host first
            host = np.empty(self._lib.ggml_nbytes(address) // 4, dtype=np.float32)
            self._lib.ggml_backend_tensor_get(address, host.ctypes.data, 0, host.nbytes)
            flat = host
        else:
            flat = np.ctypeslib.as_array((ctypes.c_float * extent).from_address(x.data))
        rows = np.lib.stride_tricks.as_strided(flat, shape=(ne[3], ne[2], ne[1], ne[0]), strides=(nb[3], nb[2], nb[1], nb[0]))
        rows = rows.reshape(-1, ne[0]).astype(np.float64)
        if not np.isfinite(rows).all():
            raise ValueError(f"non-finite activations entering {name}")
        total = self.imatrix.sums.get(name)
        squares = np.einsum("ij,ij->j", rows, rows)
        self.imatrix.sums[name] = squares if total is None else total + squares
        self.imatrix.counts[name] = self.imatrix.counts.get(name, 0) + rows.shape[0]


def _weight_name(raw: bytes) -> str:
    """Strip the backend decoration llama.cpp may add (`name#weight#suffix`), like llama-imatrix does."""
    name = raw.decode("utf-8", "replace")
    if "#" in name:
        name = name.split("#")[1]
    return name


def save_imatrix(imatrix: Imatrix, path: Path, chunk_size: int) -> None:
    """Write llama.cpp's GGUF imatrix format: `<w>.in_sum2` [n_mat, n_cols] and `<w>.counts` [n_mat, 1]."""
    import gguf

    writer = gguf.GGUFWriter(path=str(path), arch="exaone4")
    writer.add_type("imatrix")
    writer.add_array("imatrix.datasets", imatrix.datasets or ["exaone-edge calibration"])
    writer.add_uint32("imatrix.chunk_count", imatrix.chunks)
    writer.add_uint32("imatrix.chunk_size", chunk_size)
    for name in sorted(imatrix.sums):
        writer.add_tensor(f"{name}.in_sum2", imatrix.sums[name].astype(np.float32).reshape(1, -1))
        writer.add_tensor(f"{name}.counts", np.array([[imatrix.counts[name]]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def load_imatrix(path: Path) -> Imatrix:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as exc:  # gguf raises ValueError/struct errors on truncated or foreign files
        raise ArtifactError(f"not a readable GGUF imatrix ({exc})", path=path, fix="Delete it; it will be recomputed.") from None
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    imatrix = Imatrix()
    for name, data in tensors.items():
        if name.endswith(".in_sum2"):
            weight = name[: -len(".in_sum2")]
            counts = tensors.get(weight + ".counts")
            if counts is None:
                raise ArtifactError(f"imatrix entry {weight} has sums but no counts", path=path)
            imatrix.sums[weight] = data.astype(np.float64).reshape(-1)
            imatrix.counts[weight] = int(round(float(counts.reshape(-1)[0])))
    field_ = reader.fields.get("imatrix.chunk_count")
    imatrix.chunks = int(field_.parts[field_.data[0]][0]) if field_ else 0
    if not imatrix.sums:
        raise ArtifactError("imatrix file holds no entries", path=path, fix="Delete it; it will be recomputed.")
    return imatrix


def collect_imatrix(gguf_path: Path, prompts: list[list], datasets: list[str], threads: int | None = None,
                    gpu_layers: int | None = None) -> Imatrix:
    """Decode every calibration prompt (logits on at all positions, so the last layers see every row).

    `gpu_layers`: decoder layers on the GPU (None: as many as fit its free memory; none without a GPU); activations
    of offloaded matmuls are copied back to the host by the collector."""
    from exaone_edge.llama_context import LlamaContext
    from exaone_edge.progress import track
    from exaone_edge.quantize.llama_eval import context_for

    collector = ImatrixCollector()
    options, _ = context_for(gguf_path, prompts, gpu_layers, threads)
    with LlamaContext(gguf_path, options, cb_eval=collector) as llama:
        for prompt in track(prompts, "imatrix: calibration prompts", total=len(prompts)):
            llama.evaluate(prompt)  # Ctrl-C is held until llama_decode returns (see exaone_edge.llama_context)
            if collector.error:
                raise RuntimeError(f"imatrix collection failed: {collector.error}")
            collector.imatrix.chunks += 1
    collector.imatrix.datasets = list(datasets)
    return collector.imatrix

"""Read safetensors tensors in row chunks with plain file reads, so memory stays flat for any tensor size.

No mmap: mapped pages of a 2.6 GB embedding would count against the process for as long as they
stay mapped. No torch: bf16 widens to f32 with a 16-bit shift.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exaone_edge.errors import CheckpointError

CHUNK_BYTES = 32 << 20  # source bytes per read
_NUMPY = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


@dataclass(frozen=True)
class StoredTensor:
    name: str
    dtype: str  # safetensors dtype string
    shape: tuple[int, ...]
    file: Path
    offset: int  # absolute byte offset of the data in `file`
    nbytes: int

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


def read_layout(path: Path) -> dict[str, StoredTensor]:
    """Absolute offsets of every tensor in one shard (the header was validated by open_checkpoint)."""
    with open(path, "rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_len))
    header.pop("__metadata__", None)
    base = 8 + header_len
    return {
        name: StoredTensor(name, entry["dtype"], tuple(entry["shape"]), path, base + entry["data_offsets"][0],
                           entry["data_offsets"][1] - entry["data_offsets"][0])
        for name, entry in header.items()
    }


def iter_f32_chunks(tensor: StoredTensor, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
    """Yield the tensor's elements in order, as flat float32 arrays of bounded size."""
    if tensor.dtype not in _NUMPY:
        raise CheckpointError(
            f"tensor '{tensor.name}' has dtype {tensor.dtype}; only F32, F16, BF16 and F64 weights convert",
            path=tensor.file,
        )
    source = np.dtype(_NUMPY[tensor.dtype])
    per_chunk = max(1, chunk_bytes // source.itemsize)
    remaining = tensor.numel
    with open(tensor.file, "rb") as handle:
        handle.seek(tensor.offset)
        while remaining > 0:
            count = min(per_chunk, remaining)
            raw = np.fromfile(handle, dtype=source, count=count)
            if raw.size != count:
                raise CheckpointError(f"tensor '{tensor.name}' is truncated", path=tensor.file,
                                      fix="Download the shard again.")
            remaining -= count
            if tensor.dtype == "BF16":
                wide = raw.astype(np.uint32)
                wide <<= 16  # in place: one f32-sized buffer per chunk
                yield wide.view(np.float32)
            else:
                yield raw.astype(np.float32, copy=False)


def read_f32(tensor: StoredTensor) -> np.ndarray:
    """A whole (small) tensor as float32 in its shape."""
    return np.concatenate(list(iter_f32_chunks(tensor))).reshape(tensor.shape)

"""Read safetensors tensors in pieces with positional file reads, so memory stays flat for any tensor size.

No mmap: mapped pages of a 2.6 GB embedding would count against the process for as long as they
stay mapped. No torch: bf16 is ml_dtypes' numpy dtype. Pieces are independent (`os.pread`), so
worker threads read and cast pieces while the caller writes finished ones (file I/O releases the GIL).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import ml_dtypes
import numpy as np

from exaone_edge.checkpoint import TensorInfo, read_safetensors_header
from exaone_edge.errors import CheckpointError

# Source bytes per piece: small enough that a piece's cast and check passes stay in the CPU cache.
PIECE_BYTES = 4 << 20
_NUMPY = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64}
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Piece:
    """Elements [start, start + count) of a tensor, in storage order."""

    tensor: TensorInfo
    start: int
    count: int


def read_layout(path: Path) -> dict[str, TensorInfo]:
    """Every tensor of one shard with its absolute offset: checkpoint.read_safetensors_header, the one header reader."""
    return read_safetensors_header(path)


def _source_dtype(tensor: TensorInfo) -> np.dtype:
    if tensor.dtype not in _NUMPY:
        raise CheckpointError(
            f"tensor '{tensor.name}' has dtype {tensor.dtype}; only F32, F16, BF16 and F64 weights convert",
            path=tensor.file,
        )
    return np.dtype(_NUMPY[tensor.dtype])


def pieces(tensor: TensorInfo, piece_bytes: int | None = None) -> list[Piece]:
    per_piece = max(1, (piece_bytes or PIECE_BYTES) // _source_dtype(tensor).itemsize)
    return [Piece(tensor, start, min(per_piece, tensor.numel - start)) for start in range(0, tensor.numel, per_piece)]


def read_piece(piece: Piece) -> np.ndarray:
    """One piece as a flat array in its stored dtype (bf16 as ml_dtypes.bfloat16)."""
    tensor = piece.tensor
    source = _source_dtype(tensor)
    want = piece.count * source.itemsize
    fd = os.open(tensor.file, os.O_RDONLY)
    try:
        raw = os.pread(fd, want, tensor.offset + piece.start * source.itemsize)
    finally:
        os.close(fd)
    if len(raw) != want:
        raise CheckpointError(f"tensor '{tensor.name}' is truncated", path=tensor.file, fix="Download the shard again.")
    return np.frombuffer(raw, dtype=source)


def read_f32_piece(piece: Piece) -> np.ndarray:
    return read_piece(piece).astype(np.float32)


def iter_f32_chunks(tensor: TensorInfo, piece_bytes: int | None = None) -> Iterator[np.ndarray]:
    """The tensor's elements in order, as flat float32 arrays of bounded size."""
    for piece in pieces(tensor, piece_bytes):
        yield read_f32_piece(piece)


def read_f32(tensor: TensorInfo) -> np.ndarray:
    """A whole (small) tensor as float32 in its shape."""
    return np.concatenate(list(iter_f32_chunks(tensor))).reshape(tensor.shape)


def ordered_map(function: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[tuple[T, R]]:
    """(item, function(item)) in input order, computed by `workers` threads with at most 2 × workers
    results in flight, so memory stays bounded however many items there are."""
    if workers <= 1:
        for item in items:
            yield item, function(item)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="convert") as pool:
        window: deque = deque()
        for item in items:
            window.append((item, pool.submit(function, item)))
            if len(window) >= 2 * workers:
                done, future = window.popleft()
                yield done, future.result()
        while window:
            done, future = window.popleft()
            yield done, future.result()

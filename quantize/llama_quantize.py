"""Quantize a GGUF with llama.cpp's own quantizer (`llama_model_quantize`), optionally with an imatrix."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

from exaone_edge.errors import ArtifactError
from exaone_edge.files import atomic_path
from exaone_edge.quantize.recipes import Recipe


def quantize_tensors(source: Path, target: Path, recipe: Recipe, imatrix: dict[str, np.ndarray] | None = None,
                  threads: int | None = None) -> Path:
    """Write `target` (atomically) at `recipe`'s level; `imatrix` maps weight names to mean x² per column."""
    from exaone_edge.llama import init_backend, library

    llama_cpp = library()
    init_backend()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = recipe.ftype
    params.nthread = threads or os.cpu_count() or 1
    keep_alive: list[object] = []
    if imatrix:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()  # NULL-terminated
        for index, (name, values) in enumerate(sorted(imatrix.items())):
            data = np.ascontiguousarray(values, dtype=np.float32)
            raw_name = name.encode()
            keep_alive += [data, raw_name]
            entries[index].name = raw_name
            entries[index].data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[index].size = data.size
        keep_alive.append(entries)
        params.imatrix = entries
    with atomic_path(Path(target)) as tmp:
        status = _run_quantizer(source, tmp, params)
        if status != 0:
            raise ArtifactError(f"llama.cpp's quantizer failed (status {status}) making {recipe.level}", path=source,
                                fix="Check that the source is a valid F16/F32 GGUF and that the disk has room.")
    del keep_alive
    return Path(target)


def _run_quantizer(source: Path, target: Path, params) -> int:
    from exaone_edge.interrupts import held_interrupt
    from exaone_edge.llama import library

    llama_cpp = library()

    with held_interrupt():  # it logs every tensor through a Python callback
        return llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))

"""Numbers that a stage works with and the planner predicts from, declared once here so both read the same value."""

from __future__ import annotations

MIB = 2**20
GIB = 2**30

UBATCH = 512  # llama.cpp's default micro-batch (n_batch = n_ubatch here): sizes compute buffers; offloaded matmuls upload per batch
LLAMA_GPU_RESERVE = 1536 * MIB  # beside imatrix/KL layers on the GPU: CUDA context, cuBLAS workspace, compute buffer
PAGE_TEXT_ALLOWANCE = 512  # calibration prompt positions beside a page's rows: template, question, some of the answer
EXPORT_INT8_CALIBRATION_PAGES = 16  # int8 export: each costs one forward pass of the tower; memory does not grow with the count
REFERENCE_DTYPE = "float32"  # the transformers reference's precision by default (reference/streamed.py says why)
REFERENCE_CACHE_SHARE = 0.5  # the free device memory one group of reference questions' KV caches may take
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

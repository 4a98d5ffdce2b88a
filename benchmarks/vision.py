"""Vision encoding of one page: ONNX Runtime (the bundle's graph) vs PyTorch SDPA, same precision."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from exaone_edge.benchmarks.timing import interleaved, median, seconds

# Quantized graphs have no PyTorch counterpart: they are timed against PyTorch fp32 (reported, no target).
TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "int8": "float32", "int8w": "float32", "int4": "float32"}


@dataclass(frozen=True)
class VisionTimes:
    onnx_s: float
    torch_s: float
    rows: int
    max_abs_diff: float  # ONNX rows vs PyTorch rows: both sides computed the same thing


def compare_with_torch(encoder: Any, model: Any, page: Image.Image, *, repeats: int) -> VisionTimes:
    """`encoder`: exaone_edge.vision.VisionEncoder; `model`: the transformers model (its vision tower is copied).

    Both sides get the same patches from our preprocessing (equal to the HF processor's, tested), so
    the times compare the encoders, not two resize implementations.
    """
    import torch

    from exaone_edge.vision import preprocess

    dtype = TORCH_DTYPES[encoder.precision]
    tower = copy.deepcopy(model.model.visual).to(getattr(torch, dtype)).eval()
    patches, grid = preprocess(page, encoder.image)
    feeds = encoder.inputs_for(patches, grid)
    pixel_values = torch.from_numpy(patches).to(getattr(torch, dtype))
    grid_thw = torch.tensor([grid])

    def torch_rows() -> np.ndarray:
        with torch.inference_mode():
            out = tower(pixel_values, grid_thw=grid_thw)
        rows = getattr(out, "pooler_output", out)
        return rows.float().numpy()

    onnx_out, torch_out = encoder.run(feeds), torch_rows()
    runs = interleaved({"onnx": lambda: seconds(lambda: encoder.run(feeds)),
                        "torch": lambda: seconds(torch_rows)}, repeats, warmup=False)
    return VisionTimes(
        onnx_s=median(runs["onnx"]),
        torch_s=median(runs["torch"]),
        rows=int(onnx_out.shape[0]),
        max_abs_diff=float(np.abs(onnx_out - torch_out).max()),
    )

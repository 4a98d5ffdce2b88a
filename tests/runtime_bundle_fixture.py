"""A tiny F32 bundle for the runtime tests, and the transformers vision tower as a reference image encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exaone_edge.bundle import DecoderDetails, write_bundle
from exaone_edge.checkpoint import open_checkpoint


def build_tiny_bundle(model_dir: Path, out: Path, vision_dir: Path | None = None) -> Path:
    """The bundle layout with an F32 decoder (exact parity); `vision_dir` is an `exaone-edge export` output."""
    from exaone_edge.quantize.gguf_convert import convert_to_gguf

    out.mkdir(parents=True)
    decoder = out.parent / f".{out.name}.decoder.gguf"
    convert_to_gguf(model_dir, decoder, out_type="F32")
    write_bundle(out, open_checkpoint(model_dir), decoder, vision_dir=vision_dir, decoder_details=DecoderDetails("F32"))
    return out


class TransformersVisionRows:
    """The checkpoint's own vision tower and image processor (torch): the reference for vision rows."""

    def __init__(self, model, model_dir: Path) -> None:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        self.model = model
        self.processor = Qwen2VLImageProcessorPil.from_pretrained(model_dir)
        self.runs = 0

    def encode(self, image) -> np.ndarray:
        import torch

        self.runs += 1
        inputs = self.processor(images=[image], return_tensors="pt")
        with torch.no_grad():
            out = self.model.model.get_image_features(
                pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"]
            )
        rows = out.pooler_output if hasattr(out, "pooler_output") else out
        if isinstance(rows, (list, tuple)):
            rows = torch.cat(list(rows))
        return rows.float().numpy()

    def rows_for(self, image_size: tuple[int, int]) -> int:
        from PIL import Image

        grid = self.processor(images=[Image.new("RGB", image_size)], return_tensors="np")["image_grid_thw"][0]
        return int(np.prod(grid)) // self.processor.merge_size**2

"""Shared pieces for the runtime tests: the HF reference processor and test images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def hf_processor(model_dir: Path):
    """`Exaone4_5_Processor` with its image processor and tokenizer (the video side is never used)."""
    from exaone_edge.benchmarks.first_token import image_only_processor

    return image_only_processor(model_dir)


def hf_inputs(processor, messages) -> dict:
    return processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )

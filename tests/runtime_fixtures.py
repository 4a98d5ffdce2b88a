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
    from transformers import AutoTokenizer, Exaone4_5_Processor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    class ImageOnlyProcessor(Exaone4_5_Processor):
        # The stock class insists on a video processor; images never touch it.
        def check_argument_for_proper_class(self, attribute_name, arg):
            return None

    return ImageOnlyProcessor(
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(model_dir),
        tokenizer=AutoTokenizer.from_pretrained(model_dir),
        video_processor=None,
        chat_template=(model_dir / "chat_template.jinja").read_text(encoding="utf-8"),
    )


def hf_inputs(processor, messages) -> dict:
    return processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )

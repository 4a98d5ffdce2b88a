"""Shared pieces for the GGUF / quantize tests: converted files, the HF reference, a document page.

Converted GGUFs are cached per session in a plain dict so several test modules reuse one file.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

_converted: dict[tuple[Path, str], Path] = {}

TEXT_PROMPTS = [
    "[|user|]Invoice INV-2024-0042: total due 1,234.56 USD by 2024-12-31.[|endofturn|]\n[|assistant|]",
    "[|user|]계약서 제3조에 따른 위약금은 얼마입니까? 합계 금액: 1,823,250원[|endofturn|]\n[|assistant|]",
]


def converted(tiny_model_dir: Path, out_type: str, tmp_root: Path) -> Path:
    from exaone_edge.quantize.gguf_convert import convert_to_gguf

    key = (tiny_model_dir, out_type)
    if key not in _converted or not _converted[key].exists():
        _converted[key] = convert_to_gguf(tiny_model_dir, tmp_root / f"tiny-{out_type}.gguf", out_type).path
    return _converted[key]


@lru_cache(maxsize=2)
def hf_model(tiny_model_dir: Path):
    import torch
    from transformers import Exaone4_5_ForConditionalGeneration

    return Exaone4_5_ForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@lru_cache(maxsize=2)
def hf_tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def page_image(seed: int = 0, size: tuple[int, int] = (224, 160)) -> Image.Image:
    """A small invoice-like page: lines of text, a table grid, a coloured stamp."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((8, 6), f"INVOICE {int(rng.integers(1000, 9999))}", fill="black")
    for row in range(4):
        y = 30 + row * 24
        draw.rectangle((8, y, size[0] - 8, y + 22), outline="gray")
        draw.text((12, y + 5), f"item {row}   {rng.integers(10, 999)}.{rng.integers(10, 99)}", fill="black")
    draw.ellipse((size[0] - 60, size[1] - 50, size[0] - 12, size[1] - 8), outline="red", width=3)
    return image


def image_inputs(tiny_model_dir: Path, image: Image.Image):
    """HF pixel inputs and the vision rows the decoder receives for them (from the HF vision tower)."""
    import torch
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    processor = Qwen2VLImageProcessorPil.from_pretrained(tiny_model_dir)
    inputs = processor(images=[image], return_tensors="pt")
    model = hf_model(tiny_model_dir)
    with torch.no_grad():
        rows = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output[0]
    return inputs, rows.float().numpy()

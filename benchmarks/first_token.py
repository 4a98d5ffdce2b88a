"""Time to first token for a page + question: our engine vs transformers `generate`; second question vs first."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from exaone_edge.benchmarks.timing import interleaved, median, seconds

QUESTIONS = ("What is the total amount on this invoice?", "Who issued this document, and on what date?")


@dataclass(frozen=True)
class FirstToken:
    ours_s: float
    transformers_s: float
    ours_second_question_s: float  # the same page again, another question: vision rows and KV prefix reused
    prompt_positions: int


def page_messages(page: Image.Image, question: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image", "image": page}, {"type": "text", "text": question}]}]


def compare_with_transformers(engine: Any, model: Any, processor: Any, page: Image.Image, *,
                              repeats: int) -> FirstToken:
    """Each cold run gets a page that differs in one pixel, so neither side can reuse anything from before."""
    import torch

    from exaone_edge.runtime.generation import GenerationParams, collect

    variants = iter(range(1, 1 << 30))
    positions = []

    def ours_pair() -> tuple[float, float]:
        page_now = _variant(page, next(variants))
        first = collect(engine.generate(page_messages(page_now, QUESTIONS[0]), GenerationParams(max_tokens=1)))
        second = collect(engine.generate(page_messages(page_now, QUESTIONS[1]), GenerationParams(max_tokens=1)))
        positions.append(first.usage.prompt_tokens)
        return first.timings.ttft_s, second.timings.ttft_s

    def baseline() -> float:
        page_now = _variant(page, next(variants))

        def answer_one_token() -> None:
            inputs = processor.apply_chat_template(page_messages(page_now, QUESTIONS[0]), add_generation_prompt=True,
                                                   tokenize=True, return_dict=True, return_tensors="pt")
            with torch.inference_mode():
                model.generate(**inputs, max_new_tokens=1, do_sample=False)

        return seconds(answer_one_token)

    runs = interleaved({"ours": ours_pair, "transformers": baseline}, repeats)
    return FirstToken(
        ours_s=median([cold for cold, _ in runs["ours"]]),
        transformers_s=median(runs["transformers"]),
        ours_second_question_s=median([warm for _, warm in runs["ours"]]),
        prompt_positions=positions[-1],
    )


def image_only_processor(model_dir: Path) -> Any:
    """`Exaone4_5_Processor` with its image processor and tokenizer; the stock class insists on a video
    processor (torchvision), which pages never touch."""
    from transformers import AutoTokenizer, Exaone4_5_Processor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    class ImageOnlyProcessor(Exaone4_5_Processor):
        def check_argument_for_proper_class(self, attribute_name, arg):
            return None

    return ImageOnlyProcessor(
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(model_dir),
        tokenizer=AutoTokenizer.from_pretrained(model_dir),
        video_processor=None,
        chat_template=(Path(model_dir) / "chat_template.jinja").read_text(encoding="utf-8"),
    )


def _variant(page: Image.Image, index: int) -> Image.Image:
    page = page.convert("RGB").copy()
    page.putpixel((index % page.width, (index // page.width) % page.height), (index % 251, 7, 11))
    return page

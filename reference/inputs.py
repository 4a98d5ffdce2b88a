"""The reference side of validation: transformers on the same pages, questions and answers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Question:
    document: str
    image: Any  # PIL image of the page
    question: str
    answers: list[str]

    def user_message(self, image_part: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"role": "user", "content": [image_part, {"type": "text", "text": self.question}]}]


def chat_inputs(processor, question: Question, thinking: bool = False):
    """The prompt as transformers sees it (shared by the whole-model and the layer-streamed reference).

    `thinking` is the template's `enable_thinking`, always passed: EXAONE 4.5's template thinks when unset.
    """
    return processor.apply_chat_template(
        question.user_message({"type": "image", "image": question.image}),
        tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt", enable_thinking=thinking,
    )


class HFModel:
    """A transformers EXAONE 4.5 (source or GPTQ) with its processor: logits, generation, vision rows."""

    def __init__(self, model_dir: Path, processor_dir: Path, thinking: bool = False) -> None:
        import torch
        from transformers import AutoProcessor, Exaone4_5_ForConditionalGeneration

        self._torch = torch
        self.processor = AutoProcessor.from_pretrained(processor_dir)
        kwargs = {"device_map": "cpu"} if (Path(model_dir) / "quantize_config.json").exists() else {}
        self.model = Exaone4_5_ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32, **kwargs).eval()
        self.eos_id = self.processor.tokenizer.eos_token_id
        self.thinking = thinking

    def _inputs(self, question: Question):
        return chat_inputs(self.processor, question, self.thinking)

    def answer_ids(self, answer: str) -> list[int]:
        return self.processor.tokenizer.encode(answer, add_special_tokens=False) + [self.eos_id]

    def teacher_forced(self, question: Question, answer_ids: list[int]) -> np.ndarray:
        """Logits predicting each answer token (and the end of turn) after the prompt: [len(answer_ids), vocab]."""
        torch = self._torch
        inputs = self._inputs(question)
        prompt_len = inputs["input_ids"].shape[1]
        full = torch.cat([inputs["input_ids"], torch.tensor([answer_ids[:-1]], dtype=inputs["input_ids"].dtype)], 1)
        with torch.no_grad():
            logits = self.model(
                input_ids=full, attention_mask=torch.ones_like(full),
                pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"],
            ).logits[0]
        return logits[prompt_len - 1:].float().numpy()

    def generate(self, question: Question, max_new_tokens: int) -> str:
        torch = self._torch
        inputs = self._inputs(question)
        with torch.no_grad():
            output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                         eos_token_id=self.eos_id, pad_token_id=self.eos_id)
        new = output[0, inputs["input_ids"].shape[1]:]
        return self.processor.tokenizer.decode(new, skip_special_tokens=True).strip()  # reasoning split by the caller

    def vision_rows(self, image) -> np.ndarray:
        torch = self._torch
        inputs = self.processor.image_processor(images=[image], return_tensors="pt")
        with torch.no_grad():
            output = self.model.model.get_image_features(
                inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True
            )
        return torch.cat(list(output.pooler_output), dim=0).float().numpy()


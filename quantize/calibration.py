"""Calibration prompts from document pages: chat-formatted questions with the page's vision rows inside.

Vision rows come from the checkpoint's own vision tower in PyTorch (only `model.visual.*` is loaded,
so a 33B checkpoint needs ~5 GB here, not 65). The decoder then sees exactly what it sees when
serving: the chat template, `<vision>`, one row per merged patch, `</vision>`, the question.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exaone_edge.budgets import PAGE_TEXT_ALLOWANCE
from exaone_edge.checkpoint import Checkpoint
from exaone_edge.errors import InputError
from exaone_edge.progress import log

DEFAULT_QUESTION = "Read this page and summarise its key facts, numbers and tables."
DEFAULT_QUESTIONS = {"ko": "이 페이지의 핵심 내용과 숫자, 표를 정리해 주세요.", "en": DEFAULT_QUESTION}
MAX_ANSWER_CHARS = 1500  # page text carried as the assistant turn, so answer tokens get statistics too


@dataclass(frozen=True)
class CalibrationSample:
    image: Any | None  # PIL.Image.Image (RGB) or None for a text-only prompt
    question: str
    answer: str | None = None
    source: str = ""  # e.g. "doc-17 p1", for logs


def samples_from_documents(document_set: Any, pages_per_document: int = 2, questions_per_page: int = 2
                           ) -> list[CalibrationSample]:
    """Pages of an `exaone_edge.documents.DocumentSet`: each question on a page with its answer, and the page's
    text as a transcription (so the statistics cover long answers too), or a generic request."""
    samples: list[CalibrationSample] = []
    for document in document_set.documents:
        for page in range(min(document.page_count, pages_per_document)):
            image = document.page_image(page)  # rendered once, shared by the page's samples
            where = f"{document.id} p{page + 1}"
            for qa in [qa for qa in document.qa if qa.page == page][:questions_per_page]:
                samples.append(CalibrationSample(image, qa.question, qa.answers[0] if qa.answers else None, where))
            request = DEFAULT_QUESTIONS.get(document.lang or "en", DEFAULT_QUESTION)
            if page == 0 and document.text:
                samples.append(CalibrationSample(image, request, document.text[:MAX_ANSWER_CHARS], where))
            elif not any(sample.image is image for sample in samples):
                samples.append(CalibrationSample(image, request, None, where))
    if not samples:
        raise InputError("the calibration set has no pages", fix="Pass a document set with at least one page.")
    return samples


def samples_hash(samples: Sequence[CalibrationSample]) -> str:
    digest = hashlib.sha256()
    for sample in samples:
        for part in (sample.question, sample.answer or ""):
            digest.update(part.encode() + b"\0")
        if sample.image is not None:
            buffer = io.BytesIO()
            sample.image.convert("RGB").save(buffer, format="PNG")
            digest.update(hashlib.sha256(buffer.getvalue()).digest())
    return digest.hexdigest()


class VisionRows:
    """The checkpoint's vision tower (float32, CPU) and image processor: image → decoder rows."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        import torch
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        from exaone_edge.torch_weights import load_vision_tower

        self.model = load_vision_tower(checkpoint)
        self.processor = Qwen2VLImageProcessorPil.from_pretrained(checkpoint.path)
        self._torch = torch

    def __call__(self, image: Any) -> np.ndarray:
        inputs = self.processor(images=[image.convert("RGB")], return_tensors="pt")
        with self._torch.no_grad():
            out = self.model(inputs["pixel_values"].float(), grid_thw=inputs["image_grid_thw"])
        return out.pooler_output.float().numpy()


class PromptBuilder:
    """Chat-formats samples with the checkpoint's template and tokenizer; images become row segments."""

    def __init__(self, checkpoint: Checkpoint, vision: Callable[[Any], np.ndarray] | None) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint.path)
        self.image_token = self.tokenizer.convert_ids_to_tokens(checkpoint.spec.image_token_id)
        self.vision = vision
        self._rows: dict[int, tuple[Any, np.ndarray]] = {}  # id(image) → (image, rows): pages shared by samples

    def segments(self, sample: CalibrationSample) -> list[Any]:
        content: list[dict[str, str]] = [{"type": "image"}] if sample.image is not None else []
        content.append({"type": "text", "text": sample.question})
        messages = [{"role": "user", "content": content}]
        if sample.answer:
            messages.append({"role": "assistant", "content": sample.answer})
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=not sample.answer)
        pieces = text.split(self.image_token)
        if len(pieces) != (2 if sample.image is not None else 1):
            raise InputError("the chat template did not place exactly one image placeholder for the page",
                             fix="Use the chat template shipped with the checkpoint.")
        segments: list[Any] = [self.tokenizer(pieces[0], add_special_tokens=False)["input_ids"]]
        if sample.image is not None:
            if self.vision is None:
                raise InputError("an image sample needs the vision tower")
            cached = self._rows.get(id(sample.image))
            if cached is None or cached[0] is not sample.image:
                cached = self._rows[id(sample.image)] = (sample.image, self.vision(sample.image))
            segments.append(cached[1])
            segments.append(self.tokenizer(pieces[1], add_special_tokens=False)["input_ids"])
        return [s for s in segments if len(s)]




def build_prompts(builder: PromptBuilder, samples: Iterable[CalibrationSample], max_positions: int) -> list[list[Any]]:
    """Chat prompts as segments, each at most `limit` positions, where `limit` is `max_positions` raised to fit
    the largest page's rows + PAGE_TEXT_ALLOWANCE (a 33B page is 1,280 rows at vLLM's example setting of
    1280·28·28 pixels, transformers' EXAONE 4.5 default: shared/NOTES.md). A page is never cut:
    text after it is shortened, and a sample whose page still does not fit is dropped with its reason."""
    segmented = [(sample, builder.segments(sample)) for sample in samples]
    page_rows = max((len(s) for _, segments in segmented for s in segments if _is_rows(s)), default=0)
    limit = max(max_positions, page_rows + PAGE_TEXT_ALLOWANCE if page_rows else 0)
    if limit > max_positions:
        log(f"calibration: prompt limit raised from {max_positions} to {limit} positions so the largest page "
            f"({page_rows} rows) stays whole")
    prompts = []
    for sample, segments in segmented:
        length = sum(len(s) for s in segments)
        kept, reason = _fit(segments, limit)
        if kept is None:
            log(f"calibration: {sample.source or 'sample'} dropped: {reason}")
            continue
        if len(kept) != len(segments) or sum(len(s) for s in kept) != length:
            log(f"calibration: {sample.source or 'sample'} has {length} positions; text after the page cut to fit {limit}")
        prompts.append(kept)
    if not prompts:
        raise InputError(f"no calibration prompt fits {limit} positions with its page whole",
                         fix="Use pages with less text before the image, or raise the position limit.")
    return prompts


def _is_rows(segment: Any) -> bool:
    return isinstance(segment, np.ndarray) and segment.ndim == 2


def _fit(segments: list[Any], limit: int) -> tuple[list[Any] | None, str]:
    """Segments within `limit` positions with every image whole: token runs may be shortened (and with
    them the conversation ends there); an image that does not fit whole drops the sample."""
    kept, used = [], 0
    for index, segment in enumerate(segments):
        room = limit - used
        if _is_rows(segment):
            if len(segment) > room:
                return None, f"its page has {len(segment)} rows, {max(room, 0)} of {limit} positions were left for it"
            kept.append(segment)
        elif len(segment) > room and any(_is_rows(later) for later in segments[index + 1:]):
            return None, f"{len(segment)} text positions before its page leave no room for the page in {limit}"
        elif room <= 0:
            break
        else:
            kept.append(segment[:room])
            if len(segment) > room:
                break
        used += len(kept[-1])
    return kept, ""


@dataclass(frozen=True)
class CalibrationSet:
    calibration: list[CalibrationSample]
    evaluation: list[CalibrationSample] | None  # None: the set was too small to hold pages out
    content_hash: str
    description: str


def load_calibration(path: Path | None, eval_fraction: float = 0.25, builtin_documents: int = 8) -> CalibrationSet:
    """A document set (`exaone_edge.documents`: a generated set or a folder of PDFs/images) split into calibration
    and held-out pages; without a path, the built-in synthetic set."""
    from exaone_edge.documents import documents_or_builtin

    documents, where = documents_or_builtin(path, builtin=builtin_documents, seed=0)
    calib, evals = documents.split(eval_fraction=eval_fraction, seed=0)
    return CalibrationSet(samples_from_documents(calib), samples_from_documents(evals) if evals.documents else None,
                          documents.content_hash, f"{len(documents.documents)} documents ({where})")

"""What is validated: a bundle (llama.cpp + ONNX as deployed), a GPTQ checkpoint, or a vision export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from exaone_edge import bundle as bundle_format
from exaone_edge.errors import ArtifactError
from exaone_edge.levels import LEVELS, VISION_BITS
from exaone_edge.formats import ARTIFACTS, GPTQ_KIND, GptqDetails
from exaone_edge.manifest import MANIFEST_NAME, read_manifest, typed_details
from exaone_edge.progress import stdout_to_stderr
from exaone_edge.reference.kernels import eager_gptq_kernels
from exaone_edge.reference.inputs import HFModel, Question
from exaone_edge.vision import contract as vision_format


class BundleCandidate:
    """The deployed pipeline: the bundle's own template, tokenizer, ONNX vision and GGUF decoder."""

    kind = bundle_format.KIND

    def __init__(self, path: Path, thinking: bool = False, engine_options: dict[str, Any] | None = None) -> None:
        from exaone_edge.runtime.engine import Engine

        self.path = Path(path)
        self.thinking = thinking
        # f32 KV and no flash attention: measure the weights' error, not the cache's rounding.
        self.engine = Engine.load(self.path, flash_attn=False, kv_type="f32", n_ctx=4096, **(engine_options or {}))
        details = self.engine.bundle.details
        self.name = details.name
        self.bits = LEVELS[details.decoder.level].bits if details.decoder.level in LEVELS else None
        self.bytes = bundle_format.directory_bytes(self.path)

    def teacher_forced(self, question: Question, answer_ids: list[int]) -> np.ndarray:
        messages = question.user_message({"type": "image", "image": question.image})
        rows = [self.engine.next_token_logits(messages, {"enable_thinking": self.thinking})]
        for token in answer_ids[:-1]:
            self.engine.llama.append(token)
            rows.append(self.engine.llama.logits())
        return np.stack(rows)

    def generate(self, question: Question, max_tokens: int) -> str:
        """The raw reply, reasoning included (validate scores only what follows `</think>`)."""
        from exaone_edge.runtime.generation import GenerationParams

        messages = question.user_message({"type": "image", "image": question.image})
        params = GenerationParams(max_tokens=max_tokens, temperature=0.0).thinking(self.thinking)
        return "".join(chunk.text for chunk in self.engine.generate(messages, params)).strip()

    def vision_rows(self, image) -> np.ndarray | None:
        return self.engine.vision.encode(image) if self.engine.vision is not None else None

    def close(self) -> None:
        self.engine.close()


class GptqCandidate:
    kind = GPTQ_KIND

    def __init__(self, path: Path, reference_dir: Path, thinking: bool = False) -> None:
        self.path = Path(path)
        manifest = read_manifest(self.path, kind=GPTQ_KIND)
        self.bits = typed_details(GptqDetails, manifest, self.path / MANIFEST_NAME).bits
        self.name = f"GPTQ {self.bits}-bit"
        self.bytes = bundle_format.directory_bytes(self.path)
        with stdout_to_stderr():  # GPTQModel's kernel selection logs to stdout
            self.model = HFModel(self.path, reference_dir, thinking)

    def teacher_forced(self, question: Question, answer_ids: list[int]) -> np.ndarray:
        with eager_gptq_kernels():
            return self.model.teacher_forced(question, answer_ids)

    def generate(self, question: Question, max_tokens: int) -> str:
        with eager_gptq_kernels():
            return self.model.generate(question, max_tokens)

    def vision_rows(self, image) -> np.ndarray | None:
        return None  # the vision tower is copied byte for byte (checked when it is made)

    def close(self) -> None:
        del self.model


class VisionCandidate:
    kind = vision_format.KIND

    def __init__(self, path: Path, engine_options: dict[str, Any] | None = None) -> None:
        from exaone_edge.device import choose_placement
        from exaone_edge.vision import VisionEncoder

        self.path = Path(path)
        manifest = read_manifest(self.path, kind=vision_format.KIND)
        precision = typed_details(vision_format.VisionDetails, manifest, self.path / MANIFEST_NAME).precision
        self.name = f"vision {precision}"
        self.bits = VISION_BITS.get(precision)
        self.bytes = bundle_format.directory_bytes(self.path)
        options = engine_options or {}
        placement = choose_placement(options.get("device", "auto"), 0, options.get("vision_provider", "auto"))
        self.encoder = VisionEncoder(self.path, providers=list(placement.providers),
                                     image_max_tokens=options.get("image_max_tokens"))

    def vision_rows(self, image) -> np.ndarray:
        return self.encoder.encode(image)

    def close(self) -> None:
        pass


# How each registered artifact kind (exaone_edge/formats.py) is judged; a test keeps this table and the registry equal.
JUDGES = {
    BundleCandidate.kind: lambda path, reference_dir, thinking, options: BundleCandidate(path, thinking, options),
    GptqCandidate.kind: lambda path, reference_dir, thinking, options: GptqCandidate(path, reference_dir, thinking),
    VisionCandidate.kind: lambda path, reference_dir, thinking, options: VisionCandidate(path, options),
}


def open_candidate(path: Path, reference_dir: Path, thinking: bool = False,
                   engine_options: dict[str, Any] | None = None) -> Any:
    manifest = read_manifest(Path(path), verify=False)
    if manifest.kind not in JUDGES:
        kinds = "; ".join(f"{a.kind}: {a.what}" for a in ARTIFACTS.values())
        raise ArtifactError(f"cannot validate an artifact of kind '{manifest.kind}'", path=path,
                            fix=f"Pass one of these ({kinds}).")
    return JUDGES[manifest.kind](path, reference_dir, thinking, engine_options)

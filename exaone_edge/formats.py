"""The artifact formats, by manifest kind: one registry that the CLI (which quantization formats exist) and
validate (which artifacts it can judge) consult, so a new format is one entry here plus its writer and judge.

Each kind's typed manifest details live beside its format: BundleDetails in bundle.py, VisionDetails in
vision/contract.py, GptqDetails here (quantize writes it, validate reads it, neither may import the other).
"""

from __future__ import annotations

from dataclasses import dataclass

from exaone_edge import bundle
from exaone_edge.vision import contract as vision

GPTQ_KIND = "gptq"


@dataclass(frozen=True)
class GptqDetails:
    bits: int
    group_size: int
    calibration_samples: int
    unquantized: tuple[str, ...] | list[str] = ()  # module patterns kept in 16 bits (vision tower, MTP head)
    tensor_parallel: tuple[int, ...] | list[int] = ()  # vLLM TP degrees the group size serves (empty: not recorded)
    format: str = "gptq"


@dataclass(frozen=True)
class ArtifactFormat:
    kind: str  # manifest.json "kind"
    what: str
    details: type
    quantized: str | None = None  # the `quantize --format` name that writes it, if any


ARTIFACTS: dict[str, ArtifactFormat] = {a.kind: a for a in (
    ArtifactFormat(bundle.KIND, "deployment bundle: GGUF decoder (llama.cpp) + ONNX vision", bundle.BundleDetails, "gguf"),
    ArtifactFormat(GPTQ_KIND, "GPTQ checkpoint (GPTQModel; vLLM, transformers)", GptqDetails, "gptq"),
    ArtifactFormat(vision.KIND, "vision encoder export (ONNX)", vision.VisionDetails),
)}
QUANTIZE_FORMATS: dict[str, str] = {a.quantized: a.kind for a in ARTIFACTS.values() if a.quantized}  # name → kind

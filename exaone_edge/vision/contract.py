"""The vision export's on-disk contract, shared by `export` (writes it) and the encoder (reads it).

    EXPORT/vision.onnx  [vision.onnx.data]  config.json  preprocessor_config.json  manifest.json (kind "vision-onnx")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KIND = "vision-onnx"
GRAPH_FILE = "vision.onnx"
DATA_SUFFIX = ".data"  # weights above 64 MiB live in GRAPH_FILE + DATA_SUFFIX
PREPROCESSOR_FILE = "preprocessor_config.json"
COPIED_FROM_CHECKPOINT = ("config.json", PREPROCESSOR_FILE)
INPUT_NAMES = ("pixel_patches", "cos", "sin", "window_index", "reverse_index", "window_gather", "window_scatter")
OUTPUT_NAME = "rows"
FUSED_ATTENTION = "fused-full-attention"  # manifest details["attention"] of graphs whose full blocks are fused
# (name, (width, height)): the pages every export is validated on against transformers, shapes a document pipeline
# meets; the processor rescales each within min/max pixels. Here, not in export, because `plan --stages` costs them.
VALIDATION_PAGES: tuple[tuple[str, tuple[int, int]], ...] = (
    ("square", (448, 448)),
    ("a4-tall", (595, 842)),
    ("wide", (1024, 300)),
    ("tiny", (20, 30)),
    ("large-a4-300dpi", (2480, 3508)),
    ("odd", (333, 517)),
)


@dataclass(frozen=True)
class VisionDetails:
    """manifest.json `details` of a vision export (export/vision.py writes it, every reader goes through this)."""

    precision: str  # fp32, fp16, int8, int8w or int4
    spec: dict[str, Any]  # the checkpoint's vision_config: the encoder reads its VisionSpec and rope theta here
    graph: dict[str, Any] = field(default_factory=dict)  # inputs and outputs with their shapes
    image: dict[str, Any] = field(default_factory=dict)  # the preprocessor's ImageSpec
    external_data: bool = False  # weights in GRAPH_FILE + DATA_SUFFIX
    attention: str | None = None  # FUSED_ATTENTION: full-attention blocks hold no [heads, patches, patches] scores

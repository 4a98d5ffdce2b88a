"""Vision prep shared by export and runtime: preprocessing, per-image graph inputs, the ONNX encoder.

numpy + Pillow (+ onnxruntime for `VisionEncoder`); never torch or transformers.
"""

from exaone_edge.vision.contract import GRAPH_FILE, INPUT_NAMES, KIND, OUTPUT_NAME, PREPROCESSOR_FILE
from exaone_edge.vision.encoder import VisionEncoder
from exaone_edge.vision.geometry import graph_inputs, rope_theta
from exaone_edge.vision.preprocess import (
    budget_max_pixels, grid_for, preprocess, rows_for, smart_resize, with_image_max_tokens,
)

__all__ = [
    "GRAPH_FILE", "INPUT_NAMES", "KIND", "OUTPUT_NAME", "PREPROCESSOR_FILE", "VisionEncoder",
    "budget_max_pixels", "graph_inputs", "grid_for", "preprocess", "rope_theta", "rows_for", "smart_resize",
    "with_image_max_tokens",
]

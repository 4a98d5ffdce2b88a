"""The vision export's on-disk contract, shared by `export` (writes it) and the encoder (reads it).

    EXPORT/vision.onnx  [vision.onnx.data]  config.json  preprocessor_config.json  manifest.json (kind "vision-onnx")
"""

from __future__ import annotations

KIND = "vision-onnx"
GRAPH_FILE = "vision.onnx"
DATA_SUFFIX = ".data"  # weights above 64 MiB live in GRAPH_FILE + DATA_SUFFIX
PREPROCESSOR_FILE = "preprocessor_config.json"
COPIED_FROM_CHECKPOINT = ("config.json", PREPROCESSOR_FILE)
INPUT_NAMES = ("pixel_patches", "cos", "sin", "window_index", "reverse_index", "window_gather", "window_scatter")
OUTPUT_NAME = "rows"
FUSED_ATTENTION = "fused-full-attention"  # manifest details["attention"] of graphs whose full blocks are fused

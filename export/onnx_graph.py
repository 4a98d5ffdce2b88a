"""Trace the vision graph to ONNX with dynamic patch axes; optimize and save it for ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exaone_edge.vision.geometry import INPUT_NAMES, OUTPUT_NAME

OPSET = 17
DATA_SUFFIX = ".data"
# protobuf caps a file at 2 GiB: larger towers keep their weights in one side file
EXTERNAL_DATA_BYTES = 1 << 30

_PATCHES = {0: "patches"}
_UNITS = {0: "units"}
DYNAMIC_AXES = {
    "pixel_patches": _PATCHES, "cos": _PATCHES, "sin": _PATCHES, "window_index": _UNITS, "reverse_index": _UNITS,
    "window_gather": {0: "windows", 1: "window_len"}, "window_scatter": _PATCHES, "full_segments": _PATCHES,
    OUTPUT_NAME: {0: "rows"},
}


def needs_external_data(weight_bytes: int) -> bool:
    return weight_bytes > EXTERNAL_DATA_BYTES


def trace_to_onnx(visual: Any, example: dict[str, Any], target: Path, weight_bytes: int) -> None:
    """Trace HF's vision tower (wrapped in export.graph.VisionGraph) and write it ORT-optimized to `target`
    (+ `target.data` for large towers). `example`: the graph's feeds for any one page.

    Consumes `visual`: its weights are re-laid in place for tracing and released once traced (moved to
    the meta device), so neither tracing nor the optimizing pass holds them twice."""
    import shutil
    import tempfile

    import torch

    from exaone_edge.export.graph import VisionGraph

    graph = VisionGraph(visual, consume_weights=True).eval()
    args = tuple(torch.from_numpy(example[name]) for name in INPUT_NAMES)
    external = needs_external_data(weight_bytes)
    raw_dir = Path(tempfile.mkdtemp(prefix=".trace.", dir=target.parent))
    try:
        # The TorchScript exporter: with the geometry as inputs nothing is data-dependent, so one trace
        # serves every grid (NOTES.md: the dynamo exporter fails on HF's own forward).
        with torch.no_grad():
            torch.onnx.export(
                graph, args, str(raw_dir / "raw.onnx"), input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                dynamic_axes=DYNAMIC_AXES, opset_version=OPSET, do_constant_folding=True, dynamo=False,
                external_data=external,
            )
        visual.to("meta")
        optimize(raw_dir / "raw.onnx", target, external)
    finally:
        shutil.rmtree(raw_dir, ignore_errors=True)


def optimize(source: Path, target: Path, external: bool) -> None:
    """Constant folding and redundancy elimination (ORT's basic level): higher levels are EP-specific,
    and the runtime applies them itself when it opens the graph."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(target)
    options.log_severity_level = 3
    if external:
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         target.name + DATA_SUFFIX)
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


def save(model: Any, target: Path, external: bool) -> None:
    """Write an onnx ModelProto, with its weights in `target.data` when `external`."""
    import onnx

    if external:
        onnx.save_model(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=target.name + DATA_SUFFIX, size_threshold=1024)
    else:
        onnx.save_model(model, str(target))


def graph_io(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Names, element types and (symbolic) shapes of the graph's inputs and outputs."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def describe(values) -> list[dict[str, Any]]:
        out = []
        for value in values:
            tensor = value.type.tensor_type
            shape = [dim.dim_param or dim.dim_value for dim in tensor.shape.dim]
            out.append({"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
                        "shape": shape})
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}

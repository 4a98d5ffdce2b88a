"""Trace the vision graph to ONNX with dynamic patch axes; optimize and save it for ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exaone_edge.vision.contract import DATA_SUFFIX, INPUT_NAMES, OUTPUT_NAME

OPSET = 18
# Above this the weights go to one side file (`vision.onnx.data`): protobuf caps a file at 2 GiB, and
# writing weights inline needs a second in-memory copy of them.
EXTERNAL_DATA_BYTES = 64 << 20

_PATCHES = {0: "patches"}
_UNITS = {0: "units"}
DYNAMIC_AXES = {
    "pixel_patches": _PATCHES, "cos": _PATCHES, "sin": _PATCHES, "window_index": _UNITS, "reverse_index": _UNITS,
    "window_gather": {0: "windows", 1: "window_len"}, "window_scatter": _PATCHES,
    OUTPUT_NAME: {0: "rows"},
}


def needs_external_data(weight_bytes: int) -> bool:
    return weight_bytes > EXTERNAL_DATA_BYTES


def trace_to_onnx(visual: Any, example: dict[str, Any], target: Path, weight_bytes: int) -> None:
    """Trace HF's vision tower (wrapped in export.graph.VisionGraph) and write it ORT-optimized to `target`
    (+ `target.data` for large towers). `example`: the graph's feeds for any one page.

    Consumes `visual`: its weights are re-laid in place for tracing and released once traced (moved to
    the meta device), so neither tracing nor the optimizing pass holds them twice."""
    import gc
    import shutil
    import tempfile

    import torch

    from exaone_edge.export.attention import translation_table
    from exaone_edge.export.graph import VisionGraph

    graph = VisionGraph(visual, consume_weights=True).eval()
    args = tuple(torch.from_numpy(example[name]) for name in INPUT_NAMES)
    external = needs_external_data(weight_bytes)
    dims = {name: torch.export.Dim(name) for name in ("patches", "units", "windows", "window_len")}
    shapes = {name: {axis: dims[label] for axis, label in axes.items()}
              for name, axes in DYNAMIC_AXES.items() if name != OUTPUT_NAME}
    raw_dir = Path(tempfile.mkdtemp(prefix=".trace.", dir=target.parent))
    try:
        # The dynamo exporter: with the geometry as inputs nothing is data-dependent, so one graph
        # serves every grid (NOTES.md: it fails on HF's own forward). It holds no second copy of the
        # weights (peak ≈ the tower's size; the TorchScript exporter needed 2.9× more).
        with torch.no_grad():
            program = torch.onnx.export(graph, args, input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                                        dynamic_shapes=shapes, opset_version=OPSET, dynamo=True,
                                        external_data=True, verbose=False,
                                        custom_translation_table=translation_table())
        # weights stream to a side file: serializing them into one protobuf would copy them all
        program.save(str(raw_dir / "raw.onnx"), external_data=True)
        # onnxscript's module-level rewrite-pattern matchers keep the last IR graph they saw, and its
        # initializers wrap our parameters: cut that link, or the weights outlive the export (+1×)
        for value in program.model.graph.initializers.values():
            value.const_value = None
        del program
        visual.to("meta")
        gc.collect()  # the exported program's reference cycles hold the weights until collected
        return_freed_memory()
        optimized = raw_dir / "opt" / target.name
        optimized.parent.mkdir()
        optimize(raw_dir / "raw.onnx", optimized, external=True)
        import onnx

        model = onnx.load(str(optimized), load_external_data=not external)  # small: inline the weights
        return_freed_memory()  # ORT's optimizing session is gone; the validation session comes next
        _unshare_small_constants(model)
        if external:
            shutil.move(optimized.parent / (target.name + DATA_SUFFIX), target.parent / (target.name + DATA_SUFFIX))
        onnx.save_model(model, str(target))
    finally:
        shutil.rmtree(raw_dir, ignore_errors=True)


def return_freed_memory() -> None:
    """Hand freed heap back to the OS (glibc keeps it otherwise, and the next stage's peak adds to it)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "malloc_trim"):  # glibc only
        libc.malloc_trim(0)


def _unshare_small_constants(model: Any, max_elements: int = 16) -> None:
    """Give each consumer its own copy of a shared scalar constant (the dynamo exporter shares e.g. the
    RMSNorm exponent across all blocks): ORT's fp16 converter names its casts after the input and
    would otherwise emit duplicate node names."""
    import collections

    from onnx import numpy_helper

    small = {t.name: t for t in model.graph.initializer
             if t.data_location != 1 and len(numpy_helper.to_array(t).reshape(-1)) <= max_elements}
    uses = collections.Counter(name for node in model.graph.node for name in node.input if name in small)
    graph_outputs = {o.name for o in model.graph.output}
    for node_index, node in enumerate(model.graph.node):
        for slot, name in enumerate(node.input):
            if uses.get(name, 0) > 1 and name not in graph_outputs:
                copy = numpy_helper.from_array(numpy_helper.to_array(small[name]), f"{name}__{node_index}_{slot}")
                model.graph.initializer.append(copy)
                node.input[slot] = copy.name


def optimize(source: Path, target: Path, external: bool) -> None:
    """Constant folding and redundancy elimination (ORT's basic level): higher levels are EP-specific,
    and the runtime applies them itself when it opens the graph."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # graph loading logs through the default logger, not the session's
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(target)
    options.log_severity_level = 3
    if external:
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         target.name + DATA_SUFFIX)
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    # MatMul + Add stay apart in the file: int8 and int4 quantize MatMul only, and the runtime's own
    # session fuses them into Gemm when it opens an fp32 graph
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"],
                         disabled_optimizers=["MatMulAddFusion"])


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

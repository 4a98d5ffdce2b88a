"""fp32 ONNX → fp16, int8 (static QDQ, calibrated) or 8- and 4-bit weight-only (MatMulNBits: int8w, int4)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from exaone_edge.export.onnx_graph import return_freed_memory

INT4_BLOCK = 32  # MatMulNBits block (int8w and int4): one fp16 scale per 32 weights


def save(model, target: Path, *, external: bool) -> None:
    import onnx

    if external:
        onnx.save_model(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=target.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(target))


def _weight_matmuls(model) -> list[str]:
    """MatMul nodes with a constant weight: attention's activation × activation products stay float."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    return [node.name for node in model.graph.node if node.op_type == "MatMul" and node.input[1] in initializers]


def to_fp16(source: Path, target: Path, *, feeds: Iterable[dict[str, np.ndarray]], external: bool) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    del feeds
    model = onnx.load(str(source))
    # inputs/outputs stay float32 so callers feed the same arrays; norms and softmax reduce in float32
    half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True,
                                    op_block_list=["ReduceMean", "Pow", "Sqrt", "Reciprocal", "Softmax", "Cos", "Sin"])
    save(half, target, external=external)


def activation_ranges(source: Path, feeds: Iterable[dict[str, np.ndarray]], tensors: list[str]):
    """Min/max of `tensors` over the calibration pages, one page at a time. ORT's MinMax calibrator gives
    the same ranges but holds the weights twice (its ModelProto and its session), prepacks a third copy
    and lets its arena grow to the largest page (int8 export peaked at 4.6× the tower's size, now 2.2×)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData

    model = onnx.load(str(source), load_external_data=False)  # structure only: the session reads the weights
    outputs = []
    for name in tensors:
        for op in ("ReduceMin", "ReduceMax"):
            output = f"{name}__{op}"
            model.graph.node.append(helper.make_node(op, [name], [output], keepdims=0, name=output))
            model.graph.output.append(helper.make_tensor_value_info(output, TensorProto.FLOAT, []))
            outputs.append(output)
    augmented = source.with_name("calibrate-" + source.name)  # beside the source: same external data file
    onnx.save_model(model, str(augmented))
    del model
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    options.add_session_config_entry("session.disable_prepacking", "1")  # a packed copy of every weight
    options.enable_cpu_mem_arena = False  # the arena keeps the largest page's activations to the end
    session = ort.InferenceSession(str(augmented), options, providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    low = {name: np.float32(np.inf) for name in tensors}
    high = {name: np.float32(-np.inf) for name in tensors}
    for feed in feeds:
        values = dict(zip(outputs, session.run(outputs, {k: v for k, v in feed.items() if k in inputs})))
        for name in tensors:
            low[name] = min(low[name], values[f"{name}__ReduceMin"])
            high[name] = max(high[name], values[f"{name}__ReduceMax"])
    del session
    augmented.unlink()
    return_freed_memory()
    if not all(np.isfinite(low[name]) for name in tensors):
        raise ValueError("no calibration page reached the graph")  # the caller guarantees at least one page
    # shape [1], as ORT's calibrator gives them
    return TensorsData(CalibrationMethod.MinMax, {name: (np.array([low[name]], dtype=np.float32),
                                                         np.array([high[name]], dtype=np.float32)) for name in tensors})


def to_int8(source: Path, target: Path, *, feeds: Iterable[dict[str, np.ndarray]], external: bool) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    structure = onnx.load(str(source), load_external_data=False)
    nodes = _weight_matmuls(structure)
    quantized = set(nodes)
    tensors = sorted({name for node in structure.graph.node if node.name in quantized
                      for name in (node.input[0], node.output[0])})
    del structure
    ranges = source.with_name("activation-ranges.json")
    save_tensors_data(activation_ranges(source, feeds, tensors), ranges)
    # u8 activations × s8 weights: the combination x86 VNNI kernels in ORT (MLAS) are built for
    quantize_static(
        str(source), str(target), None, quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
        nodes_to_quantize=nodes, calibrate_method=CalibrationMethod.MinMax, use_external_data_format=external,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True}, calibration_cache_path=ranges,
    )
    ranges.unlink()


def to_int4(source: Path, target: Path, *, feeds: Iterable[dict[str, np.ndarray]], external: bool, bits: int = 4
            ) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    del feeds
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)  # a line per node
    model = onnx.load(str(source))
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=INT4_BLOCK, is_symmetric=True)
    quantizer.process()
    save(quantizer.model.model, target, external=external)


def to_int8w(source: Path, target: Path, *, feeds: Iterable[dict[str, np.ndarray]], external: bool) -> None:
    """8-bit weights, float activations: at the released widths 4 bits lose too much (a 7-block tower's rows kept
    mean cosine 0.962 at 4 bits, 0.99984 at 8; docs/export.md)."""
    to_int4(source, target, feeds=feeds, external=external, bits=8)


CONVERTERS: dict[str, Callable[..., None]] = {"fp16": to_fp16, "int8": to_int8, "int8w": to_int8w, "int4": to_int4}

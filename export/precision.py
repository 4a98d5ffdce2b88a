"""fp32 ONNX → fp16, int8 (static QDQ, calibrated) or 4-bit weight-only (MatMulNBits)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np


INT4_BLOCK = 32


def save(model, target: Path, *, external: bool) -> None:
    import onnx

    if external:
        onnx.save_model(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=target.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(target))


def gemms_to_matmuls(model) -> int:
    """Rewrite Gemm(x, W, b) with a constant W as MatMul(x, Wᵀ) + b, in place; returns how many.

    The exporter emits nn.Linear as Gemm, but ORT's static quantizer and MatMulNBits act on MatMul:
    left as Gemm, the tower's linear layers would silently stay float32.
    """
    from onnx import helper, numpy_helper

    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    rewritten, nodes = 0, []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or node.input[1] not in initializers or not plain:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        if attrs.get("transB", 0):
            weight = np.ascontiguousarray(weight.T)
        name = f"{node.input[1]}_matmul"
        model.graph.initializer.append(numpy_helper.from_array(weight, name))
        product = f"{node.output[0]}_product" if len(node.input) > 2 and node.input[2] else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], name], [product], name=f"{node.name}_matmul"))
        if product != node.output[0]:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_bias"))
        rewritten += 1
    used = {name for node in nodes for name in node.input}
    kept = [tensor for tensor in model.graph.initializer if tensor.name in used]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return rewritten


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


class _Reader:
    def __init__(self, feeds: Iterable[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def to_int8(source: Path, target: Path, *, feeds: Iterable[dict[str, np.ndarray]], external: bool) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(source))
    gemms_to_matmuls(model)
    matmul_source = source.with_name("matmul-" + source.name)
    save(model, matmul_source, external=external)
    nodes = _weight_matmuls(model)
    del model
    # u8 activations × s8 weights: the combination x86 VNNI kernels in ORT (MLAS) are built for
    quantize_static(
        str(matmul_source), str(target), _Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
        nodes_to_quantize=nodes, calibrate_method=CalibrationMethod.MinMax, use_external_data_format=external,
        # ORT's MinMax calibrator holds every page's activations until the end (its CalibMaxIntermediateOutputs
        # option drops them uncounted in 1.31.1), so the page count is capped by the caller
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    for leftover in (matmul_source, matmul_source.with_name(matmul_source.name + ".data")):
        leftover.unlink(missing_ok=True)


def to_int4(source: Path, target: Path, *, feeds: Iterable[dict[str, np.ndarray]], external: bool) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    del feeds
    model = onnx.load(str(source))
    gemms_to_matmuls(model)
    quantizer = MatMulNBitsQuantizer(model, block_size=INT4_BLOCK, is_symmetric=True)
    quantizer.process()
    save(quantizer.model.model, target, external=external)


CONVERTERS: dict[str, Callable[..., None]] = {"fp16": to_fp16, "int8": to_int8, "int4": to_int4}
